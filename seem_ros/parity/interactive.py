"""Spatial prompt cases: one round of clicks, scribbles and boxes, several rounds with memory prompts, and the
official simulated-user loop."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from seem_ros.engine import prompt_raster
from seem_ros.model import postprocess
from seem_ros.parity import official_clicks
from seem_ros.parity.reference import ReferenceSet, SpatialResult, case_image, check_features, hw, stored_seed
from seem_ros.parity.report import CaseRows, scalar_row


def _prompt_groups(shapes: list) -> list[list[prompt_raster.PromptShape]]:
    """Prompt geometry of case.json as groups of shapes, one group per prompt (a flat list of shapes is one
    prompt)."""
    if shapes and isinstance(shapes[0], dict):
        shapes = [shapes]
    return [[prompt_raster.prompt_shape_from_dict(shape) for shape in group] for group in shapes]


def raster_shapes(case: dict, shapes: list, image_size: tuple[int, int]) -> Tensor:
    """(n, h, w) bool masks of prompt geometry given at the original resolution."""
    return prompt_raster.rasterize_prompts(_prompt_groups(shapes), hw(case["original_hw"]), image_size)


def _spatial_prompts(
    reference: ReferenceSet, case: dict, report: CaseRows, image_size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The padded (n, H', W') positive and negative masks the decoder gets in a one-round spatial case: the
    stored ones, each checked against what the case describes (demo sketch shapes, drawn again: a
    cross-check; the official evaluation box click: exact)."""
    positive = negative = None
    source, official = "", False
    if "box_xyxy_resized" in case:
        region = official_clicks.box_region(case["box_xyxy_resized"], image_size)
        region = report.input("box_region_mask", "prompt", region[None], "box_xyxy_resized", True)
        positive = official_clicks.region_click(region.bool())
        negative = torch.zeros_like(positive)
        source, official = "the official box click", True
    elif "prompt_shapes_original_res" in case:
        shapes = case["prompt_shapes_original_res"]
        positive = raster_shapes(case, shapes["positive"], image_size)
        negative_shapes = shapes.get("negative") or [[] for _ in range(positive.shape[0])]
        negative = raster_shapes(case, negative_shapes, image_size)
        source = "prompt_shapes_original_res, drawn with OpenCV " + cv2.__version__
    positive = report.input("prompt_pos_mask", "prompt", positive, source, official)
    negative = report.input("prompt_neg_mask", "prompt", negative, source, official)
    return _padded_prompt_inputs(reference, report, "", image_size, positive, negative)


def _padded_prompt_inputs(
    reference: ReferenceSet,
    report: CaseRows,
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


def _check_spatial_round(
    reference: ReferenceSet,
    report: CaseRows,
    result: SpatialResult,
    prefix: str,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> None:
    """Every tensor of one spatial decoder call, stored under `prefix` (e.g. "round2_" or "")."""
    output, selection = result.output, result.selection
    final = output.final
    tokens = output.spatial_tokens
    choices = output.query_choices
    report.exact(f"{prefix}spatial_query_sample_index", "rng", choices.spatial_query_index)
    if choices.memory_slot_prompt_index is not None:
        report.exact(f"{prefix}memory_slot_prompt_index", "rng", choices.memory_slot_prompt_index)
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
    report.selected_query(f"{prefix}selected_query", selection.query_index, choices.spatial_query_index)
    report.close(f"{prefix}prev_mask", "postprocess", selection.masks)
    name = f"{prefix}final_mask"
    if report.has(name):
        padded_size = reference.padded_size(image_size)
        logits = postprocess.resize_mask_logits(
            selection.masks[0], padded_size, image_size, hw(report.stored[name].shape[-2:]), "bilinear"
        )
        report.binary(name, "postprocess", logits.sigmoid() > 0.5, logits)


def run_spatial(reference: ReferenceSet, case: dict, report: CaseRows) -> None:
    image = case_image(report, reference, "image_uint8_chw", case.get("image_file"))
    padded, features = reference.encode(image)
    check_features(report, padded, features)
    image_size = hw(image.shape[-2:])
    positive, negative = _spatial_prompts(reference, case, report, image_size)
    text = reference.class_embeddings(case["vocabulary"])
    report.close("class_text_embeddings", "text", text)
    result = reference.spatial(
        features, text, stored_seed(report, "rng_seed", case), spatial_masks=(positive, negative)
    )
    _check_spatial_round(reference, report, result, "", image_size, image_size)
    if "selected_query" in case:
        scalar_row(
            report, "selected_query", _tie_free(result, case["selected_query"]), case["selected_query"]
        )


def _tie_free(result: SpatialResult, official: list) -> list:
    """Our selection, with a tie between duplicated spatial queries replaced by the official choice."""
    ours = result.selection.query_index.tolist()
    sample = result.output.query_choices.spatial_query_index.tolist()
    return [
        [o if o == e or sample[o] != sample[e] else e for o, e in zip(row, official_row, strict=True)]
        for row, official_row in zip(ours, official, strict=True)
    ]


def _round_prefixes(report: CaseRows) -> list[str]:
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
    round_positive = raster_shapes(case, added_positive, image_size)
    added_negative = _round_shapes(case, number, "negative")
    round_negative = (
        raster_shapes(case, added_negative, image_size)
        if added_negative
        else torch.zeros_like(round_positive)
    )
    if positive is None or negative is None:
        return round_positive, round_negative
    return positive | round_positive, negative | round_negative


def _cropped(padded: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(n, H', W') -> (n, h, w): the masks without their bottom/right padding."""
    return padded[:, : image_size[0], : image_size[1]]


def run_spatial_memory(reference: ReferenceSet, case: dict, report: CaseRows) -> None:
    """Several rounds of one interaction; each round adds its clicks to the masks and passes the previous
    round's selected mask logits, which switches the memory queries on."""
    image = case_image(report, reference, "image_uint8_chw", case.get("image_file"))
    padded, features = reference.encode(image)
    check_features(report, padded, features)
    image_size = hw(image.shape[-2:])
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
            stored_seed(report, f"{prefix}rng_seed", case),
            spatial_masks=(positive_padded, negative_padded),
            previous_masks=previous,
        )
        _check_spatial_round(reference, report, result, prefix, image_size, image_size)
        previous = result.selection.masks


def _polygon_mask(polygon: list, size: tuple[int, int]) -> Tensor:
    canvas = np.zeros(size, dtype=np.uint8)
    cv2.fillPoly(canvas, [np.asarray(polygon, dtype=np.int32).reshape(-1, 1, 2)], 1)
    return torch.from_numpy(canvas)


def run_interactive_loop(reference: ReferenceSet, case: dict, report: CaseRows) -> None:
    """The official simulated-user loop: a first click at the object's centre, then per round a corrective
    click on the larger error region; the generator is seeded once before the whole loop."""
    image = case_image(report, reference, "image_uint8_chw", case.get("image_file"))
    padded, features = reference.encode(image)
    check_features(report, padded, features)
    image_size = hw(image.shape[-2:])
    original_size = hw(case["original_hw"])
    padded_size = reference.padded_size(image_size)
    text = reference.class_embeddings(case["vocabulary"])
    report.close("class_text_embeddings", "text", text)

    polygon = case.get("gt_polygon_original_res")
    drawn = None if polygon is None else _polygon_mask(polygon, original_size)[None]
    source = f"gt_polygon_original_res, filled with OpenCV {cv2.__version__}"
    gt_original = report.input("gt_mask_original_res", "prompt", drawn, source).bool()
    gt = report.input("gt_mask_resized", "prompt", None, "").bool()
    first_click = official_clicks.region_click(gt)[:, None]
    first_click = report.input("initial_rand_shape", "prompt", first_click, "the official click", True)
    first_click = first_click[:, 0].bool()
    gt_padded = prompt_raster.pad_prompt_masks(gt, padded_size)
    positive = prompt_raster.pad_prompt_masks(first_click, padded_size)
    negative = torch.zeros_like(positive)

    seed = stored_seed(report, "rng_seed", case)
    if seed is not None:
        torch.manual_seed(seed)
    rounds = int(case.get("rounds_run", len(_round_prefixes(report))))
    previous = None
    ious = []
    for number in range(1, rounds + 1):
        prefix = f"round{number}_"
        if previous is not None:
            step = official_clicks.corrective_click(gt_padded, previous[0], positive, negative)
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
