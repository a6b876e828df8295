"""Points from other frames: the rigid transform tf2 applies, and the refusal where tf2_ros is missing."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import Point, PointStamped
from ros_helpers import ros_context, ros_environment  # noqa: F401 (fixtures)
from std_msgs.msg import Header

from seem_ros.ros.frames import PointTransformer, transform_point


def _matrix(rotation_xyzw: tuple[float, float, float, float]) -> np.ndarray:
    x, y, z, w = np.asarray(rotation_xyzw) / np.linalg.norm(rotation_xyzw)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def test_quarter_turn_about_z_then_translation():
    half = math.sqrt(0.5)
    moved = transform_point((1.0, 0.0, 0.0), (0.5, 0.0, 2.0), (0.0, 0.0, half, half))
    np.testing.assert_allclose(moved, (0.5, 1.0, 2.0), atol=1e-12)


def test_matches_the_rotation_matrix():
    rng = np.random.default_rng(0)
    for _ in range(20):
        rotation = tuple(rng.normal(size=4))
        point, translation = rng.normal(size=3), rng.normal(size=3)
        expected = _matrix(rotation) @ point + translation
        np.testing.assert_allclose(
            transform_point(tuple(point), tuple(translation), rotation), expected, atol=1e-9
        )


@pytest.mark.parametrize("rotation", [(0.0, 0.0, 0.0, 0.0), (math.nan, 0.0, 0.0, 1.0)])
def test_invalid_rotation_is_refused(rotation):
    with pytest.raises(ValueError, match="not a valid quaternion"):
        transform_point((1.0, 2.0, 3.0), (0.0, 0.0, 0.0), rotation)


@pytest.mark.skipif(importlib.util.find_spec("tf2_ros") is not None, reason="tf2_ros is installed here")
def test_without_tf2_points_in_other_frames_are_refused(ros_context):  # noqa: F811
    node = rclpy.create_node("frames_test", context=ros_context)
    try:
        transformer = PointTransformer(node)
        assert not transformer.available
        msg = PointStamped(header=Header(frame_id="map"), point=Point(x=1.0))
        with pytest.raises(ValueError, match="without tf2_ros"):
            transformer.point_in("camera_optical_frame", msg)
    finally:
        node.destroy_node()
