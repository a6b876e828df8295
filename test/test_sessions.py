"""One engine, several streams: sessions over one model, stepped together, with the tiny reference weights.

Each stream keeps its own prompts, tracks and vocabulary; a step over several streams gives every frame the
answer it gets alone (logits within 1e-4, the same masks but for a pixel whose logit lies that close to the
threshold) although frames of one size share the image encoder pass and frames of one decoder layout share
the decoder pass where the decoder takes batches (ONNX Runtime's graphs without targets; PyTorch on a GPU or
in bf16, tested here in fp32 with that policy); a bad frame fails alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from assets import read_frames, skimage_image, video_clip

from seem_ros.engine.api import SegmenterConfig
from seem_ros.engine.backends import DecoderInputs
from seem_ros.engine.engine import SeemEngine
from seem_ros.engine.errors import InputError
from seem_ros.engine.results import FrameResult
from seem_ros.engine.segmenter import build_engine
from seem_ros.engine.session import Session
from seem_ros.engine.torch_backend import TorchDecoder, TorchImageEncoder
from seem_ros.engine.vocabulary_cache import Vocabulary

STREET = Vocabulary.from_names(("person", "bicycle", "car", "road", "tree"), ("person", "bicycle", "car"))
SHORT_SIDE = 256
LOGIT_TOLERANCE = 1e-4
MASK_PIXELS_NEAR_THRESHOLD = 1e-4
"""The share of a target's mask pixels that may differ: an encoder pass over two frames gives each frame
features within about 3e-6 of a pass over it alone (the convolutions block their work by batch), so a
pixel whose logit lies within LOGIT_TOLERANCE of the threshold may fall on the other side of it."""


class Recording:
    """Wraps an image-encoder or decoder backend and records the batch size of every call."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "recording")
        self.batches: list[int] = []

    def supports(self, inputs: DecoderInputs) -> bool:
        return self.inner.supports(inputs)

    def __call__(self, images_or_inputs: torch.Tensor | DecoderInputs):
        if isinstance(images_or_inputs, DecoderInputs):
            self.batches.append(images_or_inputs.batch_size)
        else:
            self.batches.append(int(images_or_inputs.shape[0]))
        return self.inner(images_or_inputs)


@pytest.fixture
def make_engine(reference_dir: Path):
    """Engines over the tiny reference checkpoint; their backends record the batches they run. Backend
    "torch_gpu_batching": PyTorch decoding batches as on a GPU."""

    def make(backend: str = "torch") -> SeemEngine:
        gpu_batching = backend == "torch_gpu_batching"
        if gpu_batching:
            backend = "torch"
        config = SegmenterConfig(
            preset="focalt_tiny",
            checkpoint=str(reference_dir / "tiny_focalt_v1.safetensors"),
            device="cpu",
            backend=backend,
            short_side=SHORT_SIDE,
            score_threshold=0.4,
            vocabulary=STREET.names,
            thing_names=("person", "bicycle", "car"),
            max_tracks=4,
            track_min_score=0.0,
        )
        engine = build_engine(config)
        predictor = engine.predictor
        model = predictor.model
        predictor.image_encoder = Recording(predictor.image_encoder or TorchImageEncoder(model))
        decoder = predictor.decoder_backend or TorchDecoder(model)
        if gpu_batching:  # the PyTorch decoder takes batches on the CPU too, as on a GPU
            decoder = TorchDecoder(model, decoder.acceleration, batches=True)
        predictor.decoder_backend = Recording(decoder)
        return engine

    return make


@pytest.fixture(scope="module")
def streams() -> dict[str, list[np.ndarray]]:
    """Three cameras: two of the street clip's size (different moments), one of another size."""
    clip = video_clip()
    coffee = skimage_image("coffee")
    return {
        "front": read_frames(clip, 4, step=3),
        "rear": read_frames(clip, 4, start=120, step=3),
        "wrist": [coffee, coffee[:, ::-1].copy(), coffee, coffee[::-1].copy()],
    }


def _prompt(sessions: dict[str, Session]) -> None:
    """Different prompts per stream: a text target on the front, a click on the wrist, nothing on the
    rear (panoptic only), and its own vocabulary on the wrist."""
    sessions["front"].set_text_prompt("the car")
    sessions["wrist"].add_click(300.0, 190.0, positive=True)
    sessions["wrist"].set_vocabulary(["cup", "saucer", "table"], ["cup", "saucer"])


def _logits(session: Session) -> dict[int, torch.Tensor]:
    return {track.track_id: track.mask_logits for track in session.tracker if track.mask_logits is not None}


def _assert_same(batched: FrameResult, alone: FrameResult) -> None:
    assert len(batched.instances) == len(alone.instances)
    for one, other in zip(batched.instances, alone.instances, strict=True):
        assert (one.track_id, one.label, one.prompt) == (other.track_id, other.label, other.prompt)
        assert np.count_nonzero(one.mask != other.mask) <= MASK_PIXELS_NEAR_THRESHOLD * one.mask.size
        assert one.score == pytest.approx(other.score, abs=LOGIT_TOLERANCE)
    assert np.array_equal(batched.panoptic, alone.panoptic)
    assert np.array_equal(batched.semantic, alone.semantic)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_streams_stepped_together_equal_streams_alone(make_engine, streams, backend: str) -> None:
    shared = make_engine(backend)
    together = {name: shared.open_session(name) for name in streams}
    alone = {name: make_engine(backend).open_session(name) for name in streams}
    _prompt(together)
    _prompt(alone)
    for index in range(4):
        results = shared.step([(together[name], frames[index]) for name, frames in streams.items()])
        for name, result in zip(streams, results, strict=True):
            expected = alone[name].process(streams[name][index])
            _assert_same(result, expected)
            batched_logits, alone_logits = _logits(together[name]), _logits(alone[name])
            assert batched_logits.keys() == alone_logits.keys()
            for track_id, logits in batched_logits.items():
                torch.testing.assert_close(logits, alone_logits[track_id], atol=LOGIT_TOLERANCE, rtol=0)
    assert [track.text for track in together["front"].tracks()] == ["the car"]
    assert [track.kind for track in together["wrist"].tracks()] == ["click"]
    assert together["rear"].tracks() == ()
    assert together["wrist"].vocabulary_names() == ("cup", "saucer", "table")
    assert together["rear"].vocabulary_names() == STREET.names
    wrist_labels = {instance.label for instance in results[2].instances if instance.prompt == "panoptic"}
    assert wrist_labels <= {"cup", "saucer", "table"}


@pytest.mark.parametrize(
    ("backend", "decoder_batches"), [("torch", [1, 1, 1]), ("torch_gpu_batching", [1, 2]), ("onnx", [1, 2])]
)
def test_frames_of_one_size_share_the_encoder_and_generic_frames_the_decoder(
    make_engine, streams, backend: str, decoder_batches: list[int]
) -> None:
    engine = make_engine(backend)
    front, rear, wrist = (engine.open_session(name) for name in ("front", "rear", "wrist"))
    wrist.set_text_prompt("the cup")
    engine.step([(front, streams["front"][0]), (rear, streams["rear"][0]), (wrist, streams["wrist"][0])])
    assert sorted(engine.predictor.image_encoder.batches) == [1, 2]  # the street size, and the coffee photo
    # front + rear together where the decoder takes batches (not PyTorch on the CPU), the prompted wrist
    assert sorted(engine.predictor.decoder_backend.batches) == decoder_batches


@pytest.mark.parametrize("backend", ["torch_gpu_batching", "torch", "onnx"])
@pytest.mark.parametrize("prompts", ["clicks", "texts"])
def test_prompted_frames_of_one_layout_share_the_decoder(
    make_engine, streams, backend: str, prompts: str
) -> None:
    """Two cameras with a target each: PyTorch batching as on a GPU decodes both frames in one pass (their
    prompt tokens padded to the longer, their random draws their own), PyTorch on the CPU and ONNX Runtime
    (its prompted graphs take one image) one by one; every answer equals the one the camera gets alone,
    tracked clicks (memory prompts) included."""
    names = ("front", "rear")
    shared = make_engine(backend)
    together = {name: shared.open_session(name) for name in names}
    alone = {name: make_engine(backend).open_session(name) for name in names}
    for sessions in (together, alone):
        if prompts == "clicks":
            sessions["front"].add_click(100.0, 50.0, positive=True)
            sessions["rear"].add_click(2.0, 60.0, positive=True)  # at the edge: a cut disk, fewer tokens
        else:
            sessions["front"].set_text_prompt("the car")
            sessions["rear"].set_text_prompt("the person walking beside the road")
    frames = 3
    for index in range(frames):
        results = shared.step([(together[name], streams[name][index]) for name in names])
        for name, result in zip(names, results, strict=True):
            _assert_same(result, alone[name].process(streams[name][index]))
            batched_logits, alone_logits = _logits(together[name]), _logits(alone[name])
            assert batched_logits.keys() == alone_logits.keys() and batched_logits
            for track_id, logits in batched_logits.items():
                torch.testing.assert_close(logits, alone_logits[track_id], atol=LOGIT_TOLERANCE, rtol=0)
    expected = [2] * frames if backend == "torch_gpu_batching" else [1] * (2 * frames)
    assert shared.predictor.decoder_backend.batches == expected


def test_a_bad_frame_fails_alone(make_engine, streams) -> None:
    engine = make_engine()
    good, bad = engine.open_session("good"), engine.open_session("bad")
    results = engine.step([(bad, np.zeros((4, 4, 3), dtype=np.uint8)), (good, streams["front"][0])])
    assert isinstance(results[0], InputError) and "too small" in str(results[0])
    assert isinstance(results[1], FrameResult)
    with pytest.raises(InputError, match="too small"):
        bad.process(np.zeros((4, 4, 3), dtype=np.uint8))


def test_a_resolution_change_restarts_tracks(make_engine, streams) -> None:
    session = make_engine().open_session("front")
    session.add_click(100.0, 50.0, positive=True)
    session.process(streams["front"][0])
    assert next(iter(session.tracker)).mask is not None
    smaller = np.ascontiguousarray(streams["front"][1][::2, ::2])
    result = session.process(smaller)
    assert result.panoptic.shape == smaller.shape[:2]
    assert [track.kind for track in session.tracks()] == ["click"]
    session.add_click(10.0, 10.0, positive=True)
    with pytest.raises(InputError, match="outside"):
        session.add_click(330.0, 10.0, positive=True)


def test_sessions_are_named_once(make_engine) -> None:
    engine = make_engine()
    engine.open_session("front")
    with pytest.raises(InputError, match="already open"):
        engine.open_session("front")
    engine.close_session("front")
    engine.open_session("front")
    assert list(engine.sessions) == ["front"]
