"""`Session`: what belongs to one camera stream: its prompts, its tracks and their memory, its vocabulary.

Sessions share one model through a `SeemEngine`. A frame travels one way:

    request = session.plan_frame(rgb)          # the session says what to decode (checks the image)
    prediction = predictor.predict_frames(...)  # the predictor decodes (several streams' frames at once)
    result = session.finish_frame(plan, prediction)  # the session takes the results

Every input a user gives a session is checked here, once, when it is given (points inside the image,
mask sizes, text length, vocabulary); a bad one raises `InputError` and leaves the session unchanged.
Prompt calls may come from other threads while a frame is being decoded: they apply to the next frame.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from seem_ros.engine.api import TrackSummary
from seem_ros.engine.errors import InputError
from seem_ros.engine.image_transform import validate_rgb
from seem_ros.engine.predictor import FrameRequest, Prediction, TargetResult
from seem_ros.engine.prompts import (
    BoxPrompt,
    ClickPrompt,
    MaskPrompt,
    Target,
    TextPrompt,
    VisualPrompt,
    check_text_fits,
)
from seem_ros.engine.results import (
    SEMANTIC_VOID,
    FrameResult,
    InstanceResult,
    Segment,
    TrackEvent,
    mask_bbox,
)
from seem_ros.engine.tracker import PlannedTrack, Tracker, fits_image
from seem_ros.engine.vocabulary_cache import Vocabulary

if TYPE_CHECKING:
    from seem_ros.engine.engine import SeemEngine


@dataclass(frozen=True)
class SessionSettings:
    """How a session segments its stream.

    generic: segment every frame panoptically, also while targets are tracked (always without targets).
    max_instances: most instances reported per frame. max_image_pixels: larger images are refused.
    max_tracks, track_min_score, max_lost_frames: see `Tracker`.
    """

    generic: bool = True
    max_instances: int = 100
    max_image_pixels: int | None = None
    max_tracks: int = 8
    track_min_score: float = 0.3
    max_lost_frames: int = 30


@dataclass
class FramePlan:
    """One frame of one session on its way through the engine: the request for the predictor and the
    tracks it decodes, in the order of `request.targets`."""

    request: FrameRequest
    tracks: list[PlannedTrack]


class Session:
    """One stream's prompts, tracks and vocabulary over a shared engine; implements
    `seem_ros.engine.api.FrameSegmenter` (its `process` and `segment_once` go through the engine).

    Text prompts and clicks/boxes/masks outside existing targets start new tracks; a click inside a
    tracked mask (or any negative click) refines that track.
    """

    def __init__(self, engine: SeemEngine, name: str, settings: SessionSettings) -> None:
        self.engine = engine
        self.name = name
        self.settings = settings
        self.tracker = Tracker(settings.max_tracks, settings.track_min_score, settings.max_lost_frames)
        self.vocabulary: Vocabulary | None = None
        self._lock = threading.Lock()
        self._image_size: tuple[int, int] | None = None

    # ------------------------------------------------------------------ frames
    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of this stream's images (the last frame's, or as declared by `expect_image_size`)."""
        return self._image_size

    def expect_image_size(self, height: int, width: int) -> None:
        """Declare the size of the coming images, so prompts are checked against it when added."""
        self._image_size = (height, width)

    def plan_frame(self, rgb: np.ndarray) -> FramePlan:
        """Check a frame and say what to decode on it. A frame of another size than the last restarts the
        tracks' memory (and drops targets whose prompts fall outside it; see `Tracker.prepare`)."""
        validate_rgb(rgb, self.settings.max_image_pixels)
        with self._lock:
            self._image_size = rgb.shape[:2]
            tracks = self.tracker.plan(self._image_size)
            request = FrameRequest(
                image=rgb,
                targets=[item.target for item in tracks],
                previous_logits=[item.previous_logits for item in tracks],
                generic=self.settings.generic or not tracks,
                vocabulary=self.vocabulary,
            )
        return FramePlan(request, tracks)

    def finish_frame(self, plan: FramePlan, prediction: Prediction) -> FrameResult:
        """Take the predictor's answer to `plan`: update the tracks and build the frame's result (with what
        happened to the tracks: created, refined, lost, reacquired, dropped)."""
        with self._lock:
            self.tracker.update(plan.tracks, prediction.targets)
            instances: list[InstanceResult] = []
            for item, result in zip(plan.tracks, prediction.targets, strict=True):
                track = item.track
                if track.is_lost or self.tracker.get(track.track_id) is not track:
                    continue
                instance = _instance(len(instances) + 1, track.track_id, track.kind, track.text, result)
                instances.append(instance)
            events = list(self.tracker.events)
        size = plan.request.image.shape[:2]
        return frame_result(size, instances, prediction, self.settings.max_instances, events)

    def process(self, rgb: np.ndarray) -> FrameResult:
        """Segment one frame of this stream (alone; `SeemEngine.step` serves several streams at once)."""
        outcome = self.engine.step([(self, rgb)])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def segment_once(self, rgb: np.ndarray, text: str = "") -> FrameResult:
        """Segment one image outside the stream: by `text` if given, else panoptically. The tracks and
        their memory are not touched."""
        validate_rgb(rgb, self.settings.max_image_pixels)
        targets = [self._text_target(text)] if text.strip() else []
        request = FrameRequest(
            rgb, targets, [None] * len(targets), self.settings.generic or not targets, self.vocabulary
        )
        prediction = self.engine.predict(request)
        instances = [
            _instance(index + 1, 0, "text", text, result) for index, result in enumerate(prediction.targets)
        ]
        return frame_result(rgb.shape[:2], instances, prediction, self.settings.max_instances)

    # ------------------------------------------------------------------ prompts
    def _text_target(self, text: str) -> Target:
        if not text.strip():
            raise InputError("a text prompt needs words")
        check_text_fits(text, self.engine.tokenizer)
        return Target(text=TextPrompt(text))

    def set_text_prompt(self, text: str) -> int:
        """Track what `text` refers to; returns the track id. Texts longer than SEEM's 77-token context are
        refused (the model would silently read only their beginning)."""
        target = self._text_target(text)
        with self._lock:
            return self.tracker.add(target)

    def _check_points(self, points: Sequence[tuple[float, float]]) -> None:
        if self._image_size is None:
            return
        height, width = self._image_size
        for x, y in points:
            if not (0 <= x < width and 0 <= y < height):
                raise InputError(f"point ({x}, {y}) is outside the {width}x{height} image")

    def add_click(self, x: float, y: float, positive: bool) -> None:
        self.add_prompt(ClickPrompt(float(x), float(y), positive))

    def add_prompt(self, prompt: VisualPrompt) -> None:
        """A click or scribble: inside a tracked mask (at its first point) it refines that target; a
        negative one elsewhere refines the newest target; a positive one elsewhere starts a new target."""
        points = [(prompt.x, prompt.y)] if isinstance(prompt, ClickPrompt) else list(prompt.points)
        self._check_points(points)
        x, y = points[0]
        positive = prompt.positive
        kind = "click" if isinstance(prompt, ClickPrompt) else "scribble"
        with self._lock:
            track = self.tracker.track_at(x, y)
            if track is None and not positive:
                tracks = list(self.tracker)
                if not tracks:
                    raise InputError(f"a negative {kind} needs a target to refine; prompt the object first")
                track = tracks[-1]
            if track is not None:
                self.tracker.refine(track.track_id, prompt)
            else:
                self.tracker.add(Target(visual=(prompt,)))

    def add_box(self, x0: float, y0: float, x1: float, y1: float) -> int:
        box = BoxPrompt(float(x0), float(y0), float(x1), float(y1))
        self._check_points([(box.x_min, box.y_min), (box.x_max, box.y_max)])
        with self._lock:
            return self.tracker.add(Target(visual=(box,)))

    def add_mask(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask).astype(bool)
        if self._image_size is not None and mask.shape != self._image_size:
            size = "x".join(str(side) for side in mask.shape[::-1])
            raise InputError(
                f"mask is {size}, the images are {self._image_size[1]}x{self._image_size[0]}: it must have "
                "their size"
            )
        prompt = MaskPrompt(mask)
        with self._lock:
            self.tracker.add(Target(visual=(prompt,)))

    def add_target(self, target: Target) -> int:
        """Track any target (e.g. text + clicks, or a referring image); returns its track id."""
        if target.text is not None:
            self._text_target(target.text.text)
        if self._image_size is not None and not fits_image(target, self._image_size):
            height, width = self._image_size
            raise InputError(
                f"the target's prompts lie outside the {width}x{height} image or do not match its size"
            )
        with self._lock:
            return self.tracker.add(target)

    def clear_prompts(self) -> None:
        with self._lock:
            self.tracker.clear()

    def tracks(self) -> tuple[TrackSummary, ...]:
        with self._lock:
            return tuple(TrackSummary(track.track_id, track.kind, track.text) for track in self.tracker)

    def remove_track(self, track_id: int) -> None:
        with self._lock:
            if self.tracker.get(track_id) is None:
                existing = ", ".join(str(track.track_id) for track in self.tracker) or "none"
                raise InputError(f"no track with id {track_id}; the track ids are {existing}")
            self.tracker.remove(track_id)

    def reset_tracking(self) -> None:
        """Forget the memory of every track (masks, anchors); each target restarts from its prompt."""
        with self._lock:
            for track in self.tracker:
                self.tracker.restart(track)

    def vocabulary_names(self) -> tuple[str, ...]:
        return tuple((self.vocabulary or self.engine.vocabulary).names)

    def set_vocabulary(self, names: Sequence[str], thing_names: Sequence[str]) -> None:
        """This stream's vocabulary (the other streams keep theirs); embedded now, not on the next frame."""
        vocabulary = Vocabulary.from_names(names, thing_names)
        self.engine.prepare_vocabulary(vocabulary)
        with self._lock:
            self.vocabulary = vocabulary

    def describe(self) -> dict[str, str]:
        return {
            **self.engine.describe(),
            "vocabulary_size": str(len(self.vocabulary_names())),
            "tracks": str(len(self.tracker)),
        }


def _instance(index: int, track_id: int, kind: str, text: str, result: TargetResult) -> InstanceResult:
    return InstanceResult(
        instance_id=index,
        track_id=track_id,
        label=text or result.label,
        class_id=result.class_id,
        score=result.score,
        mask=result.mask,
        bbox=mask_bbox(result.mask),
        prompt=kind,
        prompt_text=text,
    )


def frame_result(
    size: tuple[int, int],
    instances: list[InstanceResult],
    prediction: Prediction,
    max_instances: int,
    track_events: list[TrackEvent] | None = None,
) -> FrameResult:
    """Prompted instances, then the panoptic segments as untracked instances (best first), and what
    happened to the stream's tracks (`track_events`, none for a one-shot image)."""
    panoptic = np.zeros(size, dtype=np.int32)
    semantic = np.full(size, SEMANTIC_VOID, dtype=np.uint16)
    segments: list[Segment] = []
    generic = prediction.generic
    if generic is not None:
        panoptic = generic.panoptic
        labelled = generic.semantic >= 0
        semantic[labelled] = generic.semantic[labelled]
        segments = [
            Segment(item.segment_id, item.class_id, item.label, item.is_thing, item.area, item.score)
            for item in generic.segments
        ]
        ranked = sorted(generic.segments, key=lambda item: item.score, reverse=True)
        for item in ranked[: max(0, max_instances - len(instances))]:
            mask = panoptic == item.segment_id
            instances.append(
                InstanceResult(
                    instance_id=len(instances) + 1,
                    track_id=0,
                    label=item.label,
                    class_id=item.class_id,
                    score=item.score,
                    mask=mask,
                    bbox=mask_bbox(mask),
                    prompt="panoptic",
                )
            )
    return FrameResult(instances, panoptic, segments, semantic, prediction.timings, track_events or [])
