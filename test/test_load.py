"""seem_node under load (its own process, tiny reference model on the CPU, bounded in time): camera frames at
several times the model's rate keep a bounded latency (only the newest frame is processed, the others are
dropped and counted) and a flat memory; hundreds of prompts while frames flow never crash it, and the number
of tracks stays within max_tracks. bench/soak.py runs the same for much longer."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from node_client import (  # noqa: F401 (fixture)
    NodeClient,
    cleanly_stopped_node,
    connected_client,
    module_ros_context,
    node_command,
    point,
    resident_memory_bytes,
)
from ros_helpers import NodeProcess, ros_environment  # noqa: F401 (fixture)
from std_msgs.msg import String

from seem_ros.ros.conversions import array_to_image

MAX_TRACKS = 3
INPUT_RATE = 30.0
OVERLOAD_SECONDS = 5.0
# Seconds. The model takes about 0.2 s a frame here; a queue of frames would be 20 s behind by the end.
LATENCY_BOUND = 3.0
RSS_TOLERANCE = 1.20  # end / middle
RSS_SLACK = 64 * 1024 * 1024  # bytes: allocator noise (frames of 0.9 MB come and go) on top of RSS_TOLERANCE
PROMPT_MESSAGES = 300


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return cv2.resize(skimage.data.coffee(), (640, 480), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def loaded_node(
    ros_environment: dict[str, str],  # noqa: F811
    reference_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NodeProcess]:
    command = node_command(
        reference_dir, diagnostics_period=0.5, max_tracks=MAX_TRACKS, max_lost_frames=3, publish_overlay=False
    )
    yield from cleanly_stopped_node(
        command, ros_environment, tmp_path_factory.mktemp("load") / "seem_node.log"
    )


@pytest.fixture(scope="module")
def client(module_ros_context, loaded_node: NodeProcess) -> Iterator[NodeClient]:  # noqa: F811
    yield from connected_client(module_ros_context, loaded_node)


def _stream(client: NodeClient, frame, seconds: float, rate: float, between=None) -> list[float]:
    """Publish `frame` stamped with the current time at `rate` Hz for `seconds`; call between(i) after each
    frame. Returns the VmRSS samples of the node taken every second."""
    memory: list[float] = []
    began = time.monotonic()
    index = 0
    while (elapsed := time.monotonic() - began) < seconds:
        assert client.process.is_running(), f"seem_node died:\n{client.process.output()}"
        client.publish_frame(frame, stamp=client.now())
        if between is not None:
            between(index)
        if len(memory) <= elapsed:
            memory.append(resident_memory_bytes(client.process.process.pid))
        index += 1
        next_frame = began + index / rate
        while time.monotonic() < next_frame:
            client.executor.spin_once(timeout_sec=max(0.0, next_frame - time.monotonic()))
    memory.append(resident_memory_bytes(client.process.process.pid))
    return memory


def test_overload_keeps_latency_and_memory_bounded(client: NodeClient, coffee):
    frame = array_to_image(coffee, "rgb8")
    client.assert_serves(frame)
    client.assert_serves(frame)
    counters = ("frames_received", "frames_processed", "frames_dropped_replaced")
    before = {name: client.fresh_counter(name) for name in counters}
    first_result = len(client.instances)

    memory = _stream(client, frame, OVERLOAD_SECONDS, INPUT_RATE)
    client.spin(1.0)

    results = client.instances[first_result:]
    latencies = [
        received - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
        for msg, received in zip(results, client.received_at[first_result:], strict=True)
    ]
    values = client.diagnostics()
    inference_ms = float(values.get("last_inference_ms", "nan"))
    received = int(values["frames_received"]) - before["frames_received"]
    processed = int(values["frames_processed"]) - before["frames_processed"]
    dropped = int(values["frames_dropped_replaced"]) - before["frames_dropped_replaced"]
    sent = math.floor(OVERLOAD_SECONDS * INPUT_RATE)
    middle, end = memory[len(memory) // 2], memory[-1]
    print(
        f"\nload: {sent} frames sent at {INPUT_RATE:.0f} Hz, {received} received, {processed} processed, "
        f"{dropped} dropped (replaced); model {inference_ms:.0f} ms/frame; latency median "
        f"{statistics.median(latencies):.2f} s, max {max(latencies):.2f} s; VmRSS middle "
        f"{middle / 2**20:.0f} MiB, end {end / 2**20:.0f} MiB; latencies {[round(v, 2) for v in latencies]}"
    )
    assert len(latencies) >= 3, f"only {len(latencies)} results in {OVERLOAD_SECONDS} s"
    assert processed < received / 2, "the model was not slower than the input: no overload"
    assert max(latencies) < LATENCY_BOUND, latencies
    assert dropped >= received - processed - 2 > 0, values
    assert end <= middle * RSS_TOLERANCE + RSS_SLACK, [f"{value / 2**20:.0f} MiB" for value in memory]


def _track_ids(msg) -> set[int]:
    return {instance.track_id for instance in msg.instances if instance.track_id}


def test_prompt_storm_keeps_tracks_and_memory_bounded(client: NodeClient, coffee):
    frame = array_to_image(coffee, "rgb8")
    client.assert_serves(frame)
    rng = np.random.default_rng(0)
    errors_before = client.fresh_counter("input_errors")
    start_memory = resident_memory_bytes(client.process.process.pid)
    first_result = len(client.instances)

    def prompt(index: int) -> None:
        for offset in range(PROMPT_MESSAGES // 60):
            number = index * (PROMPT_MESSAGES // 60) + offset
            kind = number % 10
            if kind < 4:
                client.prompts.publish(String(data=f"object number {number} on the table"))
            elif kind < 8:
                x, y = rng.uniform(0, 640), rng.uniform(0, 480)
                client.click_pixel.publish(point(float(x), float(y), 1.0 if kind < 7 else -1.0))
            elif kind == 8:
                client.click_pixel.publish(point(float("nan"), 5.0, 1.0))
            elif number % 100 == 9:
                client.prompts.publish(String(data="clear"))
            else:
                client.prompts.publish(String(data=f"box: {number % 300}, 10, {number % 300 + 200}, 300"))

    memory = _stream(client, frame, 6.0, 10.0, between=prompt)
    client.spin(1.0)
    results = client.instances[first_result:]
    assert client.process.is_running(), client.process.output()
    assert results, "no results while prompts were flowing"
    most_tracks = max(len(_track_ids(msg)) for msg in results)
    errors = client.fresh_counter("input_errors") - errors_before
    print(
        f"\nprompt storm: {PROMPT_MESSAGES} prompts and clicks, {len(results)} results, at most "
        f"{most_tracks} tracks, {errors} refused; VmRSS start {start_memory / 2**20:.0f} MiB, "
        f"end {memory[-1] / 2**20:.0f} MiB"
    )
    assert most_tracks <= MAX_TRACKS
    assert any(_track_ids(msg) for msg in results), "no prompt ever became a track"
    assert errors > 0, "the full tracker and the NaN clicks were not counted"
    assert max(memory) <= start_memory * 1.5 + RSS_SLACK, [f"{value / 2**20:.0f} MiB" for value in memory]
    client.prompts.publish(String(data="clear"))
    client.assert_serves(frame)
