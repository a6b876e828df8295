"""Faults and security of seem_node as its own process: checkpoints that cannot be used (missing,
truncated, foreign, pickled code, not a regular file) and a missing CUDA device stop the start with one clear
log line and a non-zero exit code; an exception inside inference is logged, counted and the frame dropped;
SIGINT while inferring ends the node cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from node_client import (  # noqa: F401 (module_ros_context is a fixture)
    NodeClient,
    cleanly_stopped_node,
    connected_client,
    module_ros_context,
    node_command,
)
from ros_helpers import NodeProcess, ros_environment  # noqa: F401 (fixture)
from safetensors.torch import save_file

from seem_ros.engine.segmenter import load_model
from seem_ros.model.checkpoint import CheckpointError, read_checkpoint
from seem_ros.ros.conversions import array_to_image

START_FAILURE_TIMEOUT = 90.0
LOADER_TIMEOUT = 10.0
MAGIC_PIXEL = (255, 0, 255)
ERROR_LOG_PERIOD = 2.0

# Runs seem_node with an engine whose predictor raises when a frame's top-left pixel is MAGIC_PIXEL.
FAULTY_NODE = f"""
import sys
import seem_ros.engine.segmenter
from seem_ros.ros import seem_node

build = seem_ros.engine.segmenter.build_engine


def faulty_engine(config):
    engine = build(config)
    predict_frames = engine.predictor.predict_frames

    def failing(requests):
        if any(tuple(int(v) for v in request.image[0, 0]) == {MAGIC_PIXEL} for request in requests):
            raise RuntimeError("injected fault inside inference")
        return predict_frames(requests)

    engine.predictor.predict_frames = failing
    return engine


seem_ros.engine.segmenter.build_engine = faulty_engine
raise SystemExit(seem_node.main(sys.argv))
"""


class _RunsShellCommand:
    """Pickles to a call of os.system: unpickling it with plain pickle would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@dataclass(frozen=True)
class StartFailure:
    """A node start that must fail: the checkpoint (made in a folder) or device, and the expected reason."""

    make_checkpoint: Callable[[Path, Path], str]
    expected: str
    device: str = "cpu"


def _truncated_safetensors(folder: Path, reference: Path) -> str:
    path = folder / "truncated.safetensors"
    path.write_bytes((reference / "tiny_focalt_v1.safetensors").read_bytes()[:4096])
    return str(path)


def _foreign(folder: Path, reference: Path) -> str:
    path = folder / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(10)}, str(path))
    return str(path)


def _pickled_code(folder: Path, reference: Path) -> str:
    path = folder / "malicious.pt"
    marker = folder / "pickle_ran"
    torch.save({"weight": torch.zeros(2), "payload": _RunsShellCommand(f"touch {marker}")}, path)
    return str(path)


def _fifo(folder: Path, reference: Path) -> str:
    path = folder / "pipe.safetensors"
    os.mkfifo(path)
    return str(path)


# The node-level cases; test_loader_refuses_special_files_without_reading covers every special file kind.
START_FAILURES: dict[str, StartFailure] = {
    "missing": StartFailure(lambda folder, _: str(folder / "absent.safetensors"), "no checkpoint at"),
    "truncated-safetensors": StartFailure(_truncated_safetensors, "is unreadable or truncated"),
    "foreign": StartFailure(_foreign, "the file is not a SEEM v1 checkpoint"),
    "pickled-code": StartFailure(_pickled_code, "it needs to run pickled code to load"),
    "fifo": StartFailure(_fifo, "no checkpoint at"),
    "dev-zero": StartFailure(lambda folder, _: "/dev/zero", "no checkpoint at /dev/zero"),
    "cuda-without-gpu": StartFailure(
        lambda _, reference: str(reference / "tiny_focalt_v1.safetensors"),
        "device 'cuda' was requested but no CUDA device is available",
        device="cuda",
    ),
}


@dataclass(frozen=True)
class StartOutcome:
    exit_code: int
    seconds: float
    output: str
    folder: Path


@pytest.fixture(scope="module")
def start_outcomes(
    ros_environment: dict[str, str],  # noqa: F811
    reference_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, StartOutcome]:
    """Every case of START_FAILURES started as a node process, a few at a time."""

    def start(case: str) -> StartOutcome:
        failure = START_FAILURES[case]
        folder = tmp_path_factory.mktemp(case)
        checkpoint = failure.make_checkpoint(folder, reference_dir)
        command = node_command(device=failure.device, checkpoint=checkpoint)
        node = NodeProcess(command, ros_environment, folder / "seem_node.log")
        began = time.monotonic()
        try:
            exit_code = node.wait(timeout=START_FAILURE_TIMEOUT)
        except subprocess.TimeoutExpired:
            exit_code = None
        finally:
            seconds = time.monotonic() - began
            node.stop(timeout=5.0)
        return StartOutcome(exit_code, seconds, node.output(), folder)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(START_FAILURES, pool.map(start, START_FAILURES), strict=True))


@pytest.mark.parametrize("case", START_FAILURES)
def test_unusable_start_exits_with_one_clear_line(start_outcomes: dict[str, StartOutcome], case: str):
    if case == "cuda-without-gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    outcome = start_outcomes[case]
    assert outcome.exit_code is not None, f"{case}: still running after {START_FAILURE_TIMEOUT} s"
    assert outcome.exit_code == 1, outcome.output
    fatal = [line for line in outcome.output.splitlines() if "[FATAL]" in line]
    assert len(fatal) == 1, outcome.output
    assert "could not build the segmenter" in fatal[0] and START_FAILURES[case].expected in fatal[0], fatal[0]
    assert "Traceback" not in outcome.output, outcome.output


def test_pickled_checkpoint_code_never_runs(start_outcomes: dict[str, StartOutcome]):
    outcome = start_outcomes["pickled-code"]
    assert outcome.exit_code == 1
    assert not (outcome.folder / "pickle_ran").exists(), "loading the checkpoint ran its pickled code"
    assert "Only plain tensor checkpoints are accepted" in outcome.output


def _special_files(folder: Path) -> dict[str, Path]:
    fifo = folder / "pipe.pt"
    os.mkfifo(fifo)
    link = folder / "zero.safetensors"
    link.symlink_to("/dev/zero")
    return {"directory": folder, "fifo": fifo, "dev-zero": Path("/dev/zero"), "link-to-dev-zero": link}


def _without_hanging(call: Callable[[], object], fifo: Path) -> BaseException | None:
    """Run call() in a thread; if it blocks (e.g. opened the FIFO), unblock it by writing and fail."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 (returned to the test)
            outcome.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(LOADER_TIMEOUT)
    if worker.is_alive():
        descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(descriptor)
        worker.join(LOADER_TIMEOUT)
        pytest.fail(f"loading hung for {LOADER_TIMEOUT} s on a special file")
    return outcome[0]


@pytest.mark.parametrize("kind", ["directory", "fifo", "dev-zero", "link-to-dev-zero"])
def test_loader_refuses_special_files_without_reading(tmp_path: Path, kind: str):
    special = _special_files(tmp_path)
    path = special[kind]
    error = _without_hanging(lambda: read_checkpoint(path), special["fifo"])
    assert isinstance(error, CheckpointError) and str(path) in str(error), error
    error = _without_hanging(lambda: load_model("focalt_tiny", str(path)), special["fifo"])
    assert isinstance(error, CheckpointError) and "no checkpoint at" in str(error), error


# Inference faults: one node with an injected fault, started with device:=auto.


@pytest.fixture(scope="module")
def faulty_node(
    ros_environment: dict[str, str],  # noqa: F811
    reference_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NodeProcess]:
    arguments = node_command(
        reference_dir,
        device="auto",
        diagnostics_period=0.2,
        short_side=256,
        error_log_period=ERROR_LOG_PERIOD,
    )
    ros_arguments = arguments[arguments.index("--ros-args") :]
    command = [sys.executable, "-c", FAULTY_NODE, *ros_arguments]
    yield from cleanly_stopped_node(
        command, ros_environment, tmp_path_factory.mktemp("faulty") / "seem_node.log"
    )


@pytest.fixture(scope="module")
def faulty(module_ros_context, faulty_node: NodeProcess) -> Iterator[NodeClient]:  # noqa: F811
    yield from connected_client(module_ros_context, faulty_node)


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return cv2.resize(skimage.data.coffee(), (640, 480), interpolation=cv2.INTER_AREA)


def _magic(coffee: np.ndarray) -> np.ndarray:
    image = coffee.copy()
    image[0, 0] = MAGIC_PIXEL
    return image


def test_auto_device_falls_back_to_cpu(faulty: NodeClient):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    faulty.wait_for_log("ready: ")
    assert f"device {expected}" in faulty.process.output(), faulty.process.output()
    assert faulty.spin_until(lambda: faulty.diagnostics().get("device") == expected, 5.0), (
        faulty.diagnostics()
    )


def test_exception_inside_inference_is_logged_counted_and_the_frame_dropped(faulty: NodeClient, coffee):
    good = array_to_image(coffee, "rgb8")
    faulty.assert_serves(good)
    processed = faulty.settled_counter("frames_processed")
    mark = faulty.log_mark()
    failed = faulty.fresh_counter("inference_errors")
    known = len(faulty.instances)
    faulty.publish_until(
        array_to_image(_magic(coffee), "rgb8"),
        lambda: "inference failed: RuntimeError: injected fault inside inference" in faulty.log_since(mark),
    )
    faulty.wait_for_counter("inference_errors", failed + 1)
    assert faulty.statuses[-1].level == DiagnosticStatus.ERROR
    assert "injected fault" in faulty.statuses[-1].message
    assert len(faulty.instances) == known, "a result was published for a frame whose inference failed"
    assert faulty.counter("frames_processed") == processed
    faulty.assert_serves(good)
    assert faulty.spin_until(lambda: faulty.statuses[-1].level == DiagnosticStatus.OK, 5.0)


def test_engine_refusal_of_a_too_small_image_is_counted_as_bad_input(faulty: NodeClient, coffee):
    mark, refused = faulty.log_mark(), faulty.fresh_counter("input_errors")
    tiny = array_to_image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    faulty.publish_until(tiny, lambda: faulty.counter("input_errors") > refused)
    assert "image is too small" in faulty.log_since(mark)
    faulty.assert_serves(array_to_image(coffee, "rgb8"))
    assert "Traceback" not in faulty.log_since(mark)


def test_repeated_inference_failures_are_rate_limited(faulty: NodeClient, coffee):
    faulty.spin(ERROR_LOG_PERIOD)  # the throttle window of the earlier failures is over
    mark, failed = faulty.log_mark(), faulty.fresh_counter("inference_errors")
    magic = array_to_image(_magic(coffee), "rgb8")
    began = time.monotonic()
    for _ in range(30):
        faulty.publish_frame(magic)
        faulty.spin(0.05)
    elapsed = time.monotonic() - began
    counted = faulty.wait_for_counter("inference_errors", failed + 10) - failed
    lines = faulty.log_since(mark).count("inference failed")
    assert 1 <= lines <= 1 + int(elapsed / ERROR_LOG_PERIOD), (
        f"{counted} failures in {elapsed:.1f} s: {lines} log lines"
    )
    faulty.assert_serves(array_to_image(coffee, "rgb8"))


# SIGINT while inferring


@dataclass(frozen=True)
class Interrupted:
    exit_code: int | None
    seconds: float
    output: str
    output_after_sigint: str
    processed_before: int


@pytest.fixture(scope="module")
def interrupted(
    module_ros_context,  # noqa: F811
    ros_environment: dict[str, str],  # noqa: F811
    reference_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    coffee: np.ndarray,
) -> Interrupted:
    """A node with a slow model (short_side 1024) fed frames continuously, interrupted with SIGINT."""
    command = node_command(reference_dir, diagnostics_period=0.2, short_side=1024, namespace="slow")
    node = NodeProcess(command, ros_environment, tmp_path_factory.mktemp("sigint") / "seem_node.log")
    client = NodeClient(module_ros_context, node, namespace="slow")
    try:
        client.wait_for_node()
        frame = array_to_image(coffee, "rgb8")
        client.assert_serves(frame)
        for _ in range(10):
            client.publish_frame(frame)
            client.spin(0.1)
        processed = client.counter("frames_processed")
        mark = client.log_mark()
        node.process.send_signal(signal.SIGINT)
        began = time.monotonic()
        while node.is_running() and time.monotonic() - began < 30.0:
            client.publish_frame(frame)
            client.spin(0.05)
        seconds = time.monotonic() - began
        exit_code = node.process.poll()
    finally:
        client.close()
        node.stop(timeout=5.0)
    return Interrupted(exit_code, seconds, node.output(), node.output()[mark:], processed)


def test_sigint_while_inferring_exits_cleanly(interrupted: Interrupted):
    assert interrupted.processed_before >= 1
    assert interrupted.exit_code == 0, interrupted.output
    assert interrupted.seconds < 10.0, f"took {interrupted.seconds:.1f} s to stop"
    assert "Traceback" not in interrupted.output, interrupted.output


def test_sigint_while_inferring_prints_no_error(interrupted: Interrupted):
    for text in (
        "never retrieved",
        "never awaited",
        "Failed to publish",
        "context is invalid",
        "Error",
        "Exception",
    ):
        assert text not in interrupted.output_after_sigint, interrupted.output_after_sigint
