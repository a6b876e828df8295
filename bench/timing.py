"""Summaries of repeated timings and the process's peak memory."""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence

import numpy as np

PEAK_MEMORY_METHOD = "resource.getrusage(RUSAGE_SELF).ru_maxrss (RSS high-water mark of the process)"


def summarize(seconds: Sequence[float]) -> dict[str, float | int]:
    """Median and 90th percentile (linear interpolation) of timings in seconds, and their count."""
    values = np.asarray(seconds, dtype=np.float64)
    return {
        "median_s": float(np.median(values)),
        "p90_s": float(np.percentile(values, 90)),
        "repeats": int(values.size),
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table: the header, its rule, one line per row (a row may have fewer cells)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
