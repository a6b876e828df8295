"""Plain result types the engine returns and the ROS layer converts to messages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class InstanceResult:
    """One segmented object in original-image pixel coordinates.

    mask: (H, W) bool at the input image size.
    bbox: (x_min, y_min, x_max, y_max) inclusive pixel bounds of the mask, x = column, y = row.
    track_id: stable id across frames for tracked targets; 0 for untracked generic segments.
    prompt: which prompt produced it ("text", "click", "box", "scribble", "mask", "referring_image",
        "panoptic"), and prompt_text the text for text prompts.
    """

    instance_id: int
    track_id: int
    label: str
    class_id: int
    score: float
    mask: np.ndarray
    bbox: tuple[int, int, int, int]
    prompt: str = "panoptic"
    prompt_text: str = ""


@dataclass
class Segment:
    """One entry of the panoptic segment table; id is the value in the panoptic id image."""

    segment_id: int
    class_id: int
    label: str
    is_thing: bool
    area: int
    score: float


@dataclass(frozen=True)
class TrackEvent:
    """What happened to a track: "created", "refined" (a click added), "lost" (its score fell below the
    threshold or its mask vanished), "reacquired" or "dropped" (removed by the tracker itself: lost for too
    long, or its prompts lie outside the images). name: the track's text, else its prompt kind ("click").
    detail: why, for "dropped"."""

    track_id: int
    event: str
    name: str = ""
    detail: str = ""


SEMANTIC_VOID = 65535
"""The class id of semantic-image pixels that no class applies to (the uint16 maximum)."""


@dataclass
class FrameResult:
    """Everything computed for one image.

    panoptic: (H, W) int32 segment ids, 0 = void. semantic: (H, W) uint16 class ids, SEMANTIC_VOID = none.
    timings: seconds per stage ("preprocess", "backbone" and "pixel_decoder" or "image_encoder", "prompts",
        "decoder", "postprocess"; see `SeemPredictor.predict_frames`).
    track_events: what happened to the stream's tracks since its previous frame, this frame included.
    """

    instances: list[InstanceResult]
    panoptic: np.ndarray
    segments: list[Segment]
    semantic: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    track_events: list[TrackEvent] = field(default_factory=list)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive (x_min, y_min, x_max, y_max) of a non-empty (H, W) bool mask; (0, 0, -1, -1) if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, -1, -1)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
