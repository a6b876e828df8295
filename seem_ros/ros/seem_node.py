"""seem_node: segments a camera stream with SEEM and publishes masks, label images and an overlay.

Run: `seem_node --ros-args --params-file config/seem.yaml -r image:=/camera/color/image_raw`

Subscribes (relative names, remap them):
  image            sensor_msgs/Image, sensor-data QoS depth 1 (REP-2003); or, with `compressed: true`,
  image/compressed sensor_msgs/CompressedImage
  camera_info      sensor_msgs/CameraInfo, to project `clicked_point`
  prompt           std_msgs/String: "clear" | "vocabulary: a, b; stuff: c, d" | "box: x0, y0, x1, y1" | text
  clicked_point    geometry_msgs/PointStamped in the camera optical frame (metres), e.g. from RViz
  click_pixel      geometry_msgs/PointStamped with x, y in image pixels; z < 0 marks a negative click
Publishes (every message stamped with the header of the image it came from):
  instances        seem_ros/InstanceMaskArray, reliable
  panoptic         sensor_msgs/Image, segment ids (32SC1 or mono16), only while subscribed
  semantic         sensor_msgs/Image, class ids (mono16, 65535 = none), only while subscribed
  overlay          sensor_msgs/Image rgb8, the input with instances drawn, only while subscribed
  /diagnostics     diagnostic_msgs/DiagnosticArray
Services: set_vocabulary (seem_ros/SetVocabulary), clear_prompts and reset_tracking (std_srvs/Trigger),
  segment_image (seem_ros/SegmentImage).

Only the newest image is kept: inference runs in its own callback group, so the image subscription never
waits for it; images replaced before inference got to them, or older than `max_image_age`, are dropped and
counted in diagnostics.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

from seem_ros.engine.api import FrameSegmenter
from seem_ros.engine.results import FrameResult
from seem_ros.msg import InstanceMaskArray
from seem_ros.ros.conversions import (
    compressed_to_rgb,
    frame_result_to_msg,
    image_to_rgb,
    overlay_image,
    panoptic_image,
    parse_prompt,
    project_point,
    semantic_image,
)
from seem_ros.ros.parameters import NodeSettings, ParameterError, declare_and_read
from seem_ros.srv import SegmentImage, SetVocabulary

NODE_NAME = "seem_node"

# REP-2003: subscribe to sensor data best effort; depth 1 because only the newest image matters.
IMAGE_QOS = QoSProfile(
    history=qos_profile_sensor_data.history,
    depth=1,
    reliability=qos_profile_sensor_data.reliability,
    durability=qos_profile_sensor_data.durability,
)
RESULT_QOS = QoSProfile(depth=5)  # reliable, volatile
COMMAND_QOS = QoSProfile(depth=10)  # reliable, volatile


@dataclass
class FrameCounters:
    """Totals since start, reported in diagnostics."""

    received: int = 0
    processed: int = 0
    dropped_replaced: int = 0
    dropped_stale: int = 0
    input_errors: int = 0
    inference_errors: int = 0
    last_inference_s: float = 0.0


class LatestFrame:
    """A one-slot buffer: put() replaces an unprocessed frame (counted as dropped), take() empties it."""

    def __init__(self, counters: FrameCounters) -> None:
        self._lock = threading.Lock()
        self._frame: Image | CompressedImage | None = None
        self._counters = counters

    def put(self, frame: Image | CompressedImage) -> None:
        with self._lock:
            if self._frame is not None:
                self._counters.dropped_replaced += 1
            self._frame = frame
            self._counters.received += 1

    def take(self) -> Image | CompressedImage | None:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


class SeemNode(Node):
    """The SEEM segmentation node. `segmenter` replaces the one built from parameters (embedding, tests)."""

    def __init__(self, segmenter: FrameSegmenter | None = None, node_name: str = NODE_NAME) -> None:
        super().__init__(node_name)
        self.settings: NodeSettings = declare_and_read(self)
        if segmenter is None:
            segmenter = _build_segmenter(self.settings)
        self._segmenter = segmenter
        self._segmenter_lock = threading.Lock()
        self._description = {key: str(value) for key, value in segmenter.describe().items()}
        self._counters = FrameCounters()
        self._latest = LatestFrame(self._counters)
        self._last_start = 0.0
        self._camera_info: CameraInfo | None = None
        self._last_inference_error = ""
        self._reported = FrameCounters()
        self._last_error_log: dict[str, float] = {}

        input_group = MutuallyExclusiveCallbackGroup()
        prompt_group = MutuallyExclusiveCallbackGroup()
        service_group = MutuallyExclusiveCallbackGroup()
        inference_group = MutuallyExclusiveCallbackGroup()

        self._instances_pub = self.create_publisher(InstanceMaskArray, "instances", RESULT_QOS)
        self._panoptic_pub = self.create_publisher(Image, "panoptic", RESULT_QOS)
        self._semantic_pub = self.create_publisher(Image, "semantic", RESULT_QOS)
        self._overlay_pub = self.create_publisher(Image, "overlay", RESULT_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)

        self._frame_ready = self.create_guard_condition(self._process_latest, callback_group=inference_group)
        if self.settings.compressed:
            self._image_topic = "image/compressed"
            self.create_subscription(
                CompressedImage, self._image_topic, self._on_image, IMAGE_QOS, callback_group=input_group
            )
        else:
            self._image_topic = "image"
            self.create_subscription(
                Image, self._image_topic, self._on_image, IMAGE_QOS, callback_group=input_group
            )
        self.create_subscription(
            CameraInfo, "camera_info", self._on_camera_info, IMAGE_QOS, callback_group=input_group
        )
        self.create_subscription(String, "prompt", self._on_prompt, COMMAND_QOS, callback_group=prompt_group)
        self.create_subscription(
            PointStamped, "clicked_point", self._on_clicked_point, COMMAND_QOS, callback_group=prompt_group
        )
        self.create_subscription(
            PointStamped, "click_pixel", self._on_click_pixel, COMMAND_QOS, callback_group=prompt_group
        )
        self.create_service(
            SetVocabulary, "set_vocabulary", self._set_vocabulary, callback_group=service_group
        )
        self.create_service(Trigger, "clear_prompts", self._clear_prompts, callback_group=service_group)
        self.create_service(Trigger, "reset_tracking", self._reset_tracking, callback_group=service_group)
        self.create_service(SegmentImage, "segment_image", self._segment_image, callback_group=service_group)
        self.create_timer(
            self.settings.diagnostics_period, self._publish_diagnostics, callback_group=input_group
        )

        described = ", ".join(f"{key} {value}" for key, value in self._description.items())
        self.get_logger().info(
            f"ready: {described}; listening on {self.resolve_topic_name(self._image_topic)}"
        )

    # Input
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._latest.put(msg)
        self._frame_ready.trigger()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _input_error(self, what: str, reason: str) -> None:
        """Count bad input and log it, at most once per error_log_period for each input (`what`)."""
        self._counters.input_errors += 1
        now = time.monotonic()
        last = self._last_error_log.get(what)
        if last is None or now - last >= self.settings.error_log_period:
            self._last_error_log[what] = now
            self.get_logger().warning(f"ignored {what}: {reason}")

    # Inference
    def _process_latest(self) -> None:
        if self.settings.max_rate > 0.0:
            wait = self._last_start + 1.0 / self.settings.max_rate - time.monotonic()
            if wait > 0.0:
                time.sleep(wait)
        frame = self._latest.take()
        if frame is None:
            return
        self._last_start = time.monotonic()
        if self._is_stale(frame.header):
            self._counters.dropped_stale += 1
            return
        try:
            rgb = compressed_to_rgb(frame) if isinstance(frame, CompressedImage) else image_to_rgb(frame)
        except ValueError as error:
            self._input_error(f"image on {self._image_topic}", str(error))
            return
        result = self._run_segmenter(rgb)
        if result is not None:
            self._publish(result, rgb, frame.header)

    def _is_stale(self, header: Header) -> bool:
        if self.settings.max_image_age <= 0.0 or (header.stamp.sec == 0 and header.stamp.nanosec == 0):
            return False
        age = self.get_clock().now() - Time.from_msg(header.stamp, clock_type=self.get_clock().clock_type)
        return age.nanoseconds * 1e-9 > self.settings.max_image_age

    def _run_segmenter(self, rgb: np.ndarray) -> FrameResult | None:
        start = time.perf_counter()
        try:
            with self._segmenter_lock:
                result = self._segmenter.process(rgb)
        except Exception as error:  # the node keeps running; the failure shows in logs and diagnostics
            self._counters.inference_errors += 1
            self._last_inference_error = f"{type(error).__name__}: {error}"
            self.get_logger().error(
                f"inference failed: {self._last_inference_error}",
                throttle_duration_sec=self.settings.error_log_period or None,
            )
            return None
        self._counters.processed += 1
        self._counters.last_inference_s = time.perf_counter() - start
        return result

    def _publish(self, result: FrameResult, rgb: np.ndarray, header: Header) -> None:
        height, width = rgb.shape[:2]
        self._instances_pub.publish(frame_result_to_msg(result, header, width, height))
        if (
            self.settings.publish_panoptic
            and self._panoptic_pub.get_subscription_count() > 0
            and result.panoptic.size
        ):
            self._panoptic_pub.publish(panoptic_image(result, header, self.settings.panoptic_encoding))
        if (
            self.settings.publish_semantic
            and self._semantic_pub.get_subscription_count() > 0
            and result.semantic.size
        ):
            self._semantic_pub.publish(semantic_image(result, header))
        if self.settings.publish_overlay and self._overlay_pub.get_subscription_count() > 0:
            self._overlay_pub.publish(
                overlay_image(rgb, result, header, self.settings.overlay_alpha, self.settings.overlay_labels)
            )

    # Prompts
    def _on_prompt(self, msg: String) -> None:
        try:
            command = parse_prompt(msg.data)
            with self._segmenter_lock:
                if command.kind == "clear":
                    self._segmenter.clear_prompts()
                elif command.kind == "vocabulary":
                    self._segmenter.set_vocabulary(command.names, command.thing_names)
                elif command.kind == "box":
                    self._segmenter.add_box(*command.box)
                else:
                    self._segmenter.set_text_prompt(command.text)
        except ValueError as error:
            self._input_error("prompt", f"{msg.data!r}: {error}")
            return
        self.get_logger().info(f"prompt: {command.describe()}")

    def _on_click_pixel(self, msg: PointStamped) -> None:
        self._add_click(msg.point.x, msg.point.y, positive=msg.point.z >= 0.0, source="click_pixel")

    def _on_clicked_point(self, msg: PointStamped) -> None:
        info = self._camera_info
        if info is None:
            self._input_error("clicked_point", "no CameraInfo received on camera_info yet")
            return
        if msg.header.frame_id != info.header.frame_id:
            self._input_error(
                "clicked_point",
                f"point is in frame '{msg.header.frame_id}', but only points in the camera optical frame "
                f"'{info.header.frame_id}' can be projected (this node does not use tf); publish it there",
            )
            return
        try:
            x, y = project_point(info, msg.point.x, msg.point.y, msg.point.z)
        except ValueError as error:
            self._input_error("clicked_point", str(error))
            return
        self._add_click(x, y, positive=True, source="clicked_point")

    def _add_click(self, x: float, y: float, positive: bool, source: str) -> None:
        try:
            with self._segmenter_lock:
                self._segmenter.add_click(x, y, positive)
        except ValueError as error:
            self._input_error(source, str(error))
            return
        self.get_logger().info(f"{'positive' if positive else 'negative'} click at ({x:.1f}, {y:.1f})")

    # Services
    def _set_vocabulary(self, request: SetVocabulary.Request, response: SetVocabulary.Response):
        names = [name.strip() for name in request.names]
        thing_names = [name.strip() for name in request.thing_names]
        try:
            if not names or not all(names):
                raise ValueError(
                    f"names must be a non-empty list of non-empty strings, got {request.names!r}"
                )
            unknown = sorted(set(thing_names) - set(names))
            if unknown:
                raise ValueError(f"thing_names {unknown} are not in names")
            with self._segmenter_lock:
                self._segmenter.set_vocabulary(names, thing_names)
        except ValueError as error:
            response.success, response.message = False, str(error)
            return response
        things = len(thing_names) if thing_names else len(names)
        response.success, response.message = True, f"vocabulary of {len(names)} names, {things} things"
        self.get_logger().info(f"set_vocabulary: {response.message}: {', '.join(names)}")
        return response

    def _clear_prompts(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._segmenter_lock:
            self._segmenter.clear_prompts()
        response.success, response.message = True, "prompts cleared"
        return response

    def _reset_tracking(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._segmenter_lock:
            self._segmenter.reset_tracking()
        response.success, response.message = True, "tracking reset"
        return response

    def _segment_image(self, request: SegmentImage.Request, response: SegmentImage.Response):
        try:
            rgb = image_to_rgb(request.image)
            if request.text.strip():
                with self._segmenter_lock:
                    self._segmenter.set_text_prompt(request.text.strip())
        except ValueError as error:
            response.success, response.message = False, str(error)
            return response
        result = self._run_segmenter(rgb)
        if result is None:
            response.success, response.message = False, f"inference failed: {self._last_inference_error}"
            return response
        height, width = rgb.shape[:2]
        response.result = frame_result_to_msg(result, request.image.header, width, height)
        response.success = True
        response.message = f"{len(result.instances)} instances, {len(result.segments)} segments"
        return response

    # Diagnostics
    def _publish_diagnostics(self) -> None:
        now, last = self._counters, self._reported
        period = self.settings.diagnostics_period
        status = DiagnosticStatus(
            name=f"{self.get_name()}: segmentation",
            hardware_id=self._description.get("device", ""),
            level=DiagnosticStatus.OK,
            message="ok",
        )
        if now.inference_errors > last.inference_errors:
            status.level, status.message = (
                DiagnosticStatus.ERROR,
                f"inference failed: {self._last_inference_error}",
            )
        elif now.received == last.received:
            status.level = DiagnosticStatus.WARN
            status.message = f"no images on {self.resolve_topic_name(self._image_topic)}"
        values = {
            **self._description,
            "frames_received": now.received,
            "frames_processed": now.processed,
            "frames_dropped_replaced": now.dropped_replaced,
            "frames_dropped_stale": now.dropped_stale,
            "input_errors": now.input_errors,
            "inference_errors": now.inference_errors,
            "processed_per_second": f"{(now.processed - last.processed) / period:.2f}",
            "last_inference_ms": f"{now.last_inference_s * 1e3:.1f}",
        }
        status.values = [KeyValue(key=key, value=str(value)) for key, value in values.items()]
        self._reported = FrameCounters(**vars(now))
        self._diagnostics_pub.publish(
            DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status])
        )


def _build_segmenter(settings: NodeSettings) -> FrameSegmenter:
    from seem_ros.engine import build_segmenter

    return build_segmenter(settings.segmenter_config())


def main(args: list[str] | None = None) -> int:
    """Console script `seem_node`. Returns 0 after a clean shutdown, 2 for a bad parameter, 1 if the model
    cannot be built."""
    rclpy.init(args=args)
    logger = rclpy.logging.get_logger(NODE_NAME)
    try:
        node = SeemNode()
    except ParameterError as error:
        logger.fatal(f"bad parameter, not starting: {error}")
        rclpy.try_shutdown()
        return 2
    except Exception as error:
        logger.fatal(f"could not build the segmenter: {type(error).__name__}: {error}")
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
