"""seem_node's prompt inputs, 3-D output, markers and services, over DDS with the node as its own process.

One seem_node (tiny reference model on CPU, started like the launch file starts it, with a depth topic and
markers enabled) serves every test of this module; each test clears the prompts first. The tiny model's
masks carry no meaning, so the tests check what the node does with each input (which target it creates, how
it reports refusals, which stamps and frames its outputs carry), not what the masks look like.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
import skimage.data
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Point32, PointStamped, Polygon, PolygonStamped, Vector3
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from ros_helpers import (  # noqa: F401 (ros_context, ros_environment are fixtures)
    NodeProcess,
    call_service,
    ros_context,
    ros_environment,
    spin_until,
)
from sensor_msgs.msg import CameraInfo, Image, RegionOfInterest
from std_msgs.msg import Header, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from seem_ros.launch_logic import LaunchArguments, plan_nodes
from seem_ros.msg import InstanceMask, InstanceMaskArray, PromptFeedback
from seem_ros.ros.conversions import array_to_image, instance_mask_from_msg
from seem_ros.ros.diagnostics import FrameCounters
from seem_ros.ros.inputs import FrameSlots, PublicationGaps, StampedPairs, WhileModelIdle
from seem_ros.ros.markers import BOX_NAMESPACE, LABEL_NAMESPACE, instance_markers
from seem_ros.ros.seem_node import FEEDBACK_QOS
from seem_ros.srv import SegmentImage, SetVocabulary

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMERA_TOPIC = "/feature_camera/color/image_raw"
CAMERA_INFO_TOPIC = "/feature_camera/color/camera_info"
DEPTH_TOPIC = "/feature_camera/depth/image_raw"
DEPTH_INFO_TOPIC = "/feature_camera/depth/camera_info"
FRAME_ID = "feature_camera_color_optical_frame"
WIDTH, HEIGHT = 640, 480
FX, FY, CX, CY = 500.0, 500.0, 320.0, 240.0
PLANE_MILLIMETRES = 1500
START_TIMEOUT = 120.0
RESULT_TIMEOUT = 60.0
STAMPS = itertools.count(2000)  # header.stamp.sec of published frames, unique within the module


def camera_info() -> CameraInfo:
    return CameraInfo(
        header=Header(frame_id=FRAME_ID),
        width=WIDTH,
        height=HEIGHT,
        distortion_model="plumb_bob",
        d=[0.0] * 5,
        k=[FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0],
        p=[FX, 0.0, CX, 0.0, 0.0, FY, CY, 0.0, 0.0, 0.0, 1.0, 0.0],
    )


# Pure parts first: marker building and stamp pairing.


def _instance(instance_id: int, track_id: int, roi: tuple[int, int, int, int], has_3d: bool) -> InstanceMask:
    x, y, width, height = roi
    instance = InstanceMask(
        instance_id=instance_id,
        track_id=track_id,
        label="cup",
        score=0.875,
        roi=RegionOfInterest(x_offset=x, y_offset=y, width=width, height=height),
        has_3d=has_3d,
    )
    if has_3d:
        instance.centroid = Point(x=0.1, y=-0.2, z=1.5)
        instance.extent = Vector3(x=0.2, y=0.3, z=0.0)
    return instance


def test_markers_label_every_instance_and_box_those_with_3d():
    header = Header(stamp=Time(sec=5, nanosec=6), frame_id=FRAME_ID)
    result = InstanceMaskArray(
        header=header,
        width=WIDTH,
        height=HEIGHT,
        instances=[_instance(1, 3, (0, 0, 10, 10), True), _instance(2, 0, (310, 230, 21, 21), False)],
    )
    markers = instance_markers(result, None).markers
    assert markers[0].action == Marker.DELETEALL
    assert all(marker.header == header for marker in markers)
    labels = [marker for marker in markers if marker.ns == LABEL_NAMESPACE]
    boxes = [marker for marker in markers if marker.ns == BOX_NAMESPACE]
    assert [marker.text for marker in labels] == ["#3 cup 0.88", "cup 0.88"]
    assert [marker.id for marker in labels] == [1, 2]
    assert all(marker.type == Marker.TEXT_VIEW_FACING for marker in labels)
    (box,) = boxes
    assert (box.type, box.id) == (Marker.CUBE, 1)
    assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == (0.1, -0.2, 1.5)
    assert box.scale.x == pytest.approx(0.2) and box.scale.y == pytest.approx(0.3) and box.scale.z > 0.0
    assert labels[0].pose.position.y < box.pose.position.y - 0.15  # above the box (optical y points down)
    # no 3-D: on the viewing ray through the roi centre (320, 240) = the principal point, 1 m away
    position = labels[1].pose.position
    assert (position.x, position.y, position.z) == (0.0, 0.0, 1.0)


def test_stamped_pairs_pair_by_identical_stamp_in_either_order():
    def image(sec: int, encoding: str) -> Image:
        return Image(header=Header(stamp=Time(sec=sec)), encoding=encoding)

    pairs = StampedPairs(capacity=2)
    assert pairs.add(0, image(1, "rgb8")) is None
    assert pairs.add(1, image(2, "mono8")) is None
    first, second = pairs.add(1, image(1, "mono8"))
    assert (first.encoding, second.encoding, first.header.stamp.sec) == ("rgb8", "mono8", 1)
    first, second = pairs.add(0, image(2, "bgr8"))
    assert (first.encoding, second.encoding) == ("bgr8", "mono8")
    for sec in (3, 4, 5):
        pairs.add(0, image(sec, "rgb8"))
    assert pairs.add(1, image(3, "mono8")) is None  # the oldest unpaired image was dropped
    assert pairs.add(1, image(5, "mono8")) is not None


def test_frame_slots_keep_the_newest_frame_per_camera_and_serve_the_longest_waiting_first():
    slots = FrameSlots()
    counters = {name: FrameCounters() for name in ("front", "rear", "wrist")}
    for name, frame in (("front", b"f1"), ("rear", b"r1"), ("front", b"f2"), ("wrist", b"w1")):
        slots.put(name, frame, counters[name])
    assert counters["front"].received == 2 and counters["front"].dropped_replaced == 1
    assert slots.take(2) == [("front", b"f2"), ("rear", b"r1")]  # front waits since f1
    slots.put("rear", b"r2", counters["rear"])
    slots.put("rear", b"r3", counters["rear"])
    assert slots.take(1) == [("wrist", b"w1")]  # a camera publishing more often does not jump the queue
    assert slots.take(1) == [("rear", b"r3")]
    assert not slots.pending() and slots.take(4) == []


def test_frames_a_publisher_sent_while_the_model_ran_count_as_received_and_dropped():
    """Images wait in DDS while the model runs (depth 1): the publication sequence numbers say how many
    were replaced there, per publisher; a middleware without them counts none."""
    gaps, slots, counters = PublicationGaps(), FrameSlots(), FrameCounters()
    camera, other = {"data": [1] * 16}, {"data": [2] * 16}
    for number, publisher, skipped in ((1, camera, 0), (2, camera, 0), (7, camera, 4), (3, other, 0)):
        info = {"publication_sequence_number": number, "publisher_gid": publisher}
        assert gaps.skipped(info) == skipped
        slots.put("front", b"frame", counters, skipped)
        slots.take(1)
    assert (counters.received, counters.dropped_replaced) == (8, 4)
    assert gaps.skipped({"publication_sequence_number": None, "publisher_gid": None}) == 0
    few = PublicationGaps(max_publishers=2)
    for number, publisher in ((1, camera), (1, other), (5, camera), (1, {"data": [3] * 16})):
        few.skipped({"publication_sequence_number": number, "publisher_gid": publisher})
    assert few.skipped({"publication_sequence_number": 9, "publisher_gid": camera}) == 3  # kept
    assert few.skipped({"publication_sequence_number": 9, "publisher_gid": other}) == 0  # forgotten


def test_sensor_callbacks_wait_while_the_model_runs_and_the_executor_is_woken_after():
    """`WhileModelIdle`: no sensor callback may start during an inference step (the executor leaves its
    subscriptions out of its wait); after the step the executor is woken to take what arrived."""

    class Entity:
        pass

    group, image, depth, woken = WhileModelIdle(), Entity(), Entity(), []
    group.add_entity(image)
    group.add_entity(depth)
    with group.model_running(lambda: woken.append(True)):
        assert not group.can_execute(image) and not group.beginning_execution(image)
        assert not woken
    assert woken == [True]
    assert group.can_execute(image) and group.beginning_execution(image)
    assert not group.can_execute(depth)  # one sensor callback at a time
    group.ending_execution(image)
    assert group.can_execute(depth)


# The node over DDS.


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    """(480, 640, 3) uint8 RGB photo."""
    return cv2.resize(skimage.data.coffee(), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def seem_node(
    ros_environment: dict[str, str],  # noqa: F811
    reference_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NodeProcess]:
    arguments = LaunchArguments(
        camera_topic=CAMERA_TOPIC,
        depth_topic=DEPTH_TOPIC,
        preset="focalt_tiny",
        checkpoint=str(reference_dir / "tiny_focalt_v1.safetensors"),
        device="cpu",
    )
    (spec,) = plan_nodes(arguments, REPO_ROOT)
    command = [
        *spec.command(python=sys.executable),
        *("-p", "publish_markers:=true", "-p", "error_log_period:=0.0", "-p", "max_lost_frames:=1000"),
    ]
    node = NodeProcess(command, ros_environment, tmp_path_factory.mktemp("seem_node") / "seem_node.log")
    try:
        yield node
    finally:
        exit_code = node.stop()
    assert exit_code == 0, f"seem_node did not shut down cleanly ({exit_code}):\n{node.output()}"


class Client:
    """This test's side: camera, depth camera, prompt sources, and what seem_node sends back."""

    def __init__(self, context: rclpy.context.Context, process: NodeProcess) -> None:
        self.process = process
        self.node = Node("seem_node_feature_client", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        command_qos = QoSProfile(depth=10)
        self.images = self.node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
        self.camera_info = self.node.create_publisher(CameraInfo, CAMERA_INFO_TOPIC, qos_profile_sensor_data)
        self.depth = self.node.create_publisher(Image, DEPTH_TOPIC, qos_profile_sensor_data)
        self.depth_info = self.node.create_publisher(CameraInfo, DEPTH_INFO_TOPIC, qos_profile_sensor_data)
        self.prompt = self.node.create_publisher(String, "/prompt", command_qos)
        self.clicked_point = self.node.create_publisher(PointStamped, "/clicked_point", command_qos)
        self.click_pixel = self.node.create_publisher(PointStamped, "/click_pixel", command_qos)
        self.scribble = self.node.create_publisher(PolygonStamped, "/scribble", command_qos)
        self.prompt_mask = self.node.create_publisher(Image, "/prompt_mask", command_qos)
        self.referring_image = self.node.create_publisher(Image, "/referring_image", command_qos)
        self.referring_mask = self.node.create_publisher(Image, "/referring_mask", command_qos)
        self.results: dict[int, InstanceMaskArray] = {}
        self.markers: dict[int, MarkerArray] = {}
        self.feedback: list[PromptFeedback] = []
        self.node.create_subscription(PromptFeedback, "/prompt_feedback", self.feedback.append, FEEDBACK_QOS)
        self.node.create_subscription(
            InstanceMaskArray, "/instances", lambda msg: self.results.update({msg.header.stamp.sec: msg}), 10
        )
        self.node.create_subscription(
            MarkerArray,
            "/markers",
            lambda msg: self.markers.update({msg.markers[0].header.stamp.sec: msg}),
            10,
        )

    def wait_for_node(self) -> None:
        publishers = (self.images, self.depth, self.prompt, self.clicked_point, self.scribble)
        ready = spin_until(
            self.executor,
            lambda: (
                all(pub.get_subscription_count() > 0 for pub in publishers) or not self.process.is_running()
            ),
            START_TIMEOUT,
        )
        assert ready and self.process.is_running(), f"seem_node did not start:\n{self.process.output()}"

    def wait_for_log(self, *lines: str, timeout: float = 30.0) -> None:
        assert spin_until(
            self.executor, lambda: all(line in self.process.output() for line in lines), timeout
        ), f"expected {lines} in the log:\n{self.process.output()}"

    def stream(
        self,
        rgb: np.ndarray,
        condition: Callable[[list[InstanceMaskArray]], bool],
        depth: np.ndarray | None = None,
        period: float = 0.3,
        info: CameraInfo | None = None,
    ) -> list[InstanceMaskArray]:
        """Publish rgb with its CameraInfo (and depth with its CameraInfo, first) under new stamps until
        condition holds for the results of this call's frames; returns those results, oldest first."""
        sent: list[int] = []

        def results() -> list[InstanceMaskArray]:
            return [self.results[sec] for sec in sent if sec in self.results]

        deadline = time.monotonic() + RESULT_TIMEOUT
        while not condition(results()):
            assert time.monotonic() < deadline, (
                f"no such result from seem_node in time:\n{self.process.output()}"
            )
            assert self.process.is_running(), f"seem_node died:\n{self.process.output()}"
            header = Header(stamp=Time(sec=next(STAMPS), nanosec=0), frame_id=FRAME_ID)
            stamped_info = info or camera_info()
            stamped_info.header = header
            if depth is not None:
                self.depth_info.publish(stamped_info)
                self.depth.publish(array_to_image(depth, "16UC1", header))
            self.camera_info.publish(stamped_info)
            self.images.publish(array_to_image(rgb, "rgb8", header))
            sent.append(header.stamp.sec)
            spin_until(self.executor, lambda: condition(results()), period)
        return results()

    def call(self, service_type, name: str, request):
        return call_service(
            self.node, self.executor, service_type, name, request, self.process.output, RESULT_TIMEOUT
        )

    def clear(self) -> None:
        response = self.call(Trigger, "/clear_prompts", Trigger.Request())
        assert response.success, response.message

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def client(ros_context: rclpy.context.Context, seem_node: NodeProcess) -> Iterator[Client]:  # noqa: F811
    test_client = Client(ros_context, seem_node)
    try:
        test_client.wait_for_node()
        yield test_client
    finally:
        test_client.close()


def tracked(result: InstanceMaskArray) -> list[InstanceMask]:
    return [instance for instance in result.instances if instance.track_id > 0]


def has_prompt_types(*kinds: str) -> Callable[[list[InstanceMaskArray]], bool]:
    """Condition: the newest result has tracked instances of exactly these prompt types."""
    return lambda results: (
        bool(results) and sorted(i.prompt_type for i in tracked(results[-1])) == sorted(kinds)
    )


def test_clicked_point_is_projected_through_camera_info(client: Client, coffee: np.ndarray):
    """RViz "Publish Point": refused before any CameraInfo, then projected into a click; a point in another
    frame is refused. (Runs first in this module: the node must not have a CameraInfo yet.)"""
    client.clear()
    point = PointStamped(header=Header(frame_id=FRAME_ID), point=Point(x=0.1, y=-0.05, z=1.0))
    client.clicked_point.publish(point)
    client.wait_for_log(f"ignored clicked_point: no CameraInfo received on {CAMERA_INFO_TOPIC} yet")

    # (0.1, -0.05, 1.0) m -> u = 500 * 0.1 + 320 = 370, v = 500 * -0.05 + 240 = 215
    accepted = "positive click at (370.0, 215.0)"
    for _ in range(10):  # CameraInfo is best effort: resend until the node has it
        client.camera_info.publish(camera_info())
        spin_until(client.executor, lambda: False, 0.1)
        client.clicked_point.publish(point)
        if spin_until(client.executor, lambda: accepted in client.process.output(), 1.0):
            break
    client.wait_for_log(accepted)
    # no image yet, but the CameraInfo gives the images' size: a click outside it is refused when given
    client.click_pixel.publish(PointStamped(point=Point(x=700.0, y=100.0)))
    client.wait_for_log("ignored click_pixel: point (700.0, 100.0) is outside the 640x480 image")
    results = client.stream(coffee, has_prompt_types("click"))
    assert results[-1].header.frame_id == FRAME_ID

    client.clicked_point.publish(PointStamped(header=Header(frame_id="map"), point=Point(x=1.0, z=1.0)))
    client.clicked_point.publish(PointStamped(header=Header(frame_id=FRAME_ID), point=Point(x=0.1, z=-1.0)))
    client.wait_for_log(
        "ignored clicked_point: point is in frame 'map', but only points in the camera optical frame "
        f"'{FRAME_ID}' can be projected without tf2_ros (not installed)",
        "ignored clicked_point: point (0.100, 0.000, -1.000) is not in front of the camera",
    )
    results = client.stream(coffee, lambda results: len(results) >= 1)
    assert [i.prompt_type for i in tracked(results[-1])] == ["click"]  # the refused points added nothing


def test_box_scribble_mask_and_referring_image_prompts(client: Client, coffee: np.ndarray):
    client.clear()
    client.stream(coffee, lambda results: len(results) >= 1)  # the node now knows the image size

    client.prompt.publish(String(data="box: 100, 120, 300, 330"))
    client.scribble.publish(
        PolygonStamped(
            header=Header(frame_id=FRAME_ID),
            polygon=Polygon(
                points=[Point32(x=400.0, y=300.0), Point32(x=450.0, y=320.0), Point32(x=500.0, y=310.0)]
            ),
        )
    )
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[150:330, 220:420] = 255
    client.prompt_mask.publish(array_to_image(mask, "mono8"))
    client.prompt_mask.publish(array_to_image(mask[:240, :320], "mono8"))
    reference_header = Header(stamp=Time(sec=42, nanosec=7), frame_id="reference")
    client.referring_mask.publish(array_to_image(mask, "mono8", reference_header))  # the mask may come first
    client.referring_image.publish(array_to_image(coffee, "rgb8", reference_header))
    client.scribble.publish(
        PolygonStamped(polygon=Polygon(points=[Point32(x=10.0, y=10.0), Point32(x=700.0, y=10.0)]))
    )
    client.wait_for_log(
        "prompt: box (100.0, 120.0, 300.0, 330.0)",
        "positive scribble through 3 points from (400.0, 300.0)",
        f"mask prompt of {int((mask > 0).sum())} pixels",
        "ignored prompt_mask: mask is 320x240, the images are 640x480: it must have their size",
        f"referring image {WIDTH}x{HEIGHT} with a mask of {int((mask > 0).sum())} pixels",
        "ignored scribble: point (700.0, 10.0) is outside the 640x480 image",
    )
    client.stream(coffee, has_prompt_types("box", "scribble", "mask", "referring_image"))
    # a box answers inside the box on its first frame (later frames track the object wherever it goes);
    # that frame may be one published before the prompts, so look through every result received
    first_with_box = next(
        result
        for _, result in sorted(client.results.items())
        if any(instance.prompt_type == "box" for instance in tracked(result))
    )
    (box,) = [i for i in tracked(first_with_box) if i.prompt_type == "box"]
    assert box.roi.x_offset >= 100 and box.roi.x_offset + box.roi.width <= 301
    assert box.roi.y_offset >= 120 and box.roi.y_offset + box.roi.height <= 331

    negative = PolygonStamped(
        polygon=Polygon(points=[Point32(x=150.0, y=200.0, z=-1.0), Point32(x=200.0, y=200.0, z=-1.0)])
    )
    client.scribble.publish(negative)
    client.wait_for_log("negative scribble through 2 points from (150.0, 200.0)")
    results = client.stream(coffee, lambda results: len(results) >= 1)
    assert len(tracked(results[-1])) == 4  # a negative scribble refines a target, it adds none
    assert client.process.is_running()


def test_depth_gives_instances_a_centroid_extent_and_box_marker(client: Client, coffee: np.ndarray):
    """A synthetic depth image (a wall 1.5 m away, 16UC1) with the real photo: every instance gets a 3-D
    centroid and extent in the colour optical frame; frames without a matching depth image get none."""
    client.clear()
    client.prompt.publish(String(data="box: 200, 150, 440, 330"))
    client.wait_for_log("prompt: box (200.0, 150.0, 440.0, 330.0)")
    depth = np.full((HEIGHT, WIDTH), PLANE_MILLIMETRES, dtype=np.uint16)
    depth[:10] = 0  # no readings in the top rows

    def depth_result(results: list[InstanceMaskArray]) -> bool:
        return bool(results) and bool(tracked(results[-1])) and results[-1].header.stamp.sec in client.markers

    result = client.stream(coffee, depth_result, depth=depth)[-1]
    z = PLANE_MILLIMETRES / 1000.0
    for instance in result.instances:
        assert instance.has_3d, instance
        mask = instance_mask_from_msg(instance, HEIGHT, WIDTH) & (depth > 0)
        rows, columns = np.nonzero(mask)
        assert instance.centroid.z == pytest.approx(z)
        assert instance.centroid.x == pytest.approx((np.median(columns) - CX) * z / FX, abs=1e-4)
        assert instance.centroid.y == pytest.approx((np.median(rows) - CY) * z / FY, abs=1e-4)
        spread = np.percentile(columns, 95) - np.percentile(columns, 5)
        assert instance.extent.x == pytest.approx(spread * z / FX, abs=1e-4)
        assert instance.extent.z == pytest.approx(0.0, abs=1e-6)

    markers = client.markers[result.header.stamp.sec].markers
    assert markers[0].action == Marker.DELETEALL
    assert all(marker.header == result.header for marker in markers)
    boxes = {marker.id: marker for marker in markers if marker.ns == BOX_NAMESPACE}
    labels = [marker for marker in markers if marker.ns == LABEL_NAMESPACE]
    assert len(labels) == len(boxes) == len(result.instances)
    for instance in result.instances:
        box = boxes[instance.instance_id]
        assert box.type == Marker.CUBE
        assert box.pose.position == instance.centroid

    without_depth = client.stream(coffee, lambda results: bool(results) and bool(tracked(results[-1])))[-1]
    assert without_depth.instances and not any(instance.has_3d for instance in without_depth.instances)

    unaligned = client.stream(
        coffee, lambda results: bool(results) and bool(tracked(results[-1])), depth=depth[::2, ::2].copy()
    )[-1]
    assert not any(instance.has_3d for instance in unaligned.instances)
    client.wait_for_log(
        "ignored depth: depth image is 320x240, the colour image 640x480: it must be aligned to the colour "
        "image"
    )
    assert client.process.is_running()


def test_services(client: Client, coffee: np.ndarray):
    client.clear()
    response = client.call(SetVocabulary, "/set_vocabulary", SetVocabulary.Request(names=["cup", ""]))
    assert not response.success and "class names must be non-empty strings" in response.message
    request = SetVocabulary.Request(names=["cup", "table"], thing_names=["cup", "saucer"])
    response = client.call(SetVocabulary, "/set_vocabulary", request)
    assert not response.success and response.message == "thing names ['saucer'] are not in the vocabulary"
    request = SetVocabulary.Request(names=["cup", "saucer", "table"], thing_names=["cup", "saucer"])
    response = client.call(SetVocabulary, "/set_vocabulary", request)
    assert response.success and response.message == "vocabulary of 3 names, 2 things"
    results = client.stream(coffee, lambda results: bool(results) and bool(results[-1].segments))
    assert {segment.label for segment in results[-1].segments} <= {"cup", "saucer", "table"}

    client.prompt.publish(String(data="box: 100, 120, 300, 330"))
    client.stream(coffee, has_prompt_types("box"))
    response = client.call(Trigger, "/reset_tracking", Trigger.Request())
    assert response.success and response.message == "tracking reset"
    client.stream(coffee, has_prompt_types("box"))  # the target restarts from its prompt
    response = client.call(Trigger, "/clear_prompts", Trigger.Request())
    assert response.success and response.message == "prompts cleared"
    results = client.stream(coffee, lambda results: len(results) >= 1)
    assert not tracked(results[-1])

    image = array_to_image(coffee, "rgb8", Header(stamp=Time(sec=77, nanosec=8), frame_id=FRAME_ID))
    response = client.call(SegmentImage, "/segment_image", SegmentImage.Request(image=image, text="the cup"))
    assert response.success, response.message
    assert response.result.header == image.header
    texts = [
        (i.prompt_type, i.prompt_text, i.track_id)
        for i in response.result.instances
        if i.prompt_type == "text"
    ]
    assert texts == [("text", "the cup", 0)]  # one-shot: no track is created in the stream
    results = client.stream(coffee, lambda results: len(results) >= 1)
    assert not tracked(results[-1])
    bad = Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8))
    response = client.call(SegmentImage, "/segment_image", SegmentImage.Request(image=bad))
    assert not response.success and "cannot segment an image with encoding 'yuv422'" in response.message
    client.clear()


def test_every_parameter_reads_back_as_ros2_param_get_and_dump_read_it(client: Client):
    """`ros2 param dump` asks for every listed parameter at once; rclpy answers nothing at all if one of
    them is unset (as a string array declared by type alone is), so every one must hold a typed value."""
    listed = client.call(ListParameters, "/seem_node/list_parameters", ListParameters.Request())
    names = [name for name in listed.result.names if name != "use_sim_time"]
    assert {"vocabulary", "thing_names", "cameras", "preset", "short_side"} <= set(names)
    values = client.call(GetParameters, "/seem_node/get_parameters", GetParameters.Request(names=names))
    assert len(values.values) == len(names)
    by_name = dict(zip(names, values.values, strict=True))
    assert not [name for name, value in by_name.items() if value.type == ParameterType.PARAMETER_NOT_SET]
    for name in ("vocabulary", "thing_names", "cameras"):
        assert by_name[name].type == ParameterType.PARAMETER_STRING_ARRAY
        assert list(by_name[name].string_array_value) == []
    change = Parameter(
        name="vocabulary",
        value=ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=["cup"]),
    )
    (result,) = client.call(
        SetParameters, "/seem_node/set_parameters", SetParameters.Request(parameters=[change])
    ).results
    assert not result.successful and "read-only" in result.reason


def test_targets_the_tracker_drops_are_logged_and_told_on_prompt_feedback(client: Client, coffee: np.ndarray):
    """A box near the corner of 640x480 images, then images half that size: the target's prompt lies
    outside them, so the tracker drops it; the operator hears of it as of a target a prompt removes."""
    client.clear()
    client.prompt.publish(String(data="box: 500, 360, 600, 460"))
    results = client.stream(coffee, has_prompt_types("box"))
    (track_id,) = [instance.track_id for instance in tracked(results[-1])]
    small = cv2.resize(coffee, (WIDTH // 2, HEIGHT // 2), interpolation=cv2.INTER_AREA)
    info = camera_info()
    info.width, info.height = WIDTH // 2, HEIGHT // 2
    results = client.stream(small, lambda results: len(results) >= 1, info=info)
    assert not tracked(results[-1])
    detail = "its prompts lie outside the 320x240 images"
    client.wait_for_log(f"track {track_id} (box) dropped: {detail}")
    assert spin_until(
        client.executor, lambda: any(item.action == "dropped" for item in client.feedback), RESULT_TIMEOUT
    )
    (dropped,) = [item for item in client.feedback if item.action == "dropped"]
    assert dropped.accepted and dropped.prompt == ""
    assert list(dropped.removed_track_ids) == [track_id] and track_id not in dropped.track_ids
    assert dropped.message == f"Stopped tracking box (number {track_id}): {detail}."
