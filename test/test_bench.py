"""The benchmark's one command in its quick form: every section runs on this machine, the tables are
printed and the JSON holds the rows of each (focalt_tiny with both backends, seem_node processes over DDS).
No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_prints_every_table_and_writes_json(tmp_path: Path):
    results_path = tmp_path / "bench.json"
    command = [sys.executable, "-m", "bench.run", "--quick", "--repeats", "1", "--warmup", "0"]
    command += ["--cache-dir", str(tmp_path / "cache"), "--json", str(results_path)]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for title in ("## Stages, median ms", "## Input size", "## Set-up", "## Node end to end"):
        assert title in completed.stdout

    document = json.loads(results_path.read_text())
    skipped = [result for result in document["results"] + document["node"] if "skipped" in result]
    assert not skipped, skipped
    jobs = {
        (result["job"]["preset"], result["job"]["backend"], result["job"]["task"])
        for result in document["results"]
    }
    for backend in ("torch", "onnx"):
        assert ("focalt_tiny", backend, "stages") in jobs
        assert ("focalt_tiny", backend, "sizes") in jobs
    assert ("focalt_v1", "torch", "stages") in jobs
    recorded_paths = [document["arguments"]["cache_dir"], document["arguments"]["json"]]
    recorded_paths += [result["job"]["cache_dir"] for result in document["results"]]
    assert not [path for path in recorded_paths if path.startswith("/")], "machine paths in the JSON"

    node_rows = {(row["backend"], row["stage"]): row for row in document["node"]}
    for backend in ("torch", "onnx"):
        for stage in ("node e2e", "model in node", "overhead", "stream 30 Hz latency"):
            assert (backend, stage) in node_rows
        assert node_rows[(backend, "stream 30 Hz latency")]["frames_answered"] > 0
    assert node_rows[("onnx", "node e2e")]["speedup_vs_torch"] > 0
