"""`SeemSegmenter`: the stream segmenter the ROS node drives (prompts, tracks, generic segmentation).

Every `process(rgb)` encodes the frame once and runs one decoder pass for all tracked targets and the
panoptic segmentation together. Prompt calls may arrive between frames; they apply to the next frame.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from seem_ros.cache import default_cache_dir
from seem_ros.engine.api import SegmenterConfig, TrackSummary
from seem_ros.engine.image_transform import validate_rgb
from seem_ros.engine.onnx_backend import ImageEncoderBackend
from seem_ros.engine.onnx_decoder import DecoderBackend
from seem_ros.engine.predictor import PanopticSettings, Prediction, SeemPredictor, TargetResult
from seem_ros.engine.prompts import BoxPrompt, ClickPrompt, MaskPrompt, Target, TextPrompt, VisualPrompt
from seem_ros.engine.results import SEMANTIC_VOID, FrameResult, InstanceResult, Segment, mask_bbox
from seem_ros.engine.torch_backend import TorchAcceleration, TorchDecoder, TorchImageEncoder
from seem_ros.engine.tracker import Tracker, fits_image
from seem_ros.engine.vocabulary_cache import COCO_PANOPTIC, Vocabulary, VocabularyCache
from seem_ros.engine.weights import (
    WeightsFingerprints,
    cached_random_weights,
    model_from_file,
    weights_source,
)
from seem_ros.model.checkpoint import CheckpointError
from seem_ros.model.presets import CHECKPOINT_FILES, PRESETS, build_preset, randomize_weights
from seem_ros.model.seem import SEEM
from seem_ros.model.tokenizer import CONTEXT_LENGTH, ClipTokenizer

if TYPE_CHECKING:
    from seem_ros.remote.client import RemotePredictor


def default_checkpoint_path(preset: str) -> Path:
    """Where a released checkpoint is looked for when none is given: `<cache>/checkpoints/<file>`."""
    return default_cache_dir() / "checkpoints" / CHECKPOINT_FILES.get(preset, f"{preset}.pt")


def resolve_device(device: str) -> torch.device:
    """ "auto" = cuda when available, else cpu. Asking for cuda without a GPU is an error (not a silent
    fallback): use "auto" to fall back."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but no CUDA device is available; use 'cpu' or 'auto'"
        )
    return resolved


def load_model(preset: str, checkpoint: str = "", random_weights: bool = False, seed: int = 0) -> SEEM:
    """Build a preset and fill it from a checkpoint (strict, safe) or with labelled random weights."""
    return load_model_and_source(preset, checkpoint, random_weights, seed)[0]


def load_model_and_source(
    preset: str, checkpoint: str = "", random_weights: bool = False, seed: int = 0
) -> tuple[SEEM, str | None]:
    """`load_model`, and the `weights_source` of the file the weights were mapped from (a checkpoint, or
    the cached random weights of (preset, seed)); None when random weights could not be cached."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if random_weights:
        path = cached_random_weights(preset, seed)
        if path is None:
            return randomize_weights(build_preset(preset), seed), None
    else:
        path = Path(checkpoint).expanduser() if checkpoint else default_checkpoint_path(preset)
        if not path.is_file():
            raise CheckpointError(
                f"no checkpoint at {path}. Download {CHECKPOINT_FILES.get(preset, 'a SEEM v1 checkpoint')} "
                "from the xdecoder/SEEM model repository and put it there (or pass its path), "
                "or run with random weights to try the pipeline (outputs are meaningless)"
            )
    return model_from_file(preset, path), weights_source(path, preset)


class SeemSegmenter:
    """Implements `seem_ros.engine.api.FrameSegmenter` over a `SeemPredictor` and a `Tracker`.

    Text prompts and clicks/boxes/masks outside existing targets start new tracks; a click inside a
    tracked mask (or any negative click) refines that track. With no track, or when `generic` is set,
    the frame is also segmented panoptically over the vocabulary.
    """

    def __init__(
        self,
        predictor: SeemPredictor | RemotePredictor,
        tracker: Tracker,
        generic: bool = True,
        max_instances: int = 100,
        description: dict[str, str] | None = None,
        max_image_pixels: int | None = None,
    ) -> None:
        self.predictor = predictor
        self.max_image_pixels = max_image_pixels
        self.tracker = tracker
        self.generic = generic
        self.max_instances = max_instances
        self._description = description or {}
        self._lock = threading.Lock()
        self._image_size: tuple[int, int] | None = None

    # ------------------------------------------------------------------ prompts
    def set_text_prompt(self, text: str) -> int:
        """Track what `text` refers to; returns the track id. Texts longer than SEEM's 77-token context are
        refused (the model would silently read only their beginning)."""
        target = Target(text=TextPrompt(text))
        tokens = self.predictor.tokenizer.token_count(text)
        if tokens > CONTEXT_LENGTH:
            raise ValueError(
                f"text prompt has {tokens} tokens; SEEM reads at most {CONTEXT_LENGTH} (with start and end): "
                "shorten it"
            )
        with self._lock:
            return self.tracker.add(target)

    def _check_point(self, x: float, y: float) -> None:
        if self._image_size is not None:
            height, width = self._image_size
            if not (0 <= x < width and 0 <= y < height):
                raise ValueError(f"point ({x}, {y}) is outside the {width}x{height} image")

    def add_click(self, x: float, y: float, positive: bool) -> None:
        self.add_prompt(ClickPrompt(float(x), float(y), positive))

    def add_prompt(self, prompt: VisualPrompt) -> None:
        """A click or scribble: inside a tracked mask (at its first point) it refines that target; a
        negative one elsewhere refines the newest target; a positive one elsewhere starts a new target."""
        x, y = (prompt.x, prompt.y) if isinstance(prompt, ClickPrompt) else prompt.points[0]
        positive = getattr(prompt, "positive", True)
        kind = "click" if isinstance(prompt, ClickPrompt) else "scribble"
        points = [(x, y)] if isinstance(prompt, ClickPrompt) else list(getattr(prompt, "points", [(x, y)]))
        for px, py in points:
            self._check_point(px, py)
        with self._lock:
            track = self.tracker.track_at(x, y)
            if track is None and not positive:
                tracks = list(self.tracker)
                if not tracks:
                    raise ValueError(f"a negative {kind} needs a target to refine; prompt the object first")
                track = tracks[-1]
            if track is not None:
                self.tracker.refine(track.track_id, prompt)
            else:
                self.tracker.add(Target(visual=(prompt,)))

    def add_box(self, x0: float, y0: float, x1: float, y1: float) -> int:
        box = BoxPrompt(float(x0), float(y0), float(x1), float(y1))
        self._check_point(box.x_min, box.y_min)
        self._check_point(box.x_max, box.y_max)
        with self._lock:
            return self.tracker.add(Target(visual=(box,)))

    def add_mask(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask).astype(bool)
        if self._image_size is not None and mask.shape != self._image_size:
            raise ValueError(
                f"mask is {mask.shape[1]}x{mask.shape[0]}, the images are {self._image_size[::-1]}"
            )
        prompt = MaskPrompt(mask)
        with self._lock:
            self.tracker.add(Target(visual=(prompt,)))

    def expect_image_size(self, height: int, width: int) -> None:
        """Declare the size of the coming images, so prompts are checked against it when added."""
        self._image_size = (height, width)

    def add_target(self, target: Target) -> int:
        """Track any target (e.g. text + clicks, or a referring image); returns its track id."""
        if self._image_size is not None and not fits_image(target, self._image_size):
            height, width = self._image_size
            raise ValueError(
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
                raise ValueError(f"no track with id {track_id}; the track ids are {existing}")
            self.tracker.remove(track_id)

    def vocabulary_names(self) -> tuple[str, ...]:
        return tuple(self.predictor.vocabulary.names)

    def reset_tracking(self) -> None:
        """Forget the memory of every track (masks, anchors); each target restarts from its prompt."""
        with self._lock:
            for track in self.tracker:
                self.tracker.restart(track)

    def set_vocabulary(self, names: Sequence[str], thing_names: Sequence[str]) -> None:
        vocabulary = Vocabulary.from_names(names, thing_names)
        with self._lock:
            self.predictor.set_vocabulary(vocabulary)

    def describe(self) -> dict[str, str]:
        return {
            **self._description,
            "device": str(self.predictor.device),
            "vocabulary_size": str(len(self.predictor.vocabulary.names)),
            "tracks": str(len(self.tracker)),
        }

    # ------------------------------------------------------------------ frames
    def process(self, rgb: np.ndarray) -> FrameResult:
        validate_rgb(rgb, self.max_image_pixels)
        with self._lock:
            self.predictor.set_image(rgb)
            self._image_size = rgb.shape[:2]
            self.tracker.prepare(self._image_size)
            tracks = list(self.tracker)
            prediction = self.tracker.step(self.predictor, generic=self.generic or not tracks)
            instances: list[InstanceResult] = []
            for track, result in zip(tracks, prediction.targets, strict=True):
                if track.is_lost or self.tracker.get(track.track_id) is None:
                    continue
                instances.append(
                    self._instance(len(instances) + 1, track.track_id, track.kind, track.text, result)
                )
            return self._frame_result(rgb.shape[:2], instances, prediction)

    def segment_once(self, rgb: np.ndarray, text: str = "") -> FrameResult:
        """Segment one image outside the stream: by `text` if given, else panoptically. Tracks and their
        memory are not touched (the next stream frame is encoded anew)."""
        validate_rgb(rgb, self.max_image_pixels)
        targets = [Target(text=TextPrompt(text))] if text.strip() else []
        with self._lock:
            self.predictor.set_image(rgb)
            prediction = self.predictor.predict(targets, generic=self.generic or not targets)
            instances = [
                self._instance(index + 1, 0, "text", text, result)
                for index, result in enumerate(prediction.targets)
            ]
            return self._frame_result(rgb.shape[:2], instances, prediction)

    @staticmethod
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

    def _frame_result(
        self, size: tuple[int, int], instances: list[InstanceResult], prediction: Prediction
    ) -> FrameResult:
        """Prompted instances, then the panoptic segments as untracked instances (best first)."""
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
            for item in ranked[: max(0, self.max_instances - len(instances))]:
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
        return FrameResult(instances, panoptic, segments, semantic, prediction.timings)


class StartupPhases:
    """Seconds spent in each phase of building a segmenter, for the node's ready line."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = now - self._last
        self._last = now

    def describe(self) -> str:
        """E.g. "weights 0.3 s / onnx 1.1 s / tokenizer 0.1 s / vocabulary 0.0 s"."""
        return " / ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.seconds.items())


def build_segmenter(config: SegmenterConfig) -> SeemSegmenter:
    """Build the segmenter the node uses from its configuration (raises ValueError / CheckpointError)."""
    if config.backend == "remote":
        return _build_remote_segmenter(config)
    device = resolve_device(config.device)
    if config.backend not in ("torch", "onnx"):
        raise ValueError(f"backend {config.backend!r} is not available; use 'torch', 'onnx' or 'remote'")
    phases = StartupPhases()
    model, source = load_model_and_source(config.preset, config.checkpoint, config.random_weights)
    fingerprints = WeightsFingerprints(model, source)
    phases.done("weights")
    image_encoder: ImageEncoderBackend | None = None
    decoder_backend: DecoderBackend | None = None
    acceleration = TorchAcceleration(config.precision, config.compile, config.cuda_graphs)
    if config.backend == "torch" and acceleration != TorchAcceleration():
        acceleration.check_device(device)
        image_encoder = TorchImageEncoder(model, acceleration)
        decoder_backend = TorchDecoder(model, acceleration)
    if config.backend == "onnx":
        from seem_ros.engine.onnx_backend import cached_onnx_image_encoder, release_torch_image_encoder
        from seem_ros.engine.onnx_decoder import OnnxDecoder
        from seem_ros.export.decoder import DecoderGraphKind

        image_encoder = cached_onnx_image_encoder(
            model, config.preset, fingerprint=fingerprints.image_encoder()
        )
        release_torch_image_encoder(model)
        decoder_backend = OnnxDecoder(model, config.preset, fingerprint=fingerprints.decoder())
        # the graph every frame without prompts needs; prompt graphs are exported when first used
        decoder_backend.prepare([DecoderGraphKind()])
        phases.done("onnx")
    vocabulary = (
        Vocabulary.from_names(config.vocabulary, config.thing_names) if config.vocabulary else COCO_PANOPTIC
    )
    tokenizer = ClipTokenizer()
    phases.done("tokenizer")
    vocabulary_cache = VocabularyCache(model.language_encoder, fingerprint=fingerprints.language())
    predictor = SeemPredictor(
        model,
        tokenizer,
        vocabulary,
        device=device,
        short_side=config.short_side,
        panoptic=PanopticSettings(config.score_threshold, config.overlap_threshold),
        mask_threshold=config.mask_threshold,
        vocabulary_cache=vocabulary_cache,
        image_encoder=image_encoder,
        decoder_backend=decoder_backend,
    )
    weights = "random (meaningless outputs)" if config.random_weights else (config.checkpoint or "default")
    phases.done("vocabulary")
    backend = image_encoder.name if isinstance(image_encoder, TorchImageEncoder) else config.backend
    description = {
        "model": config.preset,
        "weights": weights,
        "backend": backend,
        "startup": phases.describe(),
    }
    return _segmenter(config, predictor, description)


def _segmenter(
    config: SegmenterConfig, predictor: SeemPredictor | RemotePredictor, description: dict[str, str]
) -> SeemSegmenter:
    tracker = Tracker(
        max_tracks=config.max_tracks,
        min_score=config.track_min_score,
        max_lost_frames=config.max_lost_frames,
    )
    return SeemSegmenter(
        predictor,
        tracker,
        generic=config.panoptic,
        max_instances=config.max_instances,
        description=description,
        max_image_pixels=config.max_image_pixels,
    )


def _build_remote_segmenter(config: SegmenterConfig) -> SeemSegmenter:
    """A segmenter whose model runs on a seem_ros server: tracking and prompts stay here (see
    `seem_ros.remote.client`); no model is loaded and the server need not be up yet."""
    from seem_ros.remote.client import RemotePredictor, ServerClient, read_token

    client = ServerClient(config.server_url, config.request_timeout, read_token(config.server_token_file))
    vocabulary = Vocabulary.from_names(config.vocabulary, config.thing_names) if config.vocabulary else None
    predictor = RemotePredictor(client, ClipTokenizer(), vocabulary, config.remote_image_format)
    description = {"model": "on the server", "backend": "remote", "server": config.server_url}
    return _segmenter(config, predictor, description)
