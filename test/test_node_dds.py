"""seem_node as its own process, talking DDS with this test process: images in, masks and overlay out.

The node runs the real engine with the tiny reference model (preset focalt_tiny and its checkpoint), started
with the same `--ros-args` the launch file would give it (seem_ros.launch_logic).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import skimage.data
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from ros_helpers import (  # noqa: F401 (ros_context, ros_environment are fixtures)
    NodeProcess,
    call_service,
    exit_of,
    ros_context,
    ros_environment,
    spin_until,
)
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger

import seem_ros.engine
from seem_ros.launch_logic import LaunchArguments, plan_nodes
from seem_ros.msg import InstanceMaskArray
from seem_ros.ros.conversions import array_to_image
from seem_ros.srv import SegmentImage, SetVocabulary

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMERA_TOPIC = "/test_camera/image_raw"
FRAME_ID = "test_camera_optical_frame"
START_TIMEOUT = 120.0
RESULT_TIMEOUT = 60.0

needs_engine = pytest.mark.skipif(
    not hasattr(seem_ros.engine, "build_segmenter"),
    reason="seem_ros.engine.build_segmenter is not written yet",
)


def _node_command(**overrides: str) -> list[str]:
    (spec,) = plan_nodes(LaunchArguments(camera_topic=CAMERA_TOPIC, **overrides), REPO_ROOT)
    return spec.command(python=sys.executable)


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    """(480, 640, 3) uint8 RGB photo."""
    return cv2.resize(skimage.data.coffee(), (640, 480), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def seem_node(
    ros_environment: dict[str, str],  # noqa: F811
    reference_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NodeProcess]:
    checkpoint = str(reference_dir / "tiny_focalt_v1.safetensors")
    command = _node_command(preset="focalt_tiny", checkpoint=checkpoint, device="cpu")
    node = NodeProcess(command, ros_environment, tmp_path_factory.mktemp("seem_node") / "seem_node.log")
    try:
        yield node
    finally:
        exit_code = node.stop()
    assert exit_code == 0, f"seem_node did not shut down cleanly ({exit_code}):\n{node.output()}"


class Client:
    """This test's side: publishes camera frames, collects what seem_node sends back."""

    def __init__(self, context: rclpy.context.Context) -> None:
        self.node = Node("seem_node_test_client", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.images = self.node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
        self.prompts = self.node.create_publisher(String, "/prompt", QoSProfile(depth=10))
        self.instances: list[InstanceMaskArray] = []
        self.overlays: list[Image] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(
            InstanceMaskArray, "/instances", self.instances.append, QoSProfile(depth=10)
        )
        self.node.create_subscription(Image, "/overlay", self.overlays.append, QoSProfile(depth=10))
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self.diagnostics.append, QoSProfile(depth=10)
        )

    def wait_for_node(self, process: NodeProcess) -> None:
        ready = spin_until(
            self.executor,
            lambda: self.images.get_subscription_count() > 0 or not process.is_running(),
            START_TIMEOUT,
        )
        assert ready and process.is_running(), (
            f"seem_node did not subscribe to {CAMERA_TOPIC}:\n{process.output()}"
        )

    def publish_until(
        self, frame: Image, condition, process: NodeProcess, period: float = 0.25
    ) -> list[Header]:
        """Publish `frame` with new stamps every `period` s until condition() holds; returns the headers."""
        sent: list[Header] = []
        deadline = time.monotonic() + RESULT_TIMEOUT
        while not condition():
            assert time.monotonic() < deadline, f"no result from seem_node in time:\n{process.output()}"
            assert process.is_running(), f"seem_node died:\n{process.output()}"
            frame.header = Header(stamp=Time(sec=1000 + len(sent), nanosec=1234), frame_id=FRAME_ID)
            self.images.publish(frame)
            sent.append(frame.header)
            spin_until(self.executor, condition, period)
        return sent

    def call(self, service_type, name: str, request, process: NodeProcess):
        return call_service(
            self.node, self.executor, service_type, name, request, process.output, RESULT_TIMEOUT
        )

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def client(ros_context: rclpy.context.Context) -> Iterator[Client]:  # noqa: F811
    test_client = Client(ros_context)
    try:
        yield test_client
    finally:
        test_client.close()


@needs_engine
def test_streams_instances_and_overlay_with_input_header(seem_node: NodeProcess, client: Client, coffee):
    client.wait_for_node(seem_node)
    sent = client.publish_until(
        array_to_image(coffee, "rgb8"), lambda: bool(client.instances and client.overlays), seem_node
    )
    stamps = {(header.stamp.sec, header.stamp.nanosec) for header in sent}

    result = client.instances[0]
    assert (result.header.stamp.sec, result.header.stamp.nanosec) in stamps
    assert result.header.frame_id == FRAME_ID
    assert (result.width, result.height) == (640, 480)
    for instance in result.instances:
        roi = instance.roi
        assert roi.x_offset + roi.width <= 640 and roi.y_offset + roi.height <= 480
        assert sum(instance.mask_rle) == roi.width * roi.height
        assert 0.0 <= instance.score <= 1.0

    overlay = client.overlays[0]
    assert (overlay.header.stamp.sec, overlay.header.stamp.nanosec) in stamps
    assert overlay.header.frame_id == FRAME_ID
    assert (overlay.encoding, overlay.width, overlay.height, overlay.step) == ("rgb8", 640, 480, 640 * 3)

    def processed_frames() -> list[dict[str, str]]:
        statuses = [status for array in client.diagnostics for status in array.status]
        values = [{item.key: item.value for item in status.values} for status in statuses]
        return [
            status_values
            for status, status_values in zip(statuses, values, strict=True)
            if status.name == "seem_node: segmentation" and int(status_values["frames_processed"]) >= 1
        ]

    assert spin_until(client.executor, lambda: bool(processed_frames()), 5.0), client.diagnostics
    assert processed_frames()[-1]["model"] == "focalt_tiny"


@needs_engine
def test_bad_images_are_logged_and_skipped(seem_node: NodeProcess, client: Client, coffee):
    client.wait_for_node(seem_node)
    bad = Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8))
    expected = f"ignored image on {CAMERA_TOPIC}: cannot segment an image with encoding 'yuv422'"
    client.publish_until(bad, lambda: expected in seem_node.output(), seem_node)
    client.instances.clear()
    client.publish_until(array_to_image(coffee, "bgr8"), lambda: bool(client.instances), seem_node)
    assert seem_node.is_running()


@needs_engine
def test_prompt_topic(seem_node: NodeProcess, client: Client):
    client.wait_for_node(seem_node)
    assert spin_until(client.executor, lambda: client.prompts.get_subscription_count() > 0, 10.0)
    client.prompts.publish(String(data="vocabulary: cup, saucer; stuff: table"))
    client.prompts.publish(String(data="box: 5, 5, 1"))
    expected = [
        "prompt: vocabulary cup, saucer, table (things: cup, saucer)",
        "ignored prompt: 'box: 5, 5, 1'",
    ]
    assert spin_until(client.executor, lambda: all(line in seem_node.output() for line in expected), 10.0), (
        seem_node.output()
    )
    client.prompts.publish(String(data="clear"))


@needs_engine
def test_services(seem_node: NodeProcess, client: Client, coffee):
    client.wait_for_node(seem_node)
    image = array_to_image(coffee, "rgb8", Header(stamp=Time(sec=77, nanosec=8), frame_id=FRAME_ID))
    response = client.call(SegmentImage, "/segment_image", SegmentImage.Request(image=image), seem_node)
    assert response.success, response.message
    assert response.result.header == image.header
    assert (response.result.width, response.result.height) == (640, 480)

    bad_image = Image(height=1, width=1, encoding="rgb8", step=3, data=bytes(2))
    response = client.call(SegmentImage, "/segment_image", SegmentImage.Request(image=bad_image), seem_node)
    assert not response.success
    assert "expected step * height" in response.message

    response = client.call(SetVocabulary, "/set_vocabulary", SetVocabulary.Request(names=[]), seem_node)
    assert not response.success
    assert "non-empty list" in response.message
    request = SetVocabulary.Request(names=["cup", "saucer", "table"], thing_names=["cup", "saucer"])
    response = client.call(SetVocabulary, "/set_vocabulary", request, seem_node)
    assert response.success, response.message

    for name in ("/clear_prompts", "/reset_tracking"):
        response = client.call(Trigger, name, Trigger.Request(), seem_node)
        assert response.success, response.message


@pytest.mark.parametrize(("parameter", "value"), [("score_threshold", "1.5"), ("preset", "focalt_v2")])
def test_bad_parameter_stops_startup(
    ros_environment: dict[str, str],  # noqa: F811
    tmp_path: Path,
    parameter: str,
    value: str,
):
    command = [*_node_command(), "-p", f"{parameter}:={value}"]
    exit_code, output = exit_of(command, ros_environment, tmp_path / "seem_node.log")
    assert exit_code == 2, output
    assert f"bad parameter, not starting: parameter '{parameter}'" in output


def test_ctrl_c_while_the_node_is_still_loading_ends_it_quietly(
    ros_environment: dict[str, str],  # noqa: F811
    tmp_path: Path,
):
    """SIGINT half a second after start (its modules are still loading: torch and the model code take
    seconds) ends the process at once with exit code 0 and no traceback; it used to be lost, and the node
    came up anyway."""
    command = _node_command(preset="focalt_tiny", device="cpu")
    node = NodeProcess([*command, "-p", "random_weights:=true"], ros_environment, tmp_path / "seem_node.log")
    try:
        time.sleep(0.5)
        node.process.send_signal(signal.SIGINT)
        exit_code = node.wait(timeout=20.0)
    finally:
        node.stop()
    output = node.output()
    assert exit_code == 0 and "Traceback" not in output and "ready:" not in output, output


def test_sigterm_stops_a_running_node_cleanly(
    ros_environment: dict[str, str],  # noqa: F811
    reference_dir: Path,
    tmp_path: Path,
):
    checkpoint = str(reference_dir / "tiny_focalt_v1.safetensors")
    command = _node_command(preset="focalt_tiny", checkpoint=checkpoint, device="cpu")
    node = NodeProcess(command, ros_environment, tmp_path / "seem_node.log")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "ready:" not in node.output() and node.is_running() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "ready:" in node.output(), node.output()
        node.process.send_signal(signal.SIGTERM)
        exit_code = node.wait(timeout=30.0)
    finally:
        node.stop()
    assert exit_code == 0, node.output()
