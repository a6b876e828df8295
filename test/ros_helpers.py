"""Fixtures and helpers for tests that talk to real nodes over DDS.

Every test session gets its own random ROS_DOMAIN_ID, discovery limited to this machine and the project's
Fast DDS profile (shared memory large enough for camera frames), so parallel runs never see each other.
Nodes run as separate processes started with `--ros-args` and are always stopped in `finally`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

REPO_ROOT = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO_ROOT / "config" / "fastdds_profile.xml"


def isolated_ros_environment(domain_id: int) -> dict[str, str]:
    """The variables that keep DDS traffic of one test session on this machine and in its own domain."""
    return {
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }


@pytest.fixture(scope="session")
def ros_environment() -> Iterator[dict[str, str]]:
    """Apply an isolated ROS environment to this process (before any rclpy.init); yield it for children."""
    variables = isolated_ros_environment(random.SystemRandom().randint(1, 100))
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def initialised_context() -> Iterator[rclpy.context.Context]:
    """An rclpy context of its own (one DDS participant), shut down at the end of the with-block."""
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


@pytest.fixture
def ros_context(ros_environment: dict[str, str]) -> Iterator[rclpy.context.Context]:
    """An rclpy context of its own, shut down after the test."""
    with initialised_context() as context:
        yield context


def spin_until(
    executor: SingleThreadedExecutor, condition: Callable[[], bool], timeout: float, step: float = 0.05
) -> bool:
    """Spin until condition() holds or timeout seconds pass; returns the last value of condition()."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        executor.spin_once(timeout_sec=step)
    return True


class NodeProcess:
    """A node started as a child process; its output goes to a log file that failures can quote."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )

    def is_running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """Wait for the process to end by itself; returns its exit code (raises on timeout)."""
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT (a clean ROS shutdown), then SIGKILL after timeout seconds. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self._log.close()
        return self.process.returncode


def exit_of(
    command: list[str], env: dict[str, str], log_path: Path, timeout: float = 60.0
) -> tuple[int, str]:
    """Run a node expected to end by itself (a start that must fail): its exit code and output."""
    node = NodeProcess(command, env, log_path)
    try:
        exit_code = node.wait(timeout=timeout)
    finally:
        node.stop()
    return exit_code, node.output()


@contextmanager
def running_node(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[NodeProcess]:
    """Start a node process for the duration of a with-block; it is always stopped afterwards."""
    node = NodeProcess(command, env, log_path)
    try:
        yield node
    finally:
        node.stop()


def call_service(
    node: rclpy.node.Node,
    executor: SingleThreadedExecutor,
    service_type: type,
    name: str,
    request: object,
    node_output: Callable[[], str],
    timeout: float = 60.0,
) -> object:
    """Call a service of a node under test and return the response; a missing service or a call that does
    not answer within timeout fails with the node's log (node_output())."""
    client = node.create_client(service_type, name)
    try:
        assert spin_until(executor, client.service_is_ready, 10.0), f"no service {name}:\n{node_output()}"
        future = client.call_async(request)
        assert spin_until(executor, future.done, timeout), f"{name} did not answer:\n{node_output()}"
        return future.result()
    finally:
        node.destroy_client(client)
