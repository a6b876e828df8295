"""seem_node's inputs: the newest frame of every camera (and which camera is served next), and one camera's
subscriptions and services, which hand prompts to its engine session.

Every check of a prompt's content happens in the engine (`seem_ros.engine.session.Session`); here messages
are only converted, and the engine's `InputError` becomes a log line and a counter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import PointStamped, PolygonStamped
from rclpy.callback_groups import CallbackGroup, MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import QoSProfile
from rclpy.service import Service
from rclpy.subscription import MessageInfo, Subscription
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from seem_ros.engine.prompts import ReferringImagePrompt, ScribblePrompt, Target
from seem_ros.engine.session import Session
from seem_ros.ros.conversions import frame_result_to_msg, image_to_array, image_to_rgb, project_point
from seem_ros.ros.depth import DepthBuffer
from seem_ros.ros.diagnostics import ErrorLog, FrameCounters, camera_prefix
from seem_ros.ros.frames import PointTransformer
from seem_ros.ros.node_runner import sensor_qos
from seem_ros.ros.parameters import NodeSettings
from seem_ros.srv import SegmentImage, SetVocabulary

# REP-2003: subscribe to sensor data best effort; depth 1 because only the newest image matters (while the
# model runs, a newer image replaces the waiting one in DDS).
IMAGE_QOS = sensor_qos(1)
# Depth images are buffered (DepthBuffer) to pair them with colour images by stamp.
DEPTH_QOS = sensor_qos(5)
COMMAND_QOS = QoSProfile(depth=10)  # reliable, volatile
MASK_ENCODINGS = ("mono8", "8UC1")


@dataclass
class WaitingFrame:
    """A camera's newest image, still serialized, and since when the camera waits (time.monotonic() of
    the first image it sent after it was last served)."""

    serialized: bytes
    waiting_since: float


class FrameSlots:
    """The newest unprocessed frame of each camera. `put` replaces a camera's waiting frame (counted as
    dropped; the camera keeps its place in the queue); `take` serves the cameras waiting longest first, so
    under load no camera starves, however often the others publish."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, WaitingFrame] = {}

    def put(self, camera: str, serialized: bytes, counters: FrameCounters, skipped: int = 0) -> None:
        """The camera's newest frame; `skipped`: frames it published since its last one here that never
        arrived (replaced in DDS while the model ran, or lost), counted as received and dropped."""
        with self._lock:
            waiting = self._waiting.get(camera)
            if waiting is not None:
                counters.dropped_replaced += 1
            since = waiting.waiting_since if waiting is not None else time.monotonic()
            self._waiting[camera] = WaitingFrame(serialized, since)
            counters.received += 1 + skipped
            counters.dropped_replaced += skipped

    def take(self, most: int) -> list[tuple[str, bytes]]:
        """Up to `most` (camera, serialized frame) pairs, the longest-waiting first; they leave the slots."""
        with self._lock:
            chosen = sorted(self._waiting, key=lambda camera: self._waiting[camera].waiting_since)[:most]
            return [(camera, self._waiting.pop(camera).serialized) for camera in chosen]

    def pending(self) -> bool:
        with self._lock:
            return bool(self._waiting)

    def clear(self) -> None:
        with self._lock:
            self._waiting.clear()


class PublicationGaps:
    """How many messages each publisher on a topic sent between two that were taken: the gaps in their
    publication sequence numbers (DDS numbers each writer's samples 1, 2, 3, ...). The last
    `max_publishers` publishers heard are remembered (a restarted driver is a new publisher)."""

    def __init__(self, max_publishers: int = 16) -> None:
        self._last: dict[bytes, int] = {}
        self._max_publishers = max_publishers

    def skipped(self, info: MessageInfo) -> int:
        """Messages of `info`'s publisher never taken before this one; 0 where the middleware gives no
        sequence number."""
        number, gid = info.get("publication_sequence_number"), info.get("publisher_gid")
        if number is None or gid is None:
            return 0
        publisher = bytes(gid.get("data", b""))
        last = self._last.pop(publisher, None)
        self._last[publisher] = number  # the most recently heard last
        while len(self._last) > self._max_publishers:
            self._last.pop(next(iter(self._last)))
        return max(0, number - last - 1) if last is not None else 0


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


class WhileModelIdle(MutuallyExclusiveCallbackGroup):
    """A mutually exclusive callback group whose callbacks run only while no inference step runs
    (`model_running`). Meanwhile the executor neither waits on its subscriptions nor takes their messages:
    they wait in DDS, the newest kept as their QoS depth says. Taking every image of a 30 Hz camera beside
    the model (rclpy's executor work in Python, and its holds of the GIL that the model's thread retakes
    after every operator) slowed bf16 frames on a 2-core CPU 2 to 4 times."""

    def __init__(self) -> None:
        super().__init__()
        self._model_running = False

    def can_execute(self, entity: Any) -> bool:
        return not self._model_running and super().can_execute(entity)

    def beginning_execution(self, entity: Any) -> bool:
        return not self._model_running and super().beginning_execution(entity)

    @contextmanager
    def model_running(self, wake: Callable[[], None]) -> Iterator[None]:
        """Hold this group's callbacks back for the block; then `wake` the executor, whose wait left them
        out, so that it takes what arrived meanwhile."""
        self._model_running = True
        try:
            yield
        finally:
            self._model_running = False
            wake()


@dataclass
class CallbackGroups:
    """sensors: the cameras' images, camera info and depth, taken while the model is idle
    (`WhileModelIdle`; a depth image is paired with its colour image by stamp after the step, before its
    results are published). inference: the inference step. timers: diagnostics. prompts. services."""

    sensors: WhileModelIdle
    inference: CallbackGroup
    timers: CallbackGroup
    prompts: CallbackGroup
    services: CallbackGroup


class CameraInputs:
    """One camera's subscriptions (made by `subscribe` on activate, removed by `unsubscribe`) and services
    (made at construction, on configure), under its namespace prefix ("" or "front/").

    on_image(serialized, skipped): a new image, and how many its publisher sent since the last one taken.
    on_prompt(text): an operator command addressed to this camera.
    """

    def __init__(
        self,
        node: LifecycleNode,
        prefix: str,
        settings: NodeSettings,
        session: Session,
        errors: ErrorLog,
        groups: CallbackGroups,
        on_image: Callable[[bytes, int], None],
        on_prompt: Callable[[str], None],
        point_transformer: PointTransformer,
    ) -> None:
        self._node = node
        self.prefix = prefix
        self.settings = settings
        self.session = session
        self.errors = errors
        self._groups = groups
        self._on_image = on_image
        self._image_gaps = PublicationGaps()
        self._on_prompt = on_prompt
        self._point_transformer = point_transformer
        self.camera_info: CameraInfo | None = None
        self.depth_info: CameraInfo | None = None
        self.depth = DepthBuffer()
        self._references = StampedPairs()
        self.image_type = CompressedImage if settings.compressed else Image
        self.image_topic = f"{prefix}image/compressed" if settings.compressed else f"{prefix}image"
        self.resolved_image_topic = node.resolve_topic_name(self.image_topic)
        self.resolved_camera_info_topic = node.resolve_topic_name(f"{prefix}camera_info")
        self.rectified = images_are_rectified(settings.rectified_images, self.resolved_image_topic)
        self._subscriptions: list[Subscription] = []
        self._services: list[Service] = [
            node.create_service(
                SetVocabulary, f"{prefix}set_vocabulary", self._set_vocabulary, callback_group=groups.services
            ),
            node.create_service(
                Trigger, f"{prefix}clear_prompts", self._clear_prompts, callback_group=groups.services
            ),
            node.create_service(
                Trigger, f"{prefix}reset_tracking", self._reset_tracking, callback_group=groups.services
            ),
            node.create_service(
                SegmentImage, f"{prefix}segment_image", self._segment_image, callback_group=groups.services
            ),
        ]

    # ------------------------------------------------------------------ lifecycle
    def subscribe(self) -> None:
        node, prefix, sensors = self._node, self.prefix, self._groups.sensors
        # Images arrive serialized and only the one inference takes is deserialized.
        self._subscriptions = [
            node.create_subscription(
                self.image_type,
                self.image_topic,
                self._take_image,
                IMAGE_QOS,
                callback_group=sensors,
                raw=True,
            ),
            node.create_subscription(
                CameraInfo, f"{prefix}camera_info", self._on_camera_info, IMAGE_QOS, callback_group=sensors
            ),
        ]
        if self.settings.use_depth:
            self._subscriptions += [
                node.create_subscription(
                    Image, f"{prefix}depth", self.depth.put, DEPTH_QOS, callback_group=sensors
                ),
                node.create_subscription(
                    CameraInfo,
                    f"{prefix}depth/camera_info",
                    self._on_depth_info,
                    IMAGE_QOS,
                    callback_group=sensors,
                ),
            ]
        prompts: list[tuple[type, str, Callable[[Any], None]]] = [
            (String, "prompt", lambda msg: self._on_prompt(msg.data)),
            (PointStamped, "clicked_point", self._on_clicked_point),
            (PointStamped, "click_pixel", self._on_click_pixel),
            (PolygonStamped, "scribble", self._on_scribble),
            (Image, "prompt_mask", self._on_prompt_mask),
            (Image, "referring_image", lambda msg: self._on_reference(self._references.add(0, msg))),
            (Image, "referring_mask", lambda msg: self._on_reference(self._references.add(1, msg))),
        ]
        for message_type, name, callback in prompts:
            self._subscriptions.append(
                node.create_subscription(
                    message_type,
                    f"{prefix}{name}",
                    self._guarded(callback, name),
                    COMMAND_QOS,
                    callback_group=self._groups.prompts,
                )
            )

    def unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []

    def destroy(self) -> None:
        self.unsubscribe()
        for service in self._services:
            self._node.destroy_service(service)
        self._services = []

    def _guarded(self, callback: Callable[[Any], None], what: str) -> Callable[[Any], None]:
        """The callback, with bad input (ValueError, the engine's InputError among them) and any unexpected
        exception logged and counted instead of ending the executor (and with it the node)."""

        def guarded(msg: Any) -> None:
            try:
                callback(msg)
            except ValueError as error:
                self.errors.input_error(what, str(error))
            except Exception as error:
                self.errors.input_error(what, f"{type(error).__name__}: {error}")

        return guarded

    # ------------------------------------------------------------------ camera
    def _take_image(self, serialized: bytes, info: MessageInfo) -> None:
        self._on_image(serialized, self._image_gaps.skipped(info))

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """Keep the newest CameraInfo; before the first image its size is the images' (REP-104), so prompts
        given before then are checked against it when they come, not dropped at the first frame."""
        self.camera_info = msg
        if self.session.image_size is None and msg.width > 0 and msg.height > 0:
            self.session.expect_image_size(msg.height, msg.width)

    def _on_depth_info(self, msg: CameraInfo) -> None:
        self.depth_info = msg

    # ------------------------------------------------------------------ prompts
    def _on_click_pixel(self, msg: PointStamped) -> None:
        self._add_click(msg.point.x, msg.point.y, positive=msg.point.z >= 0.0)

    def _on_clicked_point(self, msg: PointStamped) -> None:
        info = self.camera_info
        if info is None:
            raise ValueError(f"no CameraInfo received on {self.resolved_camera_info_topic} yet")
        point = (msg.point.x, msg.point.y, msg.point.z)
        if msg.header.frame_id != info.header.frame_id:
            point = self._point_transformer.point_in(info.header.frame_id, msg)
        self._add_click(*project_point(info, *point, rectified=self.rectified), positive=True)

    def _add_click(self, x: float, y: float, positive: bool) -> None:
        self.session.add_click(x, y, positive)
        self._log(f"{'positive' if positive else 'negative'} click at ({x:.1f}, {y:.1f})")

    def _on_scribble(self, msg: PolygonStamped) -> None:
        points = tuple((float(point.x), float(point.y)) for point in msg.polygon.points)
        positive = not (points and msg.polygon.points[0].z < 0.0)
        self.session.add_prompt(ScribblePrompt(points, positive=positive))
        self._log(
            f"{'positive' if positive else 'negative'} scribble through {len(points)} points from "
            f"({points[0][0]:.1f}, {points[0][1]:.1f})"
        )

    def _on_prompt_mask(self, msg: Image) -> None:
        mask = binary_mask(msg)
        if self.session.image_size is None:
            raise ValueError("no camera image received yet, so the mask size cannot be checked")
        self.session.add_mask(mask)
        self._log(f"mask prompt of {int(mask.sum())} pixels")

    def _on_reference(self, pair: tuple[Image, Image] | None) -> None:
        if pair is None:
            return
        image_msg, mask_msg = pair
        try:
            rgb = np.array(image_to_rgb(image_msg), dtype=np.uint8, copy=True)
            mask = binary_mask(mask_msg)
            self.session.add_target(Target(reference=ReferringImagePrompt(rgb, mask)))
        except ValueError as error:
            self.errors.input_error("referring_image", str(error))
            return
        self._log(f"referring image {rgb.shape[1]}x{rgb.shape[0]} with a mask of {int(mask.sum())} pixels")

    def _log(self, line: str) -> None:
        self._node.get_logger().info(f"{camera_prefix(self.session.name)}{line}")

    # ------------------------------------------------------------------ services
    def _set_vocabulary(self, request: SetVocabulary.Request, response: SetVocabulary.Response):
        names = [name.strip() for name in request.names]
        thing_names = [name.strip() for name in request.thing_names]
        try:
            self.session.set_vocabulary(names, thing_names)
        except ValueError as error:
            self.errors.input_error("set_vocabulary request", str(error))
            response.success, response.message = False, str(error)
            return response
        things = len(thing_names) if thing_names else len(names)
        response.success, response.message = True, f"vocabulary of {len(names)} names, {things} things"
        self._log(f"set_vocabulary: {response.message}: {', '.join(names)}")
        return response

    def _clear_prompts(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.session.clear_prompts()
        response.success, response.message = True, "prompts cleared"
        return response

    def _reset_tracking(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.session.reset_tracking()
        response.success, response.message = True, "tracking reset"
        return response

    def _segment_image(self, request: SegmentImage.Request, response: SegmentImage.Response):
        try:
            rgb = image_to_rgb(request.image, max_pixels=self.settings.segmenter.max_image_pixels)
            result = self.session.segment_once(rgb, request.text.strip())
        except ValueError as error:
            self.errors.input_error("segment_image request", str(error))
            response.success, response.message = False, str(error)
            return response
        except Exception as error:  # the service answers; the node keeps running
            self.errors.inference_error(error)
            response.success, response.message = False, f"inference failed: {type(error).__name__}: {error}"
            return response
        height, width = rgb.shape[:2]
        response.result = frame_result_to_msg(result, request.image.header, width, height)
        response.success = True
        response.message = f"{len(result.instances)} instances, {len(result.segments)} segments"
        return response


def images_are_rectified(setting: str, image_topic: str) -> bool:
    """Whether a camera's images are rectified, by the `rectified_images` parameter ("true", "false", or
    "auto": a part of the resolved image topic starts with "image_rect", as image_proc names them)."""
    if setting == "auto":
        return any(part.startswith("image_rect") for part in image_topic.split("/"))
    return setting == "true"


def binary_mask(msg: Image) -> np.ndarray:
    """(H, W) bool: the nonzero pixels of a mono8 mask image."""
    if msg.encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask encoding must be one of {', '.join(MASK_ENCODINGS)}, got {msg.encoding!r}")
    return image_to_array(msg) != 0
