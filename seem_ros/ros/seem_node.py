"""seem_node: segments one or more camera streams with SEEM and publishes masks, label images and overlays.

Run: `seem_node --ros-args --params-file config/seem.yaml -r image:=/camera/color/image_raw`

A managed (lifecycle) node: `configure` builds the model (and exports or loads the ONNX graphs), `activate`
subscribes and starts publishing, `deactivate` stops both and keeps the model, `cleanup` frees it. With
`autostart` (the default) it configures and activates itself at start; with `autostart: false` it waits
for `ros2 lifecycle set /seem_node configure` (and `activate`).

One model serves every camera in `cameras`, each with its own prompts, tracks and vocabulary (an engine
session) and the topics and services below under its namespace (`cameras: [front, wrist]` gives
front/image, front/prompt, front/instances, front/set_vocabulary, ...). Without `cameras`, one camera uses
the names below as they are. The newest frame of each camera is kept, still serialized; each inference
step takes the frames waiting longest (at most `max_batch_cameras`), so under load no camera starves, and
runs them together (one batched image-encoder pass for frames of one size; one decoder pass for frames
of one prompt layout where that pays, see `SeemPredictor.predict_frames`). Frames replaced before
inference got to them, or older than `max_image_age`, are dropped and counted per camera in diagnostics.

Subscribes, per camera (relative names, remap them; pixels are x = column, y = row of the camera images):
  image            sensor_msgs/Image, sensor-data QoS depth 1 (REP-2003); or, with `compressed: true`,
  image/compressed sensor_msgs/CompressedImage
  camera_info      sensor_msgs/CameraInfo, to project `clicked_point` (and for depth, see below)
  prompt           std_msgs/String: an operator command, typed or spoken ("find the red cup", "also the
                   bottle", "forget number 2", "clear", "look for cups and chairs", "box: x0, y0, x1, y1";
                   the grammar is seem_ros.engine.commands); each is answered on prompt_feedback. With
                   named cameras, the node's own `prompt` takes commands for any of them ("in the wrist
                   camera find the cup"; naming none means the first).
  clicked_point    geometry_msgs/PointStamped in the camera optical frame (metres), e.g. RViz "Publish Point",
                   projected through the CameraInfo (P for rectified images, K and D for raw ones; see
                   `rectified_images`); points in other frames need tf2_ros
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
Publishes, per camera (every message stamped with the header of the image it came from):
  instances        seem_ros/InstanceMaskArray, reliable; with depth, instances carry has_3d, centroid (median
                   of the mask's back-projected depth pixels) and extent (5-95 percentile spread), metres
  panoptic         sensor_msgs/Image, segment ids (32SC1 or mono16), only while subscribed
  semantic         sensor_msgs/Image, class ids (mono16, 65535 = none), only while subscribed
  overlay          sensor_msgs/Image rgb8, the input with instances drawn, only while subscribed
  markers          visualization_msgs/MarkerArray with `publish_markers: true`, only while subscribed: a label
                   per instance and, with depth, a box (seem_ros.ros.markers)
Publishes, once per node:
  prompt_feedback  seem_ros/PromptFeedback, reliable, transient local: for every prompt, the camera it went
                   to and what was understood (track ids created and removed, the targets and vocabulary
                   now) or why it was refused; one with action "ready" on activation, and one with
                   action "dropped" when the tracker drops targets (lost too long, or outside the images)
  /diagnostics     diagnostic_msgs/DiagnosticArray: a status per camera ("<node>: segmentation", or
                   "<node>: <camera> segmentation" for named cameras)
Services, per camera: set_vocabulary (seem_ros/SetVocabulary), clear_prompts and reset_tracking
  (std_srvs/Trigger), segment_image (seem_ros/SegmentImage); lifecycle_msgs services for the node.
"""

from __future__ import annotations

from seem_ros.allocator import share_main_heap
from seem_ros.ros.interrupts import stop_quietly_while_starting

# Before numpy, torch and rclpy are imported: threads they start would otherwise get malloc arenas of their
# own, which the inference thread could then be given instead of the main heap (see seem_ros.allocator).
share_main_heap()
stop_quietly_while_starting()

import gc
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile
from rclpy.serialization import deserialize_message
from rclpy.subscription import Subscription
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header, String

from seem_ros.engine.commands import CommandOutcome, dropped_tracks_outcome, run_prompt
from seem_ros.engine.engine import SeemEngine
from seem_ros.engine.errors import InputError
from seem_ros.engine.results import TrackEvent
from seem_ros.engine.session import Session
from seem_ros.msg import PromptFeedback
from seem_ros.ros.conversions import compressed_to_rgb, image_to_rgb
from seem_ros.ros.diagnostics import ErrorLog, FrameCounters, camera_prefix, camera_status
from seem_ros.ros.frames import PointTransformer
from seem_ros.ros.inputs import COMMAND_QOS, CallbackGroups, CameraInputs, FrameSlots, WhileModelIdle
from seem_ros.ros.node_runner import (
    OrderlyMultiThreadedExecutor,
    call_between_waits,
    destroyed_if_unfinished,
    run_node,
)
from seem_ros.ros.parameters import NodeSettings, declare_and_read
from seem_ros.ros.publishing import CameraOutputs, GeometrySource

NODE_NAME = "seem_node"

# Reliable; late joiners (a speech node started later) get the newest answers, with the vocabulary in them.
FEEDBACK_QOS = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL)
FEEDBACK_PROMPT_CHARACTERS = 200


@dataclass
class Camera:
    """One served camera: its engine session, its inputs and outputs, its counters."""

    name: str
    prefix: str
    session: Session
    inputs: CameraInputs
    outputs: CameraOutputs
    counters: FrameCounters
    errors: ErrorLog
    reported: FrameCounters = field(default_factory=FrameCounters)


class SeemNode(LifecycleNode):
    """The SEEM segmentation node. `engine` replaces the one built from parameters on configure."""

    def __init__(self, engine: SeemEngine | None = None, node_name: str = NODE_NAME) -> None:
        super().__init__(node_name)
        with destroyed_if_unfinished(self):
            self.settings: NodeSettings = declare_and_read(self)
            self._given_engine = engine
            self._engine: SeemEngine | None = None
            self._cameras: dict[str, Camera] = {}
            self._slots = FrameSlots()
            self._active = False
            self._last_step_start = 0.0
            self._inference_lock = threading.Lock()
            self._configure_error: Exception | None = None
            self._node_prompt: Subscription | None = None
            self._node_prompt_errors: ErrorLog | None = None
            self._point_transformer = PointTransformer(self)
            self._groups = CallbackGroups(
                WhileModelIdle(), *(MutuallyExclusiveCallbackGroup() for _ in range(4))
            )
            self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", COMMAND_QOS)
            self._feedback_pub = self.create_publisher(PromptFeedback, "prompt_feedback", FEEDBACK_QOS)
            self._frames_ready = self.create_guard_condition(
                self._infer_waiting_frames, callback_group=self._groups.inference
            )
            self.create_timer(
                self.settings.diagnostics_period,
                self._publish_diagnostics,
                callback_group=self._groups.timers,
            )
            if self.settings.autostart:
                if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                    raise self._configure_error or RuntimeError("configure failed")
                self.trigger_activate()
            else:
                node = self.get_fully_qualified_name()
                self.get_logger().info(
                    f"unconfigured (autostart false): waiting for ros2 lifecycle set {node} configure, "
                    "then activate"
                )

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Build the engine (the model) and one session, outputs and services per camera."""
        try:
            self._engine = self._given_engine or _build_engine(self.settings)
        except Exception as error:  # a missing checkpoint, a failed export: the node stays up, unconfigured
            self._configure_error = error
            if not self.settings.autostart:  # at an automatic start, the console script says it and exits
                self.get_logger().error(f"could not build the segmenter: {type(error).__name__}: {error}")
            return TransitionCallbackReturn.FAILURE
        for name in self.settings.cameras or ("",):
            self._cameras[name] = self._camera(name)
        self.get_logger().info(f"configured: {len(self._cameras)} camera(s)")
        return super().on_configure(state)

    def _camera(self, name: str) -> Camera:
        prefix = f"{name}/" if name else ""
        session = self._engine.open_session(name or self._single_camera_name())
        counters = FrameCounters()
        errors = ErrorLog(self.get_logger(), counters, self.settings.error_log_period, name)
        inputs = CameraInputs(
            self,
            prefix,
            self.settings,
            session,
            errors,
            self._groups,
            on_image=lambda serialized, skipped: self._on_image(name, serialized, skipped),
            on_prompt=lambda text: self._on_prompt(text, name),
            point_transformer=self._point_transformer,
        )
        outputs = CameraOutputs(self, prefix, self.settings)
        return Camera(name, prefix, session, inputs, outputs, counters, errors)

    def _single_camera_name(self) -> str:
        """The name commands give the only camera: `camera_name`, else the first part of its image topic."""
        topic = "image/compressed" if self.settings.compressed else "image"
        return self.settings.camera_name or camera_name_of_topic(self.resolve_topic_name(topic))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        for camera in self._cameras.values():
            camera.inputs.subscribe()
        if self.settings.cameras:
            first = next(iter(self._cameras.values()))  # whose diagnostics count the node topic's errors
            self._node_prompt_errors = ErrorLog(
                self.get_logger(), first.counters, self.settings.error_log_period
            )
            self._node_prompt = self.create_subscription(
                String,
                "prompt",
                lambda msg: self._on_prompt(msg.data, ""),
                COMMAND_QOS,
                callback_group=self._groups.prompts,
            )
        self._active = True
        facts = self._engine.describe()
        described = ", ".join(f"{key} {value}" for key, value in facts.items())
        topics = ", ".join(
            f"camera '{camera.session.name}' on {camera.inputs.resolved_image_topic}"
            f" ({'rectified' if camera.inputs.rectified else 'raw'} images)"
            for camera in self._cameras.values()
        )
        self.get_logger().info(f"ready: {described}; {topics}")
        if "caution" in facts:
            self.get_logger().warning(facts["caution"])
        self._publish_feedback("", CommandOutcome(True, "Ready."), action="ready")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop subscribing and publishing; a frame being inferred finishes without being published."""
        self._active = False
        call_between_waits(self, self._unsubscribe)
        self._slots.clear()
        self.get_logger().info("inactive: subscriptions removed, the model stays loaded")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model: sessions, services and publishers go too (after a frame being inferred)."""
        with self._inference_lock:
            call_between_waits(self, self._destroy_cameras)
            self._engine = None
        gc.collect()
        self.get_logger().info("cleaned up: model freed")
        return super().on_cleanup(state)

    def _unsubscribe(self) -> None:
        for camera in self._cameras.values():
            camera.inputs.unsubscribe()
        if self._node_prompt is not None:
            self.destroy_subscription(self._node_prompt)
            self._node_prompt = None

    def _destroy_cameras(self) -> None:
        for camera in self._cameras.values():
            camera.inputs.destroy()
            camera.outputs.destroy()
        self._cameras.clear()

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self.on_deactivate(state)
        return self.on_cleanup(state)

    # ------------------------------------------------------------------ frames
    def _on_image(self, camera: str, serialized: bytes, skipped: int) -> None:
        self._slots.put(camera, serialized, self._cameras[camera].counters, skipped)
        self._frames_ready.trigger()

    def _infer_waiting_frames(self) -> None:
        """One inference step over the frames waiting longest (at most `max_batch_cameras` cameras)."""
        if self.settings.max_rate > 0.0:
            wait = self._last_step_start + 1.0 / self.settings.max_rate - time.monotonic()
            if wait > 0.0:
                time.sleep(wait)
        with self._inference_lock:
            if not self._active or self._engine is None:
                return
            self._last_step_start = time.monotonic()
            frames = [
                (self._cameras[name], frame)
                for name, serialized in self._slots.take(self.settings.max_batch_cameras)
                if (frame := self._frame(self._cameras[name], serialized)) is not None
            ]
            if frames:
                self._infer(frames)
        if self._slots.pending():
            self._frames_ready.trigger()

    def _wake_executor(self) -> None:
        if self.executor is not None:
            self.executor.wake()

    def _frame(self, camera: Camera, serialized: bytes) -> tuple[Header, np.ndarray] | None:
        """A waiting frame's header and RGB pixels; None (counted, logged) when it is stale or bad."""
        inputs = camera.inputs
        try:
            msg = deserialize_message(serialized, inputs.image_type)
        except Exception as error:  # a foreign publisher's bytes; DDS type matching should prevent it
            camera.errors.input_error(
                f"image on {inputs.resolved_image_topic}", f"cannot deserialize: {error}"
            )
            return None
        if self._is_stale(msg.header):
            camera.counters.dropped_stale += 1
            return None
        limit = self.settings.segmenter.max_image_pixels
        try:
            if isinstance(msg, CompressedImage):
                rgb = compressed_to_rgb(msg, max_pixels=limit)
            else:
                rgb = image_to_rgb(msg, max_pixels=limit)
        except ValueError as error:
            camera.errors.input_error(f"image on {inputs.resolved_image_topic}", str(error))
            return None
        size = camera.session.image_size
        if size is not None and size != rgb.shape[:2] and camera.session.tracks():
            self.get_logger().warning(
                f"camera '{camera.session.name}': images changed from {size[1]}x{size[0]} to "
                f"{rgb.shape[1]}x{rgb.shape[0]}; its targets restart from their prompts (those outside "
                "the new images are dropped)"
            )
        return msg.header, rgb

    def _infer(self, frames: list[tuple[Camera, tuple[Header, np.ndarray]]]) -> None:
        start = time.perf_counter()
        with self._groups.sensors.model_running(self._wake_executor):
            outcomes = self._engine.step([(camera.session, rgb) for camera, (_, rgb) in frames])
        seconds = time.perf_counter() - start
        for (camera, (header, rgb)), outcome in zip(frames, outcomes, strict=True):
            if isinstance(outcome, InputError):
                camera.errors.input_error(f"image on {camera.inputs.resolved_image_topic}", str(outcome))
                continue
            if isinstance(outcome, Exception):  # the node keeps running; logs and diagnostics say it
                camera.errors.inference_error(outcome)
                continue
            camera.counters.processed += 1
            camera.counters.last_inference_s = seconds
            camera.counters.last_stage_s = dict(outcome.timings)
            if not (self._active and self.context.ok()):
                continue
            self._report_track_events(camera, outcome.track_events)
            inputs = camera.inputs
            geometry = None
            if self.settings.use_depth:
                geometry = GeometrySource(
                    inputs.depth,
                    self.settings.depth_max_time_difference,
                    inputs.camera_info,
                    inputs.depth_info,
                    camera.errors,
                    camera.counters,
                )
            try:
                camera.outputs.publish(outcome, rgb, header, inputs.camera_info, geometry)
            except Exception:
                if self.context.ok() and self._active:
                    raise  # a real publishing failure; during shutdown or deactivation it is expected

    def _report_track_events(self, camera: Camera, events: list[TrackEvent]) -> None:
        """Log the tracks a frame lost, reacquired or dropped; tell the operator on prompt_feedback (action
        "dropped") of those the tracker dropped, as it tells of those a prompt removes."""
        prefix = camera_prefix(camera.session.name)
        for event in events:
            if event.event not in ("lost", "reacquired", "dropped"):
                continue
            line = f"{prefix}track {event.track_id} ({event.name}) {event.event}"
            if event.event == "dropped":
                self.get_logger().warning(f"{line}: {event.detail}")
            else:
                self.get_logger().info(line)
        outcome = dropped_tracks_outcome(events, camera.session.name)
        if outcome is not None:
            self._publish_feedback("", outcome, "dropped")

    def _is_stale(self, header: Header) -> bool:
        if self.settings.max_image_age <= 0.0 or (header.stamp.sec == 0 and header.stamp.nanosec == 0):
            return False
        age = self.get_clock().now() - Time.from_msg(header.stamp, clock_type=self.get_clock().clock_type)
        return age.nanoseconds * 1e-9 > self.settings.max_image_age

    # ------------------------------------------------------------------ prompts
    def _on_prompt(self, text: str, camera: str) -> None:
        """Carry out an operator command (grammar: seem_ros.engine.commands) and answer on prompt_feedback.
        camera: where the command came in ("" = the node's own topic); a command naming no camera goes there
        (to the first camera from the node's topic)."""
        cameras = list(self._cameras.values())
        if camera:
            cameras.sort(key=lambda item: item.name != camera)
        outcome = run_prompt(text, {item.session.name: item.session for item in cameras})
        if outcome.accepted and outcome.command is not None:
            prefix = camera_prefix(outcome.camera)
            self.get_logger().info(f"{prefix}prompt: {outcome.command.describe()}: {outcome.message}")
        else:  # logged as the camera's the prompt addressed, else as the node topic's (no camera named)
            addressed = next((item for item in cameras if item.session.name == outcome.camera), None)
            addressed = addressed or self._cameras.get(camera)
            errors = addressed.errors if addressed is not None else self._node_prompt_errors
            errors.input_error("prompt", f"{text!r}: {outcome.message}")
        action = outcome.command.action if outcome.accepted and outcome.command is not None else ""
        self._publish_feedback(text, outcome, action)

    def _publish_feedback(self, prompt: str, outcome: CommandOutcome, action: str) -> None:
        sessions = {camera.session.name: camera.session for camera in self._cameras.values()}
        session = sessions.get(outcome.camera) or next(iter(sessions.values()))
        tracks = session.tracks()
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
                vocabulary=list(session.vocabulary_names()),
            )
        )

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        if not self.context.ok():
            return
        engine = self._engine
        statuses = []
        for camera in list(self._cameras.values()):
            name = f"{self.get_name()}: {camera.name} segmentation" if camera.name else None
            facts = camera.session.describe() if engine is not None else {}
            status = camera_status(
                name or f"{self.get_name()}: segmentation",
                facts.get("device", ""),
                camera.counters,
                camera.reported,
                self.settings.diagnostics_period,
                facts,
                camera.inputs.resolved_image_topic,
                self.settings.use_depth,
            )
            if not self._active:
                status.level, status.message = status.WARN, "inactive (lifecycle): not subscribed"
            statuses.append(status)
            camera.reported = FrameCounters(**vars(camera.counters))
        if not statuses:  # unconfigured, or cleaned up: the model is not loaded
            statuses.append(
                DiagnosticStatus(
                    name=f"{self.get_name()}: segmentation",
                    level=DiagnosticStatus.WARN,
                    message="unconfigured (lifecycle): no model loaded",
                )
            )
        self._diagnostics_pub.publish(
            DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=statuses)
        )


def camera_name_of_topic(topic: str) -> str:
    """The camera name a topic implies: its first part ("/front/color/image_raw" -> "front"); "" for a
    topic at the root ("/image")."""
    parts = [part for part in topic.split("/") if part]
    return parts[0] if len(parts) > 1 else ""


def _build_engine(settings: NodeSettings) -> SeemEngine:
    from seem_ros.engine.segmenter import build_engine

    return build_engine(settings.segmenter)


def main(args: list[str] | None = None) -> int:
    """Console script `seem_node`. Returns 0 after a clean shutdown, 2 for a bad parameter, 1 if the model
    cannot be built at an automatic start."""
    return run_node(
        NODE_NAME, SeemNode, lambda: OrderlyMultiThreadedExecutor(num_threads=4), "the segmenter", args
    )


if __name__ == "__main__":
    raise SystemExit(main())
