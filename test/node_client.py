"""The test side of seem_node runs over DDS: a command line for the node and a client that feeds it frames,
prompts and clicks and reads its results, diagnostics counters, log and memory.

Used by test_bad_input.py, test_faults.py and test_load.py (the fixtures come from ros_helpers).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import Point, PointStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from ros_helpers import NodeProcess, call_service, initialised_context, spin_until
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

from seem_ros.launch_logic import LaunchArguments, format_parameter_value, plan_nodes
from seem_ros.msg import InstanceMaskArray

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMERA_TOPIC = "/test_camera/image_raw"
CAMERA_INFO_TOPIC = "/test_camera/camera_info"
FRAME_ID = "test_camera_optical_frame"
START_TIMEOUT = 120.0
RESULT_TIMEOUT = 60.0


def node_command(
    reference_dir: Path | None = None,
    compressed: bool = False,
    device: str = "cpu",
    namespace: str = "",
    **parameters,
) -> list[str]:
    """`python -m seem_ros.ros.seem_node --ros-args ...` as the launch file starts it, with the tiny reference
    model (when reference_dir is given) and extra `-p name:=value` parameters. A namespace keeps the prompts,
    services and diagnostics of the node apart from another node's (it is also named after the namespace)."""
    checkpoint = str(reference_dir / "tiny_focalt_v1.safetensors") if reference_dir is not None else ""
    arguments = LaunchArguments(
        camera_topic=CAMERA_TOPIC,
        compressed=compressed,
        preset="focalt_tiny",
        checkpoint=checkpoint,
        device=device,
    )
    (spec,) = plan_nodes(arguments, REPO_ROOT)
    spec = replace(spec, name=node_name(namespace))
    extra = [
        item
        for name, value in parameters.items()
        for item in ("-p", f"{name}:={format_parameter_value(value)}")
    ]
    if namespace:
        extra += ["-r", f"__ns:=/{namespace}"]
    return [*spec.command(python=sys.executable), *extra]


@pytest.fixture(scope="module")
def module_ros_context(ros_environment: dict[str, str]) -> Iterator[rclpy.context.Context]:
    """An rclpy context shared by the tests of one module: one DDS participant, discovered once."""
    with initialised_context() as context:
        yield context


def node_name(namespace: str = "") -> str:
    return f"seem_node_{namespace}" if namespace else "seem_node"


def resident_memory_bytes(pid: int) -> int:
    """VmRSS of a process, bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def camera_info(width: int = 640, height: int = 480) -> CameraInfo:
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    info.header.frame_id = FRAME_ID
    info.k = [500.0, 0.0, width / 2, 0.0, 500.0, height / 2, 0.0, 0.0, 1.0]
    info.d = [0.0] * 5
    return info


def point(x: float, y: float, z: float, frame_id: str = FRAME_ID) -> PointStamped:
    return PointStamped(header=Header(frame_id=frame_id), point=Point(x=x, y=y, z=z))


class NodeClient:
    """Publishes camera frames, prompts and clicks to seem_node and collects what it sends back."""

    def __init__(
        self,
        context: rclpy.context.Context,
        process: NodeProcess,
        compressed: bool = False,
        namespace: str = "",
    ) -> None:
        self.process = process
        self.status_name = f"{node_name(namespace)}: segmentation"
        prefix = f"/{namespace}" if namespace else ""
        self.node = Node("seem_node_test_client", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        image_type, topic = (
            (CompressedImage, f"{CAMERA_TOPIC}/compressed") if compressed else (Image, CAMERA_TOPIC)
        )
        self.images = self.node.create_publisher(image_type, topic, qos_profile_sensor_data)
        self.camera_info = self.node.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, qos_profile_sensor_data)
        commands = QoSProfile(depth=100)
        self.prompts = self.node.create_publisher(String, f"{prefix}/prompt", commands)
        self.click_pixel = self.node.create_publisher(PointStamped, f"{prefix}/click_pixel", commands)
        self.clicked_point = self.node.create_publisher(PointStamped, f"{prefix}/clicked_point", commands)
        self.service_prefix = prefix
        self.instances: list[InstanceMaskArray] = []
        self.received_at: list[float] = []
        self.statuses: list[DiagnosticStatus] = []
        self.node.create_subscription(
            InstanceMaskArray, f"{prefix}/instances", self._on_instances, QoSProfile(depth=50)
        )
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, QoSProfile(depth=50)
        )
        self._frames_sent = 0

    def _on_instances(self, msg: InstanceMaskArray) -> None:
        self.instances.append(msg)
        self.received_at.append(self.now())

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        self.statuses += [status for status in msg.status if status.name == self.status_name]

    def now(self) -> float:
        """ROS time of this client, seconds (stamps of the frames it sends)."""
        return self.node.get_clock().now().nanoseconds * 1e-9

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()

    # waiting
    def spin(self, seconds: float) -> None:
        spin_until(self.executor, lambda: False, seconds)

    def spin_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        return spin_until(self.executor, condition, timeout)

    def wait_for_node(self, timeout: float = START_TIMEOUT) -> None:
        """Until the node subscribes to the images and the prompts (or dies, which fails the test)."""
        ready = self.spin_until(
            lambda: (
                (self.images.get_subscription_count() > 0 and self.prompts.get_subscription_count() > 0)
                or not self.process.is_running()
            ),
            timeout,
        )
        assert ready and self.process.is_running(), f"seem_node did not start:\n{self.process.output()}"

    # frames
    def publish_frame(self, frame: Image | CompressedImage, stamp: float | None = None) -> Header:
        """Publish with a new header (stamp: ROS seconds; default a counter, distinct per frame)."""
        self._frames_sent += 1
        if stamp is None:
            stamp_msg = Time(sec=1000 + self._frames_sent, nanosec=0)
        else:
            stamp_msg = Time(sec=int(stamp), nanosec=int((stamp % 1.0) * 1e9))
        frame.header = Header(stamp=stamp_msg, frame_id=FRAME_ID)
        self.images.publish(frame)
        return frame.header

    def publish_until(
        self, frame: Image | CompressedImage, condition: Callable[[], bool], period: float = 0.25
    ) -> None:
        """Publish `frame` every `period` seconds until condition() holds (fails after RESULT_TIMEOUT)."""
        deadline = time.monotonic() + RESULT_TIMEOUT
        while not condition():
            assert time.monotonic() < deadline, f"condition not met in time:\n{self.process.output()}"
            assert self.process.is_running(), f"seem_node died:\n{self.process.output()}"
            self.publish_frame(frame)
            self.spin_until(condition, period)

    def assert_serves(self, frame: Image | CompressedImage) -> InstanceMaskArray:
        """The node is alive and still turns a good frame into a result."""
        known = len(self.instances)
        self.publish_until(frame, lambda: len(self.instances) > known)
        assert self.process.is_running()
        return self.instances[-1]

    def call(self, service_type, name: str, request):
        """Call a service of the node and return its response."""
        return call_service(
            self.node,
            self.executor,
            service_type,
            self.service_prefix + name,
            request,
            self.process.output,
            RESULT_TIMEOUT,
        )

    # diagnostics
    def diagnostics(self) -> dict[str, str]:
        """The values of the newest diagnostics status of the node ({} before the first)."""
        return {item.key: item.value for item in self.statuses[-1].values} if self.statuses else {}

    def counter(self, name: str) -> int:
        return int(self.diagnostics().get(name, 0))

    def wait_for_counter(self, name: str, minimum: int, timeout: float = 10.0) -> int:
        """Spin until the diagnostics counter `name` reaches `minimum`; returns its value then."""
        reached = self.spin_until(lambda: self.counter(name) >= minimum, timeout)
        assert reached, f"diagnostics {name} = {self.counter(name)} < {minimum}: {self.diagnostics()}"
        return self.counter(name)

    def fresh_counter(self, name: str) -> int:
        """A counter's value in a diagnostics message published after this call."""
        known = len(self.statuses)
        assert self.spin_until(lambda: len(self.statuses) > known, 10.0), "no diagnostics from seem_node"
        return self.counter(name)

    def settled_counter(self, name: str, timeout: float = 30.0) -> int:
        """A counter's value once two diagnostics messages in a row agree on it: frames published while
        waiting for a result may still be in the node's queue when the result arrives."""
        deadline = time.monotonic() + timeout
        value = self.fresh_counter(name)
        while (latest := self.fresh_counter(name)) != value:
            assert time.monotonic() < deadline, f"diagnostics {name} still changing after {timeout} s"
            value = latest
        return value

    # log
    def log_mark(self) -> int:
        return len(self.process.output())

    def log_since(self, mark: int) -> str:
        return self.process.output()[mark:]

    def wait_for_log(self, text: str, mark: int = 0, timeout: float = 10.0) -> None:
        found = self.spin_until(lambda: text in self.log_since(mark), timeout)
        assert found, f"{text!r} not in the log of seem_node:\n{self.log_since(mark)}"


def cleanly_stopped_node(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[NodeProcess]:
    """Generator for fixtures: a node process, stopped afterwards, that must have exited with code 0."""
    node = NodeProcess(command, env, log_path)
    try:
        yield node
    finally:
        exit_code = node.stop()
    assert exit_code == 0, f"seem_node did not shut down cleanly ({exit_code}):\n{node.output()}"


def connected_client(
    context: rclpy.context.Context, node: NodeProcess, start_timeout: float = START_TIMEOUT, **options: object
) -> Iterator[NodeClient]:
    """Generator for fixtures: a NodeClient that has seen the node come up, closed afterwards."""
    client = NodeClient(context, node, **options)
    try:
        client.wait_for_node(start_timeout)
        yield client
    finally:
        client.close()
