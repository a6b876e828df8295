"""Cutting utterances out of a continuous audio stream by short-time energy. No ROS imports."""

from __future__ import annotations

from collections import deque

import numpy as np


class UtteranceSegmenter:
    """Collects mono float32 samples and returns each utterance once it has ended.

    The stream is cut into frames of `frame_seconds`; a frame whose RMS reaches `speech_threshold` is speech.
    An utterance starts at the first speech frame (with up to `pre_roll_seconds` of audio before it) and ends
    after `end_silence_seconds` without speech, or when it reaches `max_utterance_seconds`, or at `flush()`.
    Utterances with less than `min_speech_seconds` of speech (clicks, bumps) are dropped.
    """

    def __init__(
        self,
        sample_rate: int = 16_000,
        speech_threshold: float = 0.02,
        end_silence_seconds: float = 0.6,
        max_utterance_seconds: float = 10.0,
        min_speech_seconds: float = 0.2,
        pre_roll_seconds: float = 0.3,
        frame_seconds: float = 0.02,
    ) -> None:
        """
        sample_rate: samples per second of the stream, in Hz.
        speech_threshold: frame RMS in full-scale units (1.0 = a full-scale square wave) from which a frame
            is speech; 0.02 is about -34 dBFS.
        end_silence_seconds: silence that ends an utterance, > 0.
        max_utterance_seconds: an utterance is cut at this length, > end_silence_seconds.
        min_speech_seconds: shorter bursts of speech frames are dropped, >= 0.
        pre_roll_seconds: audio kept before the first speech frame, >= 0 (onsets are often quiet).
        frame_seconds: length of the frames the energy is measured on, > 0.
        """
        if sample_rate <= 0 or frame_seconds <= 0 or end_silence_seconds <= 0:
            raise ValueError("sample_rate, frame_seconds and end_silence_seconds must be > 0")
        if max_utterance_seconds <= end_silence_seconds:
            raise ValueError(
                f"max_utterance_seconds ({max_utterance_seconds}) must exceed end_silence_seconds "
                f"({end_silence_seconds})"
            )
        if speech_threshold <= 0 or min_speech_seconds < 0 or pre_roll_seconds < 0:
            raise ValueError("speech_threshold must be > 0; min_speech_seconds and pre_roll_seconds >= 0")
        self.sample_rate = sample_rate
        self.speech_threshold = speech_threshold
        self._frame_length = max(1, round(frame_seconds * sample_rate))
        self._end_silence_frames = max(1, round(end_silence_seconds * sample_rate / self._frame_length))
        self._max_frames = max(2, round(max_utterance_seconds * sample_rate / self._frame_length))
        self._min_speech_frames = round(min_speech_seconds * sample_rate / self._frame_length)
        self._pre_roll: deque[np.ndarray] = deque(
            maxlen=round(pre_roll_seconds * sample_rate / self._frame_length)
        )
        self._remainder = np.zeros(0, np.float32)
        self._frames: list[np.ndarray] = []
        self._speech_frames = 0
        self._silent_run = 0

    @property
    def in_utterance(self) -> bool:
        """Whether speech has started and the utterance has not ended yet."""
        return bool(self._frames)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """samples: (N,) float32 in [-1, 1]. Returns the utterances that ended in them, each (M,) float32."""
        samples = np.concatenate([self._remainder, np.asarray(samples, np.float32).reshape(-1)])
        whole = len(samples) - len(samples) % self._frame_length
        self._remainder = samples[whole:]
        finished = []
        for frame in samples[:whole].reshape(-1, self._frame_length):
            utterance = self._add_frame(frame)
            if utterance is not None:
                finished.append(utterance)
        return finished

    def flush(self) -> np.ndarray | None:
        """End the current utterance now (push-to-talk release, end of stream); returns it, or None."""
        if self._frames and len(self._remainder):
            self._frames.append(self._remainder)
        self._remainder = np.zeros(0, np.float32)
        return self._finish()

    def reset(self) -> None:
        """Forget all buffered audio."""
        self._pre_roll.clear()
        self._remainder = np.zeros(0, np.float32)
        self._frames = []
        self._speech_frames = 0
        self._silent_run = 0

    def _add_frame(self, frame: np.ndarray) -> np.ndarray | None:
        is_speech = float(np.sqrt(np.mean(np.square(frame)))) >= self.speech_threshold
        if not self._frames:
            if not is_speech:
                self._pre_roll.append(frame)
                return None
            self._frames = [*self._pre_roll, frame]
            self._pre_roll.clear()
            self._speech_frames = 1
            self._silent_run = 0
            return None
        self._frames.append(frame)
        if is_speech:
            self._speech_frames += 1
            self._silent_run = 0
        else:
            self._silent_run += 1
        if self._silent_run >= self._end_silence_frames or len(self._frames) >= self._max_frames:
            return self._finish()
        return None

    def _finish(self) -> np.ndarray | None:
        frames, speech_frames = self._frames, self._speech_frames
        self._frames = []
        self._speech_frames = 0
        self._silent_run = 0
        if not frames or speech_frames < self._min_speech_frames:
            return None
        return np.concatenate(frames)
