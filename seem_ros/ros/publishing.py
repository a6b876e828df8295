"""One camera's outputs: instances (with 3-D geometry from depth), panoptic, semantic, overlay, markers.

Images nobody subscribes to are not made (overlay, panoptic, semantic, markers); instances always are.
Publishers are lifecycle publishers: they publish only while the node is active.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point, Vector3
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from seem_ros.engine.results import FrameResult
from seem_ros.msg import InstanceMaskArray
from seem_ros.ros.conversions import frame_result_to_msg, overlay_image, panoptic_image, semantic_image
from seem_ros.ros.depth import DepthBuffer, Intrinsics, depth_image_to_metres, object_geometry
from seem_ros.ros.diagnostics import ErrorLog, FrameCounters
from seem_ros.ros.markers import instance_markers
from seem_ros.ros.parameters import NodeSettings

RESULT_QOS = QoSProfile(depth=5)  # reliable, volatile


class CameraOutputs:
    """The publishers of one camera, under its namespace prefix ("" or "front/")."""

    def __init__(self, node: LifecycleNode, prefix: str, settings: NodeSettings) -> None:
        self.settings = settings
        self._node = node
        self.instances = node.create_lifecycle_publisher(InstanceMaskArray, f"{prefix}instances", RESULT_QOS)
        self.panoptic = node.create_lifecycle_publisher(Image, f"{prefix}panoptic", RESULT_QOS)
        self.semantic = node.create_lifecycle_publisher(Image, f"{prefix}semantic", RESULT_QOS)
        self.overlay = node.create_lifecycle_publisher(Image, f"{prefix}overlay", RESULT_QOS)
        self.markers = (
            node.create_lifecycle_publisher(MarkerArray, f"{prefix}markers", RESULT_QOS)
            if settings.publish_markers
            else None
        )

    def destroy(self) -> None:
        for publisher in (self.instances, self.panoptic, self.semantic, self.overlay, self.markers):
            if publisher is not None:
                self._node.destroy_lifecycle_publisher(publisher)

    def publish(
        self,
        result: FrameResult,
        rgb: np.ndarray,
        header: Header,
        camera_info: CameraInfo | None,
        geometry: GeometrySource | None,
    ) -> None:
        """Publish one frame's result on every output somebody listens to (instances always)."""
        settings = self.settings
        height, width = rgb.shape[:2]
        instances = frame_result_to_msg(result, header, width, height)
        if geometry is not None:
            geometry.add_geometry(instances, result)
        self.instances.publish(instances)
        if self.markers is not None and self.markers.get_subscription_count() > 0:
            self.markers.publish(instance_markers(instances, _intrinsics_or_none(camera_info)))
        if settings.publish_panoptic and self.panoptic.get_subscription_count() > 0 and result.panoptic.size:
            self.panoptic.publish(panoptic_image(result, header, settings.panoptic_encoding))
        if settings.publish_semantic and self.semantic.get_subscription_count() > 0 and result.semantic.size:
            self.semantic.publish(semantic_image(result, header))
        if settings.publish_overlay and self.overlay.get_subscription_count() > 0:
            self.overlay.publish(
                overlay_image(rgb, result, header, settings.overlay_alpha, settings.overlay_labels)
            )


class GeometrySource:
    """3-D centroid and extent of instances from the depth image paired with their colour image."""

    def __init__(
        self,
        depth: DepthBuffer,
        max_time_difference: float,
        camera_info: CameraInfo | None,
        depth_info: CameraInfo | None,
        errors: ErrorLog,
        counters: FrameCounters,
    ) -> None:
        self._depth = depth
        self._tolerance = max_time_difference
        self._info = depth_info or camera_info
        self._errors = errors
        self._counters = counters

    def add_geometry(self, msg: InstanceMaskArray, result: FrameResult) -> None:
        """Fill has_3d, centroid and extent of msg.instances from the depth image paired with msg.header."""
        depth_msg = self._depth.match(msg.header.stamp, self._tolerance, wait=self._tolerance)
        if depth_msg is None:
            return
        info = self._info
        try:
            if info is None:
                raise ValueError("no CameraInfo on depth/camera_info or camera_info yet")
            intrinsics = Intrinsics.from_camera_info(info)
            depth = depth_image_to_metres(depth_msg)
            if depth.shape != (msg.height, msg.width):
                raise ValueError(
                    f"depth image is {depth.shape[1]}x{depth.shape[0]}, the colour image {msg.width}x"
                    f"{msg.height}: it must be aligned to the colour image"
                )
            if info.width and (info.height, info.width) != depth.shape:
                raise ValueError(
                    f"CameraInfo is for {info.width}x{info.height} images, the depth image is "
                    f"{depth.shape[1]}x{depth.shape[0]}"
                )
        except ValueError as error:
            self._errors.input_error("depth", str(error))
            return
        self._counters.with_depth += 1
        for instance_msg, instance in zip(msg.instances, result.instances, strict=True):
            geometry = object_geometry(instance.mask, depth, intrinsics, bbox=instance.bbox)
            if geometry is None:
                continue
            (cx, cy, cz), (ex, ey, ez) = geometry.centroid, geometry.extent
            instance_msg.has_3d = True
            instance_msg.centroid = Point(x=cx, y=cy, z=cz)
            instance_msg.extent = Vector3(x=ex, y=ey, z=ez)


def _intrinsics_or_none(info: CameraInfo | None) -> Intrinsics | None:
    try:
        return None if info is None else Intrinsics.from_camera_info(info)
    except ValueError:
        return None
