"""The C allocator's policy for processes that segment frame after frame (the node, the CLI, bench).

Eager PyTorch on the CPU allocates the activations of every layer afresh and frees them again. glibc's
malloc serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with mmap and gives them
back with munmap when freed, so the next frame touches brand-new pages: each 4 KiB page costs a page fault
and is zeroed by the kernel. Full-size Focal-T at 512x683 on 2 CPU cores takes about 250 thousand such
faults per frame (a gigabyte zeroed); with every block taken from malloc's heap and freed memory kept for
reuse (`keep_freed_memory`), about 14 thousand, and the frame 2.81 s -> 2.55 s (eager PyTorch in a worker
thread, measured in one process, alternating). Threads other than the main one must share the main heap as
well (`share_main_heap`, at start): their own arenas are capped at 64 MiB, so SAM-ViT-B's larger blocks
still went to mmap from the node's inference thread (4.7 million faults and 23 s per frame, against none
and 18.5 s on the main heap).

The price: the process's resident memory stays at its high-water mark instead of shrinking between
frames. For eager PyTorch that is where it would be again a frame later. ONNX Runtime's sessions gain no
speed from it and lose memory: blocks the image encoder freed are not all reusable by the decoder that
runs next (Focal-T, 512x683: peak RSS 1770 MiB kept, 1447 MiB not, frame times equal), so
`build_predictor` keeps freed memory for the PyTorch backend on the CPU only. For ONNX Runtime it instead
fixes the mmap threshold (`unmap_large_blocks`): glibc raises it, up to 32 MiB, each time a mapped block
is freed, after which blocks of that size stay in the heap at its high-water mark. Fixed at 4 MiB, a
Focal-T onnx process over a panoptic frame, a text target, a click and 1 / 4 / 8 tracks peaked at 1438
instead of 1562 MiB, with as many page faults per frame and the same frame time.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

M_TRIM_THRESHOLD = -1
"""mallopt parameter: free memory at the top of the heap above this many bytes is returned to the system."""
M_MMAP_THRESHOLD = -3
"""mallopt parameter: blocks of at least this many bytes are mapped (and unmapped when freed); setting it
stops glibc from raising it on its own."""
LARGE_BLOCK_BYTES = 4 * 2**20
"""`unmap_large_blocks`: the mmap threshold for ONNX Runtime processes."""
M_MMAP_MAX = -4
"""mallopt parameter: how many blocks may be served by mmap at once; 0 serves every block from the heap."""
M_ARENA_MAX = -8
"""mallopt parameter: how many arenas threads may spread over; 1 keeps every thread on the main heap,
whose size is not capped (other threads' arenas are 64 MiB heaps and would fall back to mmap)."""
LARGEST_TRIM_THRESHOLD = 2**31 - 1
"""mallopt takes an int: about 2 GiB of freed heap top is kept, far above one frame's activations."""


def share_main_heap() -> bool:
    """Make every thread allocate from glibc's main heap. Call it once at start, before importing numpy,
    torch or rclpy: the threads those start get arenas of their own, and once arenas exist a new thread
    (the node's inference thread) may be given one of them. Returns whether it took effect: False, with
    nothing changed, where the C library is not glibc (macOS, musl)."""
    return _mallopt(((M_ARENA_MAX, 1),))


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every block from its heap and keep freed memory for reuse (see the module
    docstring). Process-wide, from now on; with `share_main_heap` at start it covers every thread. Returns
    whether the policy is in effect (False where the C library is not glibc)."""
    return _mallopt(((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD)))


def unmap_large_blocks() -> bool:
    """Serve blocks of `LARGE_BLOCK_BYTES` and more with mmap and give them back when freed, from now on
    (see the module docstring). Returns whether it took effect (False where the C library is not glibc)."""
    return _mallopt(((M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES),))


def suit_backend(backend: str, device_type: str) -> None:
    """The policy for a process about to run `backend` ("torch", "onnx") on `device_type` ("cpu", "cuda"):
    eager PyTorch on the CPU keeps freed memory, ONNX Runtime unmaps large blocks (module docstring)."""
    if backend == "torch" and device_type == "cpu":
        keep_freed_memory()
    if backend == "onnx":
        unmap_large_blocks()


def c_library_function(name: str, argtypes: tuple[type, ...], restype: type) -> Callable[..., Any] | None:
    """glibc's function `name` with its argument and result types set; None where the process does not run
    on Linux with glibc, or its C library has no such function."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    function = getattr(libc, name, None)
    if function is None:
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function


def _mallopt(settings: tuple[tuple[int, int], ...]) -> bool:
    mallopt = c_library_function("mallopt", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
    if mallopt is None:
        return False
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])
