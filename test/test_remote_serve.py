"""A real local Ray cluster and Serve application (`seem-ros serve`, the tiny reference model, two replicas,
a shared token), driven by the Python client and by a seem_node with `backend: remote` over DDS: the same
masks as a local model, stable track ids while frames land on either replica, refusals of unauthenticated,
garbage and oversized requests while others are served, a killed replica, a server stopped and restarted
with another vocabulary under a running node.
The cluster is stopped at the end and no Ray process may be left behind."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from node_client import (  # noqa: F401 (module_ros_context is a fixture)
    NodeClient,
    cleanly_stopped_node,
    connected_client,
    module_ros_context,
    node_command,
    point,
)
from ros_helpers import NodeProcess, ros_environment  # noqa: F401 (fixture)
from std_msgs.msg import String

from seem_ros.engine.api import SegmenterConfig
from seem_ros.engine.segmenter import build_segmenter
from seem_ros.engine.session import Session
from seem_ros.remote.client import ServerUnavailable
from seem_ros.remote.wire import CONTENT_TYPE, WireError, encode_request
from seem_ros.ros.conversions import array_to_image

TOKEN = "test-token-4711"
SERVER_START_TIMEOUT = 150.0
REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray_processes(session_folder: str) -> list[str]:
    """Command lines of running processes that belong to the Ray cluster kept in session_folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if session_folder in command:
            found.append(f"{entry.name}: {command[:160]}")
    return found


class Server:
    """`seem-ros serve` as a child process, on a cluster of its own in a temporary folder."""

    def __init__(self, reference_dir: Path, log_folder: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/seem"
        self.session_folder = tempfile.mkdtemp(prefix="seemray")  # short: Ray's socket paths have a limit
        self.checkpoint = str(reference_dir / "tiny_focalt_v1.safetensors")
        self.log_folder = log_folder
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, *options: str) -> None:
        self.starts += 1
        self.log_path = self.log_folder / f"serve{self.starts}.log"
        command = [sys.executable, "-m", "seem_ros.cli", "serve", "--preset", "focalt_tiny"]
        command += ["--checkpoint", self.checkpoint, "--replicas", "2", "--port", str(self.port)]
        command += ["--cluster-cpus", "4", "--temp-dir", self.session_folder, *options]
        env = {**os.environ, "SEEM_ROS_SERVER_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while "ready at" not in self.output():
            assert self.process.poll() is None, f"seem-ros serve exited:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"seem-ros serve not ready:\n{self.output()[-4000:]}"
            time.sleep(0.5)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _ray_processes(self.session_folder) and time.monotonic() < deadline:
            time.sleep(0.5)


@pytest.fixture(scope="module")
def server(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(reference_dir, tmp_path_factory.mktemp("serve"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        left = _ray_processes(server.session_folder)
        for line in left:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        assert not left, "Ray processes left behind:\n" + "\n".join(left)
    assert server.process.returncode == 0, server.output()[-4000:]


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return cv2.resize(skimage.data.coffee(), (320, 240), interpolation=cv2.INTER_AREA)


def _remote(server: Server, **settings: object) -> Session:
    options = {"server_url": server.url, "remote_image_format": "png", "request_timeout": 30.0, **settings}
    return build_segmenter(SegmenterConfig(preset="focalt_tiny", backend="remote", **options))


def _post(server: Server, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(server.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _declared_too_large(server: Server, headers: dict[str, str]) -> tuple[int, bytes]:
    """A request that declares 64 MiB of body and sends none of it: refused from its headers."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest("POST", "/seem")
        for name, value in {**headers, "Content-Length": str(64 << 20)}.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_remote_tracks_like_a_local_model_across_replicas(
    server: Server, frame: np.ndarray, reference_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEEM_ROS_SERVER_TOKEN", TOKEN)
    remote = _remote(server)
    local = build_segmenter(SegmenterConfig(preset="focalt_tiny", checkpoint=server.checkpoint, device="cpu"))
    replicas = set()
    for segmenter in (remote, local):
        segmenter.add_click(160, 120, True)
        segmenter.set_text_prompt("the cup")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a replica: the same kernels, so the same rounding
    try:
        for index in range(24):  # until both replicas answered (the router picks one at random)
            if index >= 4 and len(replicas) == 2:
                break
            shifted = np.roll(frame, 4 * index, axis=1)
            got, want = remote.process(shifted), local.process(shifted)
            replicas.add(remote.engine.predictor.last_replica)
            assert [i.track_id for i in got.instances] == [i.track_id for i in want.instances]
            for mine, theirs in zip(got.instances, want.instances, strict=True):
                assert np.array_equal(mine.mask, theirs.mask)
                assert mine.score == pytest.approx(theirs.score, abs=1e-4)
            assert np.array_equal(got.panoptic, want.panoptic)
    finally:
        torch.set_num_threads(threads)
    assert len(replicas) == 2, f"every frame went to one replica: {replicas}"
    assert remote.vocabulary_names() == local.vocabulary_names()


def test_requests_without_the_token_garbage_and_oversized_are_refused(
    server: Server, frame: np.ndarray
) -> None:
    body = encode_request(frame, [], [], True, image_format="png")
    status, reply = _post(server, body, {"Content-Type": CONTENT_TYPE})
    assert status == 401 and b"bearer token" in reply
    status, reply = _post(server, body, {"Authorization": "Bearer wrong"})
    assert status == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    status, reply = _post(server, b"\x93garbage\x00", good)
    assert status == 400 and b"MessagePack" in reply
    status, reply = _declared_too_large(server, good)
    assert status == 413 and b"Content-Length" in reply
    status, reply = _post(server, body, good)
    assert status == 200, reply[:300]


def test_the_cli_refuses_a_public_bind_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEEM_ROS_SERVER_TOKEN", raising=False)
    env = {key: value for key, value in os.environ.items() if key != "SEEM_ROS_SERVER_TOKEN"}
    completed = subprocess.run(
        [sys.executable, "-m", "seem_ros.cli", "serve", "--host", "0.0.0.0", "--preset", "focalt_tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 1 and "shared token" in completed.stderr


def test_a_killed_replica_fails_its_frame_and_the_next_frames_are_served(
    server: Server, frame: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEEM_ROS_SERVER_TOKEN", TOKEN)
    remote = _remote(server)
    remote.add_click(160, 120, True)
    remote.process(frame)
    (track,) = remote.tracks()
    pid = int(re.search(r"pid (\d+)", remote.engine.predictor.last_replica).group(1))
    os.kill(pid, signal.SIGKILL)
    failures, served, pids = 0, 0, set()
    deadline = time.monotonic() + 90
    while served < 3 or pid in pids or len(pids) < 2:
        assert time.monotonic() < deadline, f"not served again: {failures} failures, replicas {pids}"
        try:
            result = remote.process(frame)
        except (ServerUnavailable, WireError):
            failures += 1
            time.sleep(0.2)
            continue
        served += 1
        pids = {int(re.search(r"pid (\d+)", remote.engine.predictor.last_replica).group(1))} | (pids - {pid})
        assert [i.track_id for i in result.instances if i.track_id] == [track.track_id]
    assert pid not in pids


@pytest.fixture(scope="module")
def remote_node(
    server: Server,
    ros_environment: dict[str, str],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NodeProcess]:
    folder = tmp_path_factory.mktemp("remote_node")
    (folder / "token").write_text(TOKEN + "\n")
    command = node_command(
        None,
        backend="remote",
        server_url=server.url,
        server_token_file=str(folder / "token"),
        request_timeout=10.0,
        diagnostics_period=0.5,
        error_log_period=1.0,
    )
    yield from cleanly_stopped_node(command, ros_environment, folder / "seem_node.log")


@pytest.fixture(scope="module")
def remote_client(module_ros_context, remote_node: NodeProcess) -> Iterator[NodeClient]:  # noqa: F811
    yield from connected_client(module_ros_context, remote_node)


def test_seem_node_with_a_remote_backend_survives_a_server_restart(
    server: Server, remote_client: NodeClient, frame: np.ndarray
) -> None:
    image = array_to_image(frame, "rgb8")
    remote_client.click_pixel.publish(point(160.0, 120.0, 1.0))
    remote_client.prompts.publish(String(data="find the cup"))
    remote_client.publish_until(
        image, lambda: any(len([i for i in m.instances if i.track_id]) == 2 for m in remote_client.instances)
    )
    tracked = [m for m in remote_client.instances if len([i for i in m.instances if i.track_id]) == 2][-1]
    track_ids = sorted(i.track_id for i in tracked.instances if i.track_id)

    server.stop()
    mark = remote_client.log_mark()
    failed = remote_client.fresh_counter("inference_errors")
    remote_client.publish_until(image, lambda: remote_client.counter("inference_errors") > failed)
    assert remote_client.process.is_running()
    remote_client.wait_for_log("inference failed", mark, timeout=30.0)
    assert f"server {server.url}" in remote_client.log_since(mark)

    assert remote_client.diagnostics()["vocabulary_size"] == "133"  # the server's COCO panoptic names
    server.start("--vocabulary", "cup,table,floor")  # restarted with another vocabulary
    known = len(remote_client.instances)
    remote_client.publish_until(image, lambda: len(remote_client.instances) > known)
    newest = remote_client.instances[-1]
    assert sorted(i.track_id for i in newest.instances if i.track_id) == track_ids
    assert remote_client.spin_until(lambda: remote_client.diagnostics().get("vocabulary_size") == "3", 10.0)
