"""The wire format between a seem_ros client (the node with `backend: remote`) and a seem_ros server.

One HTTP POST per frame, body and reply in MessagePack (maps of plain values and byte strings; never
pickle). Everything a client sends is checked here, before any image is decoded or any tensor is built:
`decode_request` raises `WireError` with a message for the client.

Request (schema version `WIRE_VERSION`):
- ``v`` int; ``session`` str (the client's stream, e.g. its node and camera); ``stamp`` float;
- ``image``: ``{"format": "jpeg" | "png", "data": bytes}`` or ``{"format": "raw", "data": bytes,
  "shape": [H, W, 3]}`` (RGB, uint8, row-major);
- ``vocabulary``: ``{"names": [str], "things": [str]}`` or nil (the server's own);
- ``generic`` bool: also segment panoptically over the vocabulary;
- ``targets``: one map per target: ``text`` str or nil; ``visual``: prompt maps, each with ``kind`` and
  click ``x y positive`` / box ``x0 y0 x1 y1`` / scribble ``points [[x, y]] width positive`` / mask
  ``mask positive``; ``reference``: ``{"image": PNG bytes, "mask": RLE}`` or nil; ``previous``: the
  target's memory-prompt logits (array) or nil.

Reply: ``v``, ``ok`` true, ``targets`` (``mask`` RLE, ``logits`` array, ``score``, ``label``,
``class_id``, ``class_probability``), ``generic`` (``panoptic`` and ``semantic`` arrays, ``segments``)
or nil, ``vocabulary`` (``names`` and ``is_thing`` used), ``timings``, ``replica``, ``batch_size``; or
``ok`` false with ``error`` (a sentence) and ``code`` (``bad_request``, ``too_large``, ``unauthorized``,
``internal``).

Masks are COCO RLE maps (``size``, ``counts``); arrays are ``{"dtype", "shape", "data"}`` with dtype
float32, int32 or uint16 and zlib-compressed little-endian data.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import cv2
import msgpack
import numpy as np

from seem_ros.engine import coco_rle
from seem_ros.engine.image_transform import ImageTooLarge, check_pixel_count, decode_compressed
from seem_ros.engine.predictor import GenericResult, GenericSegment, Prediction, TargetResult
from seem_ros.engine.prompts import (
    BoxPrompt,
    ClickPrompt,
    MaskPrompt,
    ReferringImagePrompt,
    ScribblePrompt,
    Target,
    TextPrompt,
    VisualPrompt,
)
from seem_ros.engine.vocabulary_cache import Vocabulary

WIRE_VERSION = 1
IMAGE_FORMATS = ("jpeg", "png", "raw")
ARRAY_DTYPES = ("float32", "int32", "uint16")
CONTENT_TYPE = "application/msgpack"
ERROR_CODES = {"bad_request": 400, "unauthorized": 401, "too_large": 413, "internal": 500}
"""Reply error codes and the HTTP status each is sent with."""


class WireError(ValueError):
    """A request or reply that does not follow the schema or exceeds a limit; `code` is an ERROR_CODES key."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class WireLimits:
    """What a server accepts: request bytes, image pixels, targets, prompt points, text characters and
    vocabulary names per request."""

    max_request_bytes: int = 32 << 20
    max_image_pixels: int = 16_777_216
    max_targets: int = 64
    max_points: int = 4096
    max_text_chars: int = 1000
    max_vocabulary: int = 2000


@dataclass
class RemoteRequest:
    """A decoded request: the frame, what to decode on it and against which vocabulary."""

    rgb: np.ndarray
    targets: list[Target]
    previous_logits: list[np.ndarray | None]
    generic: bool
    vocabulary: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    session: str = ""
    stamp: float = 0.0


@dataclass
class FrameReply:
    """A decoded reply: the prediction, the vocabulary names it used, and where it was made."""

    prediction: Prediction
    vocabulary: Vocabulary
    replica: str = ""
    batch_size: int = 1
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- arrays
def pack_array(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<").name if array.dtype.byteorder == ">" else array.dtype.name
    if dtype not in ARRAY_DTYPES:
        raise WireError(f"arrays on the wire are {', '.join(ARRAY_DTYPES)}, not {dtype}")
    data = zlib.compress(array.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes(), 1)
    return {"dtype": dtype, "shape": list(array.shape), "data": data}


def unpack_array(packed: Any, max_elements: int, what: str) -> np.ndarray:
    item = _map(packed, what)
    dtype, shape = item.get("dtype"), item.get("shape")
    if dtype not in ARRAY_DTYPES:
        raise WireError(f"{what}: dtype must be one of {', '.join(ARRAY_DTYPES)}, got {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise WireError(f"{what}: shape must be a list of non-negative integers")
    count = math.prod(shape)
    if count > max_elements:
        raise WireError(f"{what}: {count} elements, more than the limit {max_elements}", "too_large")
    expected = count * np.dtype(dtype).itemsize
    decompressor = zlib.decompressobj()
    try:
        raw = decompressor.decompress(_bytes(item.get("data"), what), expected + 1)
    except zlib.error as error:
        raise WireError(f"{what}: data is not zlib-compressed ({error})") from error
    if len(raw) != expected or decompressor.unconsumed_tail:
        raise WireError(f"{what}: data holds {len(raw)} bytes or more, {shape} {dtype} needs {expected}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)


def _rle(mask: np.ndarray) -> dict[str, Any]:
    return coco_rle.encode(np.asarray(mask, dtype=bool))


def _unrle(packed: Any, max_pixels: int, what: str) -> np.ndarray:
    item = _map(packed, what)
    size, counts = item.get("size"), item.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(n, int) and n > 0 for n in size)):
        raise WireError(f"{what}: size must be [H, W] with positive integers")
    if size[0] * size[1] > max_pixels:
        raise WireError(f"{what}: {size[1]}x{size[0]} is more than {max_pixels} pixels", "too_large")
    if not isinstance(counts, str) or len(counts) > 8 * size[0] * size[1] + 16:
        raise WireError(f"{what}: counts must be a COCO RLE string")
    try:
        return coco_rle.decode({"size": size, "counts": counts})
    except (ValueError, IndexError) as error:
        raise WireError(f"{what}: not a valid COCO RLE ({error})") from error


# ---------------------------------------------------------------------------------------------- images
def encode_image(rgb: np.ndarray, image_format: str = "jpeg", jpeg_quality: int = 90) -> dict[str, Any]:
    """An (H, W, 3) uint8 RGB image as the request's ``image`` map."""
    if image_format == "raw":
        return {"format": "raw", "data": np.ascontiguousarray(rgb).tobytes(), "shape": list(rgb.shape)}
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    extension = ".jpg" if image_format == "jpeg" else ".png"
    options = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if image_format == "jpeg" else []
    ok, data = cv2.imencode(extension, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), options)
    if not ok:
        raise ValueError(f"OpenCV could not encode the image as {image_format}")
    return {"format": image_format, "data": data.tobytes()}


def decode_image(packed: Any, max_pixels: int) -> np.ndarray:
    """The RGB image of an ``image`` map; its size is checked (from the header of a PNG or JPEG) before
    the pixels are decoded."""
    item = _map(packed, "image")
    image_format, data = item.get("format"), _bytes(item.get("data"), "image data")
    if image_format not in IMAGE_FORMATS:
        raise WireError(f"image: format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    try:
        if image_format != "raw":
            return decode_compressed(data, max_pixels, f"format {image_format!r}")
        shape = item.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and shape[2] == 3):
            raise WireError("image: a raw image needs shape [H, W, 3]")
        if not all(isinstance(n, int) and n > 0 for n in shape):
            raise WireError("image: shape must hold positive integers")
        check_pixel_count(shape[1], shape[0], max_pixels)
    except ImageTooLarge as error:
        raise WireError(f"image: {error}", "too_large") from error
    except WireError:
        raise
    except ValueError as error:
        raise WireError(f"image: {error}") from error
    if len(data) != shape[0] * shape[1] * 3:
        raise WireError(f"image: {len(data)} bytes do not make a {shape[1]}x{shape[0]} RGB image")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


# ---------------------------------------------------------------------------------------------- requests
def encode_request(
    rgb: np.ndarray,
    targets: list[Target],
    previous_logits: list[np.ndarray | None],
    generic: bool,
    vocabulary: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
    session: str = "",
    stamp: float = 0.0,
    image_format: str = "jpeg",
) -> bytes:
    """The MessagePack body of one frame's request."""
    body = {
        "v": WIRE_VERSION,
        "session": session,
        "stamp": float(stamp),
        "image": encode_image(rgb, image_format),
        "vocabulary": None
        if vocabulary is None
        else {"names": list(vocabulary[0]), "things": list(vocabulary[1])},
        "generic": bool(generic),
        "targets": [
            _pack_target(target, previous) for target, previous in zip(targets, previous_logits, strict=True)
        ],
    }
    return msgpack.packb(body, use_bin_type=True)


def _pack_target(target: Target, previous: np.ndarray | None) -> dict[str, Any]:
    reference = None
    if target.reference is not None:
        reference = {
            "image": encode_image(target.reference.image, "png")["data"],
            "mask": _rle(target.reference.mask),
        }
    return {
        "text": target.text.text if target.text is not None else None,
        "visual": [_pack_visual(prompt) for prompt in target.visual],
        "reference": reference,
        "previous": None if previous is None else pack_array(np.asarray(previous, dtype=np.float32)),
    }


def _pack_visual(prompt: VisualPrompt) -> dict[str, Any]:
    if isinstance(prompt, ClickPrompt):
        return {"kind": "click", "x": prompt.x, "y": prompt.y, "positive": prompt.positive}
    if isinstance(prompt, BoxPrompt):
        return {"kind": "box", "x0": prompt.x_min, "y0": prompt.y_min, "x1": prompt.x_max, "y1": prompt.y_max}
    if isinstance(prompt, ScribblePrompt):
        points = [[float(x), float(y)] for x, y in prompt.points]
        return {"kind": "scribble", "points": points, "width": prompt.width, "positive": prompt.positive}
    if isinstance(prompt, MaskPrompt):
        return {"kind": "mask", "mask": _rle(prompt.mask), "positive": prompt.positive}
    raise TypeError(f"no wire form for {type(prompt).__name__}")


def decode_request(body: bytes, limits: WireLimits) -> RemoteRequest:
    """Check and decode a request body; raises WireError naming what is wrong."""
    if len(body) > limits.max_request_bytes:
        raise WireError(f"request of {len(body)} bytes, more than {limits.max_request_bytes}", "too_large")
    message = _unpack(body, "request")
    if message.get("v") != WIRE_VERSION:
        raise WireError(
            f"wire version {message.get('v')!r} is not supported; this server speaks {WIRE_VERSION}"
        )
    packed_targets = message.get("targets", [])
    if not isinstance(packed_targets, list):
        raise WireError("targets must be a list")
    if len(packed_targets) > limits.max_targets:
        raise WireError(
            f"{len(packed_targets)} targets, more than the limit {limits.max_targets}", "too_large"
        )
    rgb = decode_image(message.get("image"), limits.max_image_pixels)
    targets, previous = [], []
    budget = _ElementBudget(limits.max_image_pixels)
    for index, packed in enumerate(packed_targets):
        target, logits = _unpack_target(packed, limits, budget, f"target {index}")
        targets.append(target)
        previous.append(logits)
    session, stamp = message.get("session", ""), message.get("stamp", 0.0)
    if not isinstance(session, str) or len(session) > 256:
        raise WireError("session must be a string of at most 256 characters")
    if not isinstance(stamp, int | float) or not math.isfinite(stamp):
        raise WireError("stamp must be a finite number")
    return RemoteRequest(
        rgb=rgb,
        targets=targets,
        previous_logits=previous,
        generic=bool(message.get("generic", False)),
        vocabulary=_unpack_vocabulary(message.get("vocabulary"), limits),
        session=session,
        stamp=float(stamp),
    )


def _unpack_vocabulary(packed: Any, limits: WireLimits) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if packed is None:
        return None
    item = _map(packed, "vocabulary")
    names, things = item.get("names"), item.get("things", [])
    for what, values in (("names", names), ("things", things)):
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise WireError(f"vocabulary {what} must be a list of strings")
        if len(values) > limits.max_vocabulary or any(len(value) > limits.max_text_chars for value in values):
            raise WireError(f"vocabulary {what}: at most {limits.max_vocabulary} names", "too_large")
    return tuple(names), tuple(things)


class _ElementBudget:
    """How many more mask pixels and memory-prompt values a request's targets may unpack: each is limited to
    an image's pixels, and so are all together, so a small request cannot make the server decode many
    large arrays (64 targets of 16 M float32 logits would be 4 GiB)."""

    def __init__(self, elements: int) -> None:
        self.remaining = elements

    def take(self, count: int) -> None:
        self.remaining -= count


def _unpack_target(
    packed: Any, limits: WireLimits, budget: _ElementBudget, what: str
) -> tuple[Target, np.ndarray | None]:
    item = _map(packed, what)
    text = item.get("text")
    if text is not None and (not isinstance(text, str) or len(text) > limits.max_text_chars):
        raise WireError(f"{what}: text must be a string of at most {limits.max_text_chars} characters")
    visual_items = item.get("visual", [])
    if not isinstance(visual_items, list):
        raise WireError(f"{what}: visual must be a list")
    if len(visual_items) > limits.max_points:
        raise WireError(
            f"{what}: {len(visual_items)} visual prompts, more than {limits.max_points}", "too_large"
        )
    try:
        visual = tuple(
            _unpack_visual(prompt, limits, budget, f"{what} prompt {i}")
            for i, prompt in enumerate(visual_items)
        )
        reference = None
        if item.get("reference") is not None:
            packed_reference = _map(item["reference"], f"{what} reference")
            image = decode_image(
                {"format": "png", "data": packed_reference.get("image")}, limits.max_image_pixels
            )
            mask = _unrle(packed_reference.get("mask"), limits.max_image_pixels, f"{what} reference mask")
            reference = ReferringImagePrompt(image, mask)
        target = Target(
            text=TextPrompt(text) if text is not None else None, visual=visual, reference=reference
        )
    except WireError:
        raise
    except (ValueError, TypeError) as error:
        raise WireError(f"{what}: {error}") from error
    previous = item.get("previous")
    logits = None if previous is None else unpack_array(previous, budget.remaining, f"{what} previous")
    if logits is not None:
        budget.take(logits.size)
        if logits.ndim != 2 or logits.dtype != np.float32:
            raise WireError(f"{what}: previous logits must be a 2-D float32 array")
    return target, logits


def _unpack_visual(packed: Any, limits: WireLimits, budget: _ElementBudget, what: str) -> VisualPrompt:
    item = _map(packed, what)
    kind = item.get("kind")
    positive = item.get("positive", True)
    if not isinstance(positive, bool):
        raise WireError(f"{what}: positive must be true or false")
    if kind == "click":
        return ClickPrompt(_number(item, "x", what), _number(item, "y", what), positive)
    if kind == "box":
        return BoxPrompt(*(_number(item, key, what) for key in ("x0", "y0", "x1", "y1")))
    if kind == "scribble":
        points = item.get("points")
        if not isinstance(points, list) or not 0 < len(points) <= limits.max_points:
            raise WireError(f"{what}: a scribble has 1 to {limits.max_points} points")
        pairs = []
        for point in points:
            if not (
                isinstance(point, list) and len(point) == 2 and all(isinstance(v, int | float) for v in point)
            ):
                raise WireError(f"{what}: points must be [x, y] pairs of numbers")
            pairs.append((float(point[0]), float(point[1])))
        return ScribblePrompt(tuple(pairs), _number(item, "width", what), positive)
    if kind == "mask":
        mask = _unrle(item.get("mask"), budget.remaining, f"{what} mask")
        budget.take(mask.size)
        return MaskPrompt(mask, positive)
    raise WireError(f"{what}: kind must be click, box, scribble or mask, got {kind!r}")


def _number(item: dict, key: str, what: str) -> float:
    value = item.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise WireError(f"{what}: {key} must be a number")
    return float(value)


# ---------------------------------------------------------------------------------------------- replies
def encode_reply(
    prediction: Prediction, vocabulary: Vocabulary, replica: str = "", batch_size: int = 1
) -> bytes:
    """The MessagePack body of a successful reply."""
    generic = None
    if prediction.generic is not None:
        generic = {
            "panoptic": pack_array(prediction.generic.panoptic.astype(np.int32, copy=False)),
            "semantic": pack_array(prediction.generic.semantic.astype(np.int32, copy=False)),
            "segments": [
                [s.segment_id, s.class_id, s.label, s.is_thing, float(s.score), int(s.area)]
                for s in prediction.generic.segments
            ],
        }
    body = {
        "v": WIRE_VERSION,
        "ok": True,
        "targets": [
            {
                "mask": _rle(result.mask),
                "logits": pack_array(np.asarray(result.mask_logits.detach().cpu(), dtype=np.float32)),
                "score": float(result.score),
                "label": result.label,
                "class_id": int(result.class_id),
                "class_probability": float(result.class_probability),
            }
            for result in prediction.targets
        ],
        "generic": generic,
        "vocabulary": {"names": list(vocabulary.names), "is_thing": list(vocabulary.is_thing)},
        "timings": {name: float(seconds) for name, seconds in prediction.timings.items()},
        "replica": replica,
        "batch_size": batch_size,
    }
    return msgpack.packb(body, use_bin_type=True)


def encode_error(message: str, code: str) -> bytes:
    """The MessagePack body of a refusal (code: an ERROR_CODES key)."""
    return msgpack.packb({"v": WIRE_VERSION, "ok": False, "error": message, "code": code}, use_bin_type=True)


def refusal(message: str, code: str) -> tuple[int, bytes]:
    """(HTTP status, body) of a refusal (code: an ERROR_CODES key)."""
    return ERROR_CODES[code], encode_error(message, code)


def decode_reply(body: bytes, max_pixels: int = 1 << 28) -> FrameReply:
    """Decode a reply; a refusal raises WireError with the server's message and code."""
    import torch

    message = _unpack(body, "reply")
    if not message.get("ok", False):
        code = message.get("code", "internal")
        raise WireError(f"server refused the frame: {message.get('error', 'no reason given')}", code)
    targets = []
    for index, item in enumerate(message.get("targets", [])):
        logits = unpack_array(item["logits"], max_pixels, f"reply target {index} logits")
        targets.append(
            TargetResult(
                mask=_unrle(item["mask"], max_pixels, f"reply target {index} mask"),
                mask_logits=torch.from_numpy(logits.copy()),
                score=float(item["score"]),
                label=str(item["label"]),
                class_id=int(item["class_id"]),
                class_probability=float(item["class_probability"]),
            )
        )
    generic = None
    if message.get("generic") is not None:
        packed = message["generic"]
        generic = GenericResult(
            panoptic=unpack_array(packed["panoptic"], max_pixels, "reply panoptic"),
            semantic=unpack_array(packed["semantic"], max_pixels, "reply semantic"),
            segments=[
                GenericSegment(int(sid), int(cid), str(label), bool(thing), float(score), int(area))
                for sid, cid, label, thing, score, area in packed["segments"]
            ],
        )
    timings = {str(name): float(seconds) for name, seconds in message.get("timings", {}).items()}
    return FrameReply(
        prediction=Prediction(targets, generic, dict(timings)),
        vocabulary=Vocabulary(
            tuple(message["vocabulary"]["names"]), tuple(bool(t) for t in message["vocabulary"]["is_thing"])
        ),
        replica=str(message.get("replica", "")),
        batch_size=int(message.get("batch_size", 1)),
        timings=timings,
    )


# ---------------------------------------------------------------------------------------------- helpers
def _unpack(body: bytes, what: str) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (msgpack.exceptions.UnpackException, ValueError, TypeError) as error:
        raise WireError(f"the {what} is not MessagePack ({type(error).__name__}: {error})") from error
    if not isinstance(message, dict):
        raise WireError(f"the {what} must be a MessagePack map")
    return message


def _map(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a map")
    return value


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise WireError(f"{what} must be bytes")
    return value
