"""Pure conversions between ROS messages and numpy arrays / engine results. No node needed.

Image layout conventions: arrays are (H, W) for one channel and (H, W, C) otherwise, rows top to bottom,
x = column, y = row. `sensor_msgs/Image.step` (bytes per row) may exceed width * channels * itemsize when
rows are padded; it is honoured in both directions.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from seem_ros.engine.image_transform import check_pixel_count, decode_compressed
from seem_ros.engine.results import FrameResult, InstanceResult, Segment
from seem_ros.engine.visualize import render_overlay
from seem_ros.msg import InstanceMask, InstanceMaskArray, PanopticSegment

# encoding -> (numpy dtype, channels)
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32SC1": (np.dtype(np.int32), 1),
    "32FC1": (np.dtype(np.float32), 1),
}

# encodings image_to_rgb accepts -> OpenCV conversion to RGB (None: already RGB)
_TO_RGB: dict[str, int | None] = {
    "rgb8": None,
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "8UC1": cv2.COLOR_GRAY2RGB,
}

_NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"

PANOPTIC_ENCODINGS = ("32SC1", "mono16")
SEMANTIC_ENCODING = "mono16"

# Distortion coefficient counts cv2.projectPoints accepts (plumb_bob has 5, rational_polynomial 8).
_DISTORTION_LENGTHS = (4, 5, 8, 12, 14)


def image_to_array(msg: Image) -> np.ndarray:
    """View of an Image message's pixels as (H, W) or (H, W, C) in the message's own encoding.

    Zero-copy (a view of msg.data, padded rows skipped by strides) unless a 16/32-bit image has the other
    byte order than this machine. Raises ValueError for an unknown encoding, an empty image, a step smaller
    than one row, or a data size that is not step * height.
    """
    if msg.encoding not in IMAGE_ENCODINGS:
        raise ValueError(
            f"unsupported image encoding {msg.encoding!r}; use one of {', '.join(IMAGE_ENCODINGS)}"
        )
    dtype, channels = IMAGE_ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ValueError(f"empty image: width {width}, height {height}")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(
            f"image step {step} is smaller than one row of {width} x {channels} x {dtype.itemsize} bytes "
            f"= {row_bytes} for encoding {msg.encoding}"
        )
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise ValueError(
            f"image data has {data.size} bytes, expected step * height = {step} * {height} = {step * height}"
        )
    rows = data.reshape(height, step)[:, :row_bytes]
    shape = (height, width, channels) if channels > 1 else (height, width)
    if dtype.itemsize == 1:
        return rows.reshape(shape)
    message_order = ">" if msg.is_bigendian else "<"
    pixels = rows.view(dtype.newbyteorder(message_order)).reshape(shape)
    return pixels if message_order == _NATIVE_ORDER else pixels.astype(dtype)


def image_to_rgb(msg: Image, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an rgb8, bgr8, rgba8, bgra8 or mono8 Image (a view for unpadded rgb8).

    max_pixels: refuse images with more pixels than this (ValueError), checked on the header before the
    data is touched.
    """
    if msg.encoding not in _TO_RGB:
        raise ValueError(
            f"cannot segment an image with encoding {msg.encoding!r}; use one of {', '.join(_TO_RGB)}"
        )
    check_pixel_count(int(msg.width), int(msg.height), max_pixels)
    pixels = image_to_array(msg)
    conversion = _TO_RGB[msg.encoding]
    if conversion is None:
        return pixels
    return cv2.cvtColor(pixels, conversion)


def compressed_to_rgb(msg: CompressedImage, max_pixels: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB decoded from a CompressedImage; see `decode_compressed` (ValueError when the
    data is empty, undecodable or over max_pixels, read from the header before decoding). A format naming
    its images' encoding as image_transport writes it ("rgb8; jpeg compressed bgr8") is refused for the
    encodings `image_to_rgb` refuses (a depth image's "16UC1; png compressed mono16", "compressedDepth"),
    which decoding would turn into grey pictures of depth."""
    encoding, separator, _ = msg.format.partition(";")
    encoding = encoding.strip()
    if "compressedDepth" in msg.format or (
        separator and encoding in IMAGE_ENCODINGS and encoding not in _TO_RGB
    ):
        raise ValueError(
            f"cannot segment images of format {msg.format!r} (depth or more than 8 bits a channel); use "
            f"an image of one of {', '.join(_TO_RGB)}"
        )
    return decode_compressed(bytes(msg.data), max_pixels, f"format {msg.format!r}")


def array_to_image(pixels: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """Image message holding `pixels` ((H, W) or (H, W, C) with the dtype and channels of `encoding`)."""
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; use one of {', '.join(IMAGE_ENCODINGS)}")
    dtype, channels = IMAGE_ENCODINGS[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if (
        pixels.dtype != dtype
        or pixels.ndim != expected_ndim
        or (channels > 1 and pixels.shape[2] != channels)
    ):
        shape = "H x W" if channels == 1 else f"H x W x {channels}"
        raise ValueError(f"{encoding} needs a {shape} {dtype} array, got {pixels.shape} {pixels.dtype}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"empty image: shape {pixels.shape}")
    pixels = np.ascontiguousarray(pixels)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big" and dtype.itemsize > 1)
    msg.step = int(pixels.strides[0])
    msg.data = pixels.tobytes()
    return msg


def rle_encode(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a bool mask, row-major, alternating background/foreground, starting with background.

    mask: (h, w) bool. Returns (N,) uint32 with sum == h * w (first run 0 if mask[0, 0] is set).
    """
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return np.zeros(0, dtype=np.uint32)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size])))
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return runs.astype(np.uint32)


def rle_decode(runs: Sequence[int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Inverse of rle_encode: (height, width) bool. Raises ValueError unless the runs are non-negative
    integers that cover it exactly."""
    if int(height) != height or int(width) != width or height < 0 or width < 0:
        raise ValueError(f"mask size must be two non-negative integers, got {height} x {width}")
    height, width = int(height), int(width)
    runs = np.asarray(runs)
    if runs.ndim != 1 or (runs.size and runs.dtype.kind not in "iu"):
        raise ValueError(f"mask runs must be a flat sequence of integers, got {runs.dtype} {runs.shape}")
    runs = runs.astype(np.int64)
    if runs.size and runs.min() < 0:
        raise ValueError(f"mask runs must not be negative, got {int(runs.min())}")
    total = int(runs.sum())
    if total != height * width:
        raise ValueError(f"mask runs cover {total} pixels, expected {height} x {width} = {height * width}")
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(height, width)


def instance_to_msg(instance: InstanceResult) -> InstanceMask:
    """InstanceMask with the mask cropped to instance.bbox (which must contain the whole mask)."""
    msg = InstanceMask()
    msg.instance_id = int(instance.instance_id)
    msg.track_id = int(instance.track_id)
    msg.label = instance.label
    msg.class_id = int(instance.class_id)
    msg.score = float(instance.score)
    msg.prompt_type = instance.prompt
    msg.prompt_text = instance.prompt_text
    x0, y0, x1, y1 = (int(v) for v in instance.bbox)
    if x1 < x0 or y1 < y0:
        msg.roi = RegionOfInterest()
        return msg
    msg.roi = RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0 + 1, height=y1 - y0 + 1)
    msg.mask_rle = rle_encode(instance.mask[y0 : y1 + 1, x0 : x1 + 1])
    return msg


def instance_mask_from_msg(msg: InstanceMask, height: int, width: int) -> np.ndarray:
    """Full-image (height, width) bool mask of an InstanceMask."""
    mask = np.zeros((height, width), dtype=bool)
    roi = msg.roi
    if roi.width == 0 or roi.height == 0:
        return mask
    if roi.x_offset + roi.width > width or roi.y_offset + roi.height > height:
        raise ValueError(
            f"roi x {roi.x_offset} + {roi.width}, y {roi.y_offset} + {roi.height} "
            f"exceeds the {width} x {height} image"
        )
    crop = rle_decode(msg.mask_rle, roi.height, roi.width)
    mask[roi.y_offset : roi.y_offset + roi.height, roi.x_offset : roi.x_offset + roi.width] = crop
    return mask


def segment_to_msg(segment: Segment) -> PanopticSegment:
    return PanopticSegment(
        id=int(segment.segment_id),
        class_id=int(segment.class_id),
        label=segment.label,
        is_thing=bool(segment.is_thing),
        area=int(segment.area),
        score=float(segment.score),
    )


def frame_result_to_msg(result: FrameResult, header: Header, width: int, height: int) -> InstanceMaskArray:
    """InstanceMaskArray for one image; header is the input image's header (copied unchanged)."""
    return InstanceMaskArray(
        header=header,
        width=int(width),
        height=int(height),
        instances=[instance_to_msg(instance) for instance in result.instances],
        segments=[segment_to_msg(segment) for segment in result.segments],
    )


def panoptic_image(result: FrameResult, header: Header, encoding: str = "32SC1") -> Image:
    """Panoptic id image (values = PanopticSegment.id, 0 = void) as 32SC1 or mono16."""
    if encoding not in PANOPTIC_ENCODINGS:
        raise ValueError(f"panoptic encoding must be one of {PANOPTIC_ENCODINGS}, got {encoding!r}")
    ids = np.asarray(result.panoptic)
    if encoding == "mono16":
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.uint16).max):
            raise ValueError(f"panoptic ids {ids.min()}..{ids.max()} do not fit mono16; use 32SC1")
        return array_to_image(ids.astype(np.uint16), "mono16", header)
    return array_to_image(ids.astype(np.int32), "32SC1", header)


def semantic_image(result: FrameResult, header: Header) -> Image:
    """Semantic label image, mono16: class id per pixel, 65535 (`SEMANTIC_VOID`) where no class applies."""
    return array_to_image(np.asarray(result.semantic).astype(np.uint16), SEMANTIC_ENCODING, header)


def overlay_image(
    rgb: np.ndarray, result: FrameResult, header: Header, alpha: float = 0.5, draw_labels: bool = True
) -> Image:
    """rgb8 Image of render_overlay(rgb, result.instances)."""
    return array_to_image(render_overlay(rgb, result.instances, alpha, draw_labels), "rgb8", header)


def project_point(
    info: CameraInfo, x: float, y: float, z: float, rectified: bool = False
) -> tuple[float, float]:
    """Pixel (u, v) of a point (x, y, z) in the camera optical frame (metres, z forward). In a raw image:
    through the intrinsics K and the plumb_bob / rational_polynomial distortion D of `info`; in a rectified
    image (`rectified`): through the projection matrix P, without distortion (as image_geometry's
    PinholeCameraModel.project3dToPixel). Raises ValueError if the point is not finite or behind the camera,
    the calibration is missing or malformed, or the pixel falls outside the image."""
    if not all(math.isfinite(value) for value in (x, y, z)):
        raise ValueError(f"point ({x}, {y}, {z}) is not finite")
    if z <= 0.0:
        raise ValueError(f"point ({x:.3f}, {y:.3f}, {z:.3f}) is not in front of the camera (z must be > 0)")
    if info.width == 0 or info.height == 0:
        raise ValueError(f"camera_info has no image size ({info.width} x {info.height})")
    u, v = _project_rectified(info, x, y, z) if rectified else _project_raw(info, x, y, z)
    if not (0.0 <= u < info.width and 0.0 <= v < info.height):
        raise ValueError(
            f"point projects to pixel ({u:.1f}, {v:.1f}), outside the {info.width} x {info.height} image"
        )
    return u, v


def _calibration(values: Sequence[float], shape: tuple[int, int], name: str) -> np.ndarray:
    """CameraInfo's matrix `name` (K or P) as an array of `shape`; ValueError unless finite and calibrated."""
    matrix = np.asarray(values, dtype=np.float64).reshape(shape)
    if not np.isfinite(matrix).all():
        raise ValueError(f"camera_info {name} holds values that are not finite")
    if matrix[0, 0] <= 0.0 or matrix[1, 1] <= 0.0:
        raise ValueError(f"camera_info has no calibration ({name} is zero)")
    return matrix


def _project_raw(info: CameraInfo, x: float, y: float, z: float) -> tuple[float, float]:
    camera_matrix = _calibration(info.k, (3, 3), "K")
    distortion = np.asarray(info.d, dtype=np.float64).ravel()
    if info.distortion_model not in ("plumb_bob", "rational_polynomial") or not distortion.any():
        distortion = np.zeros(5)
    if distortion.size not in _DISTORTION_LENGTHS or not np.isfinite(distortion).all():
        raise ValueError(
            f"camera_info D of model {info.distortion_model!r} has {distortion.size} coefficients "
            f"{distortion.tolist()}; expected {', '.join(map(str, _DISTORTION_LENGTHS))} finite values"
        )
    pixels, _ = cv2.projectPoints(
        np.array([[x, y, z]], dtype=np.float64), np.zeros(3), np.zeros(3), camera_matrix, distortion
    )
    u, v = (float(value) for value in pixels.reshape(2))
    return u, v


def _project_rectified(info: CameraInfo, x: float, y: float, z: float) -> tuple[float, float]:
    projection = _calibration(info.p, (3, 4), "P")
    u, v, w = projection @ np.array([x, y, z, 1.0])
    if w <= 0.0:
        raise ValueError(f"point ({x:.3f}, {y:.3f}, {z:.3f}) is not in front of the rectified camera")
    return float(u / w), float(v / w)
