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


def _last_number(script: str, policy: str) -> int:
    """The number a script prints last, run in a fresh interpreter (the policy is process-wide)."""
    completed = subprocess.run(
        [sys.executable, "-c", script, policy], capture_output=True, text=True, timeout=120, check=True
    )
    return int(completed.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the policy is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    assert _last_number(MEASURE, "default") > (FRAMES - 1) * PAGES_PER_FRAME  # every block faulted in afresh
    assert _last_number(MEASURE, "keep") < 3 * PAGES_PER_FRAME  # the heap grows now and then, mostly reused


RELEASE = """
import ctypes, sys
from seem_ros.allocator import share_main_heap, unmap_large_blocks
assert share_main_heap()
if sys.argv[1] == "unmap":  # as build_predictor does for the onnx backend
    assert unmap_large_blocks()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
MIB = 2**20
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = libc.malloc(24 * MIB)  # mapped; freeing it raises glibc's own mmap threshold to 24 MiB
libc.memset(big, 1, 24 * MIB)
libc.free(big)
blocks = [libc.malloc(16 * MIB) for _ in range(2)]
for block in blocks:
    libc.memset(block, 1, 16 * MIB)
before = resident()
for block in blocks:
    libc.free(block)
print((before - resident()) // MIB)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the policy is glibc's")
def test_large_freed_blocks_are_given_back_with_a_fixed_mmap_threshold():
    assert _last_number(RELEASE, "default") < 16  # 16 MiB blocks came from the heap and stay resident
    assert _last_number(RELEASE, "unmap") >= 30
