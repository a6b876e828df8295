"""seem_ros.ros.depth: depth decoding, back-projection through CameraInfo K, robust object geometry from
synthetic depth of known planes and boxes, and pairing depth with colour images by stamp."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from seem_ros.ros.conversions import array_to_image
from seem_ros.ros.depth import (
    DepthBuffer,
    Intrinsics,
    back_project,
    depth_image_to_metres,
    depth_to_metres,
    nearest_stamp,
    object_geometry,
    stamp_nanoseconds,
)

WIDTH, HEIGHT = 640, 480
INTRINSICS = Intrinsics(fx=525.0, fy=520.0, cx=319.5, cy=239.5)


def camera_info(fx: float = 525.0, fy: float = 520.0, cx: float = 319.5, cy: float = 239.5) -> CameraInfo:
    return CameraInfo(width=WIDTH, height=HEIGHT, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """(HEIGHT, WIDTH) bool, True on the inclusive box."""
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def test_intrinsics_from_camera_info():
    assert Intrinsics.from_camera_info(camera_info()) == INTRINSICS
    with pytest.raises(ValueError, match="no calibration"):
        Intrinsics.from_camera_info(CameraInfo())


def test_millimetres_and_metres_with_missing_readings():
    millimetres = np.array([[0, 1000], [1500, 65535]], dtype=np.uint16)
    metres = depth_to_metres(millimetres, "16UC1")
    assert metres.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(metres), [[True, False], [False, False]])
    np.testing.assert_allclose(metres[~np.isnan(metres)], [1.0, 1.5, 65.535], rtol=1e-6)

    raw = np.array([[np.nan, np.inf], [-1.0, 0.0], [0.25, 3.0]], dtype=np.float32)
    metres = depth_to_metres(raw, "32FC1")
    np.testing.assert_array_equal(np.isnan(metres), [[True, True], [True, True], [False, False]])
    np.testing.assert_array_equal(metres[2], [0.25, 3.0])
    assert np.isnan(raw[0, 0]) and raw[1, 0] == -1.0  # the input is not modified

    with pytest.raises(ValueError, match="depth encoding must be one of"):
        depth_to_metres(millimetres.astype(np.uint8), "mono8")


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_image_messages(encoding: str):
    metres = np.full((HEIGHT, WIDTH), 1.25, dtype=np.float32)
    metres[0, 0] = 0.0
    pixels = (metres * 1000).astype(np.uint16) if encoding == "16UC1" else metres
    decoded = depth_image_to_metres(array_to_image(pixels, encoding))
    assert decoded.shape == (HEIGHT, WIDTH)
    assert np.isnan(decoded[0, 0])
    np.testing.assert_allclose(decoded[1:, 1:], 1.25)
    with pytest.raises(ValueError, match="depth encoding"):
        depth_image_to_metres(array_to_image(np.zeros((2, 2), np.uint8), "mono8"))


def test_back_projection_inverts_the_pinhole_projection():
    rng = np.random.default_rng(0)
    points = np.stack(
        [rng.uniform(-1, 1, 100), rng.uniform(-0.8, 0.8, 100), rng.uniform(0.3, 5.0, 100)], axis=1
    )
    u = INTRINSICS.fx * points[:, 0] / points[:, 2] + INTRINSICS.cx
    v = INTRINSICS.fy * points[:, 1] / points[:, 2] + INTRINSICS.cy
    np.testing.assert_allclose(back_project(u, v, points[:, 2], INTRINSICS), points, rtol=1e-12, atol=1e-12)
    # the principal point lies on the optical axis
    np.testing.assert_array_equal(
        back_project(np.array([319.5]), np.array([239.5]), np.array([2.0]), INTRINSICS), [[0, 0, 2]]
    )


def test_fronto_parallel_plane():
    z = 2.0
    depth = np.full((HEIGHT, WIDTH), z, dtype=np.float32)
    x0, y0, x1, y1 = 100, 50, 299, 249  # 200 x 200 pixels
    geometry = object_geometry(box_mask(x0, y0, x1, y1), depth, INTRINSICS)
    assert geometry is not None
    assert geometry.points == 200 * 200
    expected_x = ((x0 + x1) / 2 - INTRINSICS.cx) * z / INTRINSICS.fx
    expected_y = ((y0 + y1) / 2 - INTRINSICS.cy) * z / INTRINSICS.fy
    np.testing.assert_allclose(geometry.centroid, (expected_x, expected_y, z), atol=1e-9)
    # 5-95 percentile spread of 200 evenly spaced columns / rows: 0.9 * 199 pixels
    columns, rows = np.arange(x0, x1 + 1), np.arange(y0, y1 + 1)
    expected_extent = (
        np.ptp(np.percentile(columns, [5, 95])) * z / INTRINSICS.fx,
        np.ptp(np.percentile(rows, [5, 95])) * z / INTRINSICS.fy,
        0.0,
    )
    np.testing.assert_allclose(geometry.extent, expected_extent, atol=1e-9)
    assert geometry.extent[0] == pytest.approx(0.9 * 199 * z / INTRINSICS.fx)


def test_box_in_front_of_a_wall_ignores_edge_outliers():
    """A 0.3 m deep box face at 1 m in front of a wall at 3 m; the mask overlaps the wall by one pixel
    column (0.5 % of the mask): the median centroid and the 5-95 % extent see only the box."""
    depth = np.full((HEIGHT, WIDTH), 3.0, dtype=np.float32)
    x0, y0, x1, y1 = 200, 140, 399, 339
    box_depth = np.linspace(1.0, 1.3, x1 - x0 + 1, dtype=np.float32)  # the face recedes from left to right
    depth[y0 : y1 + 1, x0 : x1 + 1] = box_depth[None, :]
    mask = box_mask(x0, y0, x1 + 1, y1)  # one column too wide: wall pixels
    geometry = object_geometry(mask, depth, INTRINSICS)
    assert geometry is not None
    centroid_z = float(np.median(np.append(np.repeat(box_depth, 200), np.full(200, 3.0))))
    assert geometry.centroid[2] == pytest.approx(centroid_z, abs=1e-6)
    assert 1.0 < geometry.centroid[2] < 1.3
    assert geometry.extent[2] < 0.3  # the wall (2 m further) does not stretch the box
    assert geometry.extent[2] == pytest.approx(0.9 * 0.3, abs=0.01)


def test_tilted_plane_centroid_is_the_median_of_back_projected_points():
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    depth = (1.0 + 0.002 * rows).astype(np.float32)  # the floor-like plane recedes downwards
    mask = box_mask(300, 300, 339, 419)
    geometry = object_geometry(mask, depth, INTRINSICS)
    points = back_project(columns[mask], rows[mask], depth[mask], INTRINSICS)
    np.testing.assert_allclose(geometry.centroid, np.median(points, axis=0), atol=1e-6)
    assert geometry.extent[2] == pytest.approx(0.002 * 0.9 * 119, abs=1e-3)


def test_missing_depth_and_bbox():
    depth = np.full((HEIGHT, WIDTH), np.nan, dtype=np.float32)
    mask = box_mask(10, 10, 19, 19)
    assert object_geometry(mask, depth, INTRINSICS) is None
    depth[10:13, 10:13] = 1.0  # 9 readings: fewer than min_points
    assert object_geometry(mask, depth, INTRINSICS) is None
    assert object_geometry(mask, depth, INTRINSICS, min_points=9).points == 9
    depth[10:20, 10:20] = 1.0
    full = object_geometry(mask, depth, INTRINSICS)
    assert object_geometry(mask, depth, INTRINSICS, bbox=(10, 10, 19, 19)) == full
    assert object_geometry(np.zeros_like(mask), depth, INTRINSICS, bbox=(0, 0, -1, -1)) is None
    with pytest.raises(ValueError, match="differ in size"):
        object_geometry(mask[:, :10], depth, INTRINSICS)


def test_nearest_stamp():
    assert nearest_stamp([], 5, 10) is None
    assert nearest_stamp([100, 200, 300], 190, 20) == 1
    assert nearest_stamp([100, 200, 300], 250, 49) is None
    assert nearest_stamp([100, 200, 300], 250, 50) == 1
    assert stamp_nanoseconds(Time(sec=2, nanosec=5)) == 2_000_000_005


def depth_message(sec: int, nanosec: int = 0) -> Image:
    return Image(header=Header(stamp=Time(sec=sec, nanosec=nanosec)), encoding="16UC1")


def test_depth_buffer_matches_the_nearest_stamp_within_tolerance():
    buffer = DepthBuffer(capacity=3)
    assert buffer.match(Time(sec=1), tolerance=0.05, wait=1.0) is None  # no stream: no wait
    for nanosec in (0, 100_000_000, 200_000_000, 300_000_000):
        buffer.put(depth_message(10, nanosec))
    assert buffer.match(Time(sec=10, nanosec=210_000_000), 0.05).header.stamp.nanosec == 200_000_000
    assert buffer.match(Time(sec=10, nanosec=0), 0.05) is None  # dropped: capacity 3
    assert buffer.match(Time(sec=10, nanosec=150_000_000), 0.01) is None


def test_depth_buffer_waits_for_depth_that_arrives_after_the_colour_image():
    buffer = DepthBuffer()
    buffer.put(depth_message(1))
    later = threading.Timer(0.1, buffer.put, args=(depth_message(2),))
    later.start()
    start = time.monotonic()
    match = buffer.match(Time(sec=2), tolerance=0.05, wait=2.0)
    later.join()
    assert match is not None and match.header.stamp.sec == 2
    assert time.monotonic() - start < 1.5  # woken by the arrival, not by the timeout

    start = time.monotonic()
    assert buffer.match(Time(sec=3), tolerance=0.05, wait=0.2) is None  # waited, nothing came
    assert 0.15 < time.monotonic() - start < 1.0
