"""Prompts in original-image pixel coordinates (x = column, y = row), validated when built.

A `Target` is one object the user means, described by one or more prompts (text, positive and
negative clicks, a box, scribbles, a mask, or a referring image with its mask). Several targets are
decoded together in one decoder pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from seem_ros.engine.errors import InputError
from seem_ros.model.tokenizer import CONTEXT_LENGTH, ClipTokenizer

MAX_TEXT_CHARACTERS = 1000


def _check_finite(**values: float) -> None:
    for name, value in values.items():
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"{name} must be a finite number of pixels, got {value!r}")


def check_text_fits(text: str, tokenizer: ClipTokenizer) -> None:
    """InputError when `text` has more CLIP tokens than SEEM reads (77, with start and end): the model would
    silently read only its beginning. Where a text enters the engine (a session's prompt, a server's
    request)."""
    tokens = tokenizer.token_count(text)
    if tokens > CONTEXT_LENGTH:
        raise InputError(
            f"text prompt has {tokens} tokens; SEEM reads at most {CONTEXT_LENGTH} (with start and end): "
            "shorten it"
        )


@dataclass(frozen=True)
class TextPrompt:
    """A referring expression ("the red cup"). The model reads at most 77 CLIP tokens of it: where texts
    enter the engine, `check_text_fits` refuses longer ones."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InputError(f"text prompt must be a string, got {type(self.text).__name__}")
        if not self.text.strip():
            raise InputError("text prompt is empty; say what to segment, e.g. 'the red cup'")
        if len(self.text) > MAX_TEXT_CHARACTERS:
            raise InputError(
                f"text prompt has {len(self.text)} characters; the limit is {MAX_TEXT_CHARACTERS}"
            )
        if "\x00" in self.text:
            raise InputError("text prompt contains a NUL character")


@dataclass(frozen=True)
class ClickPrompt:
    """A click at pixel (x, y); negative clicks mark what is not part of the target."""

    x: float
    y: float
    positive: bool = True

    def __post_init__(self) -> None:
        _check_finite(x=self.x, y=self.y)


@dataclass(frozen=True)
class BoxPrompt:
    """A box (x_min, y_min, x_max, y_max) around the target, inclusive pixel bounds.

    SEEM has no box encoder: as the official v1 evaluation does, the box becomes a click at its
    centre (the distance-transform maximum of the box); the resulting mask is clipped to the box.
    """

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def __post_init__(self) -> None:
        _check_finite(x_min=self.x_min, y_min=self.y_min, x_max=self.x_max, y_max=self.y_max)
        if self.x_max < self.x_min or self.y_max < self.y_min:
            raise InputError(
                f"box must have x_min <= x_max and y_min <= y_max, got "
                f"({self.x_min}, {self.y_min}, {self.x_max}, {self.y_max})"
            )


@dataclass(frozen=True)
class ScribblePrompt:
    """A polyline through (x, y) points, drawn with the given width in pixels."""

    points: tuple[tuple[float, float], ...]
    width: float = 5.0
    positive: bool = True

    def __post_init__(self) -> None:
        if len(self.points) == 0:
            raise InputError("scribble needs at least one (x, y) point")
        for x, y in self.points:
            _check_finite(x=x, y=y)
        _check_finite(width=self.width)
        if self.width < 1:
            raise InputError(f"scribble width must be >= 1 pixel, got {self.width}")


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    """A binary mask (H, W) at the image size marking (part of) the target."""

    mask: np.ndarray
    positive: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.mask, np.ndarray) or self.mask.ndim != 2:
            raise InputError(f"mask prompt must be an (H, W) array, got {getattr(self.mask, 'shape', None)}")
        if not self.mask.any():
            raise InputError("mask prompt is empty: no pixel is set")


@dataclass(frozen=True, eq=False)
class ReferringImagePrompt:
    """Segment what `mask` marks in `image` (HxWx3 uint8 RGB) in the current image."""

    image: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise InputError(
                f"referring image must be HxWx3 uint8 RGB, got {self.image.shape} {self.image.dtype}"
            )
        if self.mask.shape != self.image.shape[:2]:
            raise InputError(
                f"referring mask must match its image size {self.image.shape[:2]}, got {self.mask.shape}"
            )
        if not self.mask.any():
            raise InputError("referring mask is empty: no pixel is set")


VisualPrompt = ClickPrompt | BoxPrompt | ScribblePrompt | MaskPrompt


@dataclass(frozen=True, eq=False)
class Target:
    """One object to segment, from any combination of prompts.

    text: optional referring text; visual: clicks, boxes, scribbles and masks (positive and negative);
    reference: optional referring image. At least one of them must be given; a referring image cannot
    be combined with visual prompts on the current image.
    """

    text: TextPrompt | None = None
    visual: tuple[VisualPrompt, ...] = field(default_factory=tuple)
    reference: ReferringImagePrompt | None = None

    def __post_init__(self) -> None:
        if self.text is None and not self.visual and self.reference is None:
            raise InputError("a target needs a text, visual or referring-image prompt")
        if self.reference is not None and self.visual:
            raise InputError("a referring-image target cannot also have visual prompts on this image")
        if self.visual and not any(getattr(prompt, "positive", True) for prompt in self.visual):
            raise InputError("visual prompts need at least one positive click, box, scribble or mask")

    @property
    def kind(self) -> str:
        """What produced it: text, click, box, scribble, mask or referring_image (the first visual prompt)."""
        if self.reference is not None:
            return "referring_image"
        if self.visual:
            first = self.visual[0]
            return {ClickPrompt: "click", BoxPrompt: "box", ScribblePrompt: "scribble", MaskPrompt: "mask"}[
                type(first)
            ]
        return "text"

    def with_visual(self, *prompts: VisualPrompt) -> Target:
        """The same target with more visual prompts (multi-round refinement)."""
        return Target(text=self.text, visual=self.visual + tuple(prompts), reference=self.reference)
