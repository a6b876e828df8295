"""Rows of a parity report: comparisons of one case's tensors with the official ones (tolerances, inputs,
cross-checks), and the printed table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

FEATURE_ATOL = 1e-4


FEATURE_RTOL = 1e-4


LOGIT_ATOL = 1e-3


THRESHOLD_MARGIN = 1e-5


CROSS_CHECK = "cross-check (informational)"


STAGES = ("backbone", "pixel_decoder", "text", "decoder", "postprocess", "prompt", "rng")


@dataclass
class ParityRow:
    """One compared tensor.

    model: the reference model's name. case: the case folder. stage: one of `STAGES`. tensor: the stored
    tensor's name (or `case.json:<key>` for a scalar result). max_abs_error: largest |ours - official|
    (for thresholded masks: 1.0 if any pixel differs). tolerance: the rule applied. ok: within it.
    note: details (differing pixel counts, ties, why a check failed).
    """

    model: str
    case: str
    stage: str
    tensor: str
    max_abs_error: float
    tolerance: str
    ok: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        if not math.isfinite(row["max_abs_error"]):
            row["max_abs_error"] = str(row["max_abs_error"])
        return row


class CaseRows:
    """Collects the rows of one case and tracks which stored tensors were checked."""

    def __init__(self, model: str, case: str, stored: Mapping[str, Tensor]) -> None:
        self.model = model
        self.case = case
        self.stored = stored
        self.rows: list[ParityRow] = []
        self.checked: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.stored

    def _add(self, name: str, stage: str, error: float, tolerance: str, ok: bool, note: str = "") -> None:
        self.checked.add(name)
        self.rows.append(ParityRow(self.model, self.case, stage, name, error, tolerance, ok, note))

    def failed(self, name: str, stage: str, note: str) -> None:
        if self.has(name):
            self._add(name, stage, math.inf, "-", False, note)

    def close(self, name: str, stage: str, actual: Tensor | None, logit_scaled: bool = False) -> None:
        """Float comparison: atol 1e-3 for logit-scale-carrying tensors, else atol 1e-4 + rtol 1e-4."""
        if not self.has(name):
            return
        atol, rtol = (LOGIT_ATOL, 0.0) if logit_scaled else (FEATURE_ATOL, FEATURE_RTOL)
        tolerance = f"atol {atol:g}" + (f" rtol {rtol:g}" if rtol else "")
        if actual is None:
            self._add(name, stage, math.inf, tolerance, False, "not produced")
            return
        error, ok, note = _compare_close(actual, self.stored[name], atol, rtol)
        self._add(name, stage, error, tolerance, ok, note)

    def exact(self, name: str, stage: str, actual: Tensor | None, note: str = "") -> None:
        if not self.has(name):
            return
        if actual is None:
            self._add(name, stage, math.inf, "exact", False, "not produced")
            return
        error, ok, detail = _compare_exact(actual, self.stored[name])
        self._add(name, stage, error, "exact", ok, "; ".join(part for part in (detail, note) if part))

    def binary(self, name: str, stage: str, actual: Tensor, margin: Tensor) -> None:
        """Thresholded output. margin: (same shape) our deciding value minus its threshold; a pixel may
        differ from the official one only where |margin| <= THRESHOLD_MARGIN."""
        if not self.has(name):
            return
        error, ok, note = _compare_binary(actual, self.stored[name], margin)
        self._add(name, stage, error, f"exact (near-threshold {THRESHOLD_MARGIN:g})", ok, note)

    def given(self, name: str, stage: str, note: str) -> None:
        """An input used as stored (nothing of ours produces it); every output depending on it is checked."""
        if self.has(name):
            self._add(name, stage, 0.0, "input", True, note)

    def cross_check(self, name: str, stage: str, derived: Tensor, source: str) -> None:
        """An informational row comparing the stored input `name` with our re-derivation of it from `source`
        (never a failure: the stored tensor is the input)."""
        error, _, differing = _compare_exact(derived, self.stored[name])
        note = f"{differing}; the stored tensor is the input" if differing else "equal to the stored input"
        row = ParityRow(self.model, self.case, stage, f"{name} <- {source}", error, CROSS_CHECK, True, note)
        self.rows.append(row)

    def input(
        self, name: str, stage: str, derived: Tensor | None, source: str, official_computation: bool = False
    ) -> Tensor:
        """The input `name`: the stored tensor when the case has one, else `derived`.

        derived: our derivation of it from the case's description (None: the case describes none), made from
        `source`. official_computation: the derivation reproduces an official computation (a click sampler,
        padding), so it is compared exactly; otherwise (a re-drawing, a file) it is a cross-check row.
        Raises ValueError when the case neither stores nor describes the input.
        """
        if not self.has(name):
            if derived is None:
                raise ValueError(f"case {self.case} stores no {name} and describes none")
            return derived
        stored = self.stored[name]
        if derived is None:
            self.given(name, stage, "input, used as stored (the case describes no other source)")
        elif official_computation:
            self.exact(name, stage, derived.to(stored.dtype), f"from {source}")
        else:
            self.given(name, stage, "input, used as stored")
            self.cross_check(name, stage, derived.to(stored.dtype), source)
        return stored

    def selected_query(self, name: str, actual: Tensor, sample_index: Tensor) -> None:
        """Selected spatial query per prompt, equal up to duplicated spatial queries.

        actual: our selection, any shape with the stored element count. sample_index: (3n,) the object
        query each spatial query copies: two entries with the same value are identical queries.
        """
        if not self.has(name):
            return
        expected = self.stored[name]
        if actual.numel() != expected.numel():
            self._add(name, "postprocess", math.inf, "exact up to ties", False, _shape_note(actual, expected))
            return
        ties, wrong = 0, 0
        for ours, official in zip(actual.flatten().tolist(), expected.flatten().tolist(), strict=True):
            if ours == official:
                continue
            if sample_index[ours] == sample_index[official]:
                ties += 1
            else:
                wrong += 1
        note = f"{ties} tie(s) between duplicated spatial queries" if ties else ""
        if wrong:
            note = f"{wrong} prompt(s) select another query; " + note
        self._add(name, "postprocess", float(ties + wrong > 0), "exact up to ties", wrong == 0, note)

    def unchecked(self) -> list[ParityRow]:
        return [
            ParityRow(self.model, self.case, guess_stage(name), name, math.inf, "-", False, "no check")
            for name in self.stored
            if name not in self.checked
        ]


def _shape_note(actual: Tensor, expected: Tensor) -> str:
    return f"shape {tuple(actual.shape)} != official {tuple(expected.shape)}"


def _compare_close(actual: Tensor, expected: Tensor, atol: float, rtol: float) -> tuple[float, bool, str]:
    if actual.shape != expected.shape:
        return math.inf, False, _shape_note(actual, expected)
    ours = actual.detach().cpu().double()
    official = expected.double()
    same_infinity = torch.isinf(official) & (ours == official)
    compared = ~same_infinity
    if not (torch.isfinite(ours[compared]).all() and torch.isfinite(official[compared]).all()):
        return math.inf, False, "non-finite values differ"
    difference = (ours - official).abs()[compared]
    error = float(difference.max()) if difference.numel() else 0.0
    within = difference <= atol + rtol * official.abs()[compared]
    outside = int((~within).sum())
    note = f"{outside} of {within.numel()} elements outside" if outside else ""
    return error, outside == 0, note


def _compare_exact(actual: Tensor, expected: Tensor) -> tuple[float, bool, str]:
    if actual.shape != expected.shape:
        return math.inf, False, _shape_note(actual, expected)
    difference = (actual.detach().cpu().double() - expected.double()).abs()
    error = float(difference.max()) if difference.numel() else 0.0
    differing = int((difference > 0).sum())
    return error, differing == 0, f"{differing} elements differ" if differing else ""


def _compare_binary(actual: Tensor, expected: Tensor, margin: Tensor) -> tuple[float, bool, str]:
    if actual.shape != expected.shape:
        return math.inf, False, _shape_note(actual, expected)
    if actual.dtype == torch.bool:
        if not ((expected == 0) | (expected == 1)).all():
            return math.inf, False, "official tensor is not binary"
        differing = actual.cpu() != expected.bool()
    else:
        differing = actual.cpu().to(expected.dtype) != expected
    count = int(differing.sum())
    if count == 0:
        return 0.0, True, ""
    far = int((differing & (margin.detach().cpu().abs() > THRESHOLD_MARGIN)).sum())
    if far == 0:
        return 1.0, True, f"{count} pixels differ, all within {THRESHOLD_MARGIN:g} of the threshold"
    return 1.0, False, f"{count} pixels differ, {far} of them not near the threshold"


def guess_stage(name: str) -> str:
    """The stage a stored tensor belongs to, from its name (for rows of tensors no check covers)."""
    base = name.split("round")[-1].lstrip("0123456789_").removeprefix("image_b_").removeprefix("b_")
    if "rng_seed" in base or "sample_index" in base or "memory_slot_prompt_index" in base:
        return "rng"
    if "prompt" in base or "query_pos_mask" in base or "query_neg_mask" in base or "gt_mask" in base:
        return "prompt"
    if base.startswith(("pred_", "aux_", "decoder_", "ref_")):
        return "decoder"
    if base.startswith(("image", "res", "backbone")):
        return "backbone"
    if "features" in base or "pixel_decoder" in base:
        return "pixel_decoder"
    if any(key in base for key in ("ids", "attention_mask", "emb", "grounding_tokens", "logit_scale")):
        return "text"
    return "postprocess"


def scalar_row(report: CaseRows, key: str, ours: Any, official: Any) -> None:
    ok = json.dumps(ours) == json.dumps(official)
    report.rows.append(
        ParityRow(
            report.model,
            report.case,
            "postprocess",
            f"case.json:{key}",
            float(not ok),
            "exact",
            ok,
            "" if ok else f"ours {ours}",
        )
    )


TABLE_COLUMNS = ("model", "case", "stage", "tensor", "max abs err", "tolerance", "ok")


def format_table(rows: Sequence[ParityRow]) -> str:
    """A fixed-width text table of the rows (notes after the ok column), then a one-line summary."""
    cells = [
        (
            row.model,
            row.case,
            row.stage,
            row.tensor,
            f"{row.max_abs_error:.2e}" if math.isfinite(row.max_abs_error) else "-",
            row.tolerance,
            "ok" if row.ok else "FAILED",
            row.note,
        )
        for row in rows
    ]
    widths = [max([len(title)] + [len(cell[i]) for cell in cells]) for i, title in enumerate(TABLE_COLUMNS)]
    lines = ["  ".join(title.ljust(width) for title, width in zip(TABLE_COLUMNS, widths, strict=True))]
    for cell in cells:
        text = "  ".join(value.ljust(width) for value, width in zip(cell[:-1], widths, strict=True))
        lines.append(f"{text}  {cell[-1]}".rstrip())
    lines.append(summary(rows))
    return "\n".join(lines)


def summary(rows: Sequence[ParityRow]) -> str:
    failed = sum(not row.ok for row in rows)
    cases = len({(row.model, row.case) for row in rows})
    verdict = "all ok" if failed == 0 else f"{failed} FAILED"
    return f"{len(rows)} rows over {cases} cases: {verdict}"


def rows_to_json(rows: Sequence[ParityRow]) -> list[dict[str, Any]]:
    return [row.to_json() for row in rows]
