"""Section `node`: the ROS 2 node end to end, against the model alone, measured in the same run.

For each preset and backend (random weights, input short side `--short-side`, a 640x480 real photo):
- `node e2e`: seem_node in its own process; an image message is published and the time until its
  InstanceMaskArray (matched by stamp) arrives in this process is measured, one frame at a time;
- `model in node`: for the same frames, the engine's own time inside the node (`last_inference_ms` of the
  node's diagnostics), so both figures come from the same process at the same moment;
- `overhead`: node e2e minus model in node: image conversion, DDS transport both ways, message building
  and publishing, scheduling;
- `stream 30 Hz`: the same node fed 640x480 frames at 30 Hz for a few seconds: output rate and latency of
  what comes out (only the newest frame is processed, so the output rate is the model's rate, and the
  latency stays bounded).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

SECTION = "node"
REPO_ROOT = Path(__file__).resolve().parents[1]
STREAM_RATE_HZ = 30.0
STREAM_SECONDS = 8.0
NODE_VOCABULARY = ("person", "cup", "table", "chair", "bottle", "wall", "floor")


def _photo() -> np.ndarray:
    from skimage import data

    return cv2.resize(data.coffee(), (640, 480), interpolation=cv2.INTER_AREA)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def _row(preset: str, backend: str, stage: str, values: list[float], **extra: object) -> dict:
    return {
        "section": SECTION,
        "preset": preset,
        "backend": backend,
        "stage": stage,
        "median_s": statistics.median(values),
        "p90_s": _p90(values),
        "repeats": len(values),
        **extra,
    }


def _node_command(preset: str, backend: str, args: argparse.Namespace) -> list[str]:
    from seem_ros.launch_logic import LaunchArguments, format_parameter_value, plan_nodes

    node = plan_nodes(
        LaunchArguments(camera_topic="/bench/image", preset=preset, device=args.device), REPO_ROOT
    )[0]
    command = node.command(python=sys.executable)
    for name, value in (
        ("backend", backend),
        ("random_weights", True),
        ("checkpoint", "''"),
        ("short_side", args.short_side),
        ("vocabulary", NODE_VOCABULARY),
        ("diagnostics_period", 0.1),
    ):
        command += ["-p", f"{name}:={format_parameter_value(value)}"]
    return command


def _measure_node(
    preset: str, backend: str, args: argparse.Namespace, rgb: np.ndarray
) -> dict[str, list[float]]:
    """Start seem_node, time single frames end to end, then a 30 Hz stream."""
    environment = {
        **os.environ,
        "ROS_DOMAIN_ID": str(random.SystemRandom().randint(201, 230)),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(REPO_ROOT / "config" / "fastdds_profile.xml"),
    }
    os.environ.update(
        {
            key: environment[key]
            for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE")
        }
    )
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from seem_ros.msg import InstanceMaskArray
    from seem_ros.ros.conversions import array_to_image

    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
    process = subprocess.Popen(_node_command(preset, backend, args), env=environment, stdout=log, stderr=log)
    rclpy.init()
    node = rclpy.create_node("seem_bench")
    received: dict[tuple[int, int], float] = {}
    node.create_subscription(
        InstanceMaskArray,
        "/instances",
        lambda msg: received.__setitem__(
            (msg.header.stamp.sec, msg.header.stamp.nanosec), time.perf_counter()
        ),
        QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
    )
    inference_ms: list[float] = []

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {item.key: item.value for item in status.values}
            if "last_inference_ms" in values:
                inference_ms.append(float(values["last_inference_ms"]))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, QoSProfile(depth=50))
    publisher = node.create_publisher(Image, "/bench/image", QoSProfile(depth=1))
    message = array_to_image(np.ascontiguousarray(rgb), "rgb8")

    def spin_until(condition, timeout: float) -> bool:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not condition():
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            rclpy.spin_once(node, timeout_sec=0.002)
        return True

    def publish() -> tuple[tuple[int, int], float]:
        stamp = node.get_clock().now().to_msg()
        message.header.stamp = stamp
        sent = time.perf_counter()
        publisher.publish(message)
        return (stamp.sec, stamp.nanosec), sent

    try:
        if not spin_until(lambda: publisher.get_subscription_count() > 0, args.timeout):
            raise RuntimeError(f"seem_node did not start (log: {log.name})")
        single: list[float] = []
        model: list[float] = []
        for index in range(args.warmup + args.repeats):
            key, sent = publish()
            if not spin_until(lambda k=key: k in received, args.timeout):
                raise RuntimeError(f"no result from seem_node (log: {log.name})")
            reports = len(inference_ms)
            spin_until(lambda n=reports: len(inference_ms) > n, 5.0)
            if index >= args.warmup:
                single.append(received[key] - sent)
                model.append(inference_ms[-1] / 1e3)
        sent_at: dict[tuple[int, int], float] = {}
        start = time.perf_counter()
        next_frame = start
        while time.perf_counter() - start < STREAM_SECONDS:
            if time.perf_counter() >= next_frame:
                key, sent = publish()
                sent_at[key] = sent
                next_frame += 1.0 / STREAM_RATE_HZ
            rclpy.spin_once(node, timeout_sec=0.001)
        spin_until(lambda: False, max(single) * 2)
        answered = [received[key] - sent for key, sent in sent_at.items() if key in received]
        return {
            "single": single,
            "model": model,
            "stream_latency": answered or [float("nan")],
            "stream_counts": [float(len(sent_at)), float(len(answered)), STREAM_SECONDS],
        }
    finally:
        node.destroy_node()
        rclpy.shutdown()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def run_node_section(args: argparse.Namespace) -> list[dict]:
    """Rows: model alone, node end to end, overhead, and the 30 Hz stream, per preset and backend."""
    rgb = _photo()
    rows: list[dict] = []
    presets = ["focalt_tiny"] if args.quick else args.presets
    for preset in presets:
        for backend in args.backends:
            try:
                measured = _measure_node(preset, backend, args, rgb)
            except Exception as error:  # one failing configuration must not hide the others
                rows.append({"section": SECTION, "preset": preset, "backend": backend, "skipped": str(error)})
                continue
            single, model = measured["single"], measured["model"]
            overhead = [total - inside for total, inside in zip(single, model, strict=True)]
            model_median = statistics.median(model)
            sent, answered, seconds = measured["stream_counts"]
            rows += [
                _row(preset, backend, "node e2e", single),
                _row(preset, backend, "model in node", model),
                _row(preset, backend, "overhead", overhead,
                     overhead_fraction_of_model=statistics.median(overhead) / model_median),
                _row(preset, backend, "stream 30 Hz latency", measured["stream_latency"],
                     frames_sent=int(sent), frames_answered=int(answered), output_hz=answered / seconds),
            ]  # fmt: skip
    return rows
