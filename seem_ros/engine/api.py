"""What the ROS node needs from the engine: a configuration record and the `FrameSegmenter` protocol.

The node builds its segmenter with `seem_ros.engine.build_segmenter(config: SegmenterConfig)` and then only
calls the methods below. No ROS imports here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from seem_ros.engine.prompts import Target, VisualPrompt
from seem_ros.engine.results import FrameResult


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything needed to build a segmenter; the node fills it from its ROS parameters.

    preset: name of a model preset (architecture and default vocabulary), e.g. "focalt_v1" or "focalt_tiny".
    checkpoint: path of a .safetensors / .pt checkpoint; "" = the preset's default file.
    device: torch device string ("cpu", "cuda", "cuda:1") or "auto" (cuda when available, else cpu).
    backend: "torch" or "onnx".
    random_weights: build the model with seeded random weights and no checkpoint (tests, smoke runs).
    vocabulary: class names for panoptic/semantic segmentation; empty = the preset's default vocabulary.
    thing_names: the subset of `vocabulary` segmented as countable instances; empty = every name is a thing.
    score_threshold: minimum class confidence in [0, 1] for a segment or instance to be reported.
    mask_threshold: probability in (0, 1) above which a pixel belongs to a mask.
    overlap_threshold: minimum fraction in (0, 1] of a mask that must stay visible after overlaps are
        resolved for a panoptic segment to be kept.
    max_instances: most instances reported per image (highest scores first).
    short_side: model input size: the shorter image side is resized to this many pixels.
    precision: "fp32", or "fp16" (autocast; CUDA only).
    panoptic: segment every frame over the vocabulary even while targets are tracked.
    max_tracks, track_min_score, max_lost_frames: tracking limits (see `seem_ros.engine.tracker.Tracker`).
    max_image_pixels: larger input images are refused.
    """

    preset: str
    checkpoint: str = ""
    device: str = "auto"
    backend: str = "torch"
    random_weights: bool = False
    vocabulary: tuple[str, ...] = ()
    thing_names: tuple[str, ...] = ()
    score_threshold: float = 0.8
    mask_threshold: float = 0.5
    overlap_threshold: float = 0.8
    max_instances: int = 100
    short_side: int = 512
    precision: str = "fp32"
    panoptic: bool = True
    max_tracks: int = 8
    track_min_score: float = 0.3
    max_lost_frames: int = 30
    max_image_pixels: int = 16_777_216


@dataclass(frozen=True)
class TrackSummary:
    """A tracked target as commands name it: its id, what produced it (text, click, box, scribble, mask or
    referring_image) and its referring text ("" unless it has one)."""

    track_id: int
    kind: str
    text: str = ""


class TrackLimitError(ValueError):
    """A new target was refused because `max_tracks` targets are already tracked."""


@runtime_checkable
class FrameSegmenter(Protocol):
    """A stateful segmenter for a stream of images: prompts and tracks persist across `process` calls.

    Coordinates are pixels of the images given to `process`: x = column, y = row, origin top-left.
    Methods raise ValueError with a readable message for invalid arguments; the state is then unchanged.
    """

    def process(self, rgb: np.ndarray) -> FrameResult:
        """Segment one image. rgb: (H, W, 3) uint8 RGB. Returns masks at (H, W)."""
        ...

    def set_text_prompt(self, text: str) -> int:
        """Start tracking what `text` refers to ("the red cup"); every text prompt adds a target. Returns its
        track id; raises TrackLimitError when max_tracks targets exist."""
        ...

    def add_click(self, x: float, y: float, positive: bool) -> None:
        """Add a positive (object) or negative (not object) click at pixel (x, y): inside a tracked mask it
        refines that target, a positive click elsewhere starts a new one."""
        ...

    def add_prompt(self, prompt: VisualPrompt) -> None:
        """A click or scribble prompt, with the same rules as add_click (its first point decides)."""
        ...

    def add_target(self, target: Target) -> int:
        """Track any target (text, visual prompts, referring image, or a combination); returns its id."""
        ...

    def segment_once(self, rgb: np.ndarray, text: str = "") -> FrameResult:
        """Segment one image outside the stream (by text, else panoptically) without touching the tracks."""
        ...

    def add_box(self, x0: float, y0: float, x1: float, y1: float) -> int:
        """Track a box prompt with corners (x0, y0) top-left and (x1, y1) bottom-right, pixels; returns the
        track id."""
        ...

    def add_mask(self, mask: np.ndarray) -> None:
        """Add a mask (or scribble) prompt. mask: (H, W) bool at the image size."""
        ...

    def clear_prompts(self) -> None:
        """Forget all text and visual prompts: back to panoptic segmentation of the vocabulary."""
        ...

    def tracks(self) -> tuple[TrackSummary, ...]:
        """The tracked targets, oldest first."""
        ...

    def remove_track(self, track_id: int) -> None:
        """Stop tracking one target; raises ValueError naming the existing ids if there is no such track."""
        ...

    def vocabulary_names(self) -> tuple[str, ...]:
        """The names of the current panoptic vocabulary."""
        ...

    def reset_tracking(self) -> None:
        """Forget tracked targets and their memory; prompts stay."""
        ...

    def set_vocabulary(self, names: Sequence[str], thing_names: Sequence[str]) -> None:
        """Replace the vocabulary. thing_names must be a subset of names; empty = every name is a thing."""
        ...

    def describe(self) -> dict[str, str]:
        """Facts for logs and diagnostics; at least the keys "model", "device" and "backend"."""
        ...
