"""`run_parity`: replays every case of a reference set through the runner of its kind."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from seem_ros.model.tokenizer import ClipTokenizer
from seem_ros.parity.grounding import run_grounding, run_text_embeddings
from seem_ros.parity.interactive import run_interactive_loop, run_spatial, run_spatial_memory
from seem_ros.parity.panoptic import run_panoptic
from seem_ros.parity.reference import ReferenceSet
from seem_ros.parity.referring import run_referring_image
from seem_ros.parity.report import CaseRows, ParityRow, guess_stage


def run_parity(directory: str | Path, tokenizer: ClipTokenizer | None = None) -> list[ParityRow]:
    """Compare this package with every tensor of the reference set in `directory`.

    tokenizer: the CLIP tokenizer to use (default `ClipTokenizer()`, built offline on first use).
    Returns one row per stored tensor (and per scalar result of case.json that is checked), in case order.
    Raises CheckpointError if the weights do not load strictly. The global RNG state is restored afterwards.
    """
    directory = Path(directory)
    rows: list[ParityRow] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        reference = ReferenceSet(directory, tokenizer)
        for case_name in reference.index["cases"]:
            kind = reference.index["case_kinds"].get(case_name, "")
            folder = directory / case_name
            case = json.loads((folder / "case.json").read_text(encoding="utf-8"))
            stored = load_file(folder / "tensors.safetensors")
            report = CaseRows(reference.name, case_name, stored)
            runner = _runner_for(kind)
            try:
                if runner is None:
                    for name in stored:
                        report.failed(name, guess_stage(name), f"no check: unknown case kind {kind!r}")
                else:
                    runner(reference, case, report)
            except Exception as error:  # one broken case must not hide the others
                report.rows.append(
                    ParityRow(
                        reference.name,
                        case_name,
                        "decoder",
                        "(case)",
                        math.inf,
                        "-",
                        False,
                        f"{type(error).__name__}: {error}",
                    )
                )
            rows.extend(report.rows)
            rows.extend(report.unchecked())
    return rows


def _runner_for(kind: str) -> Callable[[ReferenceSet, dict, CaseRows], None] | None:
    runners = {
        "panoptic": run_panoptic,
        "text_embeddings": run_text_embeddings,
        "grounding": run_grounding,
        "spatial": run_spatial,
        "spatial_memory": run_spatial_memory,
        "interactive_loop": run_interactive_loop,
        "refimg": run_referring_image,
    }
    if kind in runners:
        return runners[kind]
    if "panoptic" in kind or "vocab" in kind:
        return run_panoptic
    return None
