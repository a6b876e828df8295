"""Points stamped in another frame, brought into the camera's optical frame with tf2 where it is installed.

RViz's "Publish Point" stamps the clicked point in the fixed frame of the view (often `map` or `odom`);
projecting it into the image needs it in the camera's optical frame. tf2_ros is optional: a ROS 2 install
has it, a plain Python environment with ROS from wheels does not (no wheel exists); without it only points
already in the optical frame are accepted, and the refusal says why.
"""

from __future__ import annotations

import math

from geometry_msgs.msg import PointStamped
from rclpy.node import Node
from rclpy.time import Time


def transform_point(
    point: tuple[float, float, float],
    translation: tuple[float, float, float],
    rotation_xyzw: tuple[float, float, float, float],
) -> tuple[float, float, float]:
    """`point` mapped by the rigid transform (rotation as a unit quaternion x, y, z, w, then translation):
    what tf2 does to a point given the transform from the point's frame to the target frame."""
    x, y, z, w = rotation_xyzw
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"transform rotation {rotation_xyzw} is not a valid quaternion")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    px, py, pz = point
    # v' = v + 2 w (q x v) + 2 q x (q x v), with q = (x, y, z)
    cx, cy, cz = y * pz - z * py, z * px - x * pz, x * py - y * px
    ccx, ccy, ccz = y * cz - z * cy, z * cx - x * cz, x * cy - y * cx
    return (
        px + 2.0 * (w * cx + ccx) + translation[0],
        py + 2.0 * (w * cy + ccy) + translation[1],
        pz + 2.0 * (w * cz + ccz) + translation[2],
    )


class PointTransformer:
    """Looks up the transform of a stamped point into a target frame with tf2_ros (its listener subscribes to
    /tf and /tf_static on `node`) when tf2_ros can be imported; `available` says whether it could."""

    def __init__(self, node: Node) -> None:
        try:
            import tf2_ros
        except ImportError:
            self._tf2 = None
            self._buffer = None
            self._listener = None
            return
        self._tf2 = tf2_ros
        self._buffer = tf2_ros.Buffer()
        self._listener = tf2_ros.TransformListener(self._buffer, node)

    @property
    def available(self) -> bool:
        return self._buffer is not None

    def point_in(self, target_frame: str, msg: PointStamped) -> tuple[float, float, float]:
        """msg's point in `target_frame`, with the latest transform tf2 has (a click is not tied to the
        instant of its stamp). Raises ValueError when tf2_ros is missing or has no such transform."""
        source_frame = msg.header.frame_id
        if self._buffer is None:
            raise ValueError(
                f"point is in frame '{source_frame}', but only points in the camera optical frame "
                f"'{target_frame}' can be projected without tf2_ros (not installed); publish it there"
            )
        try:
            stamped = self._buffer.lookup_transform(target_frame, source_frame, Time())
        except self._tf2.TransformException as error:
            raise ValueError(f"no transform from '{source_frame}' to '{target_frame}': {error}") from error
        transform = stamped.transform
        return transform_point(
            (msg.point.x, msg.point.y, msg.point.z),
            (transform.translation.x, transform.translation.y, transform.translation.z),
            (transform.rotation.x, transform.rotation.y, transform.rotation.z, transform.rotation.w),
        )
