"""Referring-image cases: a mask on image A gives prompt tokens that segment image B."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

from seem_ros.engine import prompt_raster
from seem_ros.model import postprocess
from seem_ros.parity.interactive import raster_shapes
from seem_ros.parity.reference import ReferenceSet, case_image, check_features, hw, stored_seed
from seem_ros.parity.report import CaseRows


def _referring_mask(
    reference: ReferenceSet, case: dict, case_name: str, image_size: tuple[int, int]
) -> tuple[Tensor | None, str]:
    """The (1, h, w) referring mask on image A as case.json's `mask_source` describes it, and where it came
    from: sketch shapes at the original resolution (drawn again), or an image file (in the case folder or the
    set) holding the mask at image A's size or the sketch layer at the original resolution. (None, "") if
    case.json has no mask_source."""
    source = case.get("mask_source")
    if source is None:
        return None, ""
    if not isinstance(source, str):
        return raster_shapes(case, source, image_size), f"mask_source, drawn with OpenCV {cv2.__version__}"
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


def run_referring_image(reference: ReferenceSet, case: dict, report: CaseRows) -> None:
    """Referring image: a mask drawn on image A gives prompt tokens (stage 1), which segment image B
    (stage 2, the official math with the prompt-index fix)."""
    image_a = case_image(report, reference, "image_a_uint8_chw", case.get("image_file"))
    image_b = case_image(report, reference, "image_b_uint8_chw", case.get("image_b_file"))
    size_a = hw(image_a.shape[-2:])
    size_b = hw(image_b.shape[-2:])

    mask, source = _referring_mask(reference, case, report.case, size_a)
    mask = report.input("refimg_mask", "prompt", mask, source).bool()
    padded_mask = prompt_raster.pad_prompt_masks(mask, reference.padded_size(size_a))
    _, features_a = reference.encode(image_a)
    seed_a = stored_seed(report, "rng_seed_a", case)
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
    check_features(report, padded_b, features_b, lambda base: f"image_b_{base}")
    text = reference.class_embeddings(case["vocabulary"])
    result = reference.spatial(
        features_b, text, stored_seed(report, "rng_seed_b", case), spatial_tokens=tokens
    )
    output, selection = result.output, result.selection
    spatial_query_index = output.query_choices.spatial_query_index
    report.exact("b_spatial_query_sample_index", "rng", spatial_query_index)
    report.close("b_pred_smasks", "decoder", output.final.spatial_masks)
    report.close("b_pred_smaskembs", "decoder", output.final.spatial_mask_embeddings)
    report.close("b_pred_pspatials", "decoder", output.spatial_tokens.mean_positive.transpose(0, 1))
    report.close("b_pred_logits", "decoder", output.final.object_logits, logit_scaled=True)
    report.close("b_prev_mask", "postprocess", selection.masks)
    report.selected_query("b_selected_query", selection.query_index, spatial_query_index)
    padded_size_b = reference.padded_size(size_b)
    demo_logits = postprocess.resize_mask_logits(selection.masks[0], padded_size_b, size_b, None)
    report.binary("b_final_mask_demo_example", "postprocess", demo_logits > 0, demo_logits)
    logits = postprocess.resize_mask_logits(selection.masks[0], padded_size_b, size_b, size_b, "bilinear")
    report.binary("b_final_mask_interactive_postprocess", "postprocess", logits.sigmoid() > 0.5, logits)
