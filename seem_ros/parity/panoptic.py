"""Panoptic cases: generic segmentation (semantic, panoptic, instances), once per vocabulary stored."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from seem_ros.model import postprocess
from seem_ros.model.features import PixelFeatures
from seem_ros.parity.reference import ReferenceSet, case_image, check_backbone, check_features, hw
from seem_ros.parity.report import CaseRows, ParityRow, guess_stage

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


def run_panoptic(reference: ReferenceSet, case: dict, report: CaseRows) -> None:
    """Generic segmentation of one image, once per vocabulary stored in the case (a vocabulary switched at
    runtime stores its outputs under an affix, e.g. `vocab2_pred_logits`)."""
    image = case_image(report, reference, "image_uint8_chw", case.get("image_file"))
    padded, features = reference.encode(image)
    for prefix, suffix in _vocabulary_variants(report):

        def full(base: str, prefix: str = prefix, suffix: str = suffix) -> str:
            return prefix + base + suffix

        if prefix or suffix:
            report.exact(full("image_uint8_chw"), "backbone", image)
        check_features(report, padded, features, full)
        check_backbone(reference, report, padded, full)
        _check_panoptic_variant(reference, case, report, features, image, (prefix, suffix))


def _vocabulary_variants(report: CaseRows) -> list[tuple[str, str]]:
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
    reference: ReferenceSet,
    case: dict,
    report: CaseRows,
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
                guess_stage(prefix and name[len(prefix) :] or name),
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

    image_size = hw(image.shape[-2:])
    output_size = hw(case.get("output_hw", image_size))
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


def _check_segments(report: CaseRows, case: dict, tag: str, panoptic: postprocess.PanopticResult) -> None:
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
    report: CaseRows,
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
