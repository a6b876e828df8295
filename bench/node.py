"""Section `node`: the ROS 2 node end to end, against the model alone, measured in the same run.

For each preset, one seem_node per backend runs in its own process (random weights, input short side
`--short-side`, a 640x480 real photo), all started together:
- `node e2e`: an image message is published and the time until its InstanceMaskArray (matched by stamp)
  arrives in this process is measured, one frame at a time, alternating between the backends frame by
  frame, so a slow spell of a shared machine hits every backend alike; the speed-up over torch is the
  ratio of these medians;
- `model in node`: for the same frames, the engine's own time inside the node (`last_inference_ms` of the
  node's diagnostics), so both figures come from the same process at the same moment;
- `overhead`: node e2e minus model in node: image conversion, DDS transport both ways, message building
  and publishing, scheduling;
- `stream 30 Hz`: each node in turn fed 640x480 frames at 30 Hz for a few seconds: output rate and latency
  of what comes out (only the newest frame is processed, so the output rate is the model's rate, and the
  latency stays bounded)."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from bench.backends import node_parameters

SECTION = "node"
REPO_ROOT = Path(__file__).resolve().parents[1]
STREAM_RATE_HZ = 30.0
STREAM_SECONDS = 8.0
RESEND_S = 15.0
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


def node_command(preset: str, backend: str, args: argparse.Namespace, **parameters: object) -> list[str]:
    """seem_node for one backend: named seem_node_<backend>, in namespace /<backend>, reading
    /bench/<backend>/image, so that nodes of several backends can run side by side; random weights unless
    `parameters` (ROS parameters) say otherwise."""
    from seem_ros.launch_logic import LaunchArguments, format_parameter_value, plan_nodes

    node = plan_nodes(
        LaunchArguments(camera_topic=f"/bench/{backend}/image", preset=preset, device=args.device), REPO_ROOT
    )[0]
    command = replace(node, name=f"seem_node_{backend}").command(python=sys.executable)
    command += ["-r", f"__ns:=/{backend}"]
    values = {
        **node_parameters(backend),
        "random_weights": True,
        "checkpoint": "''",
        "short_side": args.short_side,
        "vocabulary": NODE_VOCABULARY,
        "diagnostics_period": 1.0,
        **parameters,
    }
    for name, value in values.items():
        command += ["-p", f"{name}:={format_parameter_value(value)}"]
    return command


def ros_environment() -> dict[str, str]:
    """The environment of the measuring process and the nodes it starts: a domain of their own, discovery on
    this machine, the shared-memory profile for 640x480 frames (also set in this process)."""
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
    return environment


def _measure_nodes(
    preset: str, backends: list[str], args: argparse.Namespace, rgb: np.ndarray
) -> dict[str, dict[str, list[float]]]:
    """Start one seem_node per backend, all at once; time single frames end to end, alternating between
    the backends frame by frame (so that a slow spell of the machine hits them alike); then feed each
    node a 30 Hz stream in turn. Returns, per backend, the lists of `single`, `model`, `stream_latency`
    and `stream_counts`."""
    environment = ros_environment()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from seem_ros.msg import InstanceMaskArray
    from seem_ros.ros.conversions import array_to_image

    logs = {
        backend: tempfile.NamedTemporaryFile("w", suffix=f"_{backend}.log", delete=False)
        for backend in backends
    }
    processes = {
        backend: subprocess.Popen(
            node_command(preset, backend, args), env=environment, stdout=logs[backend], stderr=logs[backend]
        )
        for backend in backends
    }
    rclpy.init()
    node = rclpy.create_node("seem_bench")
    received: dict[tuple[int, int], float] = {}
    inference_ms: dict[str, list[float]] = {backend: [] for backend in backends}

    def on_result(msg: InstanceMaskArray) -> None:
        received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.perf_counter()

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            backend = status.name.split(":")[0].removeprefix("seem_node_")
            values = {item.key: item.value for item in status.values}
            if backend in inference_ms and "last_inference_ms" in values:
                inference_ms[backend].append(float(values["last_inference_ms"]))

    publishers = {}
    for backend in backends:
        node.create_subscription(
            InstanceMaskArray,
            f"/{backend}/instances",
            on_result,
            QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
        )
        publishers[backend] = node.create_publisher(Image, f"/bench/{backend}/image", QoSProfile(depth=1))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, QoSProfile(depth=50))
    message = array_to_image(np.ascontiguousarray(rgb), "rgb8")

    def failure(what: str) -> RuntimeError:
        return RuntimeError(f"{what} (logs: {', '.join(log.name for log in logs.values())})")

    def spin_until(condition, timeout: float) -> bool:  # noqa: ANN001
        # Arrival times are taken in the callbacks, so the wait's timeout does not limit their precision;
        # a short one would only busy-loop this process and take CPU from the node being measured.
        deadline = time.monotonic() + timeout
        while not condition():
            if any(process.poll() is not None for process in processes.values()):
                return False
            if time.monotonic() > deadline:
                return False
            rclpy.spin_once(node, timeout_sec=0.05)
        return True

    def publish(backend: str) -> tuple[tuple[int, int], float]:
        stamp = node.get_clock().now().to_msg()
        message.header.stamp = stamp
        sent = time.perf_counter()
        publishers[backend].publish(message)
        return (stamp.sec, stamp.nanosec), sent

    def answered_frame(backend: str) -> tuple[tuple[int, int], float]:
        """Publish a frame, again every `RESEND_S` until one is answered (a frame can be lost while
        discovery completes on the node's side); the key and sending time of the answered one."""
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            key, sent = publish(backend)
            if spin_until(lambda k=key: k in received, min(RESEND_S, deadline - time.monotonic())):
                return key, sent
        raise failure(f"no result from the {backend} seem_node")

    measured: dict[str, dict[str, list[float]]] = {
        backend: {"single": [], "model": []} for backend in backends
    }
    try:
        if not spin_until(
            lambda: all(publisher.get_subscription_count() > 0 for publisher in publishers.values()),
            args.timeout,
        ):
            raise failure("seem_node did not start")
        for index in range(args.warmup + args.repeats):
            for backend in backends:
                key, sent = answered_frame(backend)
                reports = len(inference_ms[backend])
                spin_until(lambda b=backend, n=reports: len(inference_ms[b]) > n, 5.0)
                if index >= args.warmup:
                    measured[backend]["single"].append(received[key] - sent)
                    measured[backend]["model"].append(inference_ms[backend][-1] / 1e3)
        for backend in backends:
            sent_at: dict[tuple[int, int], float] = {}
            start = time.perf_counter()
            next_frame = start
            while time.perf_counter() - start < STREAM_SECONDS:
                if time.perf_counter() >= next_frame:
                    key, sent = publish(backend)
                    sent_at[key] = sent
                    next_frame += 1.0 / STREAM_RATE_HZ
                rclpy.spin_once(node, timeout_sec=max(0.0, next_frame - time.perf_counter()))
            spin_until(lambda: False, max(measured[backend]["single"]) * 2)
            answered = [received[key] - sent for key, sent in sent_at.items() if key in received]
            measured[backend]["stream_latency"] = answered or [float("nan")]
            measured[backend]["stream_counts"] = [float(len(sent_at)), float(len(answered)), STREAM_SECONDS]
        return measured
    finally:
        node.destroy_node()
        rclpy.shutdown()
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs.values():
            log.close()


def run_node_section(args: argparse.Namespace) -> list[dict]:
    """Rows per preset and backend: node end to end, model in node, overhead, and the 30 Hz stream; the
    end-to-end row of every other backend also carries its speed-up over torch from the same frames."""
    rgb = _photo()
    rows: list[dict] = []
    presets = ["focalt_tiny"] if args.quick else args.presets
    for preset in presets:
        try:
            measured = _measure_nodes(preset, list(args.backends), args, rgb)
        except Exception as error:  # one failing preset must not hide the others
            rows.append({"section": SECTION, "preset": preset, "backend": "+".join(args.backends),
                         "skipped": str(error)})  # fmt: skip
            continue
        for backend, values in measured.items():
            single, model = values["single"], values["model"]
            overhead = [total - inside for total, inside in zip(single, model, strict=True)]
            model_median = statistics.median(model)
            sent, answered, seconds = values["stream_counts"]
            speedup = {}
            if backend != "torch" and "torch" in measured:
                speedup["speedup_vs_torch"] = statistics.median(
                    measured["torch"]["single"]
                ) / statistics.median(single)
            rows += [
                _row(preset, backend, "node e2e", single, **speedup),
                _row(preset, backend, "model in node", model),
                _row(preset, backend, "overhead", overhead,
                     overhead_fraction_of_model=statistics.median(overhead) / model_median),
                _row(preset, backend, "stream 30 Hz latency", values["stream_latency"],
                     frames_sent=int(sent), frames_answered=int(answered), output_hz=answered / seconds),
            ]  # fmt: skip
    return rows
