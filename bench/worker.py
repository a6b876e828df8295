"""One measurement job in its own process, so its peak memory is its own: `python -m bench.worker '<json>'`.

The job (a `Job` as JSON) names a preset, a backend and a task:
- "prepare": export the ONNX image encoder into the cache (timed, with its check against PyTorch);
- "stages": per-stage times at one input size, for the generic (panoptic) frame, a text target, a click
  target and N tracked targets (clicks with the previous frame's mask logits as memory prompts);
- "sizes": encoder and generic-decoder times for several input sizes.
The result is printed as one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.backends import acceleration, engine_backend
from bench.timing import peak_rss_bytes, summarize
from seem_ros.allocator import share_main_heap, suit_backend
from seem_ros.engine.backends import DecoderBackend, DecoderInputs
from seem_ros.model.decoder import DecoderOutput

TEXT_QUERY = "the animal in the middle"
VOCABULARY_TEMPLATES = ("a photo of a {}.",)
"""One template per class keeps the start-up cost small for random weights (the official demo uses 81)."""


@dataclass(frozen=True)
class Job:
    """What one worker process measures.

    preset: model preset (random weights from `seed`). backend: a name of `bench.backends`. task: "prepare",
    "stages" or "sizes". short_sides: model input short sides in pixels ("stages" uses the first).
    image_size: (height, width) of the synthetic camera image. repeats / warmup: timed and discarded runs.
    tracks: numbers of tracked targets. threads: CPU threads of torch and ONNX Runtime. device: torch
    device. cache_dir: ONNX files, tokenizer and text embeddings. budget_s: repeats are cut so the job
    fits (at least one timed run is kept). encode_and_generic_only: skip text, click and track runs.
    """

    preset: str
    backend: str
    task: str
    short_sides: tuple[int, ...] = (512,)
    image_size: tuple[int, int] = (512, 683)
    repeats: int = 3
    warmup: int = 1
    tracks: tuple[int, ...] = (1, 4, 8)
    threads: int = 2
    device: str = "cpu"
    seed: int = 0
    cache_dir: str = ""
    budget_s: float = 600.0
    encode_and_generic_only: bool = False


@dataclass
class Recorder:
    """Per-stage timings of repeated runs, summarised into rows."""

    job: Job
    rows: list[dict] = field(default_factory=list)

    def add(self, stage: str, seconds: list[float], **extra: object) -> None:
        self.rows.append(
            {
                "preset": self.job.preset,
                "backend": self.job.backend,
                "stage": stage,
                **summarize(seconds),
                **extra,
            }
        )


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth (height, width, 3) uint8 RGB image with a few discs and bars (content is irrelevant for
    random weights, but a structured image keeps the prompt masks and segment counts realistic)."""
    generator = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [
            128 + 100 * np.sin(columns / 37.0),
            128 + 100 * np.cos(rows / 23.0),
            128 + 60 * np.sin((rows + columns) / 51.0),
        ],
        axis=-1,
    )
    for _ in range(6):
        y, x = generator.uniform(0.1, 0.9) * height, generator.uniform(0.1, 0.9) * width
        radius = generator.uniform(0.05, 0.15) * min(height, width)
        inside = (rows - y) ** 2 + (columns - x) ** 2 < radius**2
        image[inside] = generator.uniform(0, 255, size=3)
    image += generator.normal(0, 4, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def click_points(height: int, width: int, count: int) -> list[tuple[float, float]]:
    """`count` (x, y) points on a regular grid inside the image."""
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    return [
        ((index % columns + 0.5) * width / columns, (index // columns + 0.5) * height / rows)
        for index in range(count)
    ]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function: Callable[[], dict[str, float]], device: torch.device) -> tuple[dict[str, float], float]:
    """Run function; return its stage timings and its wall-clock time (device synchronised)."""
    _synchronize(device)
    start = time.perf_counter()
    stages = function()
    _synchronize(device)
    return stages, time.perf_counter() - start


def _repeat(
    function: Callable[[], dict[str, float]], job: Job, device: torch.device, repeats: int
) -> tuple[dict[str, list[float]], list[float]]:
    """Discard `job.warmup` runs, then time `repeats` runs. Returns per-stage lists and wall times."""
    for _ in range(job.warmup):
        _timed(function, device)
    stages: dict[str, list[float]] = {}
    walls = []
    for _ in range(repeats):
        timings, wall = _timed(function, device)
        for name, seconds in timings.items():
            stages.setdefault(name, []).append(seconds)
        walls.append(wall)
    return stages, walls


class Bench:
    """The model, tokenizer, vocabulary and image encoder of one job, and the predictors built on them."""

    def __init__(self, job: Job) -> None:
        from seem_ros.engine.segmenter import load_model_and_source
        from seem_ros.engine.vocabulary_cache import COCO_PANOPTIC, VocabularyCache
        from seem_ros.engine.weights import WeightsFingerprints
        from seem_ros.model.tokenizer import ClipTokenizer

        self.job = job
        self.cache_dir = Path(job.cache_dir)
        self.device = torch.device(job.device)
        torch.set_num_threads(job.threads)
        start = time.perf_counter()
        # as the node loads random weights: drawn once per (preset, seed), then mapped from their cached file
        self.model, source = load_model_and_source(job.preset, random_weights=True, seed=job.seed)
        self.fingerprints = WeightsFingerprints(self.model, source)
        self.build_s = time.perf_counter() - start
        self.tokenizer = ClipTokenizer(cache_dir=self.cache_dir / "tokenizer")
        self.model.language_encoder.tokenizer = self.tokenizer
        self.vocabulary = COCO_PANOPTIC
        self.vocabulary_cache = VocabularyCache(
            self.model.language_encoder,
            cache_dir=self.cache_dir / "text_embeddings",
            templates=VOCABULARY_TEMPLATES,
            fingerprint=self.fingerprints.language(),
        )
        self.image_encoder = None
        self.decoder_backend = None
        from seem_ros.engine.torch_backend import TorchAcceleration, torch_backends

        accelerated = acceleration(job.backend)
        if accelerated != TorchAcceleration():  # as a node's engine decides (`build_predictor`)
            self.image_encoder, self.decoder_backend = torch_backends(self.model, accelerated)
        self.export_s = 0.0
        self.export_checks: list[dict] = []

    def prepare_onnx(self) -> None:
        """The "prepare" job exports (or finds in the cache) the image encoder and every decoder graph; a
        measured onnx job then runs both in ONNX Runtime as the node's onnx backend does: the PyTorch image
        encoder released, each decoder graph loaded when first used (in a discarded warm-up run)."""
        from seem_ros.engine.onnx_backend import (
            OnnxImageEncoder,
            default_providers,
            export_cached_image_encoder,
            release_torch_image_encoder,
            winograd_suits,
        )
        from seem_ros.engine.onnx_decoder import OnnxDecoder
        from seem_ros.export.decoder import ALL_GRAPH_KINDS

        start = time.perf_counter()
        path, checks = export_cached_image_encoder(
            self.model,
            self.job.preset,
            self.cache_dir / "onnx",
            winograd=winograd_suits(default_providers()),
            fingerprint=self.fingerprints.image_encoder(),
        )
        decoder = OnnxDecoder(
            self.model,
            self.job.preset,
            cache_dir=self.cache_dir / "onnx",
            num_threads=self.job.threads,
            fingerprint=self.fingerprints.decoder(),
        )
        if self.job.task == "prepare":
            decoder.prepare(ALL_GRAPH_KINDS)
        self.export_s = time.perf_counter() - start
        self.export_checks = [asdict(check) for check in checks]
        if self.job.backend == "onnx":
            self.image_encoder = OnnxImageEncoder(path, num_threads=self.job.threads)
            release_torch_image_encoder(self.model)
            self.decoder_backend = decoder

    def predictor(self, short_side: int):
        from seem_ros.engine.predictor import SeemPredictor

        return SeemPredictor(
            self.model,
            self.tokenizer,
            vocabulary=self.vocabulary,
            device=self.device,
            short_side=short_side,
            vocabulary_cache=self.vocabulary_cache,
            image_encoder=self.image_encoder,
            decoder_backend=self.decoder_backend,
        )

    def repeats_within_budget(self, seconds_per_run: float, runs_left: int, spent: float) -> int:
        """Timed runs that fit the remaining budget (at least one)."""
        remaining = self.job.budget_s - spent
        affordable = int(remaining / max(seconds_per_run, 1e-6) / max(runs_left, 1))
        return max(1, min(self.job.repeats, affordable))


ENCODER_STAGES = ("preprocess", "backbone", "pixel_decoder", "image_encoder")


def _frame(predictor, rgb: np.ndarray) -> Callable[[], dict[str, float]]:
    def run() -> dict[str, float]:
        predictor.set_image(rgb)
        timings = predictor.predict([], generic=True).timings
        timings["encoder_total"] = sum(timings.get(stage, 0.0) for stage in ENCODER_STAGES)
        return timings

    return run


def _decode_only(predictor, targets: list, previous: list | None = None) -> Callable[[], dict[str, float]]:
    def run() -> dict[str, float]:
        timings = predictor.predict(targets, previous_logits=previous).timings
        # the prompts' tokens and draws with the decoder pass: what a target costs a frame
        return {"decoder": timings["prompts"] + timings["decoder"], "postprocess": timings["postprocess"]}

    return run


def run_stages(bench: Bench, started: float) -> list[dict]:
    from seem_ros.engine.prompts import ClickPrompt, Target, TextPrompt

    job = bench.job
    recorder = Recorder(job)
    rgb = synthetic_image(*job.image_size, seed=job.seed)
    predictor = bench.predictor(job.short_sides[0])

    frame = _frame(predictor, rgb)
    _, warm = _timed(frame, bench.device)
    scenarios = 1 if job.encode_and_generic_only else 3 + len(job.tracks)
    repeats = bench.repeats_within_budget(warm, scenarios, time.perf_counter() - started)
    stages, walls = _repeat(frame, job, bench.device, repeats)
    encoded = predictor.encoded
    geometry = {
        "image_size": list(job.image_size),
        "input_size": list(encoded.image_size),
        "padded_size": list(encoded.padded_size),
    }
    for stage, seconds in stages.items():
        name = stage if stage in ENCODER_STAGES or stage == "encoder_total" else f"generic_{stage}"
        recorder.add(name, seconds, **geometry)
    recorder.add("frame_total", walls, **geometry)
    if job.encode_and_generic_only:
        return recorder.rows

    height, width = job.image_size
    text = [Target(text=TextPrompt(TEXT_QUERY))]
    click = [Target(visual=(ClickPrompt(*click_points(height, width, 1)[0]),))]
    for name, targets, previous in (("text", text, None), ("click", click, None)):
        stages, _ = _repeat(_decode_only(predictor, targets, previous), job, bench.device, repeats)
        for stage, seconds in stages.items():
            recorder.add(f"{name}_{stage}", seconds, **geometry)
    memory_slots = bench.model.decoder.spatial_featured.weight.shape[0]
    for count in job.tracks:
        if count > memory_slots:
            recorder.rows.append(
                {
                    "preset": job.preset,
                    "backend": job.backend,
                    "stage": f"tracks{count}_decoder",
                    "skipped": f"the model has {memory_slots} memory slots, fewer than {count} tracks",
                }
            )
            continue
        targets = [Target(visual=(ClickPrompt(x, y),)) for x, y in click_points(height, width, count)]
        first = predictor.predict(targets)
        previous = [result.mask_logits for result in first.targets]
        stages, _ = _repeat(_decode_only(predictor, targets, previous), job, bench.device, repeats)
        for stage, seconds in stages.items():
            recorder.add(f"tracks{count}_{stage}", seconds, **geometry)
    return recorder.rows


def run_sizes(bench: Bench, started: float) -> list[dict]:
    job = bench.job
    recorder = Recorder(job)
    rgb = synthetic_image(*job.image_size, seed=job.seed)
    for index, short_side in enumerate(job.short_sides):
        predictor = bench.predictor(short_side)
        frame = _frame(predictor, rgb)
        _, warm = _timed(frame, bench.device)
        runs_left = len(job.short_sides) - index
        repeats = bench.repeats_within_budget(warm, runs_left, time.perf_counter() - started)
        stages, walls = _repeat(frame, job, bench.device, repeats)
        encoded = predictor.encoded
        geometry = {
            "short_side": short_side,
            "input_size": list(encoded.image_size),
            "padded_size": list(encoded.padded_size),
        }
        recorder.add("encoder_total", stages["encoder_total"], **geometry)
        recorder.add("generic_decoder", stages["decoder"], **geometry)
        recorder.add("generic_postprocess", stages["postprocess"], **geometry)
        recorder.add("frame_total", walls, **geometry)
    return recorder.rows


FORCED_SEGMENTS = 30
"""Object queries forced to a confident class and a compact mask in the "post" job (COCO vocabulary): with
random weights no query passes the 0.8 class threshold, so post-processing would time an empty frame."""


class ForcedSegments:
    """A decoder backend that runs the real decoder (`decoder`), then overwrites the object queries' class
    logits and mask logits it returns with `count` confident queries of distinct COCO classes, each owning
    one cell of a Voronoi partition of the image (soft borders), the other queries background.

    Only the decoder's OUTPUT changes: post-processing and message conversion run unchanged on it.
    """

    name = "forced"

    def __init__(self, decoder: DecoderBackend, count: int, vocabulary_size: int, seed: int = 0) -> None:
        self.decoder = decoder
        self.count = count
        self.vocabulary_size = vocabulary_size
        self.seed = seed

    def supports(self, inputs: DecoderInputs) -> bool:
        return self.decoder.supports(inputs)

    def __call__(self, inputs: DecoderInputs) -> DecoderOutput:
        output = self.decoder(inputs)
        final = output.final
        queries, classes = final.object_logits.shape[1:]
        height, width = final.object_masks.shape[-2:]
        count = min(self.count, queries)  # the tiny preset has 11 queries
        generator = np.random.default_rng(self.seed)
        logits = np.zeros((queries, classes), dtype=np.float32)
        logits[:, -1] = 10.0  # background
        chosen = generator.choice(self.vocabulary_size, size=count, replace=False)
        logits[:count, -1] = 0.0
        logits[np.arange(count), chosen] = 10.0
        rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
        centres = generator.uniform((0, 0), (height, width), size=(count, 2)).astype(np.float32)
        distances = np.sqrt(
            (rows[None] - centres[:, 0, None, None]) ** 2 + (columns[None] - centres[:, 1, None, None]) ** 2
        )
        masks = np.full((queries, height, width), -8.0, dtype=np.float32)
        masks[:count] = 4.0 - 16.0 * (distances - distances.min(0, keepdims=True))
        device = final.object_masks.device
        batch = final.object_logits.shape[0]
        final.object_logits = torch.from_numpy(logits)[None].expand(batch, -1, -1).to(device)
        final.object_masks = torch.from_numpy(masks)[None].expand(batch, -1, -1, -1).to(device)
        return output


def run_post(bench: Bench, started: float) -> list[dict]:
    """Post-processing and message conversion of a frame with `FORCED_SEGMENTS` forced panoptic segments:
    the predictor's post-processing, the segmenter's results (a mask per segment), and the ROS conversions
    the node publishes (instances, panoptic, semantic, overlay), against the whole frame."""
    from std_msgs.msg import Header

    from seem_ros.engine.engine import SeemEngine
    from seem_ros.engine.session import SessionSettings
    from seem_ros.engine.torch_backend import TorchDecoder
    from seem_ros.ros.conversions import frame_result_to_msg, overlay_image, panoptic_image, semantic_image

    job = bench.job
    recorder = Recorder(job)
    rgb = synthetic_image(*job.image_size, seed=job.seed)
    predictor = bench.predictor(job.short_sides[0])
    inner = predictor.decoder_backend or TorchDecoder(predictor.model)
    predictor.decoder_backend = ForcedSegments(inner, FORCED_SEGMENTS, len(bench.vocabulary.names), job.seed)
    segmenter = SeemEngine(predictor, SessionSettings()).open_session()
    header = Header()
    height, width = job.image_size
    segments: list[int] = []

    def frame() -> dict[str, float]:
        start = time.perf_counter()
        result = segmenter.process(rgb)
        timings = {"frame_total": time.perf_counter() - start}
        engine = sum(seconds for stage, seconds in result.timings.items())
        timings["post_generic"] = result.timings["postprocess"]
        timings["post_results"] = timings["frame_total"] - engine
        segments.append(len(result.segments))
        conversions = {
            "msg_instances": lambda: frame_result_to_msg(result, header, width, height),
            "msg_panoptic": lambda: panoptic_image(result, header),
            "msg_semantic": lambda: semantic_image(result, header),
            "msg_overlay": lambda: overlay_image(rgb, result, header),
        }
        for name, convert in conversions.items():
            start = time.perf_counter()
            convert()
            timings[name] = time.perf_counter() - start
        timings["post_and_messages"] = sum(
            seconds for stage, seconds in timings.items() if stage.startswith(("post_", "msg_"))
        )
        return timings

    _, warm = _timed(frame, bench.device)
    repeats = bench.repeats_within_budget(warm, 1, time.perf_counter() - started)
    stages, _ = _repeat(frame, job, bench.device, repeats)
    for stage, seconds in stages.items():
        recorder.add(stage, seconds, segments=int(np.median(segments)), forced_queries=FORCED_SEGMENTS)
    return recorder.rows


def run_job(job: Job) -> dict:
    """Measure one job; returns {"job", "rows", "peak_rss_bytes", "build_s", "export_s", ...}."""
    started = time.perf_counter()
    bench = Bench(job)
    start = time.perf_counter()
    bench.vocabulary_cache.embeddings(bench.vocabulary)
    vocabulary_s = time.perf_counter() - start
    if engine_backend(job.backend) == "onnx" or job.task == "prepare":
        bench.prepare_onnx()
    rows: list[dict] = []
    if job.task == "stages":
        rows = run_stages(bench, started)
    elif job.task == "sizes":
        rows = run_sizes(bench, started)
    elif job.task == "post":
        rows = run_post(bench, started)
    elif job.task != "prepare":
        raise ValueError(f"unknown task {job.task!r}; use prepare, stages, sizes or post")
    return {
        "job": asdict(job),
        "rows": rows,
        "peak_rss_bytes": peak_rss_bytes(),
        "build_s": bench.build_s,
        "vocabulary_s": vocabulary_s,
        "export_s": bench.export_s,
        "export_checks": bench.export_checks,
        "elapsed_s": time.perf_counter() - started,
    }


def main() -> None:
    fields = json.loads(sys.argv[1])
    for name in ("short_sides", "image_size", "tracks"):
        if name in fields:
            fields[name] = tuple(fields[name])
    job = Job(**fields)
    # the node's allocator policy, so the model alone runs as it does there (see build_predictor)
    share_main_heap()
    suit_backend(engine_backend(job.backend), torch.device(job.device).type)
    result = run_job(job)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
