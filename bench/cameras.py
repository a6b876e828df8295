"""Several cameras on one engine: batched steps against one camera at a time, both backends, in one run.

    python -m bench.cameras [--preset focalt_v1] [--cameras 1 2 4] [--backends torch onnx torch_bf16]
                            [--frames 6] [--json OUT.json] [--quick]

For each backend (`bench.backends`) and number of cameras, a worker process builds one engine (random
weights) with one session per camera, each tracking one clicked target and segmenting panoptically, on
640x480 frames (two real photos, alternating between cameras and frames). The ways to serve the same
frames, alternated step by step in the same process so a slow spell of a shared machine hits all alike:
- batched: one `SeemEngine.step` over every camera's frame (one image-encoder pass per padded size; one
  decoder pass where the decoder takes the batch: PyTorch on a GPU or in bf16, not in fp32 on the CPU);
- batched, decoder as on a GPU (PyTorch backends with several cameras): the same, the PyTorch decoder
  taking the batch on any device (`TorchDecoder(batches=True)`), which shows what that policy would give here;
- one by one: one `step` per camera.
Printed and written: frames per second over all cameras, each camera's latency (from the start of the
step that served it to its result), and the worker's peak resident memory (4 cameras against 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bench.backends import BACKENDS, engine_backend, node_parameters
from bench.timing import markdown_table

WORKER_TIMEOUT_S = 3600.0
GPU_WAY = "batched, decoder as on a GPU"


def _photos() -> list[np.ndarray]:
    from skimage import data

    photos = (data.coffee(), data.astronaut())
    return [cv2.resize(image, (640, 480), interpolation=cv2.INTER_AREA) for image in photos]


def measure(preset: str, backend: str, cameras: int, frames: int, threads: int) -> dict:
    """Serve `frames` frames per camera each way (alternating); the worker's measurements."""
    import torch

    from seem_ros.engine.api import SegmenterConfig
    from seem_ros.engine.segmenter import build_engine
    from seem_ros.engine.torch_backend import TorchDecoder

    torch.set_num_threads(threads)
    parameters = node_parameters(backend)
    config = SegmenterConfig(
        preset=preset,
        backend=engine_backend(backend),
        precision=str(parameters["precision"]),
        compile=bool(parameters["compile"]),
        random_weights=True,
        device="cpu",
    )
    engine = build_engine(config)
    predictor = engine.predictor
    own = predictor.decoder_backend  # the way's decoder backend, set before each of its steps
    decoders = {"batched": own}
    if engine_backend(backend) == "torch" and cameras > 1:
        acceleration = own.acceleration if isinstance(own, TorchDecoder) else None  # None: fp32
        decoders[GPU_WAY] = TorchDecoder(predictor.model, acceleration, batches=True)
    decoders["one by one"] = own
    ways: dict[str, list[dict]] = {way: [] for way in decoders}
    sessions = {way: [engine.open_session(f"{way} {index}") for index in range(cameras)] for way in ways}
    for way_sessions in sessions.values():
        for session in way_sessions:
            session.add_click(320.0, 240.0, positive=True)
    photos = _photos()
    for way, way_sessions in sessions.items():  # warm-up: graphs, allocator, first-frame costs
        predictor.decoder_backend = decoders[way]
        engine.step([(session, photos[index % 2]) for index, session in enumerate(way_sessions)])
    for frame in range(frames):
        for way, way_sessions in sessions.items():
            predictor.decoder_backend = decoders[way]
            batch = [(session, photos[(index + frame) % 2]) for index, session in enumerate(way_sessions)]
            started = time.perf_counter()
            if way == "one by one":
                latencies = []
                for item in batch:
                    _check(engine.step([item])[0])
                    latencies.append(time.perf_counter() - started)
            else:
                for outcome in engine.step(batch):
                    _check(outcome)
                latencies = [time.perf_counter() - started] * cameras
            ways[way].append({"seconds": time.perf_counter() - started, "latencies": latencies})
    rows = []
    for way, steps in ways.items():
        latencies = [value for step in steps for value in step["latencies"]]
        rows.append(
            {
                "preset": preset,
                "backend": backend,
                "cameras": cameras,
                "way": way,
                "frames_per_camera": frames,
                "fps": cameras * len(steps) / sum(step["seconds"] for step in steps),
                "latency_median_s": statistics.median(latencies),
                "latency_max_s": max(latencies),
            }
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rows": rows, "peak_rss_bytes": peak}


def _check(outcome: object) -> None:
    if isinstance(outcome, Exception):
        raise outcome


def run_worker(preset: str, backend: str, cameras: int, frames: int, threads: int) -> dict:
    command = [sys.executable, "-m", "bench.cameras", "--worker", preset, backend, str(cameras)]
    command += ["--frames", str(frames), "--threads", str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"worker {preset} {backend} x{cameras} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def report(preset: str, results: list[dict]) -> str:
    header = ["backend", "cameras", "way", "fps (all cameras)", "batched / one by one", "latency median ms"]
    header += ["latency max ms", "peak RSS MiB", "RSS vs 1 camera"]
    one_camera = {
        result["rows"][0]["backend"]: result["peak_rss_bytes"]
        for result in results
        if result["rows"][0]["cameras"] == 1
    }
    table = []
    for result in results:
        by_way = {row["way"]: row for row in result["rows"]}
        for row in result["rows"]:
            ratio = row["fps"] / by_way["one by one"]["fps"]
            baseline = one_camera.get(row["backend"])
            table.append(
                [
                    row["backend"],
                    str(row["cameras"]),
                    row["way"],
                    f"{row['fps']:.2f}",
                    f"{ratio:.2f}",
                    f"{1000 * row['latency_median_s']:.0f}",
                    f"{1000 * row['latency_max_s']:.0f}",
                    f"{result['peak_rss_bytes'] / 2**20:.0f}",
                    f"{result['peak_rss_bytes'] / baseline:.2f}" if baseline else "-",
                ]
            )
    cpu = f"{platform.machine()} x{os.cpu_count()}"
    title = f"# bench.cameras: {preset}, 640x480 frames, random weights; CPU {cpu}"
    return title + "\n" + markdown_table(header, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="focalt_v1")
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=["torch", "onnx"])
    parser.add_argument("--frames", type=int, default=6, help="timed frames per camera and way")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="focalt_tiny, 1 and 2 cameras, 2 frames")
    parser.add_argument("--worker", nargs=3, metavar=("PRESET", "BACKEND", "CAMERAS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        preset, backend, cameras = args.worker
        print(json.dumps(measure(preset, backend, int(cameras), args.frames, args.threads)))
        return 0
    if args.quick:
        args.preset, args.cameras, args.frames = "focalt_tiny", [1, 2], 2
    results = []
    for backend in args.backends:
        for cameras in args.cameras:
            results.append(run_worker(args.preset, backend, cameras, args.frames, args.threads))
            fps = {row["way"]: f"{row['fps']:.2f}" for row in results[-1]["rows"]}
            print(f"... {backend}, {cameras} camera(s): {fps} fps", flush=True)
    print(report(args.preset, results))
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
