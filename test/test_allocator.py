"""The allocator policy of seem_node, the CLI and bench: large freed blocks are reused without new page
faults (each process is fresh: the policy is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK_FLOATS = 16 * 2**20  # 64 MiB, far above glibc's mmap threshold
PAGES_PER_BLOCK = BLOCK_FLOATS * 4 // 4096
REPEATS = 20

MEASURE = f"""
import resource, sys, torch
from seem_ros.engine.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.ones({BLOCK_FLOATS})
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({REPEATS}):
    torch.ones({BLOCK_FLOATS})
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(policy: str) -> int:
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE, policy], capture_output=True, text=True, timeout=120, check=True
    )
    return int(completed.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the policy is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    assert _page_faults("default") > (REPEATS - 2) * PAGES_PER_BLOCK  # every block mapped and faulted in
    assert _page_faults("keep") < 5 * PAGES_PER_BLOCK  # the heap grows once or twice, then is reused
