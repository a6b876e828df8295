"""What the ROS node needs from the engine: a configuration record and the `FrameSegmenter` protocol.

The node builds its segmenter with `seem_ros.engine.build_segmenter(config: SegmenterConfig)` and then only
calls the methods below. No ROS imports here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from seem_ros.engine.errors import InputError
from seem_ros.engine.prompts import Target, VisualPrompt
from seem_ros.engine.results import FrameResult
from seem_ros.engine.settings import check_settings, setting
from seem_ros.engine.vocabulary_cache import Vocabulary

PRESET_NAMES = ("focalt_v1", "focall_v1", "samvitb_v1", "samvitl_v1", "focalt_tiny")
"""The model presets (`seem_ros.model.presets.PRESETS`), named here without importing the model."""


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything needed to build a segmenter; the node fills it from its ROS parameters.

    Each field is declared once here with its default, meaning and allowed values; the node's parameter
    table, `config/seem.yaml` and the README's table are generated from these declarations. Building a
    config checks every value (ValueError naming the field).
    """

    preset: str = setting(
        "focalt_v1", "Model preset: architecture and default vocabulary.", choices=PRESET_NAMES
    )
    checkpoint: str = setting("", "Checkpoint file (.safetensors or .pt); empty = the preset's default file.")
    device: str = setting(
        "auto",
        "Torch device: auto (cuda when available, else cpu), cpu, cuda or cuda:N.",
        pattern=r"auto|cpu|cuda(:\d+)?",
    )
    backend: str = setting(
        "torch",
        "Inference backend: torch, onnx (ONNX Runtime), or remote (a seem_ros server, see server_url).",
        choices=("torch", "onnx", "remote"),
    )
    random_weights: bool = setting(
        False, "Use seeded random weights instead of a checkpoint (tests and smoke runs)."
    )
    vocabulary: tuple[str, ...] = setting(
        (), "Class names for panoptic and semantic output; empty = the preset's vocabulary."
    )
    thing_names: tuple[str, ...] = setting(
        (), "Names from vocabulary segmented as countable instances; empty = all of them."
    )
    score_threshold: float = setting(
        0.8, "Minimum confidence of a reported instance or segment.", float_range=(0.0, 0.99)
    )
    mask_threshold: float = setting(
        0.5,
        "A pixel belongs to a mask when its probability (sigmoid of the mask logit) exceeds this; in "
        "panoptic output, the probability a pixel needs to count toward its segment.",
        float_range=(0.01, 0.99),
    )
    overlap_threshold: float = setting(
        0.8,
        "Fraction of a mask that must stay visible after overlaps are resolved (panoptic).",
        float_range=(0.01, 1.0),
    )
    max_instances: int = setting(100, "Most instances reported per image.", int_range=(1, 1000))
    short_side: int = setting(
        512,
        "Model input: images are resized so their shorter side has this many pixels.",
        int_range=(64, 2048),
    )
    precision: str = setting(
        "fp32",
        "fp32, or bf16 / fp16 autocast of the image encoder and decoder (torch backend; fp16 on CUDA only). "
        "bf16 also suits CPUs with bf16 units (AMX, AVX-512 BF16): about 2.2 times as fast as fp32 there.",
        choices=("fp32", "bf16", "fp16"),
    )
    compile: bool = setting(
        False,
        "torch backend: compile the image encoder and decoder with torch.compile (minutes at the first frame "
        "of each input size and prompt layout, faster frames after; the compiled code is kept in "
        "<cache>/torch_compile, so later starts load it in seconds).",
    )
    cuda_graphs: bool = setting(
        False,
        "torch backend on CUDA: replay the compiled image encoder and decoder as CUDA graphs (needs "
        "compile).",
    )
    panoptic: bool = setting(True, "Segment every frame over the vocabulary, also while targets are tracked.")
    max_tracks: int = setting(8, "Most targets tracked at once.", int_range=(1, 64))
    track_min_score: float = setting(
        0.3,
        "A target whose mask score is below this on a frame is lost for that frame.",
        float_range=(0.0, 0.99),
    )
    max_lost_frames: int = setting(
        30, "A target lost for more consecutive frames is dropped.", int_range=(0, 100000)
    )
    server_url: str = setting(
        "http://127.0.0.1:8000/seem",
        "backend remote: URL of the seem_ros server (`seem-ros serve`).",
        pattern=r"https?://\S+",
    )
    request_timeout: float = setting(
        5.0, "backend remote: seconds to wait for the server's answer to a frame.", float_range=(0.1, 600.0)
    )
    server_token_file: str = setting(
        "",
        "backend remote: file holding the server's shared token; empty = $SEEM_ROS_SERVER_TOKEN (if set).",
    )
    remote_image_format: str = setting(
        "jpeg", "backend remote: how frames travel to the server.", choices=("jpeg", "png", "raw")
    )
    max_image_pixels: int = setting(
        16_777_216, "Images with more pixels (width x height) are refused.", int_range=(64, 1 << 28)
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if self.cuda_graphs and not self.compile:
            raise ValueError("cuda_graphs replays compiled graphs: set compile too")
        if self.backend != "torch" and (self.compile or self.precision != "fp32"):
            raise ValueError(
                f"precision {self.precision!r} and compile apply to the torch backend, not {self.backend!r}: "
                "use precision 'fp32' and compile false with it"
            )
        if self.vocabulary:
            Vocabulary.from_names(self.vocabulary, self.thing_names)  # raises ValueError naming what is wrong


@dataclass(frozen=True)
class TrackSummary:
    """A tracked target as commands name it: its id, what produced it (text, click, box, scribble, mask or
    referring_image) and its referring text ("" unless it has one)."""

    track_id: int
    kind: str
    text: str = ""


class TrackLimitError(InputError):
    """A new target was refused because `max_tracks` targets are already tracked."""


@runtime_checkable
class FrameSegmenter(Protocol):
    """A stateful segmenter for a stream of images: prompts and tracks persist across `process` calls.

    Coordinates are pixels of the images given to `process`: x = column, y = row, origin top-left.
    Methods raise `InputError` (a ValueError) with a readable message for invalid arguments; the state is
    then unchanged.
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
