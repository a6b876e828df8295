"""Remote inference on Ray Serve against the model in-process, in one run.

    python -m bench.remote [--preset focalt_tiny] [--frames 12] [--streams 1 2 4 8] [--replicas 1 2]
                           [--json OUT.json]

For each server configuration (replicas x with/without `@serve.batch`) a `seem-ros serve` process on a
local cluster of its own (random weights, the tiny or a full preset) answers client streams: each stream is
a segmenter with `backend: remote` tracking one clicked target on a 640x480 photo, sending frames back to
back from its own thread. Printed and written: per-frame latency (median, p90) and frames per second over
all streams; the remote hop's added latency as a ratio of the model's own time in a replica (the
`timings` a reply carries); the batch sizes the replicas reached. The in-process baseline is the same
segmenter with `backend: torch` in this process, on one thread like a replica.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.timing import markdown_table
from seem_ros.engine.api import SegmenterConfig
from seem_ros.engine.segmenter import build_segmenter
from seem_ros.engine.session import Session

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300.0


def _photo() -> np.ndarray:
    from skimage import data

    return cv2.resize(data.coffee(), (640, 480), interpolation=cv2.INTER_AREA)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """`seem-ros serve` on a cluster of its own, for the duration of a with-block."""

    def __init__(self, preset: str, replicas: int, batch: int, cluster_cpus: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/seem"
        self.folder = tempfile.mkdtemp(prefix="seembench")
        self.command = [sys.executable, "-m", "seem_ros.cli", "serve", "--preset", preset, "--random-weights"]
        self.command += [
            "--replicas",
            str(replicas),
            "--max-batch-size",
            str(batch),
            "--port",
            str(self.port),
        ]
        self.command += ["--cluster-cpus", str(cluster_cpus), "--temp-dir", self.folder]
        self.log = Path(self.folder) / "serve.log"

    def __enter__(self) -> ServeProcess:
        with open(self.log, "wb") as log:
            env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
            self.process = subprocess.Popen(
                self.command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while "ready at" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(
                    f"seem-ros serve did not start:\n{self.log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)
        return self

    def __exit__(self, *_: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _stream(segmenter: Session, frame: np.ndarray, frames: int, out: list[dict]) -> None:
    segmenter.add_click(320.0, 240.0, True)
    for index in range(frames):
        start = time.perf_counter()
        result = segmenter.process(np.roll(frame, 3 * index, axis=1))
        out.append(
            {
                "latency_s": time.perf_counter() - start,
                "model_s": sum(result.timings.values()),
                "batch_size": getattr(segmenter.predictor, "last_batch_size", 1),
            }
        )


def run_streams(make: Callable[[int], Session], streams: int, frames: int, frame: np.ndarray) -> dict:
    """`streams` segmenters from make(), each in its own thread, `frames` frames each, back to back."""
    segmenters = [make(index) for index in range(streams)]
    for segmenter in segmenters:  # a first frame outside the timing: connections, first-use costs
        segmenter.process(frame)
        segmenter.clear_prompts()
    records: list[list[dict]] = [[] for _ in segmenters]
    threads = [
        threading.Thread(target=_stream, args=(segmenter, frame, frames, out))
        for segmenter, out in zip(segmenters, records, strict=True)
    ]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    rows = [record for out in records for record in out]
    latencies = sorted(row["latency_s"] for row in rows)
    return {
        "streams": streams,
        "frames": len(rows),
        "fps": len(rows) / elapsed,
        "latency_median_s": statistics.median(latencies),
        "latency_p90_s": latencies[int(0.9 * (len(latencies) - 1))],
        "model_median_s": statistics.median(row["model_s"] for row in rows),
        "batch_size_max": max(row["batch_size"] for row in rows),
        "batch_size_mean": statistics.fmean(row["batch_size"] for row in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="focalt_tiny")
    parser.add_argument("--frames", type=int, default=12, help="frames per stream")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 1], help="@serve.batch sizes (1 = off)")
    parser.add_argument("--cluster-cpus", type=int, default=4)
    parser.add_argument("--json", default="", help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    frame = _photo()

    local = run_streams(
        lambda _: build_segmenter(SegmenterConfig(preset=args.preset, random_weights=True, device="cpu")),
        1,
        args.frames,
        frame,
    )
    local |= {"where": "in process", "replicas": 0, "batch": 0}
    rows = [local]
    for replicas in args.replicas:
        for batch in args.batches:
            with ServeProcess(args.preset, replicas, batch, args.cluster_cpus) as server:
                for streams in args.streams:
                    config = SegmenterConfig(
                        preset=args.preset, backend="remote", server_url=server.url, request_timeout=120.0
                    )
                    row = run_streams(
                        lambda _, config=config: build_segmenter(config), streams, args.frames, frame
                    )
                    rows.append(row | {"where": "remote", "replicas": replicas, "batch": batch})
                    label = f"{replicas} replica(s), batch {batch}, {streams} stream(s)"
                    print(f"... {label}: {row['fps']:.2f} fps over all streams", flush=True)

    header = ["where", "replicas", "@serve.batch", "streams", "fps", "latency median ms", "p90 ms"]
    header += ["latency vs in process", "model ms in replica", "(hop + queue) / model"]
    header += ["batch reached (max/mean)"]
    table = []
    for row in rows:
        table.append(
            [
                row["where"],
                str(row["replicas"] or "-"),
                ("off" if row["batch"] == 1 else f"up to {row['batch']}") if row["batch"] else "-",
                str(row["streams"]),
                f"{row['fps']:.2f}",
                f"{1000 * row['latency_median_s']:.0f}",
                f"{1000 * row['latency_p90_s']:.0f}",
                f"{row['latency_median_s'] / local['latency_median_s']:.2f}",
                f"{1000 * row['model_median_s']:.0f}",
                f"{(row['latency_median_s'] - row['model_median_s']) / row['model_median_s']:.2f}",
                f"{row['batch_size_max']}/{row['batch_size_mean']:.1f}" if row["where"] == "remote" else "-",
            ]
        )
    cpu = f"{platform.machine()} x{os.cpu_count()}"
    print(f"# bench.remote: {args.preset}, 640x480 frames, {args.frames} per stream; CPU {cpu}")
    print(markdown_table(header, table))
    if args.json:
        Path(args.json).write_text(json.dumps({"preset": args.preset, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
