"""Converting user prompts into the binary prompt masks SEEM consumes.

The demo sketch path is reproduced exactly: shapes given in ORIGINAL-image pixel coordinates (x = column,
y = row) are drawn with OpenCV on a uint8 canvas at the original resolution (value 255), and the canvas is
resized to the model input size (h, w) with bilinear interpolation on the uint8 tensor, then thresholded at
> 0. (The official v1 evaluation's clicks, which only the parity runner needs, are in
`seem_ros.parity.official_clicks`.)

Masks at the model input size (n, h, w) are padded bottom/right with False to the padded size (H', W')
before they reach the decoder, like the image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CANVAS_VALUE = 255


@dataclass(frozen=True)
class Disk:
    """A filled disk (a click drawn with a round brush); centre (x, y) and radius in original pixels."""

    x: int
    y: int
    radius: int

    def __post_init__(self) -> None:
        if self.radius < 0:
            raise ValueError(f"disk radius must be >= 0 pixels, got {self.radius}")


@dataclass(frozen=True)
class Stroke:
    """An open polyline (a scribble) of the given line width; points are (x, y) in original pixels."""

    points: tuple[tuple[int, int], ...]
    width: int

    def __post_init__(self) -> None:
        if len(self.points) == 0:
            raise ValueError("stroke needs at least one (x, y) point, got none")
        if self.width < 1:
            raise ValueError(f"stroke width must be >= 1 pixel, got {self.width}")


@dataclass(frozen=True)
class Rectangle:
    """A filled axis-aligned rectangle with corners (x1, y1) and (x2, y2), both included, original pixels."""

    x1: int
    y1: int
    x2: int
    y2: int


PromptShape = Disk | Stroke | Rectangle


def prompt_shape_from_dict(shape: Mapping[str, Any]) -> PromptShape:
    """Shape from its JSON form: {"type": "disk", "x", "y", "r"}, {"type": "stroke", "xy": [[x, y], ...],
    "width"} or {"type": "rect", "x1", "y1", "x2", "y2"} (the reference data's format)."""
    kind = shape.get("type")
    if kind == "disk":
        return Disk(int(shape["x"]), int(shape["y"]), int(shape["r"]))
    if kind == "stroke":
        return Stroke(tuple((int(x), int(y)) for x, y in shape["xy"]), int(shape["width"]))
    if kind == "rect":
        return Rectangle(int(shape["x1"]), int(shape["y1"]), int(shape["x2"]), int(shape["y2"]))
    raise ValueError(f"unknown prompt shape type {kind!r}; expected 'disk', 'stroke' or 'rect'")


def draw_prompt_canvas(shapes: Sequence[PromptShape], original_size: tuple[int, int]) -> np.ndarray:
    """Draw shapes on a sketch layer like the demo's: OpenCV, 8-connected lines, value 255.

    original_size: (H0, W0). Returns (H0, W0) uint8 in {0, 255}. Shapes outside the canvas are clipped.
    """
    canvas = np.zeros(original_size, dtype=np.uint8)
    for shape in shapes:
        if isinstance(shape, Disk):
            cv2.circle(canvas, (shape.x, shape.y), shape.radius, CANVAS_VALUE, cv2.FILLED, cv2.LINE_8)
        elif isinstance(shape, Stroke):
            points = np.asarray(shape.points, dtype=np.int32).reshape(-1, 1, 2)
            cv2.polylines(canvas, [points], False, CANVAS_VALUE, shape.width, cv2.LINE_8)
        elif isinstance(shape, Rectangle):
            corners = ((shape.x1, shape.y1), (shape.x2, shape.y2))
            cv2.rectangle(canvas, *corners, CANVAS_VALUE, cv2.FILLED, cv2.LINE_8)
        else:
            raise TypeError(f"prompt shape must be Disk, Stroke or Rectangle, got {type(shape).__name__}")
    return canvas


def canvas_to_mask(canvas: np.ndarray, image_size: tuple[int, int]) -> Tensor:
    """The demo's sketch conversion: bilinear resize of the uint8 canvas to the model input size, > 0.

    canvas: (H0, W0) uint8 (or (H0, W0, C), channel 0 is used) at the original resolution.
    image_size: (h, w). Returns (h, w) bool.
    """
    if canvas.ndim == 3:
        canvas = canvas[:, :, 0]
    if canvas.dtype != np.uint8 or canvas.ndim != 2:
        raise ValueError(f"canvas must be (H0, W0) uint8, got {canvas.shape} {canvas.dtype}")
    layer = torch.from_numpy(np.ascontiguousarray(canvas))[None, None]
    return (F.interpolate(layer, size=image_size, mode="bilinear") > 0)[0, 0]


def rasterize_prompts(
    prompts: Sequence[Sequence[PromptShape]], original_size: tuple[int, int], image_size: tuple[int, int]
) -> Tensor:
    """Prompt masks of n prompts (each a group of shapes on its own canvas) at the model input size.

    original_size: (H0, W0) of the image the coordinates refer to. image_size: (h, w).
    Returns (n, h, w) bool; an empty group gives an all-False mask.
    """
    masks = [canvas_to_mask(draw_prompt_canvas(shapes, original_size), image_size) for shapes in prompts]
    if not masks:
        return torch.zeros((0, *image_size), dtype=torch.bool)
    return torch.stack(masks)


def padded_size(image_size: tuple[int, int], size_divisibility: int = 32) -> tuple[int, int]:
    """(H', W'): the model input size rounded up to a multiple of size_divisibility."""
    height, width = image_size
    return (
        math.ceil(height / size_divisibility) * size_divisibility,
        math.ceil(width / size_divisibility) * size_divisibility,
    )


def pad_prompt_masks(masks: Tensor, target_size: tuple[int, int]) -> Tensor:
    """Pad (n, h, w) masks bottom/right with zeros/False to (n, H', W'), like the padded image."""
    height, width = masks.shape[-2:]
    if height > target_size[0] or width > target_size[1]:
        raise ValueError(f"masks of size {(height, width)} do not fit the padded size {target_size}")
    return F.pad(masks, (0, target_size[1] - width, 0, target_size[0] - height), value=0)
