"""The benchmark's one command in its quick form: every section runs on this machine, the tables are
printed and the JSON holds the rows of each (focalt_tiny with each backend, seem_node processes over DDS).
No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(1500)  # about three minutes on an idle 2-core machine
def test_quick_benchmark_prints_every_table_and_writes_json(tmp_path: Path):
    results_path = tmp_path / "bench.json"
    command = [sys.executable, "-m", "bench.run", "--quick", "--repeats", "1", "--warmup", "0"]
    command += ["--sections", "stages", "sizes", "node", "--backends", "torch", "onnx", "torch_bf16"]
    command += ["--cache-dir", str(tmp_path / "cache"), "--json", str(results_path)]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1400, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for title in ("## Stages, median ms", "## Input size", "## Post-processing", "## Set-up", "## Node end"):
        assert title in completed.stdout

    document = json.loads(results_path.read_text())
    skipped = [result for result in document["results"] + document["node"] if "skipped" in result]
    assert not skipped, skipped
    jobs = {
        (result["job"]["preset"], result["job"]["backend"], result["job"]["task"])
        for result in document["results"]
    }
    for backend in ("torch", "onnx", "torch_bf16"):
        assert ("focalt_tiny", backend, "stages") in jobs
        assert ("focalt_tiny", backend, "sizes") in jobs
    assert ("focalt_v1", "torch", "stages") in jobs
    recorded_paths = [document["arguments"]["cache_dir"], document["arguments"]["json"]]
    recorded_paths += [result["job"]["cache_dir"] for result in document["results"]]
    assert not [path for path in recorded_paths if path.startswith("/")], "machine paths in the JSON"

    node_rows = {(row["backend"], row["stage"]): row for row in document["node"]}
    for backend in ("torch", "onnx", "torch_bf16"):
        for stage in ("node e2e", "model in node", "overhead", "stream 30 Hz latency"):
            assert (backend, stage) in node_rows
        assert node_rows[(backend, "stream 30 Hz latency")]["frames_answered"] > 0
    assert node_rows[("onnx", "node e2e")]["speedup_vs_torch"] > 0


@pytest.mark.timeout(1500)  # about two minutes on an idle 2-core machine; four node starts, two of them cold
def test_quick_post_processing_and_startup_sections(tmp_path: Path):
    """`post` forces panoptic segments into the decoder output; `startup` starts seem_node cold and warm."""
    results_path = tmp_path / "bench.json"
    command = [sys.executable, "-m", "bench.run", "--quick", "--repeats", "1", "--warmup", "0"]
    command += ["--sections", "post", "startup", "--cache-dir", str(tmp_path / "cache")]
    command += ["--json", str(results_path)]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1400, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "## Post-processing under forced panoptic segments" in completed.stdout
    assert "## Start-up of seem_node" in completed.stdout
    document = json.loads(results_path.read_text())
    skipped = [row for row in document["results"] + document["startup"] if "skipped" in row]
    assert not skipped, skipped
    post = {
        result["job"]["backend"]: result for result in document["results"] if result["job"]["task"] == "post"
    }
    assert set(post) == {"torch", "onnx"}
    for result in post.values():
        stages = {row["stage"] for row in result["rows"]}
        assert {"post_generic", "post_results", "msg_instances", "frame_total"} <= stages
        assert result["rows"][0]["segments"] > 0, "forced segments must reach post-processing"
    startup = {(row["backend"], row["cache"]): row for row in document["startup"]}
    for backend in ("torch", "onnx"):
        for cache in ("cold", "warm"):
            row = startup[(backend, cache)]
            assert 0 < row["ready_s"] < row["first_result_s"] and "weights" in row["node_startup"]


@pytest.mark.timeout(900)
def test_quick_cameras_benchmark(tmp_path: Path):
    """bench.cameras --quick: 1 and 2 cameras on focalt_tiny, both backends, batched and one by one (and
    PyTorch batching its decoder as on a GPU)."""
    results_path = tmp_path / "cameras.json"
    command = [
        sys.executable,
        "-m",
        "bench.cameras",
        "--quick",
        "--threads",
        "1",
        "--json",
        str(results_path),
    ]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=800, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "# bench.cameras: focalt_tiny" in completed.stdout and "batched / one by one" in completed.stdout
    results = json.loads(results_path.read_text())["results"]
    rows = {(row["backend"], row["cameras"], row["way"]) for result in results for row in result["rows"]}
    assert rows == {
        (backend, cameras, way)
        for backend in ("torch", "onnx")
        for cameras in (1, 2)
        for way in ("batched", "one by one")
    } | {("torch", 2, "batched, decoder as on a GPU")}
    assert all(result["peak_rss_bytes"] > 0 for result in results)
