"""One seem_node process serving three cameras over DDS, and its lifecycle through lifecycle_msgs services.

The node runs the tiny reference model (masks mean nothing; ids, routing, counters and states are checked):
each camera has its own prompts, tracks, outputs and diagnostics; the node's own prompt topic routes commands
by camera name; garbage on one camera leaves the others served; a camera that stops and comes back and one
whose resolution changes keep being served; deactivate (also during inference), activate and cleanup work.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import skimage.data
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point, PointStamped
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from node_client import node_command
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from ros_helpers import (  # noqa: F401 (ros_environment is a fixture)
    NodeProcess,
    call_service,
    initialised_context,
    ros_environment,
    spin_until,
)
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from seem_ros.msg import InstanceMaskArray, PromptFeedback
from seem_ros.ros.conversions import array_to_image

CAMERAS = ("front", "rear", "wrist")
TIMEOUT = 90.0


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    return np.ascontiguousarray(cv2.resize(getattr(skimage.data, name)(), size, interpolation=cv2.INTER_AREA))


FRAMES = {
    "front": _photo("coffee", (320, 240)),
    "rear": _photo("chelsea", (256, 192)),
    "wrist": _photo("astronaut", (320, 240)),
}


class MultiCameraClient:
    """Publishes frames and prompts to the cameras of a node in `namespace` and collects its answers."""

    def __init__(self, context: rclpy.context.Context, namespace: str, process: NodeProcess) -> None:
        self.namespace, self.process = namespace, process
        self.node = Node("multi_camera_client", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        commands = QoSProfile(depth=20)
        self.images = {
            name: self.node.create_publisher(Image, f"/{namespace}/{name}/image", qos_profile_sensor_data)
            for name in CAMERAS
        }
        self.prompts = {
            name: self.node.create_publisher(String, f"/{namespace}/{name}/prompt", commands)
            for name in CAMERAS
        }
        self.node_prompt = self.node.create_publisher(String, f"/{namespace}/prompt", commands)
        self.click_pixel = {
            name: self.node.create_publisher(PointStamped, f"/{namespace}/{name}/click_pixel", commands)
            for name in CAMERAS
        }
        self.instances: dict[str, list[InstanceMaskArray]] = defaultdict(list)
        for name in CAMERAS:
            self.node.create_subscription(
                InstanceMaskArray,
                f"/{namespace}/{name}/instances",
                lambda msg, name=name: self.instances[name].append(msg),
                QoSProfile(depth=50),
            )
        self.feedback: list[PromptFeedback] = []
        self.node.create_subscription(
            PromptFeedback, f"/{namespace}/prompt_feedback", self.feedback.append, QoSProfile(depth=50)
        )
        self.statuses: dict[str, dict[str, str]] = {}
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, QoSProfile(depth=50)
        )
        self._stamp = 0

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            for name in ("", *CAMERAS):
                camera = f" {name}" if name else ""
                if status.name == f"seem_node_{self.namespace}:{camera} segmentation":
                    self.statuses[name] = {item.key: item.value for item in status.values}
                    self.statuses[name]["_message"] = status.message

    def counter(self, camera: str, key: str) -> int:
        return int(self.statuses.get(camera, {}).get(key, 0))

    def until(self, condition, timeout: float = TIMEOUT) -> None:  # noqa: ANN001
        assert spin_until(self.executor, condition, timeout), self.process.output()[-4000:]

    def send(self, camera: str, rgb: np.ndarray | None = None, encoding: str = "rgb8") -> Header:
        self._stamp += 1
        header = Header(stamp=Time(sec=self._stamp), frame_id=f"{camera}_optical_frame")
        frame = FRAMES[camera] if rgb is None else rgb
        msg = array_to_image(frame, encoding if encoding != "garbage" else "rgb8", header)
        if encoding == "garbage":
            msg.encoding = "yuv422"
        self.images[camera].publish(msg)
        return header

    def answered(self, camera: str, header: Header) -> bool:
        return any(msg.header.stamp == header.stamp for msg in self.instances[camera])

    def serve(self, cameras=CAMERAS, timeout: float = TIMEOUT) -> None:  # noqa: ANN001
        """Send a frame to each camera until each has an answer to one of its frames sent now."""
        sent: dict[str, list[Header]] = {name: [] for name in cameras}

        def all_answered() -> bool:
            for name in cameras:
                if not any(self.answered(name, header) for header in sent[name]):
                    if not sent[name] or len(sent[name]) < 200:
                        sent[name].append(self.send(name))
                    return False
            return True

        self.until(all_answered, timeout)

    def say(self, text: str, camera: str = "") -> PromptFeedback:
        known = len(self.feedback)
        (self.prompts[camera] if camera else self.node_prompt).publish(String(data=text))
        self.until(lambda: any(item.prompt == text for item in self.feedback[known:]), 30.0)
        return next(item for item in self.feedback[known:] if item.prompt == text)

    def wait_subscribed(self) -> None:
        self.until(
            lambda: all(
                pub.get_subscription_count() > 0 for pub in (*self.images.values(), *self.prompts.values())
            )
        )

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def context(ros_environment: dict[str, str]) -> Iterator[rclpy.context.Context]:  # noqa: F811
    with initialised_context() as ros_context:
        yield ros_context


def _start(
    reference_dir: Path, tmp_path: Path, env: dict[str, str], namespace: str, **parameters
) -> NodeProcess:
    command = node_command(reference_dir, namespace=namespace, cameras=list(CAMERAS), **parameters)
    return NodeProcess(command, env, tmp_path / f"{namespace}.log")


def test_one_node_serves_three_cameras(
    context: rclpy.context.Context,
    ros_environment: dict[str, str],  # noqa: F811
    reference_dir: Path,
    tmp_path: Path,
) -> None:
    process = _start(reference_dir, tmp_path, ros_environment, "multi", max_batch_cameras=2)
    client = MultiCameraClient(context, "multi", process)
    try:
        client.wait_subscribed()
        client.serve()
        # prompts: on a camera's own topic, and on the node's topic naming the camera
        front = client.say("find the red cup", "front")
        assert front.accepted and front.camera == "front" and list(front.created_track_ids) == [1]
        wrist = client.say("in the wrist camera find the helmet")
        assert wrist.accepted and wrist.camera == "wrist" and list(wrist.created_track_ids) == [1]
        unknown = client.say("in the kitchen camera find the cup")
        assert not unknown.accepted
        assert "no camera 'kitchen'" in unknown.message and "'front', 'rear', 'wrist'" in unknown.message
        refusal = "ignored prompt: 'in the kitchen camera find the cup': There is no camera 'kitchen'"
        client.until(lambda: refusal in process.output())
        assert f"camera 'front': {refusal}" not in process.output()  # the node's topic, no camera's
        client.click_pixel["rear"].publish(PointStamped(point=Point(x=100.0, y=90.0, z=0.0)))
        client.until(lambda: "camera 'rear': positive click" in process.output())
        client.instances.clear()
        client.serve()
        tracked = {
            name: {
                (item.track_id, item.prompt_text)
                for item in client.instances[name][-1].instances
                if item.track_id
            }
            for name in CAMERAS
        }
        assert tracked["front"] == {(1, "red cup")}
        assert tracked["wrist"] == {(1, "helmet")}
        assert {track_id for track_id, _ in tracked["rear"]} <= {1}
        sizes = {
            name: (client.instances[name][-1].width, client.instances[name][-1].height) for name in CAMERAS
        }
        assert sizes == {"front": (320, 240), "rear": (256, 192), "wrist": (320, 240)}

        # one camera sends garbage: it is counted there, the others keep being served
        client.until(lambda: all(client.counter(name, "frames_processed") > 0 for name in CAMERAS))
        for _ in range(3):
            client.send("rear", encoding="garbage")
            client.executor.spin_once(timeout_sec=0.2)
        client.serve(("front", "wrist"))
        client.until(lambda: client.counter("rear", "input_errors") >= 1)
        assert "camera 'rear': ignored image on /multi/rear/image" in process.output()

        # the wrist camera stops publishing for a while and comes back
        served_before = client.counter("wrist", "frames_processed")
        for _ in range(2):
            client.serve(("front", "rear"))
        client.serve()
        client.until(lambda: client.counter("wrist", "frames_processed") > served_before)

        # the rear camera comes back at another resolution: its target restarts, nothing crashes
        smaller = np.ascontiguousarray(FRAMES["rear"][::2, ::2])
        sent: list[Header] = []

        def smaller_answered() -> bool:
            sent.append(client.send("rear", smaller))
            return any(client.answered("rear", header) for header in sent[:-1])

        client.until(smaller_answered)
        client.serve()
        assert process.is_running()
        assert "camera 'rear': images changed from 256x192 to 128x96" in process.output()
        for name in CAMERAS:
            assert int(client.statuses[name]["frames_dropped_replaced"]) >= 0
    finally:
        client.close()
        exit_code = process.stop()
    assert exit_code == 0, process.output()[-4000:]


def _transition(client: MultiCameraClient, namespace: str, transition: int) -> bool:
    response = call_service(
        client.node,
        client.executor,
        ChangeState,
        f"/{namespace}/seem_node_{namespace}/change_state",
        ChangeState.Request(transition=Transition(id=transition)),
        client.process.output,
    )
    return response.success


def _state(client: MultiCameraClient, namespace: str) -> int:
    response = call_service(
        client.node,
        client.executor,
        GetState,
        f"/{namespace}/seem_node_{namespace}/get_state",
        GetState.Request(),
        client.process.output,
    )
    return response.current_state.id


def test_lifecycle_transitions(
    context: rclpy.context.Context,
    ros_environment: dict[str, str],  # noqa: F811
    reference_dir: Path,
    tmp_path: Path,
) -> None:
    namespace = "managed"
    process = _start(reference_dir, tmp_path, ros_environment, namespace, autostart=False)
    client = MultiCameraClient(context, namespace, process)
    try:
        assert _state(client, namespace) == State.PRIMARY_STATE_UNCONFIGURED
        assert client.images["front"].get_subscription_count() == 0
        waiting = f"waiting for ros2 lifecycle set /{namespace}/seem_node_{namespace} configure"
        assert waiting in process.output()
        unconfigured = "unconfigured (lifecycle): no model loaded"
        client.until(lambda: client.statuses.get("", {}).get("_message") == unconfigured, 30.0)
        assert _transition(client, namespace, Transition.TRANSITION_CONFIGURE)
        assert _state(client, namespace) == State.PRIMARY_STATE_INACTIVE
        client.executor.spin_once(timeout_sec=0.5)
        assert client.images["front"].get_subscription_count() == 0
        assert _transition(client, namespace, Transition.TRANSITION_ACTIVATE)
        client.wait_subscribed()
        client.serve()

        # deactivate while frames are being inferred: the node stays up, stops subscribing and publishing
        for name in CAMERAS:
            client.send(name)
        assert _transition(client, namespace, Transition.TRANSITION_DEACTIVATE)
        assert _state(client, namespace) == State.PRIMARY_STATE_INACTIVE
        client.until(lambda: client.images["front"].get_subscription_count() == 0, 30.0)
        client.until(
            lambda: client.statuses.get("front", {}).get("_message", "").startswith("inactive"), 30.0
        )
        answered = sum(len(client.instances[name]) for name in CAMERAS)
        client.executor.spin_once(timeout_sec=1.0)
        assert sum(len(client.instances[name]) for name in CAMERAS) <= answered + len(CAMERAS)

        # active again with the same model (no reload), then cleanup frees it and configure builds it anew
        assert _transition(client, namespace, Transition.TRANSITION_ACTIVATE)
        client.wait_subscribed()
        client.serve()
        assert _transition(client, namespace, Transition.TRANSITION_DEACTIVATE)
        assert _transition(client, namespace, Transition.TRANSITION_CLEANUP)
        assert _state(client, namespace) == State.PRIMARY_STATE_UNCONFIGURED
        client.statuses.clear()
        client.until(lambda: client.statuses.get("", {}).get("_message") == unconfigured, 30.0)
        assert _transition(client, namespace, Transition.TRANSITION_CONFIGURE)
        assert _transition(client, namespace, Transition.TRANSITION_ACTIVATE)
        client.wait_subscribed()
        client.serve()
        assert process.output().count("configured: 3 camera(s)") == 2
    finally:
        client.close()
        exit_code = process.stop()
    assert exit_code == 0, process.output()[-4000:]
