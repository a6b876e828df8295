"""Inference engine: prompts, sessions, tracking memory, vocabulary cache, backends. No ROS imports."""

from seem_ros.engine.api import FrameSegmenter, SegmenterConfig


def build_segmenter(config: SegmenterConfig) -> FrameSegmenter:
    """The segmenter the ROS node runs (imported lazily: it loads torch and the model code)."""
    from seem_ros.engine.segmenter import build_segmenter as build

    return build(config)


__all__ = ["FrameSegmenter", "SegmenterConfig", "build_segmenter"]
