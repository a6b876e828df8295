"""Official-parity runner: reproduce every tensor of a reference set written by the official SEEM v1 code.

A reference set is a folder with `index.json` (model file, config yaml, images, cases and the kind of each
case), the model's merged official config (yaml), its weights (official key names), and one folder per case
holding `case.json` (the official call sequence, its inputs and scalar results) and `tensors.safetensors`
(inputs, intermediates and outputs of the official run). `run_parity` rebuilds the model from the yaml,
loads the weights strictly, replays every case through this package's own API and compares EVERY stored
tensor. A stored tensor that no check covers is reported as a failure, never skipped.

Inputs: a tensor the set stores is the input, used as stored. Where the case also describes how it was made
(an image file, prompt shapes drawn with OpenCV, a ground-truth polygon, a mask image file), the runner
re-derives it and reports the comparison as an informational cross-check row (`cross-check` tolerance,
always ok): a drawing library may move a boundary pixel between versions, which says nothing about the
model. Inputs that the official evaluation computes (the box click, the simulated user's corrective clicks,
padding) are reproduced and compared exactly, and the stored tensor is still what the next step receives.
A case may give an input only as a stored tensor; it is then reported as given.

Randomness: spatial flows draw random numbers inside the decoder. The runner seeds the default CPU generator
with the stored seed right before each decoder call (as the official recorder did) and passes no generator,
so the draws happen in the official order and are compared like any other tensor.

Tolerances (fp32, CPU; the reference README's suggestions, never loosened here):
- features, embeddings, probabilities and mask logits: |ours - official| <= 1e-4 + 1e-4 * |official|;
- tensors that carry the logit scale (class logits, grounding similarities, the scale itself): atol 1e-3;
- integer tensors, token ids, random draws, prompt masks: exact;
- thresholded masks and id maps: exact, except pixels whose deciding value is within 1e-5 of the threshold;
  the differing pixels are counted and each is checked against that margin;
- the selected spatial query: exact up to ties between duplicated spatial queries (copies of the same
  object query, identical in exact arithmetic);
- instances: compared as a set keyed by `instances_flat_index` (the official top-k order is unspecified).

Deliberate differences from the official code (each has a test in test/test_official_differences.py):
- The official `evaluate_referring_image` takes a mutable default `extra={}` and writes into it, so the
  prompt of one call leaks into later calls. Here every call is a pure function of its arguments.
- The official v1 referring-image stage 2 raises UnboundLocalError (`src_spatial_indices` is never set when
  reference tokens are given). Here the reference tokens carry their prompt index, so stage 2 works; the
  `refimg` case holds the official math with that two-line fix.
- The official loader skips missing, unexpected and mis-shaped checkpoint keys silently and loads with
  strict=False. Here loading is strict and every mismatch is named.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from seem_ros.engine import prompt_raster
from seem_ros.model import postprocess
from seem_ros.model.checkpoint import load_weights, read_checkpoint
from seem_ros.model.decoder import DecoderOutput, GroundingTokens
from seem_ros.model.features import PixelFeatures
from seem_ros.model.official_config import build_from_official_config, load_official_config
from seem_ros.model.seem import SEEM, SpatialSelection
from seem_ros.model.tokenizer import ClipTokenizer
from seem_ros.model.vocabulary import BACKGROUND_CLASS, PROMPT_TEMPLATES, templated_sentences

FEATURE_ATOL = 1e-4
FEATURE_RTOL = 1e-4
LOGIT_ATOL = 1e-3
THRESHOLD_MARGIN = 1e-5
CROSS_CHECK = "cross-check (informational)"
SENTENCE_CHUNK = 256

STAGES = ("backbone", "pixel_decoder", "text", "decoder", "postprocess", "prompt", "rng")

PANOPTIC_TENSORS = (
    "image_uint8_chw",
    "image_padded_normalized",
    "res2",
    "res3",
    "res4",
    "res5",
    "backbone_vit_tokens",
    "pixel_decoder_input_proj_0",
    "pixel_decoder_input_proj_1",
    "pixel_decoder_input_proj_2",
    "mask_features",
    "transformer_encoder_features",
    "multi_scale_features_0",
    "multi_scale_features_1",
    "multi_scale_features_2",
    "class_text_embeddings",
    "pred_logits",
    "pred_masks",
    "aux_pred_logits",
    "aux_pred_masks",
    "decoder_class_embed_per_layer",
    "decoder_mask_embed_per_layer",
    "sem_seg",
    "panoptic_seg",
    "instances_pred_masks",
    "instances_scores",
    "instances_pred_classes",
    "instances_flat_index",
    "instances_query_index",
    "instances_class_prob",
    "instances_pred_boxes",
)
"""Every tensor a panoptic case may store; a vocabulary switched at runtime repeats some with an affix."""


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


class _CaseRows:
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
            ParityRow(self.model, self.case, _guess_stage(name), name, math.inf, "-", False, "no check")
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


def _guess_stage(name: str) -> str:
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


def _hw(values: Sequence[int]) -> tuple[int, int]:
    return int(values[0]), int(values[1])


@dataclass
class _Spatial:
    """Our result of one spatial decoder call."""

    output: DecoderOutput
    selection: SpatialSelection


class _ReferenceSet:
    """The model of a reference set, with the features and text embeddings its cases share."""

    def __init__(self, directory: Path, tokenizer: ClipTokenizer | None) -> None:
        self.directory = directory
        self.index = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        self.name = Path(self.index["model_file"]).stem
        config = load_official_config(directory / self.index["config_yaml"])
        self.model: SEEM = build_from_official_config(config).eval()
        load_weights(self.model, read_checkpoint(directory / self.index["model_file"]), self.name)
        self.language = self.model.language_encoder
        self.language.tokenizer = tokenizer if tokenizer is not None else ClipTokenizer()
        self._features: dict[bytes, tuple[Tensor, PixelFeatures]] = {}
        self._class_embeddings: dict[tuple[str, ...], Tensor] = {}

    @property
    def tokenizer(self) -> ClipTokenizer:
        return self.language.tokenizer

    def image_file(self, relative: str) -> Tensor:
        """(3, h, w) uint8 RGB from a PNG of the set."""
        bgr = cv2.imread(str(self.directory / relative), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"image {relative} not found in {self.directory}")
        return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1).contiguous()

    def encode(self, image: Tensor) -> tuple[Tensor, PixelFeatures]:
        """image: (3, h, w) uint8. Returns the padded normalised image (1, 3, H', W') and its features."""
        key = str(tuple(image.shape)).encode() + hashlib.sha256(image.numpy().tobytes()).digest()
        if key not in self._features:
            padded = self.model.preprocess(image[None])
            self._features[key] = (padded, self.model.encode_image(padded))
        return self._features[key]

    def class_embeddings(self, vocabulary: Sequence[str]) -> Tensor:
        """(K+1, D) for the vocabulary (background appended unless it is already last)."""
        names = tuple(vocabulary)
        if not names or names[-1] != BACKGROUND_CLASS:
            names = (*names, BACKGROUND_CLASS)
        if names not in self._class_embeddings:
            self._class_embeddings[names] = self.language.class_embeddings(list(names))
        return self._class_embeddings[names]

    def padded_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self.model.padded_size(*image_size)

    def spatial(
        self,
        features: PixelFeatures,
        class_embeddings: Tensor,
        seed: int | None,
        **prompts: Any,
    ) -> _Spatial:
        """One spatial decoder call in parity mode: the default generator reseeded with the official seed
        right before it (None: continue the generator, as the official multi-round loop does)."""
        if seed is not None:
            torch.manual_seed(seed)
        output = self.model.decode(features, class_embeddings, generator=None, **prompts)
        return _Spatial(output, self.model.select_spatial_masks(output))


def run_parity(directory: str | Path, tokenizer: ClipTokenizer | None = None) -> list[ParityRow]:
    """Compare this package with every tensor of the reference set in `directory`.

    tokenizer: the CLIP tokenizer to use (default `ClipTokenizer()`, built offline on first use).
    Returns one row per stored tensor (and per scalar result of case.json that is checked), in case order.
    Raises CheckpointError if the weights do not load strictly. The global RNG state is restored afterwards.
    """
    directory = Path(directory)
    rows: list[ParityRow] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        reference = _ReferenceSet(directory, tokenizer)
        for case_name in reference.index["cases"]:
            kind = reference.index["case_kinds"].get(case_name, "")
            folder = directory / case_name
            case = json.loads((folder / "case.json").read_text(encoding="utf-8"))
            stored = load_file(folder / "tensors.safetensors")
            report = _CaseRows(reference.name, case_name, stored)
            runner = _runner_for(kind)
            try:
                if runner is None:
                    for name in stored:
                        report.failed(name, _guess_stage(name), f"no check: unknown case kind {kind!r}")
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


def _runner_for(kind: str) -> Callable[[_ReferenceSet, dict, _CaseRows], None] | None:
    runners = {
        "panoptic": _run_panoptic,
        "text_embeddings": _run_text_embeddings,
        "grounding": _run_grounding,
        "spatial": _run_spatial,
        "spatial_memory": _run_spatial_memory,
        "interactive_loop": _run_interactive_loop,
        "refimg": _run_referring_image,
    }
    if kind in runners:
        return runners[kind]
    if "panoptic" in kind or "vocab" in kind:
        return _run_panoptic
    return None


# ------------------------------------------------------------------------------------------------ images


def _case_image(report: _CaseRows, reference: _ReferenceSet, name: str, file: str | None) -> Tensor:
    """The model-input image: the stored uint8 CHW tensor `name` if the case has it (cross-checked against
    the image file when one is named), else the image file."""
    from_file = reference.image_file(file) if file else None
    return report.input(name, "backbone", from_file, file or "")


def _plain(name: str) -> str:
    return name


def _check_features(
    report: _CaseRows, padded: Tensor, features: PixelFeatures, full: Callable[[str], str] = _plain
) -> None:
    """The padded input and the pixel decoder outputs; `full` maps a tensor name to its stored name."""
    report.close(full("image_padded_normalized"), "backbone", padded)
    report.close(full("mask_features"), "pixel_decoder", features.mask_features)
    report.close(full("transformer_encoder_features"), "pixel_decoder", features.transformer_encoder_features)
    for level, feature_map in enumerate(features.multi_scale_features):
        report.close(full(f"multi_scale_features_{level}"), "pixel_decoder", feature_map)


def _check_backbone(
    reference: _ReferenceSet, report: _CaseRows, padded: Tensor, full: Callable[[str], str] = _plain
) -> None:
    """Backbone outputs, SAM-ViT's trunk tokens and the deformable pixel decoder's input projections,
    recomputed from the padded image (the cached features come from the same modules)."""
    model = reference.model
    levels = ("res2", "res3", "res4", "res5")
    if any(report.has(full(name)) for name in levels):
        backbone_features = model.backbone(padded)
        for name in levels:
            report.close(full(name), "backbone", backbone_features.get(name))
    if report.has(full("backbone_vit_tokens")):
        forward_tokens = getattr(model.backbone, "forward_tokens", None)
        report.close(
            full("backbone_vit_tokens"), "backbone", forward_tokens(padded) if forward_tokens else None
        )
    wanted = [level for level in range(8) if report.has(full(f"pixel_decoder_input_proj_{level}"))]
    if wanted:
        projections = _input_projections(model, padded)
        for level in wanted:
            projection = projections[level] if level < len(projections) else None
            report.close(full(f"pixel_decoder_input_proj_{level}"), "pixel_decoder", projection)


def _input_projections(model: SEEM, padded: Tensor) -> list[Tensor]:
    """Outputs of the pixel decoder's per-level input projections (deformable decoder: res5, res4, res3),
    caught with forward hooks during one pixel-decoder pass."""
    projections = getattr(model.sem_seg_head.pixel_decoder, "input_proj", None)
    if not isinstance(projections, torch.nn.ModuleList):
        return []
    outputs: list[Tensor] = []
    handles = [
        projection.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
        for projection in projections
    ]
    try:
        model.encode_image(padded)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


# ------------------------------------------------------------------------------------------------ panoptic


def _run_panoptic(reference: _ReferenceSet, case: dict, report: _CaseRows) -> None:
    """Generic segmentation of one image, once per vocabulary stored in the case (a vocabulary switched at
    runtime stores its outputs under an affix, e.g. `vocab2_pred_logits`)."""
    image = _case_image(report, reference, "image_uint8_chw", case.get("image_file"))
    padded, features = reference.encode(image)
    for prefix, suffix in _vocabulary_variants(report):

        def full(base: str, prefix: str = prefix, suffix: str = suffix) -> str:
            return prefix + base + suffix

        if prefix or suffix:
            report.exact(full("image_uint8_chw"), "backbone", image)
        _check_features(report, padded, features, full)
        _check_backbone(reference, report, padded, full)
        _check_panoptic_variant(reference, case, report, features, image, (prefix, suffix))


def _vocabulary_variants(report: _CaseRows) -> list[tuple[str, str]]:
    """(prefix, suffix) of every set of panoptic outputs in the case: ("", "") for the plain names, plus one
    entry per affix under which known names are repeated (a vocabulary switched at runtime)."""
    known = set(PANOPTIC_TENSORS)
    variants = [("", "")]
    for name in report.stored:
        if name in known:
            continue
        for base in sorted(known, key=len, reverse=True):
            if name.endswith(base) and len(name) > len(base):
                affix = (name[: -len(base)], "")
            elif name.startswith(base) and len(name) > len(base):
                affix = ("", name[len(base) :])
            else:
                continue
            if affix not in variants:
                variants.append(affix)
            break
    return variants


def _digits(text: str) -> str:
    return "".join(character for character in text if character.isdigit())


def _setting(case: dict, tag: str, key: str) -> tuple[Any, str] | None:
    """Find a per-vocabulary setting (e.g. "vocabulary", "thing_class_ids") of the outputs tagged `tag` (the
    tensor-name affix without separators; "" = the plain outputs). Returns (value, where it was found).

    The format of a case with several vocabularies is not fixed, so the lookup tries, in order: keys joining
    tag and setting (`vocab2_vocabulary`, `vocabulary_vocab2`, ...); a dict named after the tag; a dict that
    names the tag among its values (e.g. its tensor prefix); any key holding both names; then a guess: the
    key naming the setting whose digits are the tag's, the only other key naming it, or the tag's entry
    (1-based digit) in a list under the setting's name. Where the plain setting exists, a found value must
    be of the same kind (e.g. a list of strings for a vocabulary).
    """
    if not tag:
        return (case[key], key) if key in case else None
    for value, where in _setting_candidates(case, tag, key):
        if key not in case or _same_kind(value, case[key]):
            return value, where
    return None


def _setting_candidates(case: dict, tag: str, key: str) -> Iterator[tuple[Any, str]]:
    for name in (f"{tag}_{key}", f"{key}_{tag}", f"{tag}{key}", f"{key}{tag}"):
        if name in case:
            yield case[name], name
    for name, value in case.items():
        if isinstance(value, dict) and tag in name and key in value:
            yield value[key], f"{name}.{key}"
    for container_name, container in case.items():
        entries = container if isinstance(container, list) else [container]
        for position, entry in enumerate(entries):
            if (
                isinstance(entry, dict)
                and key in entry
                and any(isinstance(value, str) and value.strip("_") == tag for value in entry.values())
            ):
                yield entry[key], f"{container_name}[{position}].{key}"
    for name, value in case.items():
        if tag in name and key in name:
            yield value, name
    plural = key[:-1] + "ies" if key.endswith("y") else key + "s"
    others = [name for name in case if (key in name or plural in name) and name != key]
    digits = _digits(tag)
    for name in others:
        if digits and _digits(name) == digits:
            yield case[name], f"{name} (guessed)"
    if len(others) == 1:
        yield case[others[0]], f"{others[0]} (guessed)"
    for name in others:
        value = case[name]
        if digits and _is_list_of_lists(value) and 1 <= int(digits) <= len(value):
            yield value[int(digits) - 1], f"{name}[{int(digits) - 1}] (guessed)"


def _same_kind(value: Any, reference: Any) -> bool:
    """Same JSON kind: both numbers, both strings, both dicts, or both lists with the same kind of entries."""
    if isinstance(reference, bool) or isinstance(value, bool):
        return isinstance(reference, bool) and isinstance(value, bool)
    if isinstance(reference, int | float):
        return isinstance(value, int | float)
    if isinstance(reference, list):
        return isinstance(value, list) and (not value or not reference or _same_kind(value[0], reference[0]))
    return type(value) is type(reference)


def _is_list_of_lists(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(entry, list | dict) for entry in value)


def _check_panoptic_variant(
    reference: _ReferenceSet,
    case: dict,
    report: _CaseRows,
    features: PixelFeatures,
    image: Tensor,
    affix: tuple[str, str],
) -> None:
    prefix, suffix = affix
    tag = (prefix + suffix).strip("_")
    names = [prefix + base + suffix for base in PANOPTIC_TENSORS if report.has(prefix + base + suffix)]
    if not names:
        return

    def full(base: str) -> str:
        return prefix + base + suffix

    vocabulary = _setting(case, tag, "vocabulary")
    things = _setting(case, tag, "thing_class_ids") or _things_from_metadata(case, tag)
    if vocabulary is None or things is None:
        missing = "vocabulary" if vocabulary is None else "thing_class_ids"
        for name in names:
            report.failed(
                name,
                _guess_stage(prefix and name[len(prefix) :] or name),
                f"no {missing} found in case.json for the outputs tagged {tag!r} ({', '.join(names)})",
            )
        return
    note = "" if not tag else f"vocabulary from case.json:{vocabulary[1]}"
    text = reference.class_embeddings(vocabulary[0])
    report.close(full("class_text_embeddings"), "text", text)
    output = reference.model.decode(features, text)
    final = output.final
    report.close(full("pred_logits"), "decoder", final.object_logits, logit_scaled=True)
    report.close(full("pred_masks"), "decoder", final.object_masks)
    earlier = output.predictions[:-1]
    report.close(
        full("aux_pred_logits"), "decoder", torch.stack([p.object_logits for p in earlier]), logit_scaled=True
    )
    report.close(full("aux_pred_masks"), "decoder", torch.stack([p.object_masks for p in earlier]))
    report.close(
        full("decoder_class_embed_per_layer"),
        "decoder",
        torch.stack([p.object_class_embeddings for p in output.predictions]),
    )
    report.close(
        full("decoder_mask_embed_per_layer"),
        "decoder",
        torch.stack([p.object_mask_embeddings for p in output.predictions]),
    )

    image_size = _hw(image.shape[-2:])
    output_size = _hw(case.get("output_hw", image_size))
    padded_size = reference.padded_size(image_size)
    class_logits = final.object_logits[0]
    mask_logits = postprocess.resize_mask_logits(final.object_masks[0], padded_size, image_size, output_size)
    report.close(full("sem_seg"), "postprocess", postprocess.semantic_inference(class_logits, mask_logits))

    thresholds = {
        key: _setting(case, tag, key) or _setting(case, "", key)
        for key in ("object_mask_threshold", "overlap_threshold", "detections_per_image")
    }
    absent = [key for key, value in thresholds.items() if value is None]
    if absent:
        for base in ("panoptic_seg", *[b for b in PANOPTIC_TENSORS if b.startswith("instances_")]):
            report.failed(full(base), "postprocess", f"case.json gives no {', '.join(absent)}")
        return
    object_threshold = float(thresholds["object_mask_threshold"][0])
    panoptic = postprocess.panoptic_inference(
        class_logits,
        mask_logits,
        things[0],
        object_threshold,
        float(thresholds["overlap_threshold"][0]),
    )
    report.binary(
        full("panoptic_seg"),
        "postprocess",
        panoptic.panoptic_seg,
        _panoptic_margin(class_logits, mask_logits, object_threshold),
    )
    _check_segments(report, case, tag, panoptic)
    instances = postprocess.instance_inference(
        class_logits, mask_logits, int(thresholds["detections_per_image"][0]), things[0]
    )
    _check_instances(report, full, instances, mask_logits)
    if note:
        for row in report.rows:
            if row.tensor in names and not row.note:
                row.note = note


def _things_from_metadata(case: dict, tag: str) -> tuple[list[int], str] | None:
    """Thing classes from a detectron2-style metadata entry (contiguous ids of the thing dataset ids)."""
    metadata = _setting(case, tag, "metadata")
    if metadata is None or not isinstance(metadata[0], dict):
        return None
    mapping = metadata[0].get("thing_dataset_id_to_contiguous_id")
    if not isinstance(mapping, dict):
        return None
    return sorted(
        int(value) for value in mapping.values()
    ), f"{metadata[1]}.thing_dataset_id_to_contiguous_id"


def _panoptic_margin(class_logits: Tensor, mask_logits: Tensor, object_threshold: float) -> Tensor:
    """Per pixel, how far the panoptic decision is from flipping: the smallest |mask logit| of a kept
    query (its sigmoid >= 0.5 test) and the gap between the two best kept scores (the pixel's winner)."""
    probabilities, labels = class_logits.softmax(-1).max(-1)
    keep = labels.ne(class_logits.shape[-1] - 1) & (probabilities > object_threshold)
    if not keep.any():
        return torch.full(mask_logits.shape[-2:], math.inf)
    kept_logits = mask_logits[keep]
    scores = probabilities[keep].view(-1, 1, 1) * kept_logits.sigmoid()
    margin = kept_logits.abs().min(0).values
    if scores.shape[0] > 1:
        best_two = scores.topk(2, dim=0).values
        margin = torch.minimum(margin, best_two[0] - best_two[1])
    return margin


def _check_segments(report: _CaseRows, case: dict, tag: str, panoptic: postprocess.PanopticResult) -> None:
    """The scalar results of case.json that describe the panoptic segments."""
    ours = {
        "segments_info": [
            {"id": s.segment_id, "isthing": s.is_thing, "category_id": s.category_id}
            for s in panoptic.segments
        ],
        "segment_source_queries": {str(s.segment_id): s.source_queries for s in panoptic.segments},
        "kept_queries": panoptic.kept_queries,
        "queries_rejected_by_overlap_threshold": panoptic.overlap_rejected_queries,
    }
    for key, value in ours.items():
        found = _setting(case, tag, key)
        if found is None:
            continue
        ok = json.dumps(found[0], sort_keys=True) == json.dumps(value, sort_keys=True)
        note = "" if ok else f"ours {value}"
        report.rows.append(
            ParityRow(
                report.model,
                report.case,
                "postprocess",
                f"case.json:{found[1]}",
                float(not ok),
                "exact",
                ok,
                note,
            )
        )


def _check_instances(
    report: _CaseRows,
    full: Callable[[str], str],
    instances: postprocess.InstancePredictions,
    mask_logits: Tensor,
) -> None:
    """Instances as a set keyed by flat index; every other instance tensor in the official row order."""
    key = full("instances_flat_index")
    names = [full(base) for base in PANOPTIC_TENSORS if base.startswith("instances_")]
    if not report.has(key):
        for name in names:
            report.failed(
                name, "postprocess", "instances_flat_index is not stored: no key to match instances"
            )
        return
    official = report.stored[key].tolist()
    ours = instances.flat_indices.tolist()
    if sorted(ours) != sorted(official) or len(set(official)) != len(official):
        for name in names:
            report.failed(
                name, "postprocess", f"instance sets differ: ours {sorted(ours)}, official {sorted(official)}"
            )
        return
    order = torch.tensor([ours.index(flat) for flat in official], dtype=torch.long)
    report.exact(key, "postprocess", instances.flat_indices[order], "compared as a set")
    selected_logits = mask_logits[instances.query_indices[order]]
    report.binary(full("instances_pred_masks"), "postprocess", instances.masks[order], selected_logits)
    report.close(full("instances_scores"), "postprocess", instances.scores[order])
    report.exact(full("instances_pred_classes"), "postprocess", instances.classes[order])
    report.exact(full("instances_query_index"), "postprocess", instances.query_indices[order])
    report.close(full("instances_class_prob"), "postprocess", instances.class_probs[order])
    report.exact(
        full("instances_pred_boxes"), "postprocess", torch.zeros(len(official), 4), "v1 computes no boxes"
    )


# ------------------------------------------------------------------------------------------------ text


def _run_text_embeddings(reference: _ReferenceSet, case: dict, report: _CaseRows) -> None:
    language = reference.language
    vocabulary = list(case["vocabulary"])
    templates = list(case.get("templates", PROMPT_TEMPLATES))
    sentences = [sentence for name in vocabulary for sentence in templated_sentences(name, templates)]
    input_ids, attention_mask = reference.tokenizer(sentences)
    report.exact("template_input_ids", "text", input_ids)
    report.exact("template_attention_mask", "text", attention_mask)
    if report.has("template_embeddings_normalized"):
        embeddings = torch.cat(
            [language.encode_sentences(chunk, normalize=True) for chunk in input_ids.split(SENTENCE_CHUNK)]
        )
        report.close("template_embeddings_normalized", "text", embeddings)
    names = vocabulary if vocabulary[-1] == BACKGROUND_CLASS else [*vocabulary, BACKGROUND_CLASS]
    report.close("class_text_embeddings", "text", language.class_embeddings(names, templates))

    strings = list(case.get("strings", []))
    if strings:
        string_ids, string_mask = reference.tokenizer(strings)
        report.exact("strings_input_ids", "text", string_ids)
        report.exact("strings_attention_mask", "text", string_mask)
        report.close("strings_last_hidden_state", "text", language.lang_encoder(string_ids))
        token_embeddings, sentence_embeddings = language.encode_tokens(string_ids, string_mask)
        report.close("strings_token_emb", "text", token_embeddings)
        report.close("strings_class_emb", "text", sentence_embeddings)
        report.close("strings_class_emb_normalized", "text", language.encode_sentences(string_ids, True))
    report.close("logit_scale", "text", language.logit_scale, logit_scaled=True)


# ------------------------------------------------------------------------------------------------ grounding


def _run_grounding(reference: _ReferenceSet, case: dict, report: _CaseRows) -> None:
    image = _case_image(report, reference, "image_uint8_chw", case.get("image_file"))
    padded, features = reference.encode(image)
    _check_features(report, padded, features)
    language = reference.language
    input_ids, attention_mask = reference.tokenizer(list(case["texts"]))
    report.exact("input_ids", "text", input_ids)
    report.exact("attention_mask", "text", attention_mask)
    token_embeddings, sentence_embeddings = language.encode_tokens(input_ids, attention_mask)
    report.close("token_emb", "text", token_embeddings)
    report.close("class_emb", "text", sentence_embeddings)
    tokens = token_embeddings[attention_mask.bool()][:, None]
    padding = torch.zeros((1, tokens.shape[0]), dtype=torch.bool)
    report.close("grounding_tokens", "text", tokens)
    report.exact("grounding_nonzero_mask", "text", padding)

    text = reference.class_embeddings(case["vocabulary"])
    report.close("class_text_embeddings", "text", text)
    output = reference.model.decode(features, text, grounding=GroundingTokens(tokens, padding))
    final = output.final
    earlier = output.predictions[:-1]
    report.close("pred_gmasks", "decoder", final.grounding_masks)
    report.close("pred_gtexts", "decoder", final.grounding_class_embeddings)
    report.close("pred_logits", "decoder", final.object_logits, logit_scaled=True)
    report.close("aux_pred_gmasks", "decoder", torch.stack([p.grounding_masks for p in earlier]))
    report.close("aux_pred_gtexts", "decoder", torch.stack([p.grounding_class_embeddings for p in earlier]))

    similarity = language.grounding_similarity(final.grounding_class_embeddings[0], sentence_embeddings)
    report.close("similarity", "postprocess", similarity, logit_scaled=True)
    matched = postprocess.match_grounding_queries(similarity)
    report.exact("matched_query", "postprocess", matched)
    image_size = _hw(image.shape[-2:])
    output_size = _hw(case.get("output_hw", image_size))
    logits = postprocess.grounding_mask_logits(
        final.grounding_masks[0], matched, reference.padded_size(image_size), image_size, output_size
    )
    report.close("grounding_mask_logits", "postprocess", logits)
    report.binary("final_mask", "postprocess", logits > 0, logits)
    if "matched_query" in case:
        _scalar_row(report, "matched_query", matched.tolist(), case["matched_query"])


def _scalar_row(report: _CaseRows, key: str, ours: Any, official: Any) -> None:
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


# ------------------------------------------------------------------------------------------------ spatial


def _prompt_groups(shapes: list) -> list[list[prompt_raster.PromptShape]]:
    """Prompt geometry of case.json as groups of shapes, one group per prompt (a flat list of shapes is one
    prompt)."""
    if shapes and isinstance(shapes[0], dict):
        shapes = [shapes]
    return [[prompt_raster.prompt_shape_from_dict(shape) for shape in group] for group in shapes]


def _raster(case: dict, shapes: list, image_size: tuple[int, int]) -> Tensor:
    """(n, h, w) bool masks of prompt geometry given at the original resolution."""
    return prompt_raster.rasterize_prompts(_prompt_groups(shapes), _hw(case["original_hw"]), image_size)


def _spatial_prompts(
    reference: _ReferenceSet, case: dict, report: _CaseRows, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The padded (n, H', W') positive and negative masks the decoder gets in a one-round spatial case: the
    stored ones, each checked against what the case describes (demo sketch shapes, drawn again: a
    cross-check; the official evaluation box click: exact)."""
    positive = negative = None
    source, official = "", False
    if "box_xyxy_resized" in case:
        region = prompt_raster.box_region(case["box_xyxy_resized"], image_size)
        region = report.input("box_region_mask", "prompt", region[None], "box_xyxy_resized", True)
        positive = prompt_raster.region_click(region.bool())
        negative = torch.zeros_like(positive)
        source, official = "the official box click", True
    elif "prompt_shapes_original_res" in case:
        shapes = case["prompt_shapes_original_res"]
        positive = _raster(case, shapes["positive"], image_size)
        negative_shapes = shapes.get("negative") or [[] for _ in range(positive.shape[0])]
        negative = _raster(case, negative_shapes, image_size)
        source = "prompt_shapes_original_res, drawn with OpenCV " + cv2.__version__
    positive = report.input("prompt_pos_mask", "prompt", positive, source, official)
    negative = report.input("prompt_neg_mask", "prompt", negative, source, official)
    return _padded_prompt_inputs(reference, report, "", image_size, positive, negative)


def _padded_prompt_inputs(
    reference: _ReferenceSet,
    report: _CaseRows,
    prefix: str,
    image_size: tuple[int, int],
    positive: Tensor | None,
    negative: Tensor | None,
    source: str = "the prompt masks, padded",
) -> tuple[Tensor, Tensor]:
    """The decoder's (n, H', W') bool prompt masks `{prefix}spatial_query_{pos,neg}_mask`: stored ones are the
    input, compared exactly with ours (the (n, h, w) masks padded) where we have them."""
    padded_size = reference.padded_size(image_size)
    masks = []
    for sign, mask in (("pos", positive), ("neg", negative)):
        ours = None if mask is None else prompt_raster.pad_prompt_masks(mask.bool(), padded_size)[None]
        used = report.input(f"{prefix}spatial_query_{sign}_mask", "prompt", ours, source, True)
        masks.append(used[0].bool())
    return masks[0], masks[1]


def _seed(report: _CaseRows, name: str, case: dict) -> int | None:
    """The official seed set right before a decoder call (stored tensor, else case.json)."""
    if report.has(name):
        seed = int(report.stored[name].flatten()[0])
        if name in case and int(case[name]) != seed:
            report.failed(name, "rng", f"stored seed {seed} != case.json {name} {case[name]}")
        else:
            report.given(name, "rng", "seed of torch.manual_seed before the decoder call")
        return seed
    return int(case[name]) if name in case else None


def _check_spatial_round(
    reference: _ReferenceSet,
    report: _CaseRows,
    result: _Spatial,
    prefix: str,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> None:
    """Every tensor of one spatial decoder call, stored under `prefix` (e.g. "round2_" or "")."""
    output, selection = result.output, result.selection
    final = output.final
    tokens = output.spatial_tokens
    report.exact(f"{prefix}spatial_query_sample_index", "rng", output.spatial_query_index)
    if output.memory_slot_prompt_index:
        report.exact(f"{prefix}memory_slot_prompt_index", "rng", torch.stack(output.memory_slot_prompt_index))
    report.close(f"{prefix}pred_smasks", "decoder", final.spatial_masks)
    report.close(f"{prefix}pred_smaskembs", "decoder", final.spatial_mask_embeddings)
    report.close(f"{prefix}pred_pspatials", "decoder", tokens.mean_positive.transpose(0, 1))
    report.close(f"{prefix}pred_nspatials", "decoder", tokens.mean_negative.transpose(0, 1))
    report.close(f"{prefix}pred_stexts", "decoder", final.spatial_class_embeddings)
    report.close(f"{prefix}pred_logits", "decoder", final.object_logits, logit_scaled=True)
    report.close(
        f"{prefix}aux_pred_smasks", "decoder", torch.stack([p.spatial_masks for p in output.predictions[:-1]])
    )
    report.close(f"{prefix}selection_logits", "postprocess", selection.logits)
    report.selected_query(f"{prefix}selected_query", selection.query_index, output.spatial_query_index)
    report.close(f"{prefix}prev_mask", "postprocess", selection.masks)
    name = f"{prefix}final_mask"
    if report.has(name):
        padded_size = reference.padded_size(image_size)
        logits = postprocess.resize_mask_logits(
            selection.masks[0], padded_size, image_size, _hw(report.stored[name].shape[-2:]), "bilinear"
        )
        report.binary(name, "postprocess", logits.sigmoid() > 0.5, logits)


def _run_spatial(reference: _ReferenceSet, case: dict, report: _CaseRows) -> None:
    image = _case_image(report, reference, "image_uint8_chw", case.get("image_file"))
    padded, features = reference.encode(image)
    _check_features(report, padded, features)
    image_size = _hw(image.shape[-2:])
    positive, negative = _spatial_prompts(reference, case, report, image_size)
    text = reference.class_embeddings(case["vocabulary"])
    report.close("class_text_embeddings", "text", text)
    result = reference.spatial(
        features, text, _seed(report, "rng_seed", case), spatial_masks=(positive, negative)
    )
    _check_spatial_round(reference, report, result, "", image_size, image_size)
    if "selected_query" in case:
        _scalar_row(
            report, "selected_query", _tie_free(result, case["selected_query"]), case["selected_query"]
        )


def _tie_free(result: _Spatial, official: list) -> list:
    """Our selection, with a tie between duplicated spatial queries replaced by the official choice."""
    ours = result.selection.query_index.tolist()
    sample = result.output.spatial_query_index.tolist()
    return [
        [o if o == e or sample[o] != sample[e] else e for o, e in zip(row, official_row, strict=True)]
        for row, official_row in zip(ours, official, strict=True)
    ]


def _round_prefixes(report: _CaseRows) -> list[str]:
    """Stored round prefixes in order: "round1_", "round2_", ..., then "" if un-prefixed outputs exist."""
    numbers = sorted(
        {
            int(name[5:].split("_", 1)[0])
            for name in report.stored
            if name.startswith("round") and name[5:].split("_", 1)[0].isdigit()
        }
    )
    prefixes = [f"round{number}_" for number in numbers]
    if report.has("pred_smasks") or report.has("prev_mask"):
        prefixes.append("")
    return prefixes


def _round_shapes(case: dict, number: int, sign: str) -> list | None:
    shapes = case.get("prompt_shapes_original_res", {})
    for key in (f"round{number}_{sign}", f"round{number}_added_{sign}"):
        if key in shapes:
            return shapes[key]
    return None


def _accumulated_round_shapes(
    case: dict,
    number: int,
    image_size: tuple[int, int],
    positive: Tensor | None,
    negative: Tensor | None,
) -> tuple[Tensor | None, Tensor | None]:
    """The (n, h, w) prompt masks after round `number` adds the shapes case.json gives for it to the masks of
    the rounds before; (None, None) when case.json describes no positive prompt for it."""
    added_positive = _round_shapes(case, number, "positive")
    if added_positive is None:
        return None, None
    round_positive = _raster(case, added_positive, image_size)
    added_negative = _round_shapes(case, number, "negative")
    round_negative = (
        _raster(case, added_negative, image_size) if added_negative else torch.zeros_like(round_positive)
    )
    if positive is None or negative is None:
        return round_positive, round_negative
    return positive | round_positive, negative | round_negative


def _cropped(padded: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(n, H', W') -> (n, h, w): the masks without their bottom/right padding."""
    return padded[:, : image_size[0], : image_size[1]]


def _run_spatial_memory(reference: _ReferenceSet, case: dict, report: _CaseRows) -> None:
    """Several rounds of one interaction; each round adds its clicks to the masks and passes the previous
    round's selected mask logits, which switches the memory queries on."""
    image = _case_image(report, reference, "image_uint8_chw", case.get("image_file"))
    padded, features = reference.encode(image)
    _check_features(report, padded, features)
    image_size = _hw(image.shape[-2:])
    text = reference.class_embeddings(case["vocabulary"])
    report.close("class_text_embeddings", "text", text)
    positive = negative = previous = None
    for number, prefix in enumerate(_round_prefixes(report), start=1):
        positive, negative = _accumulated_round_shapes(case, number, image_size, positive, negative)
        source = f"prompt_shapes_original_res up to round {number}, drawn with OpenCV {cv2.__version__}"
        positive_padded, negative_padded = _padded_prompt_inputs(
            reference, report, prefix, image_size, positive, negative, source
        )
        positive, negative = _cropped(positive_padded, image_size), _cropped(negative_padded, image_size)
        if previous is not None:
            report.close(f"{prefix}input_prev_mask", "decoder", previous)
        result = reference.spatial(
            features,
            text,
            _seed(report, f"{prefix}rng_seed", case),
            spatial_masks=(positive_padded, negative_padded),
            previous_masks=previous,
        )
        _check_spatial_round(reference, report, result, prefix, image_size, image_size)
        previous = result.selection.masks


# ------------------------------------------------------------------------------------------------ loop


def _polygon_mask(polygon: list, size: tuple[int, int]) -> Tensor:
    canvas = np.zeros(size, dtype=np.uint8)
    cv2.fillPoly(canvas, [np.asarray(polygon, dtype=np.int32).reshape(-1, 1, 2)], 1)
    return torch.from_numpy(canvas)


def _run_interactive_loop(reference: _ReferenceSet, case: dict, report: _CaseRows) -> None:
    """The official simulated-user loop: a first click at the object's centre, then per round a corrective
    click on the larger error region; the generator is seeded once before the whole loop."""
    image = _case_image(report, reference, "image_uint8_chw", case.get("image_file"))
    padded, features = reference.encode(image)
    _check_features(report, padded, features)
    image_size = _hw(image.shape[-2:])
    original_size = _hw(case["original_hw"])
    padded_size = reference.padded_size(image_size)
    text = reference.class_embeddings(case["vocabulary"])
    report.close("class_text_embeddings", "text", text)

    polygon = case.get("gt_polygon_original_res")
    drawn = None if polygon is None else _polygon_mask(polygon, original_size)[None]
    source = f"gt_polygon_original_res, filled with OpenCV {cv2.__version__}"
    gt_original = report.input("gt_mask_original_res", "prompt", drawn, source).bool()
    gt = report.input("gt_mask_resized", "prompt", None, "").bool()
    first_click = prompt_raster.region_click(gt)[:, None]
    first_click = report.input("initial_rand_shape", "prompt", first_click, "the official click", True)
    first_click = first_click[:, 0].bool()
    gt_padded = prompt_raster.pad_prompt_masks(gt, padded_size)
    positive = prompt_raster.pad_prompt_masks(first_click, padded_size)
    negative = torch.zeros_like(positive)

    seed = _seed(report, "rng_seed", case)
    if seed is not None:
        torch.manual_seed(seed)
    rounds = int(case.get("rounds_run", len(_round_prefixes(report))))
    previous = None
    ious = []
    for number in range(1, rounds + 1):
        prefix = f"round{number}_"
        if previous is not None:
            step = prompt_raster.corrective_click(gt_padded, previous[0], positive, negative)
            positive, negative = step.pos_mask, step.neg_mask
            report.close(f"{prefix}input_prev_mask", "decoder", previous)
        clicks = "the official clicks"
        positive = report.input(f"{prefix}spatial_query_pos_mask", "prompt", positive[None], clicks, True)
        negative = report.input(f"{prefix}spatial_query_neg_mask", "prompt", negative[None], clicks, True)
        positive, negative = positive[0].bool(), negative[0].bool()
        result = reference.spatial(
            features, text, None, spatial_masks=(positive, negative), previous_masks=previous
        )
        _check_spatial_round(reference, report, result, prefix, image_size, image_size)
        previous = result.selection.masks
        final = postprocess.spatial_final_mask(previous[0], padded_size, image_size, original_size)
        iou = (gt_original & final).flatten(1).sum(1) / (gt_original | final).flatten(1).sum(1)
        ious.append(iou)
        if bool((iou > 0.9).all()):
            break
    report.close("mask_iou_per_round", "postprocess", torch.stack(ious, dim=1))


# ------------------------------------------------------------------------------------------------ refimg


def _referring_mask(
    reference: _ReferenceSet, case: dict, case_name: str, image_size: tuple[int, int]
) -> tuple[Tensor | None, str]:
    """The (1, h, w) referring mask on image A as case.json's `mask_source` describes it, and where it came
    from: sketch shapes at the original resolution (drawn again), or an image file (in the case folder or the
    set) holding the mask at image A's size or the sketch layer at the original resolution. (None, "") if
    case.json has no mask_source."""
    source = case.get("mask_source")
    if source is None:
        return None, ""
    if not isinstance(source, str):
        return _raster(case, source, image_size), f"mask_source, drawn with OpenCV {cv2.__version__}"
    candidates = [reference.directory / case_name / source, reference.directory / source]
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"mask_source {source!r} of case {case_name} is in neither {candidates}")
    layer = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if layer is None:
        raise ValueError(f"mask_source {path} is not an image OpenCV can read")
    if layer.ndim == 3:
        layer = layer[:, :, 0]
    if layer.shape == image_size:
        return torch.from_numpy(layer > 0)[None], f"mask_source {source}"
    return prompt_raster.canvas_to_mask(layer.astype(np.uint8), image_size)[None], f"mask_source {source}"


def _run_referring_image(reference: _ReferenceSet, case: dict, report: _CaseRows) -> None:
    """Referring image: a mask drawn on image A gives prompt tokens (stage 1), which segment image B
    (stage 2, the official math with the prompt-index fix)."""
    image_a = _case_image(report, reference, "image_a_uint8_chw", case.get("image_file"))
    image_b = _case_image(report, reference, "image_b_uint8_chw", case.get("image_b_file"))
    size_a = _hw(image_a.shape[-2:])
    size_b = _hw(image_b.shape[-2:])

    mask, source = _referring_mask(reference, case, report.case, size_a)
    mask = report.input("refimg_mask", "prompt", mask, source).bool()
    padded_mask = prompt_raster.pad_prompt_masks(mask, reference.padded_size(size_a))
    _, features_a = reference.encode(image_a)
    seed_a = _seed(report, "rng_seed_a", case)
    if seed_a is not None:
        torch.manual_seed(seed_a)
    tokens = reference.model.encode_spatial_reference(features_a, padded_mask, torch.zeros_like(padded_mask))
    report.close("ref_spatial_query_pos", "decoder", tokens.mean_positive)
    report.close("ref_spatial_query_neg", "decoder", tokens.mean_negative)
    for level in range(len(tokens.level_tokens)):
        report.close(f"ref_src_spatial_queries_{level}", "decoder", tokens.level_tokens[level])
        report.exact(f"ref_src_spatial_maskings_{level}", "decoder", tokens.level_padding[level])
        report.exact(f"ref_src_spatial_indices_{level}", "decoder", tokens.level_prompt_index[level])

    padded_b, features_b = reference.encode(image_b)
    _check_features(report, padded_b, features_b, lambda base: f"image_b_{base}")
    text = reference.class_embeddings(case["vocabulary"])
    result = reference.spatial(features_b, text, _seed(report, "rng_seed_b", case), spatial_tokens=tokens)
    output, selection = result.output, result.selection
    report.exact("b_spatial_query_sample_index", "rng", output.spatial_query_index)
    report.close("b_pred_smasks", "decoder", output.final.spatial_masks)
    report.close("b_pred_smaskembs", "decoder", output.final.spatial_mask_embeddings)
    report.close("b_pred_pspatials", "decoder", output.spatial_tokens.mean_positive.transpose(0, 1))
    report.close("b_pred_logits", "decoder", output.final.object_logits, logit_scaled=True)
    report.close("b_prev_mask", "postprocess", selection.masks)
    report.selected_query("b_selected_query", selection.query_index, output.spatial_query_index)
    padded_size_b = reference.padded_size(size_b)
    demo_logits = postprocess.resize_mask_logits(selection.masks[0], padded_size_b, size_b, None)
    report.binary("b_final_mask_demo_example", "postprocess", demo_logits > 0, demo_logits)
    logits = postprocess.resize_mask_logits(selection.masks[0], padded_size_b, size_b, size_b, "bilinear")
    report.binary("b_final_mask_interactive_postprocess", "postprocess", logits.sigmoid() > 0.5, logits)


# ------------------------------------------------------------------------------------------------ output


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
