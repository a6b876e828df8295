"""seem_node: segments a camera stream with SEEM and publishes masks, label images and an overlay.

Run: `seem_node --ros-args --params-file config/seem.yaml -r image:=/camera/color/image_raw`

Subscribes (relative names, remap them; pixels are x = column, y = row of the camera images):
  image            sensor_msgs/Image, sensor-data QoS depth 1 (REP-2003); or, with `compressed: true`,
  image/compressed sensor_msgs/CompressedImage
  camera_info      sensor_msgs/CameraInfo, to project `clicked_point` (and for depth, see below)
  prompt           std_msgs/String: an operator command, typed or spoken ("find the red cup", "also the
                   bottle", "forget number 2", "clear", "look for cups and chairs", "box: x0, y0, x1, y1";
                   the grammar is seem_ros.engine.commands); each is answered on prompt_feedback.
  clicked_point    geometry_msgs/PointStamped in the camera optical frame (metres), e.g. RViz "Publish Point",
                   projected through the CameraInfo; points in other frames are refused (no tf here)
  click_pixel      geometry_msgs/PointStamped with x, y in image pixels; z < 0 marks a negative click
  scribble         geometry_msgs/PolygonStamped: a stroke through the points' (x, y) pixels, 5 pixels wide
                   (not closed); z < 0 on the first point marks a negative scribble, which refines the
                   target under that point (else the newest target)
  prompt_mask      sensor_msgs/Image mono8 of the camera images' size: its nonzero pixels mark a new target
  referring_image  sensor_msgs/Image (rgb8, bgr8, mono8, ...) and referring_mask (mono8 of the same size,
  referring_mask   nonzero = the object): find that object in the camera images. The two are paired by
                   identical header.stamp, in either order; each pair becomes one target.
  depth            with `use_depth: true`: sensor_msgs/Image, 16UC1 millimetres or 32FC1 metres, aligned to
  depth/camera_info  the colour image (same size), and its CameraInfo (until one arrives, camera_info is
                   used). Each colour image is paired with the depth image nearest in stamp within
                   `depth_max_time_difference`; without one it gets no 3-D information (no error).
Publishes (every message stamped with the header of the image it came from):
  instances        seem_ros/InstanceMaskArray, reliable; with depth, instances carry has_3d, centroid (median
                   of the mask's back-projected depth pixels) and extent (5-95 percentile spread), metres
  panoptic         sensor_msgs/Image, segment ids (32SC1 or mono16), only while subscribed
  semantic         sensor_msgs/Image, class ids (mono16, 65535 = none), only while subscribed
  overlay          sensor_msgs/Image rgb8, the input with instances drawn, only while subscribed
  markers          visualization_msgs/MarkerArray with `publish_markers: true`, only while subscribed: a label
                   per instance and, with depth, a box (seem_ros.ros.markers)
  prompt_feedback  seem_ros/PromptFeedback, reliable, transient local: for every prompt, what was understood
                   (track ids created and removed, the targets and vocabulary now) or why it was refused;
                   one with action "ready" at start
  /diagnostics     diagnostic_msgs/DiagnosticArray
Services: set_vocabulary (seem_ros/SetVocabulary), clear_prompts and reset_tracking (std_srvs/Trigger),
  segment_image (seem_ros/SegmentImage).

Only the newest image is kept, still serialized (only the image inference takes is deserialized):
inference runs in its own callback group, so the image subscription never waits for it; images replaced
before inference got to them, or older than `max_image_age`, are dropped and counted in diagnostics.
"""

from __future__ import annotations

from seem_ros.allocator import keep_freed_memory

# Before numpy, torch and rclpy are imported: threads they start would otherwise get malloc arenas of their
# own, which the inference thread could then be given instead of the main heap (see seem_ros.allocator).
keep_freed_memory()

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped, PolygonStamped, Vector3
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from rclpy.serialization import deserialize_message
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from seem_ros.engine.api import FrameSegmenter
from seem_ros.engine.commands import CommandOutcome, run_prompt
from seem_ros.engine.prompts import ReferringImagePrompt, ScribblePrompt, Target
from seem_ros.engine.results import FrameResult
from seem_ros.msg import InstanceMaskArray, PromptFeedback
from seem_ros.ros.conversions import (
    compressed_to_rgb,
    frame_result_to_msg,
    image_to_array,
    image_to_rgb,
    overlay_image,
    panoptic_image,
    project_point,
    semantic_image,
)
from seem_ros.ros.depth import DepthBuffer, Intrinsics, depth_image_to_metres, object_geometry
from seem_ros.ros.frames import PointTransformer
from seem_ros.ros.markers import instance_markers
from seem_ros.ros.node_runner import OrderlyMultiThreadedExecutor, run_node, sensor_qos
from seem_ros.ros.parameters import NodeSettings, declare_and_read
from seem_ros.srv import SegmentImage, SetVocabulary

NODE_NAME = "seem_node"

# REP-2003: subscribe to sensor data best effort; depth 1 because only the newest image matters.
IMAGE_QOS = sensor_qos(1)
# Depth images are buffered (DepthBuffer) to pair them with colour images by stamp.
DEPTH_QOS = sensor_qos(5)
RESULT_QOS = QoSProfile(depth=5)  # reliable, volatile
COMMAND_QOS = QoSProfile(depth=10)  # reliable, volatile
# Reliable; late joiners (a speech node started later) get the newest answers, with the vocabulary in them.
FEEDBACK_QOS = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL)
FEEDBACK_PROMPT_CHARACTERS = 200
MASK_ENCODINGS = ("mono8", "8UC1")


@dataclass
class FrameCounters:
    """Totals since start, reported in diagnostics."""

    received: int = 0
    processed: int = 0
    dropped_replaced: int = 0
    dropped_stale: int = 0
    input_errors: int = 0
    inference_errors: int = 0
    with_depth: int = 0
    last_inference_s: float = 0.0


class LatestFrame:
    """A one-slot buffer of serialized images: put() replaces an unprocessed frame (counted as dropped),
    take() empties it."""

    def __init__(self, counters: FrameCounters) -> None:
        self._lock = threading.Lock()
        self._frame: bytes | None = None
        self._counters = counters

    def put(self, frame: bytes) -> None:
        with self._lock:
            if self._frame is not None:
                self._counters.dropped_replaced += 1
            self._frame = frame
            self._counters.received += 1

    def take(self) -> bytes | None:
        with self._lock:
            frame, self._frame = self._frame, None
            return frame


class StampedPairs:
    """Pairs messages of two topics (side 0 and 1) that carry identical header stamps, whichever arrives
    first; keeps the last `capacity` unpaired messages of each side."""

    def __init__(self, capacity: int = 4) -> None:
        self._capacity = capacity
        self._waiting: tuple[dict[tuple[int, int], Image], dict[tuple[int, int], Image]] = ({}, {})

    def add(self, side: int, msg: Image) -> tuple[Image, Image] | None:
        """Returns the completed (side 0, side 1) pair, or None while msg waits for its partner."""
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        partner = self._waiting[1 - side].pop(stamp, None)
        if partner is None:
            waiting = self._waiting[side]
            waiting[stamp] = msg
            while len(waiting) > self._capacity:
                waiting.pop(next(iter(waiting)))
            return None
        return (msg, partner) if side == 0 else (partner, msg)


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
        self._last_stage_times: dict[str, float] = {}
        self._camera_info: CameraInfo | None = None
        self._depth_info: CameraInfo | None = None
        self._depth = DepthBuffer()
        self._image_size: tuple[int, int] | None = None
        self._references = StampedPairs()
        self._point_transformer = PointTransformer(self)
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
        if self.settings.publish_markers:
            self._markers_pub = self.create_publisher(MarkerArray, "markers", RESULT_QOS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
        self._feedback_pub = self.create_publisher(PromptFeedback, "prompt_feedback", FEEDBACK_QOS)

        self._frame_ready = self.create_guard_condition(self._process_latest, callback_group=inference_group)
        self._image_type = CompressedImage if self.settings.compressed else Image
        self._image_topic = "image/compressed" if self.settings.compressed else "image"
        # Images arrive serialized and only the one inference takes is deserialized: at 30 Hz in and a few
        # Hz out, the Python work (and GIL time) of the replaced frames is saved.
        self.create_subscription(
            self._image_type,
            self._image_topic,
            self._on_image,
            IMAGE_QOS,
            callback_group=input_group,
            raw=True,
        )
        self.create_subscription(
            CameraInfo,
            "camera_info",
            self._guarded(self._on_camera_info, "camera_info"),
            IMAGE_QOS,
            callback_group=input_group,
        )
        if self.settings.use_depth:
            self.create_subscription(Image, "depth", self._depth.put, DEPTH_QOS, callback_group=input_group)
            self.create_subscription(
                CameraInfo, "depth/camera_info", self._on_depth_info, IMAGE_QOS, callback_group=input_group
            )
        self.create_subscription(
            String,
            "prompt",
            self._guarded(self._on_prompt, "prompt"),
            COMMAND_QOS,
            callback_group=prompt_group,
        )
        self.create_subscription(
            PointStamped,
            "clicked_point",
            self._guarded(self._on_clicked_point, "clicked_point"),
            COMMAND_QOS,
            callback_group=prompt_group,
        )
        self.create_subscription(
            PointStamped,
            "click_pixel",
            self._guarded(self._on_click_pixel, "click_pixel"),
            COMMAND_QOS,
            callback_group=prompt_group,
        )
        self.create_subscription(
            PolygonStamped,
            "scribble",
            self._guarded(self._on_scribble, "scribble"),
            COMMAND_QOS,
            callback_group=prompt_group,
        )
        self.create_subscription(
            Image,
            "prompt_mask",
            self._guarded(self._on_prompt_mask, "prompt_mask"),
            COMMAND_QOS,
            callback_group=prompt_group,
        )
        self.create_subscription(
            Image,
            "referring_image",
            self._guarded(self._on_referring_image, "referring_image"),
            COMMAND_QOS,
            callback_group=prompt_group,
        )
        self.create_subscription(
            Image,
            "referring_mask",
            self._guarded(self._on_referring_mask, "referring_mask"),
            COMMAND_QOS,
            callback_group=prompt_group,
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

        self._camera_name = self.settings.camera_name or camera_name_of_topic(
            self.resolve_topic_name(self._image_topic)
        )
        described = ", ".join(f"{key} {value}" for key, value in self._description.items())
        topic = self.resolve_topic_name(self._image_topic)
        self.get_logger().info(f"ready: {described}; camera '{self._camera_name}' on {topic}")
        self._publish_feedback("", CommandOutcome(True, "Ready."), action="ready")

    # Input
    def _on_image(self, serialized: bytes) -> None:
        self._latest.put(serialized)
        self._frame_ready.trigger()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_depth_info(self, msg: CameraInfo) -> None:
        self._depth_info = msg

    def _guarded(self, callback: Callable[[Any], None], what: str) -> Callable[[Any], None]:
        """The callback, with any unexpected exception logged and counted as bad input instead of ending
        the executor (and with it the node)."""

        def guarded(msg: Any) -> None:
            try:
                callback(msg)
            except Exception as error:
                self._input_error(what, f"{type(error).__name__}: {error}")

        return guarded

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
        serialized = self._latest.take()
        if serialized is None:
            return
        self._last_start = time.monotonic()
        try:
            frame = deserialize_message(serialized, self._image_type)
        except Exception as error:  # a foreign publisher's bytes; DDS type matching should prevent it
            self._input_error(f"image on {self._image_topic}", f"cannot deserialize: {error}")
            return
        if self._is_stale(frame.header):
            self._counters.dropped_stale += 1
            return
        try:
            limit = self.settings.segmenter.max_image_pixels
            if isinstance(frame, CompressedImage):
                rgb = compressed_to_rgb(frame, max_pixels=limit)
            else:
                rgb = image_to_rgb(frame, max_pixels=limit)
        except ValueError as error:
            self._input_error(f"image on {self._image_topic}", str(error))
            return
        self._image_size = rgb.shape[:2]
        result = self._run_segmenter(rgb)
        if result is None or not self.context.ok():
            return
        try:
            self._publish(result, rgb, frame.header)
        except Exception:
            if self.context.ok():
                raise  # a real publishing failure; during shutdown it is expected and ignored

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
        self._last_stage_times = dict(result.timings)
        return result

    def _publish(self, result: FrameResult, rgb: np.ndarray, header: Header) -> None:
        height, width = rgb.shape[:2]
        instances = frame_result_to_msg(result, header, width, height)
        if self.settings.use_depth:
            self._add_geometry(instances, result)
        self._instances_pub.publish(instances)
        if self.settings.publish_markers and self._markers_pub.get_subscription_count() > 0:
            self._markers_pub.publish(instance_markers(instances, _intrinsics_or_none(self._camera_info)))
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

    def _add_geometry(self, msg: InstanceMaskArray, result: FrameResult) -> None:
        """Fill has_3d, centroid and extent of msg.instances from the depth image paired with msg.header."""
        tolerance = self.settings.depth_max_time_difference
        depth_msg = self._depth.match(msg.header.stamp, tolerance, wait=tolerance)
        if depth_msg is None:
            return
        info = self._depth_info or self._camera_info
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
            self._input_error("depth", str(error))
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

    # Prompts
    def _on_prompt(self, msg: String) -> None:
        """Carry out an operator command (grammar: seem_ros.engine.commands) and answer on prompt_feedback."""
        with self._segmenter_lock:
            outcome = run_prompt(msg.data, {self._camera_name: self._segmenter})
        if outcome.accepted and outcome.command is not None:
            self.get_logger().info(f"prompt: {outcome.command.describe()}: {outcome.message}")
        else:
            self._input_error("prompt", f"{msg.data!r}: {outcome.message}")
        action = outcome.command.action if outcome.accepted and outcome.command is not None else ""
        self._publish_feedback(msg.data, outcome, action)

    def _publish_feedback(self, prompt: str, outcome: CommandOutcome, action: str) -> None:
        with self._segmenter_lock:
            tracks = self._segmenter.tracks()
            vocabulary = self._segmenter.vocabulary_names()
        self._feedback_pub.publish(
            PromptFeedback(
                header=Header(stamp=self.get_clock().now().to_msg()),
                prompt=prompt[:FEEDBACK_PROMPT_CHARACTERS],
                accepted=outcome.accepted,
                action=action,
                camera=outcome.camera,
                message=outcome.message,
                created_track_ids=list(outcome.created),
                removed_track_ids=list(outcome.removed),
                track_ids=[track.track_id for track in tracks],
                track_texts=[track.text for track in tracks],
                vocabulary=list(vocabulary),
            )
        )

    def _on_click_pixel(self, msg: PointStamped) -> None:
        self._add_click(msg.point.x, msg.point.y, positive=msg.point.z >= 0.0, source="click_pixel")

    def _on_clicked_point(self, msg: PointStamped) -> None:
        info = self._camera_info
        if info is None:
            self._input_error("clicked_point", "no CameraInfo received on camera_info yet")
            return
        point = (msg.point.x, msg.point.y, msg.point.z)
        try:
            if msg.header.frame_id != info.header.frame_id:
                point = self._point_transformer.point_in(info.header.frame_id, msg)
            x, y = project_point(info, *point)
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

    def _on_scribble(self, msg: PolygonStamped) -> None:
        points = tuple((float(point.x), float(point.y)) for point in msg.polygon.points)
        positive = not (points and msg.polygon.points[0].z < 0.0)
        try:
            scribble = ScribblePrompt(points, positive=positive)
            self._check_inside(points)
            with self._segmenter_lock:
                self._segmenter.add_prompt(scribble)
        except ValueError as error:
            self._input_error("scribble", str(error))
            return
        self.get_logger().info(
            f"{'positive' if positive else 'negative'} scribble through {len(points)} points from "
            f"({points[0][0]:.1f}, {points[0][1]:.1f})"
        )

    def _on_prompt_mask(self, msg: Image) -> None:
        try:
            mask = _binary_mask(msg)
            if self._image_size is None:
                raise ValueError("no camera image received yet, so the mask size cannot be checked")
            if mask.shape != self._image_size:
                raise ValueError(
                    f"mask is {mask.shape[1]}x{mask.shape[0]}, the camera images are "
                    f"{self._image_size[1]}x{self._image_size[0]}: it must have their size"
                )
            with self._segmenter_lock:
                self._segmenter.add_mask(mask)
        except ValueError as error:
            self._input_error("prompt_mask", str(error))
            return
        self.get_logger().info(f"mask prompt of {int(mask.sum())} pixels")

    def _on_referring_image(self, msg: Image) -> None:
        self._on_reference(self._references.add(0, msg))

    def _on_referring_mask(self, msg: Image) -> None:
        self._on_reference(self._references.add(1, msg))

    def _on_reference(self, pair: tuple[Image, Image] | None) -> None:
        if pair is None:
            return
        image_msg, mask_msg = pair
        try:
            rgb = np.array(image_to_rgb(image_msg), dtype=np.uint8, copy=True)
            mask = _binary_mask(mask_msg)
            with self._segmenter_lock:
                self._add_target(Target(reference=ReferringImagePrompt(rgb, mask)))
        except ValueError as error:
            self._input_error("referring_image", str(error))
            return
        self.get_logger().info(
            f"referring image {rgb.shape[1]}x{rgb.shape[0]} with a mask of {int(mask.sum())} pixels"
        )

    def _check_inside(self, points: tuple[tuple[float, float], ...]) -> None:
        """Raise ValueError if a pixel lies outside the camera images (not checked before the first one)."""
        if self._image_size is None:
            return
        height, width = self._image_size
        outside = [(x, y) for x, y in points if not (0.0 <= x < width and 0.0 <= y < height)]
        if outside:
            raise ValueError(f"point {outside[0]} is outside the {width}x{height} camera images")

    def _add_target(self, target: Target) -> None:
        """Track a new target (call with the segmenter lock held)."""
        self._segmenter.add_target(target)

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
            self._input_error("set_vocabulary request", str(error))
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
            rgb = image_to_rgb(request.image, max_pixels=self.settings.segmenter.max_image_pixels)
            with self._segmenter_lock:
                result = self._segmenter.segment_once(rgb, request.text.strip())
        except ValueError as error:
            self._input_error("segment_image request", str(error))
            response.success, response.message = False, str(error)
            return response
        except Exception as error:  # the service answers; the node keeps running
            self._counters.inference_errors += 1
            self._last_inference_error = f"{type(error).__name__}: {error}"
            response.success, response.message = False, f"inference failed: {self._last_inference_error}"
            return response
        height, width = rgb.shape[:2]
        response.result = frame_result_to_msg(result, request.image.header, width, height)
        response.success = True
        response.message = f"{len(result.instances)} instances, {len(result.segments)} segments"
        return response

    # Diagnostics
    def _publish_diagnostics(self) -> None:
        if not self.context.ok():
            return
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
            **{key: str(value) for key, value in self._segmenter.describe().items()},
            "frames_received": now.received,
            "frames_processed": now.processed,
            "frames_dropped_replaced": now.dropped_replaced,
            "frames_dropped_stale": now.dropped_stale,
            "input_errors": now.input_errors,
            "inference_errors": now.inference_errors,
            "processed_per_second": f"{(now.processed - last.processed) / period:.2f}",
            "last_inference_ms": f"{now.last_inference_s * 1e3:.1f}",
            **{
                f"last_{stage}_ms": f"{seconds * 1e3:.1f}"
                for stage, seconds in self._last_stage_times.items()
            },
        }
        if self.settings.use_depth:
            values["frames_with_depth"] = now.with_depth
        status.values = [KeyValue(key=key, value=str(value)) for key, value in values.items()]
        self._reported = FrameCounters(**vars(now))
        self._diagnostics_pub.publish(
            DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status])
        )


def camera_name_of_topic(topic: str) -> str:
    """The camera name a topic implies: its first part ("/front/color/image_raw" -> "front"); "" for a
    topic at the root ("/image")."""
    parts = [part for part in topic.split("/") if part]
    return parts[0] if len(parts) > 1 else ""


def _binary_mask(msg: Image) -> np.ndarray:
    """(H, W) bool: the nonzero pixels of a mono8 mask image."""
    if msg.encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask encoding must be one of {', '.join(MASK_ENCODINGS)}, got {msg.encoding!r}")
    return image_to_array(msg) != 0


def _intrinsics_or_none(info: CameraInfo | None) -> Intrinsics | None:
    try:
        return None if info is None else Intrinsics.from_camera_info(info)
    except ValueError:
        return None


def _build_segmenter(settings: NodeSettings) -> FrameSegmenter:
    from seem_ros.engine import build_segmenter

    return build_segmenter(settings.segmenter)


def main(args: list[str] | None = None) -> int:
    """Console script `seem_node`. Returns 0 after a clean shutdown, 2 for a bad parameter, 1 if the model
    cannot be built."""
    return run_node(
        NODE_NAME, SeemNode, lambda: OrderlyMultiThreadedExecutor(num_threads=4), "the segmenter", args
    )


if __name__ == "__main__":
    raise SystemExit(main())
