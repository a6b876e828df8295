"""Post-processing and prompt rasterisation against the official SEEM v1 outputs.

Every check starts from stored decoder outputs (pred_logits, pred_masks, prev_mask, ...) or stored prompt
geometry, so no model is needed. Cases are discovered from index.json, so a set with other sizes works too.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from seem_ros.engine import prompt_raster
from seem_ros.model import postprocess
from seem_ros.parity import official_clicks

MASK_LOGIT_TOL = {"atol": 1e-4, "rtol": 1e-4}
SIMILARITY_TOL = {"atol": 1e-3, "rtol": 0.0}
LOGIT_SCALE_KEY = "sem_seg_head.predictor.lang_encoder.logit_scale"


def _index(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "index.json").read_text())


def _cases_of_kind(reference_dir: Path, *kinds: str) -> list[str]:
    index = _index(reference_dir)
    return [case for case in index["cases"] if index["case_kinds"][case] in kinds]


def _load(reference_dir: Path, case: str) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = reference_dir / case
    return json.loads((folder / "case.json").read_text()), load_file(folder / "tensors.safetensors")


def _hw(values: list[int]) -> tuple[int, int]:
    return int(values[0]), int(values[1])


def _prompt_groups(groups: list[list[dict]]) -> list[list[prompt_raster.PromptShape]]:
    return [[prompt_raster.prompt_shape_from_dict(shape) for shape in group] for group in groups]


def _assert_equal_mask(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    actual = actual.to(torch.uint8)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    differing = int((actual != expected).sum())
    assert differing == 0, f"{what}: {differing} pixels differ"


def _spatial_rounds(case: dict, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Tensor-name prefixes of the stored spatial rounds that have a prev_mask and a final_mask."""
    prefixes = [""] + [f"round{r}_" for r in range(1, 10)]
    return [p for p in prefixes if f"{p}prev_mask" in tensors and f"{p}final_mask" in tensors]


# --------------------------------------------------------------------------------------------------------
# Object-query post-processing (panoptic case)


@pytest.fixture(scope="module")
def panoptic_outputs(reference_dir: Path) -> list[tuple[str, dict, dict, torch.Tensor, torch.Tensor]]:
    """(name, case, tensors, class logits (Q, K+1), mask logits at the output size) per panoptic case."""
    outputs = []
    for case_name in _cases_of_kind(reference_dir, "panoptic"):
        case, tensors = _load(reference_dir, case_name)
        mask_logits = postprocess.resize_mask_logits(
            tensors["pred_masks"][0],
            _hw(case["padded_hw"]),
            _hw(case["image_hw"]),
            _hw(tensors["sem_seg"].shape[-2:]),
        )
        outputs.append((case_name, case, tensors, tensors["pred_logits"][0], mask_logits))
    assert outputs, "no panoptic case in this reference set"
    return outputs


def test_semantic_inference(panoptic_outputs) -> None:
    for _, _, tensors, class_logits, mask_logits in panoptic_outputs:
        semantic = postprocess.semantic_inference(class_logits, mask_logits)
        torch.testing.assert_close(semantic, tensors["sem_seg"], atol=1e-4, rtol=1e-4)


def test_panoptic_inference(panoptic_outputs) -> None:
    for case_name, case, tensors, class_logits, mask_logits in panoptic_outputs:
        result = postprocess.panoptic_inference(
            class_logits,
            mask_logits,
            case["thing_class_ids"],
            case["object_mask_threshold"],
            case["overlap_threshold"],
        )
        assert result.panoptic_seg.dtype == torch.int32
        _assert_equal_mask(result.panoptic_seg, tensors["panoptic_seg"], f"{case_name} panoptic_seg")

        expected = [(s["id"], s["category_id"], s["isthing"]) for s in case["segments_info"]]
        assert [(s.segment_id, s.category_id, s.is_thing) for s in result.segments] == expected
        sources = {str(s.segment_id): s.source_queries for s in result.segments}
        assert sources == case["segment_source_queries"]
        areas = {str(s.segment_id): s.area for s in result.segments}
        assert areas == {k: v for k, v in case["panoptic_pixel_counts"].items() if k != "0"}
        assert result.kept_queries == case["kept_queries"]
        assert result.overlap_rejected_queries == case["queries_rejected_by_overlap_threshold"]


def test_instance_inference(panoptic_outputs) -> None:
    for case_name, case, tensors, class_logits, mask_logits in panoptic_outputs:
        result = postprocess.instance_inference(
            class_logits, mask_logits, case["detections_per_image"], case["thing_class_ids"]
        )
        # The official order (topk with sorted=False) is unspecified: match by flat index.
        stored_row = {int(flat): row for row, flat in enumerate(tensors["instances_flat_index"])}
        assert sorted(result.flat_indices.tolist()) == sorted(stored_row)
        order = torch.tensor([stored_row[int(flat)] for flat in result.flat_indices])
        masks = tensors["instances_pred_masks"][order]
        _assert_equal_mask(result.masks, masks, f"{case_name} instances_pred_masks")
        torch.testing.assert_close(result.scores, tensors["instances_scores"][order], atol=1e-4, rtol=0.0)
        class_probs = tensors["instances_class_prob"][order]
        torch.testing.assert_close(result.class_probs, class_probs, atol=1e-4, rtol=0.0)
        assert torch.equal(result.classes, tensors["instances_pred_classes"][order])
        assert torch.equal(result.query_indices, tensors["instances_query_index"][order])
        assert torch.all(result.class_probs[:-1] >= result.class_probs[1:]), "sorted by class probability"


def test_panoptic_without_confident_queries() -> None:
    class_logits = torch.zeros(3, 5)
    class_logits[:, -1] = 10.0
    result = postprocess.panoptic_inference(class_logits, torch.randn(3, 8, 9), [0, 1], 0.4, 0.8)
    assert result.segments == [] and result.kept_queries == [] and result.overlap_rejected_queries == []
    assert result.panoptic_seg.shape == (8, 9) and not result.panoptic_seg.any()


def test_stuff_queries_merge_into_one_segment() -> None:
    class_logits = torch.full((3, 4), -10.0)
    class_logits[0, 2] = class_logits[1, 2] = class_logits[2, 0] = 10.0
    mask_logits = torch.full((3, 4, 6), -10.0)
    mask_logits[0, :, :2] = mask_logits[1, :, 2:4] = mask_logits[2, :, 4:] = 10.0
    result = postprocess.panoptic_inference(class_logits, mask_logits, [0], 0.5, 0.8)
    assert [(s.segment_id, s.category_id, s.is_thing, s.source_queries) for s in result.segments] == [
        (1, 2, False, [0, 1]),
        (2, 0, True, [2]),
    ]
    assert result.panoptic_seg.tolist() == [[1, 1, 1, 1, 2, 2]] * 4


def test_panoptic_mask_threshold_is_the_probability_a_pixel_needs() -> None:
    """One thing query whose mask probability rises left to right: the segment starts where the
    probability reaches mask_threshold (0.5 by default, the official rule)."""
    class_logits = torch.tensor([[10.0, -10.0]])
    probabilities = torch.linspace(0.05, 0.95, 10)
    mask_logits = torch.logit(probabilities).expand(1, 3, 10).contiguous()
    for threshold in (0.5, 0.3, 0.7):
        result = postprocess.panoptic_inference(class_logits, mask_logits, [0], 0.4, 0.5, threshold)
        covered = result.panoptic_seg[0] == 1
        assert torch.equal(covered, probabilities >= threshold), threshold
    default = postprocess.panoptic_inference(class_logits, mask_logits, [0], 0.4, 0.5)
    assert torch.equal(default.panoptic_seg[0] == 1, mask_logits[0, 0].sigmoid() >= 0.5)


# --------------------------------------------------------------------------------------------------------
# Grounding


def test_grounding(reference_dir: Path) -> None:
    case_names = _cases_of_kind(reference_dir, "grounding")
    assert case_names, "no grounding case in this reference set"
    with safe_open(reference_dir / _index(reference_dir)["model_file"], framework="pt") as weights:
        logit_scale = weights.get_tensor(LOGIT_SCALE_KEY)
    for case_name in case_names:
        _check_grounding_case(reference_dir, case_name, logit_scale)


def _check_grounding_case(reference_dir: Path, case_name: str, logit_scale: torch.Tensor) -> None:
    case, tensors = _load(reference_dir, case_name)
    similarity = postprocess.grounding_similarity(
        tensors["pred_gtexts"][0], tensors["class_emb"], logit_scale
    )
    torch.testing.assert_close(similarity, tensors["similarity"], **SIMILARITY_TOL)
    matched = postprocess.match_grounding_queries(similarity)
    assert matched.tolist() == tensors["matched_query"].tolist() == case["matched_query"]

    output_size = _hw(case.get("output_hw", case["image_hw"]))
    logits = postprocess.grounding_mask_logits(
        tensors["pred_gmasks"][0], matched, _hw(case["padded_hw"]), _hw(case["image_hw"]), output_size
    )
    torch.testing.assert_close(logits, tensors["grounding_mask_logits"], **MASK_LOGIT_TOL)
    _assert_equal_mask(logits > 0, tensors["final_mask"], f"{case_name} final_mask")


# --------------------------------------------------------------------------------------------------------
# Spatial final masks


def test_spatial_final_masks(reference_dir: Path) -> None:
    checked = 0
    for case_name in _cases_of_kind(reference_dir, "spatial", "spatial_memory"):
        case, tensors = _load(reference_dir, case_name)
        for prefix in _spatial_rounds(case, tensors):
            final = postprocess.spatial_final_mask(
                tensors[f"{prefix}prev_mask"][0],
                _hw(case["padded_hw"]),
                _hw(case["image_hw"]),
                _hw(tensors[f"{prefix}final_mask"].shape[-2:]),
            )
            _assert_equal_mask(final, tensors[f"{prefix}final_mask"], f"{case_name} {prefix}final_mask")
            checked += 1
    assert checked > 0


def test_interactive_loop_iou(reference_dir: Path) -> None:
    """The official per-round IoU: spatial final mask at the original size against the original-size GT."""
    for case_name in _cases_of_kind(reference_dir, "interactive_loop"):
        case, tensors = _load(reference_dir, case_name)
        gt = tensors["gt_mask_original_res"].bool()
        ious = []
        for round_index in range(1, case["rounds_run"] + 1):
            final = postprocess.spatial_final_mask(
                tensors[f"round{round_index}_prev_mask"][0],
                _hw(case["padded_hw"]),
                _hw(case["image_hw"]),
                _hw(case["original_hw"]),
            )
            ious.append((gt & final).flatten(1).sum(1) / (gt | final).flatten(1).sum(1))
        expected = torch.tensor(case["mask_iou_per_round"], dtype=torch.float32)
        torch.testing.assert_close(torch.stack(ious, dim=1), expected[:, : len(ious)], atol=1e-6, rtol=0.0)


def test_referring_image_final_masks(reference_dir: Path) -> None:
    for case_name in _cases_of_kind(reference_dir, "refimg"):
        case, tensors = _load(reference_dir, case_name)
        padded, image_size = _hw(case["image_b_padded_hw"]), _hw(case["image_b_hw"])
        prev_mask = tensors["b_prev_mask"][0]
        demo = postprocess.demo_binary_mask(prev_mask, padded, image_size)
        _assert_equal_mask(demo, tensors["b_final_mask_demo_example"], "b_final_mask_demo_example")
        interactive = postprocess.spatial_final_mask(prev_mask, padded, image_size, image_size)
        _assert_equal_mask(
            interactive,
            tensors["b_final_mask_interactive_postprocess"],
            "b_final_mask_interactive_postprocess",
        )


def test_resize_mask_logits_rejects_unbatched_input() -> None:
    with pytest.raises(ValueError, match="mask_logits"):
        postprocess.resize_mask_logits(torch.zeros(4, 8), (16, 32), (16, 30), None)


# --------------------------------------------------------------------------------------------------------
# Prompt rasterisation (demo sketch conversion)


def test_demo_prompt_masks(reference_dir: Path) -> None:
    checked = 0
    for case_name in _cases_of_kind(reference_dir, "spatial"):
        case, tensors = _load(reference_dir, case_name)
        shapes = case.get("prompt_shapes_original_res")
        if shapes is None:
            continue
        original_size, image_size = _hw(case["original_hw"]), _hw(case["image_hw"])
        positive, negative = _prompt_groups(shapes["positive"]), _prompt_groups(shapes["negative"])

        canvas = prompt_raster.draw_prompt_canvas(positive[0], original_size)
        stored = cv2.imread(
            str(reference_dir / case_name / "prompt_canvas_original_res.png"), cv2.IMREAD_GRAYSCALE
        )
        assert np.array_equal(canvas, stored), f"{case_name}: canvas differs"

        pos = prompt_raster.rasterize_prompts(positive, original_size, image_size)
        neg = prompt_raster.rasterize_prompts(negative, original_size, image_size)
        _assert_equal_mask(pos, tensors["prompt_pos_mask"], f"{case_name} prompt_pos_mask")
        _assert_equal_mask(neg, tensors["prompt_neg_mask"], f"{case_name} prompt_neg_mask")
        padded = _hw(case["padded_hw"])
        assert prompt_raster.padded_size(image_size) == padded
        pos_padded = prompt_raster.pad_prompt_masks(pos, padded)[None]
        neg_padded = prompt_raster.pad_prompt_masks(neg, padded)[None]
        _assert_equal_mask(
            pos_padded, tensors["spatial_query_pos_mask"], f"{case_name} spatial_query_pos_mask"
        )
        _assert_equal_mask(
            neg_padded, tensors["spatial_query_neg_mask"], f"{case_name} spatial_query_neg_mask"
        )
        checked += 1
    assert checked > 0


def test_memory_round_prompt_masks(reference_dir: Path) -> None:
    for case_name in _cases_of_kind(reference_dir, "spatial_memory"):
        case, tensors = _load(reference_dir, case_name)
        shapes = case["prompt_shapes_original_res"]
        original_size, image_size, padded = (
            _hw(case["original_hw"]),
            _hw(case["image_hw"]),
            _hw(case["padded_hw"]),
        )
        first = prompt_raster.rasterize_prompts(
            _prompt_groups([shapes["round1_positive"]]), original_size, image_size
        )
        added = prompt_raster.rasterize_prompts(
            _prompt_groups([shapes["round2_added_positive"]]), original_size, image_size
        )
        round1 = prompt_raster.pad_prompt_masks(first, padded)[None]
        round2 = prompt_raster.pad_prompt_masks(first | added, padded)[None]
        _assert_equal_mask(round1, tensors["round1_spatial_query_pos_mask"], f"{case_name} round 1 positive")
        _assert_equal_mask(round2, tensors["spatial_query_pos_mask"], f"{case_name} round 2 positive")


def test_referring_image_prompt_mask(reference_dir: Path) -> None:
    for case_name in _cases_of_kind(reference_dir, "refimg"):
        case, tensors = _load(reference_dir, case_name)
        shapes = _prompt_groups([case["mask_source"]])
        mask = prompt_raster.rasterize_prompts(shapes, _hw(case["original_hw"]), _hw(case["image_hw"]))
        _assert_equal_mask(mask, tensors["refimg_mask"], f"{case_name} refimg_mask")


def test_prompt_shape_validation() -> None:
    with pytest.raises(ValueError, match="unknown prompt shape"):
        prompt_raster.prompt_shape_from_dict({"type": "ellipse"})
    with pytest.raises(ValueError, match="radius"):
        prompt_raster.Disk(1, 2, -1)
    with pytest.raises(ValueError, match="width"):
        prompt_raster.Stroke(((0, 0), (3, 3)), 0)
    with pytest.raises(ValueError, match="do not fit"):
        prompt_raster.pad_prompt_masks(torch.zeros(1, 40, 10, dtype=torch.bool), (32, 32))


# --------------------------------------------------------------------------------------------------------
# Official evaluation clicks (distance-transform maximum, 3x3 dilation)


def test_official_box_prompt(reference_dir: Path) -> None:
    box_cases = [
        name
        for name in _cases_of_kind(reference_dir, "spatial")
        if "box_xyxy_resized" in json.loads((reference_dir / name / "case.json").read_text())
    ]
    assert box_cases, "no official box case in this reference set"
    for case_name in box_cases:
        _check_official_box_case(reference_dir, case_name)


def _check_official_box_case(reference_dir: Path, case_name: str) -> None:
    case, tensors = _load(reference_dir, case_name)
    image_size = _hw(case["image_hw"])
    region = official_clicks.box_region(case["box_xyxy_resized"], image_size)
    _assert_equal_mask(region[None], tensors["box_region_mask"], "box_region_mask")
    click = official_clicks.region_click(region[None])
    _assert_equal_mask(click, tensors["prompt_pos_mask"], "box click")
    centre_y, centre_x = (
        coordinates.float().mean().item() for coordinates in click[0].nonzero(as_tuple=True)
    )
    assert [centre_y, centre_x] == case["click_center_yx"]
    padded = prompt_raster.pad_prompt_masks(click, _hw(case["padded_hw"]))[None]
    _assert_equal_mask(padded, tensors["spatial_query_pos_mask"], "box spatial_query_pos_mask")


def test_official_corrective_clicks(reference_dir: Path) -> None:
    for case_name in _cases_of_kind(reference_dir, "interactive_loop"):
        case, tensors = _load(reference_dir, case_name)
        padded = _hw(case["padded_hw"])
        gt = tensors["gt_mask_resized"].bool()
        first_click = official_clicks.region_click(gt)
        _assert_equal_mask(first_click[:, None], tensors["initial_rand_shape"], "initial click")
        pos = prompt_raster.pad_prompt_masks(first_click, padded)
        neg = torch.zeros_like(pos)
        _assert_equal_mask(pos[None], tensors["round1_spatial_query_pos_mask"], "round 1 positive")
        gt_padded = prompt_raster.pad_prompt_masks(gt, padded)
        for round_index in range(2, case["rounds_run"] + 1):
            step = official_clicks.corrective_click(
                gt_padded, tensors[f"round{round_index - 1}_prev_mask"][0], pos, neg
            )
            pos, neg = step.pos_mask, step.neg_mask
            _assert_equal_mask(
                pos[None], tensors[f"round{round_index}_spatial_query_pos_mask"], f"round {round_index} +"
            )
            _assert_equal_mask(
                neg[None], tensors[f"round{round_index}_spatial_query_neg_mask"], f"round {round_index} -"
            )


def test_corrective_click_stops_at_high_iou() -> None:
    gt = torch.zeros(1, 32, 32, dtype=torch.bool)
    gt[0, 8:24, 8:24] = True
    logits = torch.where(gt[:, ::4, ::4], 10.0, -10.0)
    empty = torch.zeros_like(gt)
    step = official_clicks.corrective_click(gt, logits, empty, empty)
    assert step.iou.item() >= 0.925
    assert not step.pos_mask.any() and not step.neg_mask.any()


def test_distance_transform_peaks_at_square_centre() -> None:
    region = torch.zeros(1, 9, 9, dtype=torch.bool)
    region[0, 2:7, 2:7] = True
    click = official_clicks.region_click(region)
    assert click[0].nonzero().tolist() == [[y, x] for y in (3, 4, 5) for x in (3, 4, 5)]


def _panoptic_per_query(class_logits, mask_logits, thing_class_ids, object_mask_threshold, overlap_threshold):
    """The official panoptic merge, one full-image pass per kept query (what `panoptic_inference` computed
    before it visited the pixels once, in chunks of rows): the reference its outputs must equal."""
    num_classes = class_logits.shape[-1] - 1
    scores, labels = torch.softmax(class_logits, dim=-1).max(-1)
    kept = (labels.ne(num_classes) & (scores > object_mask_threshold)).nonzero()[:, 0]
    panoptic = torch.zeros(mask_logits.shape[-2:], dtype=torch.int32)
    segments, stuff = [], {}
    probabilities = mask_logits[kept].sigmoid()
    winner = (scores[kept].view(-1, 1, 1) * probabilities).argmax(0)
    for k, query in enumerate(kept.tolist()):
        won, confident = winner == k, probabilities[k] >= 0.5
        assigned = won & confident
        if not (won.sum() and confident.sum() and assigned.sum()):
            continue
        if won.sum() / confident.sum() < overlap_threshold:
            continue
        category = int(labels[query])
        if category not in thing_class_ids and category in stuff:
            segment = stuff[category]
            segment[1].append(query)
        else:
            segment = (len(segments) + 1, [query], category)
            segments.append(segment)
            if category not in thing_class_ids:
                stuff[category] = segment
        panoptic[assigned] = segment[0]
    return panoptic, [(segment_id, queries, category) for segment_id, queries, category in segments]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_panoptic_inference_equals_the_per_query_merge(seed: int) -> None:
    """Many queries, saturated probabilities (ties), stuff merging and overlap rejections, over more rows
    than one chunk."""
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(16, 9, generator=generator) * 4
    coarse = torch.randn(16, 1, 6, 4, generator=generator) * 80  # blobs; large logits saturate (ties)
    size = (3 * postprocess.ROWS_PER_CHUNK + 5, 37)
    mask_logits = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear")[:, 0] - 40
    things = [0, 1, 2, 3]
    result = postprocess.panoptic_inference(class_logits, mask_logits, things, 0.3, 0.4)
    panoptic, segments = _panoptic_per_query(class_logits, mask_logits, things, 0.3, 0.4)
    assert result.overlap_rejected_queries
    assert len(segments) >= 3
    assert torch.equal(result.panoptic_seg, panoptic)
    produced = [
        (segment.segment_id, segment.source_queries, segment.category_id) for segment in result.segments
    ]
    assert produced == segments
    for segment in result.segments:
        assert segment.area == int((panoptic == segment.segment_id).sum())
