"""seem_ros.ros.conversions: images, compressed images, RLE masks, result messages, prompts, projection."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from seem_ros.engine.results import SEMANTIC_VOID, FrameResult, InstanceResult, Segment, mask_bbox
from seem_ros.engine.visualize import instance_color
from seem_ros.ros import conversions as conv
from seem_ros.ros.inputs import images_are_rectified

HEADER = Header(stamp=Time(sec=5, nanosec=6), frame_id="camera_optical")


def _padded_image(pixels: np.ndarray, encoding: str, padding: int, bigendian: bool = False) -> Image:
    """An Image whose rows carry `padding` extra bytes, as some drivers send them."""
    height, width = pixels.shape[:2]
    row = (
        pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<")).reshape(height, -1).view(np.uint8)
    )
    rows = np.concatenate([row, np.full((height, padding), 0xAB, np.uint8)], axis=1)
    return Image(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=rows.shape[1],
        data=rows.tobytes(),
    )


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32SC1", "32FC1"]
)
def test_array_image_round_trip(encoding: str):
    dtype, channels = conv.IMAGE_ENCODINGS[encoding]
    shape = (5, 4) if channels == 1 else (5, 4, channels)
    pixels = (np.arange(np.prod(shape)) * 37 % 250).astype(dtype).reshape(shape)
    msg = conv.array_to_image(pixels, encoding, HEADER)
    assert (msg.height, msg.width, msg.step) == (5, 4, 4 * channels * dtype.itemsize)
    assert msg.header == HEADER
    np.testing.assert_array_equal(conv.image_to_array(msg), pixels)


def test_image_to_array_is_a_view_of_the_message_buffer(rgb: np.ndarray):
    msg = conv.array_to_image(rgb, "rgb8")
    view = conv.image_to_rgb(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize("padding", [1, 3, 8])
def test_padded_rows_are_skipped(rgb: np.ndarray, padding: int):
    msg = _padded_image(rgb, "rgb8", padding)
    pixels = conv.image_to_rgb(msg)
    np.testing.assert_array_equal(pixels, rgb)
    assert np.shares_memory(pixels, np.frombuffer(msg.data, np.uint8))


def test_padded_big_endian_16_bit():
    depth = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    msg = _padded_image(depth, "16UC1", padding=2, bigendian=True)
    result = conv.image_to_array(msg)
    np.testing.assert_array_equal(result, depth)
    assert result.dtype == np.uint16


@pytest.mark.parametrize(
    ("encoding", "conversion"),
    [("bgr8", cv2.COLOR_RGB2BGR), ("rgba8", cv2.COLOR_RGB2RGBA), ("bgra8", cv2.COLOR_RGB2BGRA)],
)
def test_colour_encodings_become_rgb(rgb: np.ndarray, encoding: str, conversion: int):
    msg = conv.array_to_image(cv2.cvtColor(rgb, conversion), encoding)
    np.testing.assert_array_equal(conv.image_to_rgb(msg), rgb)


def test_mono8_becomes_grey_rgb():
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    result = conv.image_to_rgb(conv.array_to_image(grey, "mono8"))
    assert result.shape == (4, 5, 3)
    np.testing.assert_array_equal(result[..., 1], grey)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"encoding": "yuv422"}, "encoding 'yuv422'"),
        ({"step": 20}, "step 20 is smaller than one row"),
        ({"data": bytes(10)}, "expected step * height"),
        ({"height": 0, "data": b""}, "empty image"),
        ({"width": 0}, "empty image"),
    ],
)
def test_bad_images_are_refused(rgb: np.ndarray, changes: dict, message: str):
    msg = conv.array_to_image(rgb, "rgb8")
    for name, value in changes.items():
        setattr(msg, name, value)
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        conv.image_to_rgb(msg)


def test_depth_image_cannot_be_segmented():
    msg = conv.array_to_image(np.zeros((2, 2), np.float32), "32FC1")
    with pytest.raises(ValueError, match="cannot segment an image with encoding '32FC1'"):
        conv.image_to_rgb(msg)


def test_array_to_image_checks_shape_and_dtype(rgb: np.ndarray):
    with pytest.raises(ValueError, match=r"rgb8 needs a H x W x 3 uint8 array, got \(6, 7, 3\) float32"):
        conv.array_to_image(rgb.astype(np.float32), "rgb8")
    with pytest.raises(ValueError, match="mono16 needs a H x W uint16"):
        conv.array_to_image(rgb, "mono16")


@pytest.mark.parametrize("extension", [".png", ".jpg"])
def test_compressed_image(extension: str):
    rows, cols = np.mgrid[0:60, 0:70]
    smooth = np.stack([rows * 4, cols * 3, rows + cols], axis=-1).astype(np.uint8)
    bgr = cv2.cvtColor(smooth, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(extension, bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    decoded = conv.compressed_to_rgb(CompressedImage(format=extension[1:], data=encoded.tobytes()))
    assert decoded.shape == smooth.shape
    tolerance = 0 if extension == ".png" else 8
    assert np.abs(decoded.astype(int) - smooth.astype(int)).max() <= tolerance


def test_compressed_garbage_is_refused():
    with pytest.raises(ValueError, match="could not decode compressed image of 4 bytes, format 'jpeg'"):
        conv.compressed_to_rgb(CompressedImage(format="jpeg", data=b"\x00\x01\x02\x03"))
    with pytest.raises(ValueError, match="empty compressed image"):
        conv.compressed_to_rgb(CompressedImage(format="jpeg"))


def test_compressed_depth_images_are_refused_and_colour_formats_decoded():
    depth = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 7
    ok, encoded = cv2.imencode(".png", depth)
    assert ok
    for image_format in (
        "16UC1; png compressed mono16",
        "32FC1; compressedDepth png",
        "16UC1; compressedDepth",
    ):
        with pytest.raises(ValueError, match="depth or more than 8 bits a channel"):
            conv.compressed_to_rgb(CompressedImage(format=image_format, data=encoded.tobytes()))
    ok, encoded = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))
    for image_format in ("rgb8; png compressed bgr8", "bgr8; png compressed bgr8", "png", "mono8; png"):
        decoded = conv.compressed_to_rgb(CompressedImage(format=image_format, data=encoded.tobytes()))
        assert decoded.shape == (48, 64, 3)


def test_rle_known_values():
    mask = np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(conv.rle_encode(mask), [0, 2, 2, 2])
    np.testing.assert_array_equal(conv.rle_encode(np.zeros((2, 2), bool)), [4])
    np.testing.assert_array_equal(conv.rle_encode(np.ones((2, 2), bool)), [0, 4])
    assert conv.rle_encode(np.zeros((0, 3), bool)).size == 0
    with pytest.raises(ValueError, match=r"cover 5 pixels, expected 2 x 3 = 6"):
        conv.rle_decode([1, 4], 2, 3)


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_rle_round_trip(mask: np.ndarray):
    runs = conv.rle_encode(mask)
    assert runs.dtype == np.uint32
    assert runs.sum() == mask.size
    assert (runs[1:] > 0).all()
    np.testing.assert_array_equal(conv.rle_decode(runs, *mask.shape), mask)


def _ring_instance(track_id: int = 0) -> InstanceResult:
    """A ring (mask with a hole) in an 80 x 60 image."""
    mask = np.zeros((60, 80), dtype=bool)
    mask[5:45, 10:71] = True
    mask[15:25, 25:40] = False
    return InstanceResult(
        instance_id=1,
        track_id=track_id,
        label="donut",
        class_id=7,
        score=0.5,
        mask=mask,
        bbox=mask_bbox(mask),
        prompt="text",
        prompt_text="donut",
    )


def test_instance_message_keeps_holes_and_position():
    instance = _ring_instance(track_id=3)
    msg = conv.instance_to_msg(instance)
    assert (msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height) == (10, 5, 61, 40)
    assert (msg.track_id, msg.label, msg.class_id, msg.prompt_type, msg.prompt_text) == (
        3,
        "donut",
        7,
        "text",
        "donut",
    )
    assert not msg.has_3d
    np.testing.assert_array_equal(conv.instance_mask_from_msg(msg, 60, 80), instance.mask)


def test_empty_instance_has_empty_roi():
    empty = np.zeros((4, 4), bool)
    instance = InstanceResult(1, 0, "x", 0, 0.5, empty, mask_bbox(empty))
    msg = conv.instance_to_msg(instance)
    assert (msg.roi.width, msg.roi.height, len(msg.mask_rle)) == (0, 0, 0)
    assert not conv.instance_mask_from_msg(msg, 4, 4).any()


def _frame_result() -> FrameResult:
    instance = _ring_instance()
    panoptic = instance.mask.astype(np.int32) * 4
    semantic = np.where(instance.mask, 7, SEMANTIC_VOID).astype(np.uint16)
    segment = Segment(
        segment_id=4, class_id=7, label="donut", is_thing=True, area=int(instance.mask.sum()), score=0.5
    )
    return FrameResult(instances=[instance], panoptic=panoptic, segments=[segment], semantic=semantic)


def test_frame_result_to_message():
    msg = conv.frame_result_to_msg(_frame_result(), HEADER, 80, 60)
    assert msg.header == HEADER
    assert (msg.width, msg.height, len(msg.instances)) == (80, 60, 1)
    segment = msg.segments[0]
    assert (segment.id, segment.class_id, segment.label, segment.is_thing) == (4, 7, "donut", True)


@pytest.mark.parametrize("encoding", conv.PANOPTIC_ENCODINGS)
def test_panoptic_and_semantic_images(encoding: str):
    result = _frame_result()
    panoptic = conv.panoptic_image(result, HEADER, encoding)
    assert panoptic.encoding == encoding
    assert panoptic.header == HEADER
    np.testing.assert_array_equal(conv.image_to_array(panoptic), result.panoptic)
    semantic = conv.semantic_image(result, HEADER)
    assert semantic.encoding == "mono16"
    np.testing.assert_array_equal(conv.image_to_array(semantic), result.semantic)


def test_panoptic_ids_too_large_for_mono16():
    result = _frame_result()
    result.panoptic[0, 0] = 70000
    with pytest.raises(ValueError, match="do not fit mono16; use 32SC1"):
        conv.panoptic_image(result, HEADER, "mono16")


def test_overlay_tints_only_the_instance():
    result = _frame_result()
    rgb = np.full((60, 80, 3), 100, np.uint8)
    overlay = conv.overlay_image(rgb, result, HEADER, alpha=0.5, draw_labels=False)
    assert (overlay.encoding, overlay.width, overlay.height, overlay.header) == ("rgb8", 80, 60, HEADER)
    pixels = conv.image_to_array(overlay)
    color = np.array(instance_color(1))
    np.testing.assert_array_equal(pixels[35, 55], (100 * 0.5 + color * 0.5).astype(np.uint8))
    np.testing.assert_array_equal(pixels[55, 2], [100, 100, 100])
    np.testing.assert_array_equal(pixels[20, 32], [100, 100, 100])  # the hole
    assert (rgb == 100).all()


def test_overlay_labels_draw_text():
    rgb = np.zeros((60, 80, 3), np.uint8)
    without = conv.render_overlay(rgb, _frame_result().instances, draw_labels=False)
    with_labels = conv.render_overlay(rgb, _frame_result().instances, draw_labels=True)
    assert (without != with_labels).any()


def test_instance_colors_differ():
    colors = {instance_color(key) for key in range(1, 30)}
    assert len(colors) == 29


def _camera_info() -> CameraInfo:
    info = CameraInfo(width=640, height=480, distortion_model="plumb_bob")
    info.header.frame_id = "camera_optical"
    info.k = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
    info.d = [0.0] * 5
    return info


def test_project_point():
    u, v = conv.project_point(_camera_info(), 0.1, -0.2, 2.0)
    assert u == pytest.approx(320 + 500 * 0.05)
    assert v == pytest.approx(240 - 500 * 0.1)


def test_rectified_images_project_through_p_without_distortion():
    """A raw image with strong distortion, and its rectified image (image_proc: P, a new focal length and
    principal point): the same point lands where each model puts it, as image_geometry does."""
    info = _camera_info()
    info.d = [-0.3, 0.1, 0.0, 0.0, 0.0]
    info.p = [400.0, 0.0, 330.0, 0.0, 0.0, 410.0, 250.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    x, y, z = 0.4, -0.3, 1.0
    u, v = conv.project_point(info, x, y, z, rectified=True)
    assert (u, v) == pytest.approx((330.0 + 400.0 * 0.4, 250.0 - 410.0 * 0.3))
    raw = conv.project_point(info, x, y, z)
    radius2 = (x / z) ** 2 + (y / z) ** 2
    scale = 1.0 - 0.3 * radius2 + 0.1 * radius2**2
    assert raw == pytest.approx((320.0 + 500.0 * 0.4 * scale, 240.0 - 500.0 * 0.3 * scale))
    info.p = [0.0] * 12
    with pytest.raises(ValueError, match="P is zero"):
        conv.project_point(info, x, y, z, rectified=True)


@pytest.mark.parametrize(
    ("setting", "topic", "rectified"),
    [
        ("auto", "/camera/color/image_rect", True),
        ("auto", "/camera/color/image_rect_color/compressed", True),
        ("auto", "/camera/color/image_raw", False),
        ("auto", "/rectified_stuff/image_raw", False),
        ("true", "/camera/image_raw", True),
        ("false", "/camera/image_rect", False),
    ],
)
def test_whether_images_are_rectified(setting: str, topic: str, rectified: bool):
    assert images_are_rectified(setting, topic) is rectified


def test_project_point_errors():
    with pytest.raises(ValueError, match="not in front of the camera"):
        conv.project_point(_camera_info(), 0.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="outside the 640 x 480 image"):
        conv.project_point(_camera_info(), 5.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="no calibration"):
        conv.project_point(CameraInfo(width=640, height=480), 0.0, 0.0, 1.0)
