"""Spoken commands to text: Whisper transcription and utterance cutting. No ROS imports (the node is
seem_ros.ros.speech_node)."""

from seem_ros.speech.transcriber import (
    DEFAULT_INITIAL_PROMPT,
    SAMPLE_RATE,
    Transcriber,
    Transcript,
    bundled_model_dir,
    normalize_command,
    normalize_text,
    pcm16_to_float32,
)
from seem_ros.speech.utterance import UtteranceSegmenter

__all__ = [
    "DEFAULT_INITIAL_PROMPT",
    "SAMPLE_RATE",
    "Transcriber",
    "Transcript",
    "UtteranceSegmenter",
    "bundled_model_dir",
    "normalize_command",
    "normalize_text",
    "pcm16_to_float32",
]
