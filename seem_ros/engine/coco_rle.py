"""COCO run-length encoding of binary masks (the compressed string form of the COCO API).

Runs are counted over the mask flattened column-major (Fortran order), starting with a run of zeros. The
string form stores each run (from the fourth on, as the difference to the run two before) in 5-bit groups,
low bits first, offset by 48, with bit 0x20 marking that another group follows.
"""

from __future__ import annotations

import numpy as np


def run_lengths(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of an (H, W) binary mask, starting with zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(boundaries).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return counts


def counts_to_string(counts: list[int]) -> str:
    characters = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            if more:
                group |= 0x20
            characters.append(chr(group + 48))
    return "".join(characters)


def string_to_counts(text: str) -> list[int]:
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("truncated COCO RLE string")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"invalid character {text[position]!r} in a COCO RLE string")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def encode(mask: np.ndarray) -> dict[str, object]:
    """{"size": [H, W], "counts": str}: a COCO RLE of an (H, W) binary mask."""
    height, width = mask.shape
    return {"size": [int(height), int(width)], "counts": counts_to_string(run_lengths(mask))}


def decode(rle: dict[str, object]) -> np.ndarray:
    """The (H, W) bool mask of a COCO RLE (string or list counts). Raises ValueError if inconsistent."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    counts = string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(count < 0 for count in counts) or sum(counts) != height * width:
        raise ValueError(
            f"COCO RLE runs sum to {sum(counts)}, expected {height * width} for {height}x{width}"
        )
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((height, width), order="F")
