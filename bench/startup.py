"""Section `startup`: seconds from starting seem_node to its "ready" log line and to its first published
result, cold (an empty cache) and warm (the same cache again), per preset, backend and weights.

For each preset a checkpoint file is made from seeded random weights (safetensors, outside the cache); then
for each weights kind (`checkpoint`: that file; `random`: `random_weights: true`) and backend, one seem_node
is started with `SEEM_ROS_CACHE_DIR` set to a new empty folder (cold: the tokenizer files are built, the
vocabulary embedded, random weights drawn, the ONNX graphs exported) and then once more on the same folder
(warm). This process publishes a 640x480 frame every `FRAME_PERIOD_S` once the node subscribes and notes
when the first InstanceMaskArray arrives. Besides wall-clock seconds (which a busy shared machine
stretches), the node process's CPU seconds (user + system, from /proc) at both moments are reported, and
the node's own account of its start-up phases (the `startup` part of its ready line).

`--quick`: focalt_tiny with random weights only. The vocabulary is the node section's seven names: a
cold start with the preset's own vocabulary (COCO, 134 names x 81 templates) embeds 11 thousand sentences
instead of 567, minutes on a CPU, once per weights.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.node import _photo, node_command, ros_environment
from bench.timing import markdown_table

SECTION = "startup"
FRAME_PERIOD_S = 0.5
READY_MARK = "ready: "
WEIGHTS_KINDS = ("checkpoint", "random")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (its /proc stat); nan once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NodeOutput:
    """Reads a node's output lines in a thread; notes when (and at what CPU time) the ready line came."""

    def __init__(self, process: subprocess.Popen, started: float) -> None:
        self.process = process
        self.started = started
        self.lines: list[str] = []
        self.ready_s: float | None = None
        self.ready_cpu_s: float | None = None
        self.ready_line = ""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if self.ready_s is None and READY_MARK in line:
                self.ready_s = time.perf_counter() - self.started
                self.ready_cpu_s = _cpu_seconds(self.process.pid)
                self.ready_line = line.strip()
            self.lines.append(line)


def _start_once(
    preset: str,
    backend: str,
    parameters: dict,
    cache_dir: Path,
    args: argparse.Namespace,
    environment: dict[str, str],
    node,  # noqa: ANN001
    frame,  # noqa: ANN001
) -> dict:
    """Start one node on `cache_dir`; seconds to ready and to the first result, and CPU seconds at each."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from seem_ros.msg import InstanceMaskArray

    environment = {**environment, "SEEM_ROS_CACHE_DIR": str(cache_dir)}
    received: list[float] = []
    subscription = node.create_subscription(
        InstanceMaskArray,
        f"/{backend}/instances",
        lambda _msg: received.append(time.perf_counter()),
        QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE),
    )
    publisher = node.create_publisher(Image, f"/bench/{backend}/image", QoSProfile(depth=1))
    started = time.perf_counter()
    process = subprocess.Popen(
        node_command(preset, backend, args, **parameters),
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = NodeOutput(process, started)
    try:
        next_frame = 0.0
        first_cpu_s = float("nan")
        deadline = started + args.timeout
        while not received:
            now = time.perf_counter()
            if process.poll() is not None or now > deadline:
                tail = "".join(output.lines[-5:]).strip()
                raise RuntimeError(
                    f"seem_node gave no result ({'exited' if process.poll() else 'timeout'}): {tail}"
                )
            if publisher.get_subscription_count() > 0 and now >= next_frame:
                frame.header.stamp = node.get_clock().now().to_msg()
                publisher.publish(frame)
                next_frame = now + FRAME_PERIOD_S
            rclpy.spin_once(node, timeout_sec=0.05)
            if received:
                first_cpu_s = _cpu_seconds(process.pid)
        return {
            "ready_s": output.ready_s,
            "first_result_s": received[0] - started,
            "ready_cpu_s": output.ready_cpu_s,
            "first_result_cpu_s": first_cpu_s,
            "node_startup": output.ready_line.split("startup ", 1)[-1].split(", ")[0],
        }
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        if process.poll() is None:
            process.kill()
        node.destroy_subscription(subscription)
        node.destroy_publisher(publisher)


def run_startup_section(args: argparse.Namespace) -> list[dict]:
    """Rows per preset, weights kind, backend and cache state (cold, warm)."""
    import rclpy

    from seem_ros.engine.weights import cached_random_weights
    from seem_ros.ros.conversions import array_to_image

    presets = ["focalt_tiny"] if args.quick else args.presets
    if args.startup_cache is not None:
        return _warm_starts(presets, args)
    frame = array_to_image(_photo(), "rgb8")
    rows: list[dict] = []
    environment = ros_environment()
    rclpy.init()
    node = rclpy.create_node("seem_bench_startup")
    try:
        for preset in presets:
            with tempfile.TemporaryDirectory(prefix="seem_ros_startup_") as folder:
                checkpoint = cached_random_weights(preset, seed=1, cache_dir=Path(folder) / "checkpoint")
                for weights in ("random",) if args.quick else WEIGHTS_KINDS:
                    parameters = (
                        {"random_weights": False, "checkpoint": str(checkpoint)}
                        if weights == "checkpoint"
                        else {"random_weights": True}
                    )
                    for backend in args.backends:
                        cache_dir = Path(folder) / f"cache-{weights}-{backend}"
                        for state in ("cold", "warm"):
                            row = {"section": SECTION, "preset": preset, "backend": backend,
                                   "weights": weights, "cache": state}  # fmt: skip
                            print(f"... startup {preset}/{backend}/{weights}/{state}", flush=True)
                            rows.append(
                                _measured(
                                    row,
                                    preset,
                                    backend,
                                    parameters,
                                    cache_dir,
                                    args,
                                    environment,
                                    node,
                                    frame,
                                )
                            )
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return rows


def _measured(row: dict, *start: object) -> dict:
    """`row` with the measurements of `_start_once(*start)` (or why it failed), also printed at once."""
    try:
        row |= _start_once(*start)
    except Exception as error:  # one failing start must not hide the others
        row["skipped"] = str(error)
    print(f"    {row}", flush=True)
    return row


def _warm_starts(presets: list[str], args: argparse.Namespace) -> list[dict]:
    """`--startup-cache DIR`: warm starts only, on a cache folder an earlier start filled (random weights
    of seed 0, their fingerprints, the text embeddings, the ONNX graphs); its random-weights file is also
    the checkpoint file, so both weights kinds find everything cached."""
    import rclpy

    from seem_ros.engine.weights import random_weights_path
    from seem_ros.ros.conversions import array_to_image

    frame = array_to_image(_photo(), "rgb8")
    environment = ros_environment()
    rclpy.init()
    node = rclpy.create_node("seem_bench_startup")
    rows = []
    try:
        for preset in presets:
            checkpoint = random_weights_path(preset, 0, args.startup_cache / "random_weights")
            for weights in WEIGHTS_KINDS:
                parameters = (
                    {"random_weights": False, "checkpoint": str(checkpoint)}
                    if weights == "checkpoint"
                    else {"random_weights": True}
                )
                for backend in args.backends:
                    row = {"section": SECTION, "preset": preset, "backend": backend, "weights": weights,
                           "cache": "warm"}  # fmt: skip
                    print(f"... startup {preset}/{backend}/{weights}/warm", flush=True)
                    start = (preset, backend, parameters, args.startup_cache, args, environment, node, frame)
                    rows.append(_measured(row, *start))
    finally:
        node.destroy_node()
        rclpy.shutdown()
    return rows


def startup_table(rows: list[dict]) -> str:
    """The startup section as a markdown table."""
    header = ["preset", "backend", "weights", "cache", "ready s", "first result s", "CPU s at ready"]
    header += ["CPU s at first result", "node's account"]
    lines = []
    for row in rows:
        cells = [row["preset"], row["backend"], row["weights"], row["cache"]]
        if "skipped" in row:
            lines.append([*cells, f"skipped: {row['skipped']}"])
            continue
        keys = ("ready_s", "first_result_s", "ready_cpu_s", "first_result_cpu_s")
        cells += [f"{row[key]:.1f}" if row[key] is not None else "-" for key in keys]
        lines.append([*cells, row["node_startup"]])
    return markdown_table(header, lines)
