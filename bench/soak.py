"""Soak run of seem_node: thousands of small frames over DDS while prompts create tracks that get lost and
dropped again, to find leaks, crashes and counters that drift.

    python -m bench.soak                                    # 3000 frames at 30 Hz (about 2 minutes)
    python -m bench.soak --frames 20000 --json soak.json    # longer
    python -m bench.soak --checkpoint tiny_focalt_v1.safetensors --preset focalt_tiny

seem_node runs as its own process (as the launch file starts it) in an isolated ROS domain on this machine,
with random weights unless a checkpoint is given. The frames show a disc that moves and now and then jumps or
vanishes; every `--prompt-every` frames a prompt is sent: a click on the disc or elsewhere, a text, a box, or
"clear". Tracks are created by the prompts, lost when the disc jumps or vanishes, dropped after
`--max-lost-frames`. The node's VmRSS and VmHWM (/proc/<pid>/status) are sampled every second.

Printed as a table and written as JSON (--json): frames sent / received / processed / dropped (replaced,
stale) / refused, prompts sent, results received, the most tracks seen at once and the distinct track ids,
result latency, and the node's memory: VmRSS and peak (VmHWM) after the warm-up and at the end, and the slope
of VmRSS over the second half of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
TEXT_PROMPTS = ("the red disc", "the round object", "the background", "a ball")


@dataclass
class SoakResult:
    """What one soak run measured (memory in MiB, times in seconds)."""

    preset: str
    weights: str
    image_size: tuple[int, int]
    short_side: int
    rate_hz: float
    duration_s: float = 0.0
    frames_sent: int = 0
    frames_received: int = 0
    frames_processed: int = 0
    frames_dropped_replaced: int = 0
    frames_dropped_stale: int = 0
    input_errors: int = 0
    inference_errors: int = 0
    prompts_sent: int = 0
    results_received: int = 0
    most_tracks_at_once: int = 0
    distinct_track_ids: int = 0
    latency_median_s: float = 0.0
    latency_p90_s: float = 0.0
    latency_max_s: float = 0.0
    rss_start_mib: float = 0.0
    rss_end_mib: float = 0.0
    peak_rss_start_mib: float = 0.0
    peak_rss_end_mib: float = 0.0
    rss_slope_mib_per_min: float = 0.0
    node_exit_code: int | None = None
    rss_samples_mib: list[float] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames to publish")
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--short-side", type=int, default=128, help="model input short side")
    parser.add_argument("--preset", default="focalt_tiny")
    parser.add_argument("--checkpoint", default="", help="checkpoint file; empty = random weights")
    parser.add_argument("--prompt-every", type=int, default=20, help="frames between two prompts")
    parser.add_argument("--max-tracks", type=int, default=4)
    parser.add_argument("--max-lost-frames", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--log", type=Path, help="the node's log file (default: a temporary file)")
    return parser.parse_args(argv)


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def disc_frame(index: int, width: int, height: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """(height, width, 3) uint8 frame `index` and the disc centre (None while the disc is hidden).

    The disc circles slowly, jumps to the other side every 300 frames and is hidden for 40 frames every 500.
    """
    ys, xs = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (xs * 255 // max(1, width - 1)).astype(np.uint8)
    frame[..., 1] = 90
    frame[..., 2] = (ys * 255 // max(1, height - 1)).astype(np.uint8)
    if index % 500 >= 460:
        return frame, None
    angle = index * 0.02 + (np.pi if (index // 300) % 2 else 0.0)
    radius = min(width, height) // 6
    cx = int(width / 2 + (width / 3) * np.cos(angle))
    cy = int(height / 2 + (height / 3) * np.sin(angle))
    inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
    frame[inside] = (220, 30, 30)
    return frame, (cx, cy)


def isolated_environment() -> dict[str, str]:
    """This process's environment with DDS kept on this machine, in a domain of its own."""
    return {
        **os.environ,
        "ROS_DOMAIN_ID": str(random.SystemRandom().randint(101, 200)),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(REPO_ROOT / "config" / "fastdds_profile.xml"),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "PYTHONUNBUFFERED": "1",
    }


def node_command(args: argparse.Namespace) -> list[str]:
    from seem_ros.launch_logic import LaunchArguments, format_parameter_value, plan_nodes

    launch = LaunchArguments(
        camera_topic="/soak_camera/image_raw",
        preset=args.preset,
        checkpoint=args.checkpoint,
        device=args.device,
    )
    (spec,) = plan_nodes(launch, REPO_ROOT)
    parameters = {
        "random_weights": not args.checkpoint,
        "short_side": args.short_side,
        "max_tracks": args.max_tracks,
        "max_lost_frames": args.max_lost_frames,
        "diagnostics_period": 0.5,
        "publish_overlay": False,
    }
    extra = [
        item
        for name, value in parameters.items()
        for item in ("-p", f"{name}:={format_parameter_value(value)}")
    ]
    return [*spec.command(python=sys.executable), *extra]


def run_soak(args: argparse.Namespace) -> SoakResult:
    environment = isolated_environment()
    os.environ.update(environment)
    import rclpy
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import Point, PointStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String

    from seem_ros.msg import InstanceMaskArray
    from seem_ros.ros.conversions import array_to_image

    result = SoakResult(
        preset=args.preset,
        weights=Path(args.checkpoint).name if args.checkpoint else "random",
        image_size=(args.height, args.width),
        short_side=args.short_side,
        rate_hz=args.rate,
    )
    log_path = args.log or Path(tempfile.mkdtemp(prefix="seem_soak_")) / "seem_node.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(node_command(args), env=environment, cwd=REPO_ROOT, stdout=log, stderr=log)
    rclpy.init()
    node = rclpy.create_node("seem_soak")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    images = node.create_publisher(Image, "/soak_camera/image_raw", qos_profile_sensor_data)
    prompts = node.create_publisher(String, "/prompt", QoSProfile(depth=50))
    clicks = node.create_publisher(PointStamped, "/click_pixel", QoSProfile(depth=50))
    latencies: list[float] = []
    track_ids: set[int] = set()
    diagnostics: dict[str, str] = {}

    def on_instances(msg: InstanceMaskArray) -> None:
        now = node.get_clock().now().nanoseconds * 1e-9
        latencies.append(now - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))
        ids = {instance.track_id for instance in msg.instances if instance.track_id}
        track_ids.update(ids)
        result.most_tracks_at_once = max(result.most_tracks_at_once, len(ids))

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "seem_node: segmentation":
                diagnostics.update({item.key: item.value for item in status.values})

    node.create_subscription(InstanceMaskArray, "/instances", on_instances, QoSProfile(depth=50))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, QoSProfile(depth=10))

    def spin_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            executor.spin_once(timeout_sec=left)

    def publish(index: int) -> tuple[int, int] | None:
        pixels, disc = disc_frame(index, args.width, args.height)
        stamp = node.get_clock().now().nanoseconds
        header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="soak_camera")
        images.publish(array_to_image(pixels, "rgb8", header))
        return disc

    def prompt(number: int, disc: tuple[int, int] | None) -> None:
        kind = number % 8
        if kind == 7:
            prompts.publish(String(data="clear"))
        elif kind in (0, 3) and disc is not None:
            clicks.publish(PointStamped(point=Point(x=float(disc[0]), y=float(disc[1]), z=1.0)))
        elif kind in (1, 5):
            prompts.publish(String(data=TEXT_PROMPTS[number % len(TEXT_PROMPTS)]))
        elif kind == 2:
            x, y = random.uniform(0, args.width - 1), random.uniform(0, args.height - 1)
            clicks.publish(PointStamped(point=Point(x=x, y=y, z=1.0)))
        else:
            prompts.publish(String(data=f"box: 2, 2, {args.width // 2}, {args.height // 2}"))

    try:
        deadline = time.monotonic() + 120.0
        while images.get_subscription_count() == 0 or prompts.get_subscription_count() == 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"seem_node did not start; see {log_path}")
            spin_for(0.1)
        warm_up = 0
        while len(latencies) < 5:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"seem_node produced no results; see {log_path}")
            publish(warm_up)
            warm_up += 1
            spin_for(0.2)
        spin_for(1.0)
        counters_before = {key: int(value) for key, value in diagnostics.items() if value.isdigit()}
        latencies.clear()
        result.rss_start_mib, result.peak_rss_start_mib = memory_mib(process.pid)
        samples: list[tuple[float, float]] = []
        began = time.monotonic()
        next_sample = began
        for index in range(args.frames):
            if process.poll() is not None:
                raise RuntimeError(
                    f"seem_node ended during the soak (exit {process.returncode}); see {log_path}"
                )
            disc = publish(index)
            result.frames_sent += 1
            if index % args.prompt_every == args.prompt_every - 1:
                prompt(result.prompts_sent, disc)
                result.prompts_sent += 1
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - began, memory_mib(process.pid)[0]))
                next_sample += 1.0
                print(
                    f"\r{index + 1}/{args.frames} frames, {len(latencies)} results, "
                    f"VmRSS {samples[-1][1]:.0f} MiB",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            spin_for(began + (index + 1) / args.rate - time.monotonic())
        result.duration_s = time.monotonic() - began
        spin_for(2.0)
        print(file=sys.stderr)
        result.rss_end_mib, result.peak_rss_end_mib = memory_mib(process.pid)
        for key in (
            "frames_received",
            "frames_processed",
            "frames_dropped_replaced",
            "frames_dropped_stale",
            "input_errors",
            "inference_errors",
        ):
            setattr(result, key, int(diagnostics.get(key, 0)) - counters_before.get(key, 0))
        result.results_received = len(latencies)
        result.distinct_track_ids = len(track_ids)
        if latencies:
            result.latency_median_s = float(np.median(latencies))
            result.latency_p90_s = float(np.percentile(latencies, 90))
            result.latency_max_s = float(np.max(latencies))
        second_half = [(t, rss) for t, rss in samples if t >= result.duration_s / 2]
        if len(second_half) >= 2:
            times, values = zip(*second_half, strict=True)
            result.rss_slope_mib_per_min = float(np.polyfit(times, values, 1)[0] * 60.0)
        result.rss_samples_mib = [round(rss, 1) for _, rss in samples]
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        result.node_exit_code = process.returncode
        log.close()
    return result


def print_table(result: SoakResult) -> None:
    rows = [
        ("model", f"{result.preset} ({result.weights} weights), short side {result.short_side}"),
        (
            "frames",
            f"{result.image_size[1]}x{result.image_size[0]}, {result.rate_hz:g} Hz, "
            f"{result.duration_s:.0f} s",
        ),
        ("frames sent", result.frames_sent),
        ("frames received by the node", result.frames_received),
        ("frames processed", result.frames_processed),
        ("frames dropped (replaced by newer)", result.frames_dropped_replaced),
        ("frames dropped (stale)", result.frames_dropped_stale),
        ("input refused (input_errors)", result.input_errors),
        ("inference errors", result.inference_errors),
        ("prompts sent", result.prompts_sent),
        ("results received", result.results_received),
        ("most tracks at once / distinct ids", f"{result.most_tracks_at_once} / {result.distinct_track_ids}"),
        (
            "latency median / p90 / max",
            f"{result.latency_median_s:.3f} / {result.latency_p90_s:.3f} / {result.latency_max_s:.3f} s",
        ),
        ("VmRSS start / end", f"{result.rss_start_mib:.0f} / {result.rss_end_mib:.0f} MiB"),
        (
            "peak RSS (VmHWM) start / end",
            f"{result.peak_rss_start_mib:.0f} / {result.peak_rss_end_mib:.0f} MiB",
        ),
        ("VmRSS slope, second half", f"{result.rss_slope_mib_per_min:+.1f} MiB/min"),
        ("node exit code", result.node_exit_code),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_soak(args)
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
        print(f"written {args.json}")
    return 0 if result.node_exit_code == 0 and result.inference_errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
