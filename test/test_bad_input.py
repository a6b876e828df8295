"""Bad input over DDS to a running seem_node (its own process, tiny reference model): every bad image,
click, prompt and service call is refused with a log line (rate limited) and a diagnostics counter, and the
node keeps serving: a good frame afterwards still yields a result."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from node_client import (  # noqa: F401 (module_ros_context is a fixture)
    CAMERA_TOPIC,
    NodeClient,
    camera_info,
    cleanly_stopped_node,
    connected_client,
    module_ros_context,
    node_command,
    point,
)
from rclpy.qos import QoSProfile
from ros_helpers import NodeProcess, ros_environment  # noqa: F401 (fixtures)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from seem_ros.engine import build_segmenter
from seem_ros.engine.api import SegmenterConfig
from seem_ros.ros.conversions import array_to_image
from seem_ros.srv import SegmentImage, SetVocabulary

MAX_IMAGE_PIXELS = 500_000
COMPRESSED_MAX_IMAGE_PIXELS = 1_000_000
ERROR_LOG_PERIOD = 0.5
COMPRESSED_ERROR_LOG_PERIOD = 1.0
REFUSAL_TIMEOUT = 4.0


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    """(480, 640, 3) uint8 RGB photo."""
    return cv2.resize(skimage.data.coffee(), (640, 480), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def raw_node(ros_environment, reference_dir: Path, tmp_path_factory) -> Iterator[NodeProcess]:  # noqa: F811
    command = node_command(
        reference_dir,
        max_image_pixels=MAX_IMAGE_PIXELS,
        error_log_period=ERROR_LOG_PERIOD,
        diagnostics_period=0.2,
        short_side=256,
    )
    yield from cleanly_stopped_node(
        command, ros_environment, tmp_path_factory.mktemp("raw") / "seem_node.log"
    )


@pytest.fixture(scope="module")
def compressed_node(ros_environment, reference_dir: Path, tmp_path_factory) -> Iterator[NodeProcess]:  # noqa: F811
    command = node_command(
        reference_dir,
        compressed=True,
        namespace="compressed",
        max_image_pixels=COMPRESSED_MAX_IMAGE_PIXELS,
        error_log_period=COMPRESSED_ERROR_LOG_PERIOD,
        diagnostics_period=0.2,
        short_side=256,
    )
    yield from cleanly_stopped_node(
        command, ros_environment, tmp_path_factory.mktemp("compressed") / "seem_node.log"
    )


@pytest.fixture(scope="module")
def raw(module_ros_context, raw_node: NodeProcess) -> Iterator[NodeClient]:  # noqa: F811
    yield from connected_client(module_ros_context, raw_node)


@pytest.fixture(scope="module")
def compressed(module_ros_context, compressed_node: NodeProcess) -> Iterator[NodeClient]:  # noqa: F811
    yield from connected_client(module_ros_context, compressed_node, compressed=True, namespace="compressed")


def _refused(
    client: NodeClient, send: Callable[[], None], expected_log: str, counter: str = "input_errors"
) -> None:
    """send() repeatedly until the node logs `expected_log` and counts it in `counter`."""
    mark, before = client.log_mark(), client.fresh_counter(counter)
    deadline = time.monotonic() + REFUSAL_TIMEOUT
    while expected_log not in client.log_since(mark):
        assert time.monotonic() < deadline, f"{expected_log!r} not in the log:\n{client.log_since(mark)}"
        assert client.process.is_running(), f"seem_node died:\n{client.process.output()}"
        send()
        client.spin_until(lambda: expected_log in client.log_since(mark), 0.3)
    client.wait_for_counter(counter, before + 1)


def _rgb8(width: int, height: int, **changes) -> Image:
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=bytes(width * height * 3))
    for name, value in changes.items():
        setattr(msg, name, value)
    return msg


BAD_IMAGES = [
    pytest.param(
        _rgb8(64, 48, encoding="yuv422", step=128, data=bytes(128 * 48)),
        f"ignored image on {CAMERA_TOPIC}: cannot segment an image with encoding 'yuv422'",
        id="unknown-encoding",
    ),
    pytest.param(
        _rgb8(64, 48, encoding="32FC1", step=256, data=bytes(256 * 48)),
        "cannot segment an image with encoding '32FC1'",
        id="depth-encoding",
    ),
    pytest.param(
        _rgb8(64, 48, step=100, data=bytes(4800)), "step 100 is smaller than one row", id="short-step"
    ),
    pytest.param(
        _rgb8(64, 48, data=bytes(192 * 47)), "expected step * height = 192 * 48", id="truncated-data"
    ),
    pytest.param(_rgb8(64, 48, data=bytes(192 * 48 + 5)), "image data has 9221 bytes", id="extra-data"),
    pytest.param(_rgb8(0, 48, step=0, data=b""), "empty image: width 0, height 48", id="zero-width"),
    pytest.param(_rgb8(64, 0, data=b""), "empty image: width 64, height 0", id="zero-height"),
    pytest.param(
        _rgb8(1000, 600),
        "more than the limit 500000",
        id="too-many-pixels",
    ),
]


@pytest.mark.parametrize(("bad", "expected_log"), BAD_IMAGES)
def test_bad_image_is_logged_counted_and_skipped(raw: NodeClient, coffee, bad: Image, expected_log: str):
    _refused(raw, lambda: raw.publish_frame(bad), expected_log)
    result = raw.assert_serves(array_to_image(coffee, "rgb8"))
    assert (result.width, result.height) == (640, 480)


def test_image_over_the_pixel_limit_is_refused_and_counted(raw: NodeClient, coffee):
    """Refused with a log line naming the limit and counted; the node keeps serving."""
    mark = raw.log_mark()
    before = raw.fresh_counter("input_errors") + raw.fresh_counter("inference_errors")
    large = array_to_image(cv2.resize(coffee, (1000, 600)), "rgb8")
    raw.publish_until(large, lambda: "more than the limit 500000" in raw.log_since(mark))
    assert raw.spin_until(lambda: raw.counter("input_errors") + raw.counter("inference_errors") > before, 5.0)
    raw.assert_serves(array_to_image(coffee, "rgb8"))


def test_many_bad_frames_produce_few_log_lines(raw: NodeClient, coffee):
    raw.spin(ERROR_LOG_PERIOD)
    mark, before = raw.log_mark(), raw.fresh_counter("input_errors")
    bad = _rgb8(64, 48, encoding="yuv422", step=128, data=bytes(128 * 48))
    start = time.monotonic()
    for _ in range(40):
        raw.publish_frame(bad)
        raw.spin(0.01)
    elapsed = time.monotonic() - start
    counted = raw.wait_for_counter("input_errors", before + 20) - before
    lines = raw.log_since(mark).count(f"ignored image on {CAMERA_TOPIC}")
    assert 1 <= lines <= 1 + int(elapsed / ERROR_LOG_PERIOD), (
        f"{counted} frames, {elapsed:.1f} s: {lines} lines"
    )
    raw.assert_serves(array_to_image(coffee, "rgb8"))


def test_clicked_points_that_cannot_be_projected(raw: NodeClient, coffee):
    raw.assert_serves(array_to_image(coffee, "rgb8"))
    _refused(
        raw,
        lambda: raw.clicked_point.publish(point(0.0, 0.0, 1.0)),
        "ignored clicked_point: no CameraInfo received",
    )

    def send_info_then(msg, info=None) -> Callable[[], None]:
        def send() -> None:
            raw.camera_info.publish(info or camera_info())
            raw.spin(0.1)
            raw.clicked_point.publish(msg)

        return send

    _refused(raw, send_info_then(point(0.0, 0.0, 1.0, frame_id="map")), "point is in frame 'map'")
    _refused(raw, send_info_then(point(float("nan"), 0.0, 1.0)), "point (nan, 0.0, 1.0) is not finite")
    _refused(raw, send_info_then(point(0.0, 0.0, float("inf"))), "is not finite")
    _refused(raw, send_info_then(point(0.0, 0.0, -1.0)), "is not in front of the camera")
    _refused(raw, send_info_then(point(5.0, 0.0, 1.0)), "outside the 640 x 480 image")
    bad_distortion = camera_info()
    bad_distortion.d = [0.1, 0.01, 0.0]
    _refused(raw, send_info_then(point(0.0, 0.0, 1.0), bad_distortion), "has 3 coefficients")
    raw.assert_serves(array_to_image(coffee, "rgb8"))


@pytest.mark.parametrize(
    ("x", "y", "z", "expected_log"),
    [
        (float("nan"), 10.0, 1.0, "x must be a finite number of pixels, got nan"),
        (10.0, float("inf"), 1.0, "y must be a finite number of pixels, got inf"),
        (float("-inf"), 10.0, 1.0, "x must be a finite number of pixels, got -inf"),
        (640.0, 10.0, 1.0, "point (640.0, 10.0) is outside the 640x480 image"),
        (-1.0, 10.0, 1.0, "point (-1.0, 10.0) is outside the 640x480 image"),
        (10.0, 10.0, -1.0, "needs a target to refine"),
    ],
)
def test_bad_pixel_click_is_logged_counted_and_skipped(raw: NodeClient, coffee, x, y, z, expected_log: str):
    raw.prompts.publish(String(data="clear"))
    raw.assert_serves(array_to_image(coffee, "rgb8"))
    mark = raw.log_mark()
    _refused(raw, lambda: raw.click_pixel.publish(point(x, y, z)), expected_log)
    assert "ignored click_pixel: " in raw.log_since(mark)
    raw.assert_serves(array_to_image(coffee, "rgb8"))


@pytest.mark.parametrize(
    ("mask", "expected_log"),
    [
        (
            Image(height=10, width=10, encoding="mono8", step=10, data=bytes(100)),
            "the images are 640x480: it must have their size",
        ),
        (
            Image(height=480, width=640, encoding="rgb8", step=1920, data=bytes(1920 * 480)),
            "mask encoding must be one of",
        ),
        (Image(height=480, width=640, encoding="mono8", step=640, data=bytes(100)), "expected step * height"),
    ],
)
def test_bad_prompt_mask_is_logged_counted_and_skipped(
    raw: NodeClient, coffee, mask: Image, expected_log: str
):
    raw.assert_serves(array_to_image(coffee, "rgb8"))
    masks = raw.node.create_publisher(Image, "/prompt_mask", QoSProfile(depth=10))
    try:
        _refused(raw, lambda: masks.publish(mask), expected_log)
    finally:
        raw.node.destroy_publisher(masks)
    raw.assert_serves(array_to_image(coffee, "rgb8"))


def _not_utf8_prompt() -> bytes:
    """A serialized std_msgs/String (CDR, little endian) whose bytes are not UTF-8."""
    payload = b"cup \xff\xfe\xc3("
    return b"\x00\x01\x00\x00" + (len(payload) + 1).to_bytes(4, "little") + payload + b"\x00"


@pytest.mark.parametrize(
    ("data", "expected_log"),
    [
        ("", "ignored prompt: '': Empty prompt"),
        ("  \t  ", "Empty prompt"),
        ("x" * 1001, "Text prompt has 1001 characters; the limit is 1000"),
        (_not_utf8_prompt(), "the text sent was not valid UTF-8"),
        ("vocabulary: cup\n[FATAL] [seem_node]: forged line", "control character U+000A"),
        ("\x1b[2J\x1b[31mred cup", "control character U+001B"),
        ("box: nan, 1, 2, 3", "Box corners must be finite numbers"),
        ("box: 600, 10, 700, 20", "is outside the 640x480 image"),
    ],
)
def test_bad_prompt_is_logged_counted_and_skipped(raw: NodeClient, coffee, data, expected_log: str):
    raw.assert_serves(array_to_image(coffee, "rgb8"))
    message = data if isinstance(data, bytes) else String(data=data)
    _refused(raw, lambda: raw.prompts.publish(message), expected_log)
    raw.assert_serves(array_to_image(coffee, "rgb8"))


def test_text_prompt_over_77_tokens_is_reported(raw: NodeClient, coffee):
    raw.assert_serves(array_to_image(coffee, "rgb8"))
    # sent until logged: refusals on one topic are logged at most once per error_log_period
    try:
        long_text = String(data="the small red cup " * 25)
        _refused(raw, lambda: raw.prompts.publish(long_text), "SEEM reads at most 77")
    finally:
        raw.prompts.publish(String(data="clear"))


def test_bad_service_calls_are_refused(raw: NodeClient, coffee):
    cases = [
        (SetVocabulary, "/set_vocabulary", SetVocabulary.Request(names=[]), "non-empty list"),
        (SetVocabulary, "/set_vocabulary", SetVocabulary.Request(names=["cup", "  "]), "non-empty strings"),
        (
            SetVocabulary,
            "/set_vocabulary",
            SetVocabulary.Request(names=["cup", "table"], thing_names=["dog"]),
            "thing names ['dog'] are not in the vocabulary",
        ),
        (
            SegmentImage,
            "/segment_image",
            SegmentImage.Request(image=_rgb8(64, 48, step=10)),
            "smaller than one row",
        ),
        (
            SegmentImage,
            "/segment_image",
            SegmentImage.Request(image=_rgb8(0, 0, step=0, data=b"")),
            "empty image",
        ),
    ]
    for service_type, name, request, message in cases:
        response = raw.call(service_type, name, request)
        assert not response.success and message in response.message, (name, response.message)
    response = raw.call(
        SegmentImage, "/segment_image", SegmentImage.Request(image=array_to_image(coffee, "rgb8"))
    )
    assert response.success, response.message
    raw.assert_serves(array_to_image(coffee, "rgb8"))


def test_bad_service_calls_are_logged_and_counted(raw: NodeClient):
    raw.spin(ERROR_LOG_PERIOD)  # earlier refusals of the same kind would rate-limit these log lines
    mark, before = raw.log_mark(), raw.fresh_counter("input_errors")
    raw.call(SetVocabulary, "/set_vocabulary", SetVocabulary.Request(names=["cup"], thing_names=["dog"]))
    raw.call(SegmentImage, "/segment_image", SegmentImage.Request(image=_rgb8(64, 48, step=10)))
    raw.spin(0.5)
    assert "not in the vocabulary" in raw.log_since(mark) and "smaller than one row" in raw.log_since(mark)
    assert raw.fresh_counter("input_errors") >= before + 2


def _jpeg(rgb: np.ndarray) -> CompressedImage:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return CompressedImage(format="jpeg", data=encoded.tobytes())


@pytest.mark.parametrize(
    ("data", "expected_log"),
    [
        (b"", f"ignored image on {CAMERA_TOPIC}/compressed: empty compressed image"),
        (b"\xff\xd8\xff\xe0 not really a jpeg", "compressed image of 22 bytes"),
        (bytes(range(256)) * 4, "compressed image of 1024 bytes"),
    ],
)
def test_corrupt_compressed_image_is_logged_counted_and_skipped(
    compressed: NodeClient, coffee, data, expected_log
):
    _refused(
        compressed, lambda: compressed.publish_frame(CompressedImage(format="jpeg", data=data)), expected_log
    )
    result = compressed.assert_serves(_jpeg(coffee))
    assert (result.width, result.height) == (640, 480)


def test_many_corrupt_compressed_frames_produce_few_log_lines(compressed: NodeClient, coffee):
    mark, before = compressed.log_mark(), compressed.fresh_counter("input_errors")
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 corrupt" * 10)
    start = time.monotonic()
    for _ in range(60):
        compressed.publish_frame(corrupt)
        compressed.spin(0.01)
    elapsed = time.monotonic() - start
    counted = compressed.wait_for_counter("input_errors", before + 20) - before
    lines = compressed.log_since(mark).count(f"ignored image on {CAMERA_TOPIC}/compressed")
    most = 1 + int(elapsed / COMPRESSED_ERROR_LOG_PERIOD)
    assert lines <= most, f"{counted} corrupt frames in {elapsed:.1f} s gave {lines} log lines"
    compressed.assert_serves(_jpeg(coffee))


def test_compressed_image_over_the_pixel_limit_is_refused_before_decoding(compressed: NodeClient, coffee):
    ok, encoded = cv2.imencode(".png", np.zeros((1000, 1500, 3), np.uint8))
    assert ok
    large = CompressedImage(format="png", data=encoded.tobytes())
    _refused(
        compressed, lambda: compressed.publish_frame(large), f"ignored image on {CAMERA_TOPIC}/compressed"
    )
    compressed.assert_serves(_jpeg(coffee))


def test_compressed_image_over_the_pixel_limit_is_refused(compressed: NodeClient, coffee):
    """Refused, logged naming the limit, and the node keeps serving."""
    ok, encoded = cv2.imencode(".png", np.zeros((1000, 1500, 3), np.uint8))
    assert ok
    mark = compressed.log_mark()
    large = CompressedImage(format="png", data=encoded.tobytes())
    compressed.publish_until(large, lambda: "more than the limit 1000000" in compressed.log_since(mark))
    compressed.assert_serves(_jpeg(coffee))


def test_extreme_aspect_ratio_does_not_blow_up_the_model_input():
    segmenter = build_segmenter(SegmenterConfig(preset="focalt_tiny", random_weights=True, device="cpu"))
    height, width = segmenter.engine.predictor.transform.output_size(8, 4096)
    assert height * width <= segmenter.settings.max_image_pixels, (height, width)
