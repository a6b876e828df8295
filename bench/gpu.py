"""Benchmark the PyTorch path on a GPU: eager fp32, bf16 autocast, compiled, compiled + CUDA graphs.

    scripts/bench_gpu.sh --json $OUT/gpu.json               # on a CUDA machine (under 6 minutes)
    scripts/bench_gpu.sh --device cpu --quick               # the same code on the CPU (CI, a minute)

For each preset (random weights) and batch size, a frame is what the node does per camera image: encode,
decode the panoptic segmentation over the COCO vocabulary together with one tracked target (a click
carried forward with SEEM's memory prompt), post-process to full-size masks. Batch B = B cameras, stepped as a
node's engine steps them (`SeemPredictor.predict_frames`): their frames are encoded in one batched
image-encoder pass and decoded in one batched decoder pass (each camera's own click and draws). Per variant:
median and p90 of per-stage times (the device is synchronised before each clock read), frames per second
over all cameras, peak GPU memory, the time the first frames took (compilation, or loading what an
earlier run compiled: the JSON's `compiled_code` says whether its cache held any), and agreement with
eager fp32 on the agreement set: the benchmark frame and three more real photos, nine clicks on each
(`AGREEMENT_PHOTOS`, `AGREEMENT_CLICKS`): mask IoU (mean and worst of the 36 masks), the largest
logit difference, and the image features' error (mean |difference| over mean |fp32|). One mask of
random weights is no measure of precision: its logits sit near the threshold, and summing in another
order moves its IoU by several points (0.906 to 0.961 for the same bf16 features). The tiny reference
model (`--reference DIR`, the parity set's weights and image) is checked for agreement too.
Each precision runs on the model as a node holds it (`node_model`): bf16 and fp16 variants on a copy whose
matrix and convolution weights are stored reduced, eager fp32 on fp32 weights; only the model in use is on
the device. Variants are run in order of importance (`run_plan`: per batch size, eager fp32 and the most
accelerated variant of every preset first) and skipped, said so in the table, once `--budget` seconds have
passed. With `--profile N`, N more steps of each variant run under `torch.profiler`: time per step, the
device's summed kernel time, kernel and CUDA-graph launches per step, and the operators and kernels that
took the most time, so one run on a lent device says where the time goes as well as how much it is.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.timing import summarize
from seem_ros.cache import default_cache_dir
from seem_ros.engine.predictor import FrameRequest, Prediction, SeemPredictor
from seem_ros.engine.prompts import ClickPrompt, Target
from seem_ros.engine.segmenter import load_model
from seem_ros.engine.torch_backend import (
    COMPILED_CODE_ENV,
    PRECISIONS,
    TorchAcceleration,
    TorchDecoder,
    TorchImageEncoder,
    keep_compiled_code,
    store_reduced_weights,
)
from seem_ros.engine.tracker import Tracker
from seem_ros.engine.vocabulary_cache import VocabularyCache
from seem_ros.model.seem import SEEM
from seem_ros.model.tokenizer import ClipTokenizer

VARIANTS = {
    "eager": TorchAcceleration("fp32"),
    "autocast": TorchAcceleration("bf16"),
    "compiled": TorchAcceleration("bf16", compile=True),
    "graphs": TorchAcceleration("bf16", compile=True, cuda_graphs=True),
}
STAGES = ("preprocess", "image_encoder", "prompts", "decoder", "postprocess")
SHARED_STAGES = ("preprocess", "image_encoder", "decoder")
"""The stages a step runs once for all its cameras' frames (one pass each)."""
FRAME_SIZE = (512, 683)
AGREEMENT_PHOTOS = ("astronaut", "chelsea", "rocket")
"""scikit-image photos decoded after the benchmark frame to check agreement."""
AGREEMENT_CLICKS = tuple((x, y) for y in (1 / 6, 1 / 2, 5 / 6) for x in (1 / 6, 1 / 2, 5 / 6))
"""Click targets on each agreement photo, a 3x3 grid as (x, y) fractions of its width and height."""


@dataclass
class Camera:
    """One camera's stream state: its frames and its tracker (one click target, never dropped)."""

    frames: list[np.ndarray]
    tracker: Tracker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--presets", nargs="+", default=["focalt_v1", "samvitb_v1"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--short-side", type=int, default=512)
    parser.add_argument("--frames", type=int, default=20, help="timed frames per camera")
    parser.add_argument("--warmup", type=int, default=3, help="discarded frames per camera (compilation)")
    parser.add_argument(
        "--budget", type=float, default=300.0, help="seconds after which variants are skipped"
    )
    parser.add_argument("--reference", type=Path, help="parity reference set: agreement on its tiny model")
    parser.add_argument("--image", type=Path, help="frame to use (default: a real photo from scikit-image)")
    parser.add_argument("--json", type=Path, help="write the results here (after every variant)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="FRAMES",
        help="after timing a variant, profile this many more steps (torch.profiler): where the time goes",
    )
    parser.add_argument("--quick", action="store_true", help="focalt_tiny, small input, eager + autocast")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.batches, args.short_side = ["focalt_tiny"], [1, 2], 128
        args.variants = [v for v in args.variants if not VARIANTS[v].compile] or ["eager"]
        args.frames, args.warmup = 2, 1
    args.variants = [variant for variant in VARIANTS if variant in args.variants]
    if args.profile < 0:
        parser.error("--profile takes a number of steps, 0 or more")
    return args


def runs_on(variant: str, device: torch.device) -> bool:
    """Whether `device` can run `variant` (CUDA graphs need a CUDA device)."""
    return device.type == "cuda" or not VARIANTS[variant].cuda_graphs


def run_plan(args: argparse.Namespace, device: torch.device) -> list[tuple[int, str, str]]:
    """(batch, preset, variant) in the order they are measured, most important first, so that a run cut
    short by `--budget` has measured what matters most: per batch size (smallest first), eager fp32 (the
    reference the others are checked against) and the most accelerated variant the device runs, for every
    preset, then the variants between them; variants the device cannot run come last (reported as skipped).
    """
    runnable = [variant for variant in args.variants if runs_on(variant, device)]
    first = {"eager", *runnable[-1:]}
    tiers = (first, set(runnable) - first, set(args.variants) - set(runnable))
    return [
        (batch, preset, variant)
        for batch in sorted(args.batches)
        for tier in tiers
        for preset in args.presets
        for variant in args.variants
        if variant in tier
    ]


def load_frame(path: Path | None, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 RGB photo resized to `size` (a real image: random pixels decode unlike scenes)."""
    import cv2

    if path is not None:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"image {path} could not be read")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    else:
        from skimage import data

        image = data.coffee()
    return np.ascontiguousarray(cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA))


def agreement_photos(frame: np.ndarray) -> list[np.ndarray]:
    """The benchmark frame, then `AGREEMENT_PHOTOS` at its size."""
    import cv2
    from skimage import data

    height, width = frame.shape[:2]
    others = [getattr(data, name)() for name in AGREEMENT_PHOTOS]
    return [frame, *(cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA) for photo in others)]


@dataclass
class Answers:
    """What a variant answered on the agreement photos: click-target predictions and mask features."""

    predictions: list[Prediction]
    mask_features: list[torch.Tensor]


def answer_agreement_photos(predictor: SeemPredictor, photos: list[np.ndarray]) -> Answers:
    """Decode each of `AGREEMENT_CLICKS` on each photo as a new track's first frame (one click, panoptic
    pass): the prompt layout the timed frames' warm-up compiled, so compiled variants compile nothing more."""
    answers = Answers([], [])
    for photo in photos:
        height, width = photo.shape[:2]
        predictor.set_image(photo)
        answers.mask_features.append(predictor.encoded.features.mask_features.float().cpu())
        for x, y in AGREEMENT_CLICKS:
            click = Target(visual=(ClickPrompt(x * width, y * height),))
            answers.predictions.append(predictor.predict([click], [None], generic=True))
    return answers


def camera_frames(frame: np.ndarray, count: int, camera: int) -> list[np.ndarray]:
    """`count` frames of one camera: the photo shifted a little each frame (a moving camera)."""
    return [np.roll(frame, 4 * (index + camera), axis=1) for index in range(count)]


def run_frames(predictor: SeemPredictor, cameras: list[Camera], frame_index: int) -> list[Prediction]:
    """One step of every camera as a node's engine takes it (`SeemPredictor.predict_frames`): the frames
    encoded in one pass and decoded in one pass (each camera's tracked click batched with the others'),
    then each camera's tracker updated. A pass's time is split evenly between its frames."""
    frames = [camera.frames[frame_index] for camera in cameras]
    plans = [camera.tracker.plan(frame.shape[:2]) for camera, frame in zip(cameras, frames, strict=True)]
    requests = [
        FrameRequest(
            frame, [item.target for item in plan], [item.previous_logits for item in plan], generic=True
        )
        for frame, plan in zip(frames, plans, strict=True)
    ]
    predictions = []
    for camera, plan, answer in zip(cameras, plans, predictor.predict_frames(requests), strict=True):
        if isinstance(answer, Exception):
            raise answer
        camera.tracker.update(plan, answer.targets)
        answer.timings.update(
            {
                stage: answer.timings[stage] / len(cameras)
                for stage in SHARED_STAGES
                if stage in answer.timings
            }
        )
        predictions.append(answer)
    return predictions


def make_cameras(frame: np.ndarray, batch: int, frames: int) -> list[Camera]:
    cameras = []
    height, width = frame.shape[:2]
    for index in range(batch):
        tracker = Tracker(max_tracks=8, min_score=0.0, max_lost_frames=1_000_000)
        tracker.add(Target(visual=(ClickPrompt(width / 2.0, height / 2.0),)))
        cameras.append(Camera(camera_frames(frame, frames, index), tracker))
    return cameras


def build_predictor(
    model: SEEM,
    tokenizer: ClipTokenizer,
    device: torch.device,
    short_side: int,
    variant: str,
    vocabulary_cache: VocabularyCache | None = None,
) -> SeemPredictor:
    acceleration = VARIANTS[variant]
    return SeemPredictor(
        model,
        tokenizer,
        device=device,
        short_side=short_side,
        vocabulary_cache=vocabulary_cache,
        image_encoder=TorchImageEncoder(model, acceleration),
        decoder_backend=TorchDecoder(model, acceleration),
    )


def node_model(
    models: dict[tuple[str, str], tuple[SEEM, VocabularyCache]],
    preset: str,
    precision: str,
    device: torch.device,
    results: dict,
) -> tuple[SEEM, VocabularyCache]:
    """The preset's model (random weights) as a node holds it for `precision`: fp32 weights, or its matrix
    and convolution weights stored reduced (`store_reduced_weights`, as `torch_backends` does). One model
    per precision, built on first use into `models`; only the one returned stays on `device`, the others go
    to the CPU, so a variant's peak GPU memory holds one model's weights."""
    key = (preset, precision)
    for other_key, (other, _) in models.items():
        if other_key != key:
            other.to("cpu")
    if key not in models:
        start = time.perf_counter()
        model = load_model(preset, random_weights=True).eval()
        if PRECISIONS[precision] is not None:
            store_reduced_weights(model, precision)
        models[key] = (model, VocabularyCache(model.language_encoder))
        build_s = time.perf_counter() - start
        results.setdefault("model_build_s", {})[f"{preset} {precision}"] = build_s
        print(f"{preset}: random weights built for {precision} in {build_s:.1f} s", flush=True)
    model, vocabulary_cache = models[key]
    model.to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return model, vocabulary_cache


def agreement(reference: Answers, candidate: Answers) -> dict[str, float]:
    """Mask IoU (mean and worst), largest logit difference and feature error against eager fp32."""
    ious, differences, magnitudes = [], [], []
    for expected, actual in zip(reference.predictions, candidate.predictions, strict=True):
        for want, got in zip(expected.targets, actual.targets, strict=True):
            union = np.logical_or(want.mask, got.mask).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(want.mask, got.mask).sum() / union))
            differences.append(float((want.mask_logits - got.mask_logits).abs().max()))
            magnitudes.append(float(want.mask_logits.abs().max()))
    feature_errors = [
        float((want - got).abs().mean() / want.abs().mean())
        for want, got in zip(reference.mask_features, candidate.mask_features, strict=True)
    ]
    return {
        "masks": len(ious),
        "mask_iou_mean": float(np.mean(ious)),
        "mask_iou_min": min(ious),
        "logit_max_abs_diff": max(differences),
        "logit_max_abs": max(magnitudes),
        "feature_error": float(np.mean(feature_errors)),
    }


def measure(
    model: SEEM,
    tokenizer: ClipTokenizer,
    device: torch.device,
    args: argparse.Namespace,
    frame: np.ndarray,
    batch: int,
    variant: str,
    eager_answers: Answers | None,
    vocabulary_cache: VocabularyCache,
) -> tuple[dict, Answers]:
    predictor = build_predictor(model, tokenizer, device, args.short_side, variant, vocabulary_cache)
    cameras = make_cameras(frame, batch, args.warmup + args.frames + args.profile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for index in range(args.warmup):
        run_frames(predictor, cameras, index)
    warmup_seconds = time.perf_counter() - start
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    steps = []
    for index in range(args.warmup, args.warmup + args.frames):
        start = time.perf_counter()
        predictions = run_frames(predictor, cameras, index)
        steps.append(time.perf_counter() - start)
        for stage in STAGES:
            stages[stage].append(sum(p.timings.get(stage, 0.0) for p in predictions) / batch)
    row = {
        "batch": batch,
        "variant": variant,
        "acceleration": VARIANTS[variant].name,
        "warmup_s": warmup_seconds,
        "step": summarize(steps),
        "frames_per_second": batch / float(np.median(steps)),
        "stages": {stage: summarize(values) for stage, values in stages.items()},
    }
    if device.type == "cuda":
        row["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
    if args.profile:
        first = args.warmup + args.frames
        try:
            row["profile"] = profile_steps(predictor, cameras, range(first, first + args.profile), device)
        except Exception as error:  # the profiler failing costs the profile, not the timings
            row["profile"] = {"error": brief(error)}
    answers = answer_agreement_photos(predictor, agreement_photos(frame))
    if eager_answers is not None:
        row["agreement_vs_eager_fp32"] = agreement(eager_answers, answers)
    return row, answers


def brief(error: Exception) -> str:
    """An error's type and the first line of its message, for a row of the table."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


PROFILE_TOP_OPS = 12
LAUNCH_CALLS = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"}
GRAPH_LAUNCH_CALLS = {"cudaGraphLaunch", "cuGraphLaunch"}


def profile_steps(
    predictor: SeemPredictor, cameras: list[Camera], frame_indices: range, device: torch.device
) -> dict:
    """Where a step's time goes, from `torch.profiler` over the steps `frame_indices`, per step: its wall
    time, the summed time of the device's kernels (on a GPU; the device idles for the rest, waiting on the
    host), how many kernels and CUDA graphs the host launched, and the operators and kernels that took the
    most time of their own (device time on a GPU, host time on the CPU)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    on_gpu = device.type == "cuda"
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        start = time.perf_counter()
        for index in frame_indices:
            run_frames(predictor, cameras, index)
        wall = time.perf_counter() - start
    steps = len(frame_indices)
    averages = profiler.key_averages()
    own_time = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    ranked = sorted(averages, key=lambda event: getattr(event, own_time), reverse=True)
    return {
        "steps": steps,
        "step_ms": wall * 1e3 / steps,
        "device_kernel_ms_per_step": (
            sum(event.self_device_time_total for event in averages) / 1e3 / steps if on_gpu else None
        ),
        "kernel_launches_per_step": sum(e.count for e in averages if e.key in LAUNCH_CALLS) / steps,
        "graph_launches_per_step": sum(e.count for e in averages if e.key in GRAPH_LAUNCH_CALLS) / steps,
        "ranked_by": "self device time" if on_gpu else "self host time",
        "top": [
            {
                "name": event.key[:80],
                "calls_per_step": event.count / steps,
                "self_ms_per_step": getattr(event, own_time) / 1e3 / steps,
            }
            for event in ranked[:PROFILE_TOP_OPS]
        ],
    }


def profile_table(row: dict) -> str:
    """A variant's profile (`profile_steps`) as lines of text."""
    profile = row["profile"]
    if "error" in profile:
        return f"profile {row['preset']} B={row['batch']} {row['variant']}: failed, {profile['error']}"
    device_ms = profile["device_kernel_ms_per_step"]
    lines = [
        f"profile {row['preset']} B={row['batch']} {row['variant']}: {profile['step_ms']:.2f} ms per step, "
        + (f"device kernels {device_ms:.2f} ms, " if device_ms is not None else "")
        + f"{profile['kernel_launches_per_step']:.0f} kernel and {profile['graph_launches_per_step']:.0f} "
        f"graph launches per step; top by {profile['ranked_by']} (ms per step, calls):"
    ]
    lines += [
        f"  {op['self_ms_per_step']:8.3f} {op['calls_per_step']:7.1f}  {op['name']}" for op in profile["top"]
    ]
    return "\n".join(lines)


def reference_agreement(
    directory: Path, device: torch.device, tokenizer: ClipTokenizer, variants: list[str]
) -> list[dict]:
    """Agreement of each variant with eager fp32 on the parity set's tiny model and first image."""
    from seem_ros.model.checkpoint import load_weights, read_checkpoint
    from seem_ros.parity.official_config import build_from_official_config, load_official_config

    index = json.loads((directory / "index.json").read_text())
    config = load_official_config(directory / index["config_yaml"])
    model = build_from_official_config(config)
    load_weights(model, read_checkpoint(directory / index["model_file"]), Path(index["model_file"]).stem)
    model = model.to(device).eval()
    name = index["images"][0]
    image_path = directory / name if (directory / name).is_file() else directory / "images" / name
    image = load_frame(image_path, FRAME_SIZE)
    rows, eager = [], None
    for variant in ["eager", *(name for name in variants if name != "eager")]:
        if VARIANTS[variant].cuda_graphs and device.type != "cuda":
            continue
        predictor = build_predictor(model, tokenizer, device, 512, variant)
        answers = answer_agreement_photos(predictor, [image])
        if eager is None:
            eager = answers
        rows.append({"variant": variant, **agreement(eager, answers)})
    return rows


def table(rows: list[dict]) -> str:
    header = (
        f"{'preset':<11} {'B':>2} {'variant':<9} {'prep':>7} {'encoder':>8} {'prompts':>8} {'decoder':>8} "
        f"{'post':>7} "
        f"{'frame':>8} {'fps':>7} {'GPU MiB':>8} {'warm-up':>8} {'IoU mean/min':>13} {'dlogit':>8} "
        f"{'feat err':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        if "skipped" in row:
            lines.append(
                f"{row['preset']:<11} {row['batch']:>2} {row['variant']:<9} skipped: {row['skipped']}"
            )
            continue
        stage = {name: row["stages"][name]["median_s"] * 1e3 for name in STAGES}
        agreement_row = row.get("agreement_vs_eager_fp32", {})
        memory = row.get("peak_gpu_memory_bytes")
        lines.append(
            f"{row['preset']:<11} {row['batch']:>2} {row['variant']:<9} {stage['preprocess']:>7.2f} "
            f"{stage['image_encoder']:>8.2f} {stage['prompts']:>8.2f} {stage['decoder']:>8.2f} "
            f"{stage['postprocess']:>7.2f} "
            f"{row['step']['median_s'] * 1e3 / row['batch']:>8.2f} {row['frames_per_second']:>7.1f} "
            f"{memory / 2**20 if memory else float('nan'):>8.0f} {row['warmup_s']:>8.1f} "
            f"{agreement_row.get('mask_iou_mean', float('nan')):>6.4f}/"
            f"{agreement_row.get('mask_iou_min', float('nan')):<6.4f} "
            f"{agreement_row.get('logit_max_abs_diff', float('nan')):>8.2e} "
            f"{agreement_row.get('feature_error', float('nan')):>8.2e}"
        )
    lines.append("times in ms per frame (per camera); frame = batch step / B; fps over all cameras")
    return "\n".join(lines)


def compiled_code_cache() -> dict:
    """Where compiled variants keep their code (`keep_compiled_code`), and whether it held any when the run
    began: with code from an earlier run of the same models, torch and device, the compiled variants'
    warm-up loads their graphs instead of compiling them. The folder is named relative to seem_ros's cache
    (results are shared; this machine's paths are not theirs to carry)."""
    folder = keep_compiled_code()
    cache = default_cache_dir()
    if folder.is_relative_to(cache):
        where = f"<seem_ros cache>/{folder.relative_to(cache).as_posix()}"
    else:
        where = f"${COMPILED_CODE_ENV} (a folder of the user's own)"
    return {"dir": where, "held_code_at_start": folder.is_dir() and any(folder.iterdir())}


def machine(device: torch.device) -> dict:
    description = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
        description["cuda"] = torch.version.cuda
    return description


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tokenizer = ClipTokenizer()
    frame = load_frame(args.image, FRAME_SIZE)
    results: dict = {"machine": machine(device), "frame_size": list(FRAME_SIZE), "rows": []}
    if any(VARIANTS[variant].compile for variant in args.variants):
        results["compiled_code"] = compiled_code_cache()
        print(f"compiled code cache: {results['compiled_code']}", flush=True)

    def save() -> None:
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))

    models: dict[tuple[str, str], tuple[SEEM, VocabularyCache]] = {}
    eager_answers: dict[tuple[int, str], Answers] = {}
    for batch, preset, variant in run_plan(args, device):
        row: dict = {"preset": preset, "batch": batch, "variant": variant}
        elapsed = time.perf_counter() - started
        if not runs_on(variant, device):
            row["skipped"] = "CUDA graphs need a CUDA device"
        elif elapsed > args.budget:
            row["skipped"] = f"time budget ({elapsed:.0f} s > {args.budget:.0f} s)"
        else:
            precision = VARIANTS[variant].precision
            model, vocabulary_cache = node_model(models, preset, precision, device, results)
            row["weights"] = "fp32" if PRECISIONS[precision] is None else f"{precision}, stored reduced"
            try:
                measured, answers = measure(
                    model,
                    tokenizer,
                    device,
                    args,
                    frame,
                    batch,
                    variant,
                    eager_answers.get((batch, preset)),
                    vocabulary_cache,
                )
                row.update(measured)
                if variant == "eager":
                    eager_answers[batch, preset] = answers
            except Exception as error:  # a variant that fails is reported, the others still run
                row["skipped"] = brief(error)
        results["rows"].append(row)
        elapsed = time.perf_counter() - started
        print(f"[{elapsed:5.0f} s] " + table([row]).splitlines()[-2], flush=True)
        save()
    if args.reference is not None and time.perf_counter() - started < args.budget:
        results["reference_agreement"] = reference_agreement(args.reference, device, tokenizer, args.variants)
    results["total_s"] = time.perf_counter() - started
    variant_order = list(VARIANTS)
    results["rows"].sort(
        key=lambda row: (row["batch"], args.presets.index(row["preset"]), variant_order.index(row["variant"]))
    )
    save()
    print()
    print(table(results["rows"]))
    for row in results["rows"]:
        if "profile" in row:
            print()
            print(profile_table(row))
    for row in results.get("reference_agreement", []):
        print(
            f"reference tiny model, {row['variant']:<9} mask IoU {row['mask_iou_mean']:.4f} mean, "
            f"{row['mask_iou_min']:.4f} worst, feature error {row['feature_error']:.2e}, "
            f"max |dlogit| {row['logit_max_abs_diff']:.2e} (of {row['logit_max_abs']:.1f})"
        )


if __name__ == "__main__":
    main()
