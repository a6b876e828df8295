"""Property-based tests (hypothesis) of the message conversions: every message either converts exactly or is
refused with ValueError, never with another exception (which would escape the node's callbacks)."""

from __future__ import annotations

import math
import struct
import sys
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from seem_ros.engine.results import InstanceResult, mask_bbox
from seem_ros.ros import conversions as conv

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

encodings = st.sampled_from(sorted(conv.IMAGE_ENCODINGS))
rgb_encodings = st.sampled_from(sorted(conv._TO_RGB))
sides = st.integers(min_value=1, max_value=12)


def _pixels(draw: st.DrawFn, encoding: str, height: int, width: int) -> np.ndarray:
    dtype, channels = conv.IMAGE_ENCODINGS[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype.kind == "f":
        elements = st.floats(width=32, allow_nan=False)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    return draw(arrays(dtype, shape, elements=elements))


@st.composite
def padded_messages(draw: st.DrawFn, encoding_strategy=encodings) -> tuple[Image, np.ndarray]:
    """An Image message with padded rows and either byte order, and the pixels it holds."""
    encoding = draw(encoding_strategy)
    height, width = draw(sides), draw(sides)
    pixels = _pixels(draw, encoding, height, width)
    dtype = pixels.dtype
    big_endian = draw(st.booleans()) if dtype.itemsize > 1 else False
    padding = draw(st.integers(min_value=0, max_value=7))
    row_bytes = width * pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3 else 1)
    ordered = pixels.astype(dtype.newbyteorder(">" if big_endian else "<"))
    rows = ordered.reshape(height, row_bytes // dtype.itemsize).view(np.uint8)
    padded = np.concatenate([rows, np.full((height, padding), 0xAB, np.uint8)], axis=1)
    msg = Image(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(big_endian),
        step=row_bytes + padding,
        data=padded.tobytes(),
    )
    return msg, pixels


@FAST
@given(encodings, sides, sides, st.data())
def test_array_image_round_trip(encoding: str, height: int, width: int, data: st.DataObject):
    pixels = _pixels(data.draw, encoding, height, width)
    msg = conv.array_to_image(pixels, encoding)
    assert msg.step * msg.height == len(msg.data)
    assert bool(msg.is_bigendian) == (sys.byteorder == "big" and pixels.itemsize > 1)
    np.testing.assert_array_equal(conv.image_to_array(msg), pixels)


@FAST
@given(padded_messages())
def test_padded_rows_and_byte_order_are_honoured(message: tuple[Image, np.ndarray]):
    msg, pixels = message
    result = conv.image_to_array(msg)
    assert result.shape == pixels.shape
    assert result.dtype.newbyteorder("=") == pixels.dtype.newbyteorder("=")
    np.testing.assert_array_equal(result, pixels)


@FAST
@given(padded_messages(rgb_encodings))
def test_colour_encodings_become_rgb(message: tuple[Image, np.ndarray]):
    msg, pixels = message
    rgb = conv.image_to_rgb(msg)
    assert rgb.shape == (msg.height, msg.width, 3) and rgb.dtype == np.uint8
    if msg.encoding in ("rgb8", "rgba8"):
        np.testing.assert_array_equal(rgb, pixels[..., :3])
    elif msg.encoding in ("bgr8", "bgra8"):
        np.testing.assert_array_equal(rgb, pixels[..., 2::-1])
    else:
        np.testing.assert_array_equal(rgb, np.repeat(pixels[..., None], 3, axis=2))


@FAST
@given(padded_messages(), st.integers(min_value=1, max_value=64))
def test_step_smaller_than_a_row_is_refused(message: tuple[Image, np.ndarray], shortfall: int):
    msg, _ = message
    _, channels = conv.IMAGE_ENCODINGS[msg.encoding]
    row_bytes = msg.width * channels * conv.IMAGE_ENCODINGS[msg.encoding][0].itemsize
    msg.step = max(0, row_bytes - shortfall)
    msg.data = bytes(msg.step * msg.height)
    with pytest.raises(ValueError, match="smaller than one row"):
        conv.image_to_array(msg)


@FAST
@given(padded_messages(), st.integers(min_value=-40, max_value=40))
def test_data_size_other_than_step_times_height_is_refused(message: tuple[Image, np.ndarray], change: int):
    msg, _ = message
    assume(change != 0 and len(msg.data) + change >= 0)
    data = bytes(msg.data)
    msg.data = data[: len(data) + change] if change < 0 else data + bytes(change)
    with pytest.raises(ValueError, match=r"expected step \* height"):
        conv.image_to_array(msg)


@FAST
@given(st.text(max_size=12), sides, sides)
def test_unknown_encodings_are_refused(encoding: str, height: int, width: int):
    assume(encoding not in conv.IMAGE_ENCODINGS)
    msg = Image(height=height, width=width, encoding=encoding, step=width * 3, data=bytes(width * 3 * height))
    with pytest.raises(ValueError, match="encoding"):
        conv.image_to_array(msg)
    with pytest.raises(ValueError, match="encoding"):
        conv.image_to_rgb(msg)


@FAST
@given(
    st.one_of(encodings, st.sampled_from(["yuv422", "", "RGB8", "bayer_rggb8"])),
    st.integers(min_value=0, max_value=9),
    st.integers(min_value=0, max_value=9),
    st.integers(min_value=0, max_value=64),
    st.binary(max_size=200),
    st.booleans(),
)
def test_any_image_message_converts_or_is_refused(
    encoding: str, height: int, width: int, step: int, data: bytes, big_endian: bool
):
    msg = Image(height=height, width=width, encoding=encoding, step=step, data=data, is_bigendian=big_endian)
    try:
        pixels = conv.image_to_array(msg)
    except ValueError:
        return
    assert pixels.shape[:2] == (height, width)
    assert len(data) == step * height


@FAST
@given(sides, sides, st.integers(min_value=1, max_value=200))
def test_pixel_limit_is_checked_before_the_data(height: int, width: int, limit: int):
    msg = Image(height=height * 1000, width=width * 1000, encoding="rgb8", step=width * 3000, data=b"")
    assume(msg.height * msg.width > limit)
    with pytest.raises(ValueError, match="more than the limit"):
        conv.image_to_rgb(msg, max_pixels=limit)


@SMALL
@given(st.binary(max_size=300), st.sampled_from(["jpeg", "png", "", "rgb8; jpeg compressed bgr8"]))
def test_any_compressed_data_decodes_or_is_refused(data: bytes, image_format: str):
    msg = CompressedImage(format=image_format, data=data)
    for max_pixels in (None, 1 << 20):
        try:
            rgb = conv.compressed_to_rgb(msg, max_pixels=max_pixels)
        except ValueError:
            continue
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.dtype == np.uint8


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR announcing width x height 8-bit RGB, and IEND: a few bytes, a huge image."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_compressed_image_too_large_is_refused_from_its_header():
    msg = CompressedImage(format="png", data=_png_header_only(8_000, 8_000))
    with pytest.raises(ValueError, match="8000 x 8000 has 64000000 pixels, more than the limit"):
        conv.compressed_to_rgb(msg, max_pixels=16_777_216)
    bomb = CompressedImage(format="png", data=_png_header_only(40_000, 40_000))
    with pytest.raises(ValueError, match="could be decompression bomb"):
        conv.compressed_to_rgb(bomb, max_pixels=16_777_216)
    ok, encoded = cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))
    small = CompressedImage(format="png", data=encoded.tobytes())
    assert conv.compressed_to_rgb(small, max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(ValueError, match="600 pixels, more than the limit 599"):
        conv.compressed_to_rgb(small, max_pixels=599)


masks = st.tuples(st.integers(1, 24), st.integers(1, 24)).flatmap(
    lambda shape: arrays(np.bool_, shape, elements=st.booleans())
)


@FAST
@given(masks)
def test_rle_round_trip(mask: np.ndarray):
    runs = conv.rle_encode(mask)
    assert runs.dtype == np.uint32
    assert int(runs.sum()) == mask.size
    assert (runs[1:] > 0).all()
    np.testing.assert_array_equal(conv.rle_decode(runs, *mask.shape), mask)


@FAST
@given(masks, st.integers(0, 20), st.integers(0, 20), st.integers(0, 20), st.integers(0, 20))
def test_instance_roi_round_trip(mask: np.ndarray, top: int, left: int, bottom: int, right: int):
    full = np.pad(mask, ((top, bottom), (left, right)))
    instance = InstanceResult(
        instance_id=1, track_id=0, label="x", class_id=0, score=0.5, mask=full, bbox=mask_bbox(full)
    )
    msg = conv.instance_to_msg(instance)
    if not full.any():
        assert msg.roi.width == 0 and msg.roi.height == 0
    else:
        x0, y0, x1, y1 = mask_bbox(full)
        assert (msg.roi.x_offset, msg.roi.y_offset) == (x0, y0)
        assert (msg.roi.width, msg.roi.height) == (x1 - x0 + 1, y1 - y0 + 1)
    np.testing.assert_array_equal(conv.instance_mask_from_msg(msg, *full.shape), full)
    if msg.roi.width:
        with pytest.raises(ValueError, match="exceeds"):
            conv.instance_mask_from_msg(msg, full.shape[0], msg.roi.x_offset + msg.roi.width - 1)


@FAST
@given(st.lists(st.integers(0, 40), max_size=12), st.integers(0, 12), st.integers(0, 12))
def test_rle_runs_not_covering_the_mask_are_refused(runs: list[int], height: int, width: int):
    assume(sum(runs) != height * width)
    with pytest.raises(ValueError, match="cover"):
        conv.rle_decode(runs, height, width)


@FAST
@given(
    st.one_of(
        st.lists(st.integers(-50, 50), max_size=8),
        st.lists(st.floats(allow_nan=True), max_size=4),
        st.lists(st.lists(st.integers(0, 5), min_size=2, max_size=2), max_size=3),
    ),
    st.integers(-3, 8),
    st.integers(-3, 8),
)
def test_any_rle_decodes_or_is_refused(runs: list, height: int, width: int):
    try:
        mask = conv.rle_decode(runs, height, width)
    except ValueError:
        return
    assert mask.shape == (height, width) and mask.dtype == np.bool_
    assert all(isinstance(run, int) and run >= 0 for run in runs)


def test_invalid_runs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="must not be negative"):
        conv.rle_decode([5, -1, 0], 2, 2)
    with pytest.raises(ValueError, match="flat sequence of integers"):
        conv.rle_decode([1.5, 2.5], 2, 2)
    with pytest.raises(ValueError, match="flat sequence of integers"):
        conv.rle_decode([[2, 2]], 2, 2)
    with pytest.raises(ValueError, match="non-negative integers"):
        conv.rle_decode([], -1, 0)


def _camera_info(k: list[float], d: list[float], model: str) -> CameraInfo:
    info = CameraInfo(width=64, height=48, distortion_model=model)
    info.k = k
    info.d = d
    return info


coordinates = st.floats(min_value=-5.0, max_value=5.0) | st.sampled_from([math.nan, math.inf, -math.inf])


@FAST
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=9, max_size=9),
    st.lists(st.floats(min_value=-1.0, max_value=1.0) | st.just(math.nan), max_size=15),
    st.sampled_from(["plumb_bob", "rational_polynomial", "equidistant", ""]),
    coordinates,
    coordinates,
    coordinates,
)
def test_any_projection_succeeds_or_is_refused(k, d, model, x, y, z):
    try:
        u, v = conv.project_point(_camera_info(k, d, model), x, y, z)
    except ValueError:
        return
    assert 0.0 <= u < 64 and 0.0 <= v < 48


def test_malformed_distortion_is_refused_not_raised_by_opencv():
    k = [50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="has 3 coefficients"):
        conv.project_point(_camera_info(k, [0.1, 0.01, 0.0], "plumb_bob"), 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        conv.project_point(_camera_info(k, [0.0] * 5, "plumb_bob"), math.nan, 0.0, 1.0)
