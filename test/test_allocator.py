"""The allocator policy of seem_node, the CLI and bench: large freed blocks are reused without new page
faults, in worker threads too (each process is fresh: the policy is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK_FLOATS = 16 * 2**20  # 64 MiB, far above glibc's mmap threshold and its thread arenas' heap size
PAGES_PER_FRAME = 4 * BLOCK_FLOATS * 4 // 4096  # a "frame" below touches four such blocks
FRAMES = 10

MEASURE = f"""
import sys
from seem_ros.allocator import keep_freed_memory, share_main_heap
assert share_main_heap()  # at start, as seem_node does
import resource, threading, torch
if sys.argv[1] == "keep":  # later, as build_predictor does for the PyTorch backend on the CPU
    assert keep_freed_memory()
def frame():
    image = torch.ones({BLOCK_FLOATS})
    doubled = image * 2
    return float(torch.cat([image, doubled])[-1])
def frames():  # in a worker thread, as the node's inference runs
    for _ in range(3):
        frame()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({FRAMES}):
        frame()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
worker = threading.Thread(target=frames)
worker.start()
worker.join()
"""


def _page_faults(policy: str) -> int:
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, policy], capture_output=True, text=True, timeout=120, check=True
    )
    return int(completed.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the policy is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    assert _page_faults("default") > (FRAMES - 1) * PAGES_PER_FRAME  # every block faulted in afresh
    assert _page_faults("keep") < 3 * PAGES_PER_FRAME  # the heap grows now and then, mostly reused
