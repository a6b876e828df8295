"""3-D position and size of segmented objects, from a depth image aligned to the colour image.

Conventions: the camera optical frame of REP-103 (x right, y down, z forward, metres). A pixel (u, v) =
(column, row) at depth z back-projects through the intrinsics K of sensor_msgs/CameraInfo to
x = (u - cx) z / fx, y = (v - cy) z / fy (lens distortion is ignored, as depth_image_proc does for aligned
depth). Depth images are 16UC1 / mono16 in millimetres (0 = no reading) or 32FC1 in metres (NaN, inf or
<= 0 = no reading).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image

from seem_ros.ros.conversions import image_to_array

MILLIMETRE_ENCODINGS = ("16UC1", "mono16")
METRE_ENCODINGS = ("32FC1",)
DEPTH_ENCODINGS = MILLIMETRE_ENCODINGS + METRE_ENCODINGS


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels: focal lengths fx, fy and principal point cx, cy."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_camera_info(cls, info: CameraInfo) -> Intrinsics:
        """The K matrix of `info`; raises ValueError if it holds no calibration (zero focal lengths)."""
        k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
        if not (k[0, 0] > 0.0 and k[1, 1] > 0.0):
            raise ValueError("camera_info has no calibration (K is zero)")
        return cls(fx=float(k[0, 0]), fy=float(k[1, 1]), cx=float(k[0, 2]), cy=float(k[1, 2]))


@dataclass(frozen=True)
class ObjectGeometry:
    """Where an object is and how large: centroid (x, y, z) and extent (size along x, y, z), metres, in the
    camera optical frame; points = how many valid depth pixels of the mask they come from."""

    centroid: tuple[float, float, float]
    extent: tuple[float, float, float]
    points: int


def depth_to_metres(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W) float32 metres from raw depth pixels ((H, W) uint16 millimetres or float32 metres); NaN where
    there is no reading. Raises ValueError for another encoding."""
    if encoding in MILLIMETRE_ENCODINGS:
        metres = pixels.astype(np.float32) * np.float32(0.001)
        metres[pixels == 0] = np.nan
        return metres
    if encoding in METRE_ENCODINGS:
        metres = np.array(pixels, dtype=np.float32, copy=True)
        metres[~np.isfinite(metres) | (metres <= 0.0)] = np.nan
        return metres
    raise ValueError(f"depth encoding must be one of {', '.join(DEPTH_ENCODINGS)}, got {encoding!r}")


def depth_image_to_metres(msg: Image) -> np.ndarray:
    """(H, W) float32 metres of a depth Image message (NaN = no reading); raises ValueError if invalid."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"depth encoding must be one of {', '.join(DEPTH_ENCODINGS)}, got {msg.encoding!r}")
    return depth_to_metres(image_to_array(msg), msg.encoding)


def back_project(u: np.ndarray, v: np.ndarray, depth: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """(N, 3) float64 points (x, y, z) in the optical frame of pixels u (columns), v (rows), each (N,), at
    depth (N,) metres."""
    z = np.asarray(depth, dtype=np.float64)
    x = (np.asarray(u, dtype=np.float64) - intrinsics.cx) * z / intrinsics.fx
    y = (np.asarray(v, dtype=np.float64) - intrinsics.cy) * z / intrinsics.fy
    return np.stack([x, y, z], axis=1)


def object_geometry(
    mask: np.ndarray,
    depth: np.ndarray,
    intrinsics: Intrinsics,
    bbox: tuple[int, int, int, int] | None = None,
    min_points: int = 10,
    low_percentile: float = 5.0,
    high_percentile: float = 95.0,
) -> ObjectGeometry | None:
    """The 3-D centroid and extent of the object under `mask`, or None when fewer than `min_points` mask
    pixels have a depth reading.

    mask: (H, W) bool; depth: (H, W) float32 metres, NaN = no reading (depth_to_metres); bbox: optional
    inclusive (x_min, y_min, x_max, y_max) holding every mask pixel (only that region is searched). The
    centroid is the per-axis median of the back-projected points, the extent the per-axis spread between the
    low and high percentiles (robust against edge pixels that see the background).
    """
    if mask.shape != depth.shape:
        raise ValueError(f"mask {mask.shape} and depth image {depth.shape} differ in size")
    x0, y0, x1, y1 = bbox if bbox is not None else (0, 0, mask.shape[1] - 1, mask.shape[0] - 1)
    if x1 < x0 or y1 < y0:
        return None
    rows, cols = np.nonzero(mask[y0 : y1 + 1, x0 : x1 + 1])
    rows += y0
    cols += x0
    values = depth[rows, cols]
    valid = np.isfinite(values)
    if int(valid.sum()) < max(1, min_points):
        return None
    points = back_project(cols[valid], rows[valid], values[valid], intrinsics)
    centroid = np.median(points, axis=0)
    low, high = np.percentile(points, [low_percentile, high_percentile], axis=0)
    return ObjectGeometry(
        centroid=tuple(float(value) for value in centroid),
        extent=tuple(float(value) for value in high - low),
        points=int(points.shape[0]),
    )


def stamp_nanoseconds(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def nearest_stamp(stamps: list[int], target: int, tolerance: int) -> int | None:
    """Index of the stamp (nanoseconds) nearest to target and at most tolerance from it, else None."""
    if not stamps:
        return None
    differences = np.abs(np.asarray(stamps, dtype=np.int64) - np.int64(target))
    index = int(differences.argmin())
    return index if differences[index] <= tolerance else None


class DepthBuffer:
    """The most recent depth images, to pair each colour image with the depth image nearest in stamp.

    Thread-safe: put() runs in the depth subscription, match() in the inference callback, where it may wait
    a little for a depth image that is still on its way (aligned depth usually arrives after the colour).

    Args:
        capacity: depth images kept.
        stream_timeout: seconds after the last depth image during which the stream counts as alive; match()
            only waits while it is.
    """

    def __init__(self, capacity: int = 10, stream_timeout: float = 1.0) -> None:
        self._frames: deque[tuple[int, Image]] = deque(maxlen=capacity)
        self._condition = threading.Condition()
        self._stream_timeout = stream_timeout
        self._last_arrival = -float("inf")

    def put(self, msg: Image) -> None:
        with self._condition:
            self._frames.append((stamp_nanoseconds(msg.header.stamp), msg))
            self._last_arrival = time.monotonic()
            self._condition.notify_all()

    def match(self, stamp: Time, tolerance: float, wait: float = 0.0) -> Image | None:
        """The depth image nearest to `stamp` within `tolerance` seconds, or None. While the stream is alive
        and no depth image at or after `stamp` has arrived yet, waits up to `wait` seconds for one."""
        target = stamp_nanoseconds(stamp)
        deadline = time.monotonic() + wait
        with self._condition:
            while (
                time.monotonic() < deadline
                and time.monotonic() - self._last_arrival < self._stream_timeout
                and not any(frame_stamp >= target for frame_stamp, _ in self._frames)
            ):
                self._condition.wait(timeout=max(0.0, deadline - time.monotonic()))
            frames = list(self._frames)
        index = nearest_stamp([frame_stamp for frame_stamp, _ in frames], target, round(tolerance * 1e9))
        return None if index is None else frames[index][1]
