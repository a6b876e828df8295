"""Inference engine: prompts, sessions, tracking memory, vocabulary cache, backends. No ROS imports."""

from __future__ import annotations

from typing import TYPE_CHECKING

from seem_ros.engine.api import FrameSegmenter, SegmenterConfig
from seem_ros.engine.errors import InputError

if TYPE_CHECKING:
    from seem_ros.engine.engine import SeemEngine


def build_segmenter(config: SegmenterConfig) -> FrameSegmenter:
    """A one-stream segmenter (imported lazily: it loads torch and the model code)."""
    from seem_ros.engine.segmenter import build_segmenter as build

    return build(config)


def build_engine(config: SegmenterConfig) -> SeemEngine:
    """One model for any number of streams (`SeemEngine.open_session`), imported lazily too."""
    from seem_ros.engine.segmenter import build_engine as build

    return build(config)


__all__ = ["FrameSegmenter", "InputError", "SegmenterConfig", "build_engine", "build_segmenter"]
