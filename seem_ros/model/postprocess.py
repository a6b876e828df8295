"""Turning SEEM decoder outputs into semantic, panoptic, instance, grounding and spatial results.

Every mask the decoder predicts is a logit map at a quarter of the padded image (H'/4, W'/4). The image
occupies the top-left (h, w) of the padded (H', W') canvas; results are wanted at an output size
(height, width), usually (h, w) or the original image size. All functions are pure PyTorch and batched
over queries; none loops over pixels.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ResizeMode = Literal["bicubic", "bilinear"]


def resize_mask_logits(
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int] | None,
    mode: ResizeMode = "bicubic",
) -> Tensor:
    """Bring mask logits from the quarter-resolution padded grid to the output size.

    Bilinear (align_corners=False) up to the padded size (H', W'), crop the image part [:h, :w], then
    resize to output_size: "bicubic" with antialias is the semantic/panoptic/instance/grounding path
    (the official sem_seg_postprocess), "bilinear" the interactive (spatial) path. The official code always
    performs the final resize; to the size it already has, it is the identity (the filter taps fall on
    the pixels, with weights 1 and exactly 0), so it is skipped then.

    mask_logits: (N, H'/4, W'/4) float. padded_size: (H', W'). image_size: (h, w), the unpadded model
    input. output_size: (height, width), or None to stop after the crop.
    Returns (N, height, width) float logits, or (N, h, w) when output_size is None.
    """
    if mask_logits.dim() != 3:
        raise ValueError(f"mask_logits must be (N, H'/4, W'/4), got {tuple(mask_logits.shape)}")
    height, width = image_size
    upsampled = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    cropped = upsampled[:, :, :height, :width]
    if output_size is None or tuple(output_size) == (height, width):
        return cropped[0]
    if mode == "bicubic":
        resized = F.interpolate(
            cropped, size=output_size, mode="bicubic", align_corners=False, antialias=True
        )
    elif mode == "bilinear":
        resized = F.interpolate(cropped, size=output_size, mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"mode must be 'bicubic' or 'bilinear', got {mode!r}")
    return resized[0]


def semantic_inference(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-class semantic scores.

    class_logits: (Q, K+1) float, last column = background (no object).
    mask_logits: (Q, H, W) float logits at the output size.
    Returns (K, H, W) float: sum over queries of softmax(class)[:, :K] * sigmoid(mask).
    """
    class_probs = F.softmax(class_logits, dim=-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", class_probs, mask_logits.sigmoid())


@dataclass
class PanopticSegment:
    """One panoptic segment.

    segment_id: the value of its pixels in the panoptic id map (1, 2, ... in creation order).
    category_id: contiguous class index in [0, K). is_thing: whether the class is a thing class.
    source_queries: the object queries whose pixels form the segment (several for merged stuff).
    area: number of pixels with this id.
    """

    segment_id: int
    category_id: int
    is_thing: bool
    source_queries: list[int]
    area: int


@dataclass
class PanopticResult:
    """panoptic_seg: (H, W) int32 segment ids, 0 = void. segments in id order.

    kept_queries: queries that passed the class-probability test. overlap_rejected_queries: those of them
    whose visible part fell below the overlap threshold (kept queries with no visible pixels are in neither
    list of segments nor here).
    """

    panoptic_seg: Tensor
    segments: list[PanopticSegment]
    kept_queries: list[int]
    overlap_rejected_queries: list[int]


def panoptic_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    thing_class_ids: Collection[int],
    object_mask_threshold: float,
    overlap_threshold: float,
    mask_threshold: float = 0.5,
) -> PanopticResult:
    """Merge query masks into a non-overlapping panoptic id map.

    A query is kept when its most likely class is not background and that probability exceeds
    object_mask_threshold (0.8 in the evaluation configs, 0.4 in the demo configs). Each pixel goes to the
    kept query with the largest probability * sigmoid(mask); a kept query becomes a segment only if its
    won pixels cover at least overlap_threshold of its own (sigmoid >= mask_threshold) area, and keeps only
    its won pixels whose sigmoid also reaches mask_threshold (0.5 officially). Stuff queries of the same
    class are merged into the first segment of that class.

    class_logits: (Q, K+1) float, last column = background. mask_logits: (Q, H, W) float logits at the
    output size. thing_class_ids: contiguous class indices of thing classes.
    """
    num_classes = class_logits.shape[-1] - 1
    height, width = mask_logits.shape[-2:]
    scores, labels = F.softmax(class_logits, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    kept_queries = keep.nonzero()[:, 0]
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_logits.device)
    segments: list[PanopticSegment] = []
    if kept_queries.numel() == 0:
        return PanopticResult(panoptic_seg, segments, [], [])

    kept_logits = mask_logits if len(kept_queries) == len(mask_logits) else mask_logits[kept_queries]
    winner, winner_confident, confident_area = _winning_queries(
        kept_logits, scores[kept_queries], mask_threshold
    )
    num_kept = len(kept_queries)
    won_area = torch.bincount(winner.flatten(), minlength=num_kept).tolist()
    assigned_area = torch.bincount(winner[winner_confident], minlength=num_kept).tolist()

    things = set(thing_class_ids)
    overlap_rejected: list[int] = []
    stuff_segment_of_class: dict[int, PanopticSegment] = {}
    segment_id_of_kept = [0] * num_kept
    for k, query in enumerate(kept_queries.tolist()):
        if won_area[k] == 0 or confident_area[k] == 0 or assigned_area[k] == 0:
            continue
        if won_area[k] / confident_area[k] < overlap_threshold:
            overlap_rejected.append(query)
            continue
        category = int(labels[query])
        is_thing = category in things
        if not is_thing and category in stuff_segment_of_class:
            segment = stuff_segment_of_class[category]
            segment.source_queries.append(query)
            segment.area += assigned_area[k]
        else:
            segment = PanopticSegment(len(segments) + 1, category, is_thing, [query], assigned_area[k])
            segments.append(segment)
            if not is_thing:
                stuff_segment_of_class[category] = segment
        segment_id_of_kept[k] = segment.segment_id
    segment_ids = torch.tensor(segment_id_of_kept, dtype=torch.int32, device=mask_logits.device)
    panoptic_seg = torch.where(winner_confident, segment_ids[winner], panoptic_seg)
    return PanopticResult(panoptic_seg, segments, kept_queries.tolist(), overlap_rejected)


ROWS_PER_CHUNK = 32
"""Rows of the (kept queries, H, W) maps processed at once by `_winning_queries`: small enough that a
chunk's probabilities stay in the CPU cache between the operations that read them."""


def _winning_queries(
    kept_logits: Tensor, kept_scores: Tensor, mask_threshold: float = 0.5
) -> tuple[Tensor, Tensor, list[int]]:
    """For every pixel the kept query with the largest score * sigmoid(mask logit) (first one on ties)
    and whether that query is confident there (sigmoid >= mask_threshold); and each query's confident
    area.

    kept_logits: (N, H, W) float. kept_scores: (N,) float. Returns winner (H, W) int64, winner_confident
    (H, W) bool and confident_area (N ints). The pixels are visited in chunks of rows, so that each
    chunk's probabilities are computed once and read from cache; the values are those of whole-map
    operations (every operation is per pixel).
    """
    num_kept, height, width = kept_logits.shape
    winner = torch.empty((height, width), dtype=torch.int64, device=kept_logits.device)
    winner_confident = torch.empty((height, width), dtype=torch.bool, device=kept_logits.device)
    confident_area = torch.zeros(num_kept, dtype=torch.int64, device=kept_logits.device)
    weights = kept_scores.view(-1, 1, 1)
    for top in range(0, height, ROWS_PER_CHUNK):
        rows = slice(top, top + ROWS_PER_CHUNK)
        probabilities = kept_logits[:, rows].sigmoid()
        confident = probabilities >= mask_threshold
        chunk_winner = (weights * probabilities).max(0).indices
        winner[rows] = chunk_winner
        winner_confident[rows] = confident.gather(0, chunk_winner[None])[0]
        confident_area += confident.flatten(1).sum(1)
    return winner, winner_confident, confident_area.tolist()


@dataclass
class InstancePredictions:
    """Top-scoring (query, class) pairs, by decreasing class probability.

    masks: (N, H, W) bool, mask logit > 0. scores: (N,) float, class probability * mean sigmoid inside the
    mask. classes: (N,) int64 class index. query_indices: (N,) int64. flat_indices: (N,) int64 index into
    the flattened (Q, K) probability table (= query * K + class). class_probs: (N,) float.
    """

    masks: Tensor
    scores: Tensor
    classes: Tensor
    query_indices: Tensor
    flat_indices: Tensor
    class_probs: Tensor


def instance_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    max_detections: int,
    thing_class_ids: Collection[int] | None = None,
) -> InstancePredictions:
    """Instance segmentation from the object queries.

    Takes the max_detections largest entries of softmax(class_logits)[:, :K] over all (query, class) pairs
    (the official DETECTIONS_PER_IMAGE), keeps only thing classes when thing_class_ids is given (the
    official behaviour when panoptic output is on), and scores each mask by its mean probability.

    class_logits: (Q, K+1) float, last column = background. mask_logits: (Q, H, W) float logits at the
    output size.
    """
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    class_probs = F.softmax(class_logits, dim=-1)[:, :-1].flatten()
    top_probs, flat_indices = class_probs.topk(min(max_detections, num_queries * num_classes), sorted=True)
    classes = flat_indices % num_classes
    if thing_class_ids is not None:
        thing_ids = torch.as_tensor(sorted(set(thing_class_ids)), dtype=classes.dtype, device=classes.device)
        is_thing = torch.isin(classes, thing_ids)
        top_probs, flat_indices, classes = top_probs[is_thing], flat_indices[is_thing], classes[is_thing]
    query_indices = flat_indices // num_classes
    selected_logits = mask_logits[query_indices]
    masks = selected_logits > 0
    binary = masks.flatten(1).to(selected_logits.dtype)
    mean_probability = (selected_logits.sigmoid().flatten(1) * binary).sum(1) / (binary.sum(1) + 1e-6)
    return InstancePredictions(
        masks=masks,
        scores=top_probs * mean_probability,
        classes=classes,
        query_indices=query_indices,
        flat_indices=flat_indices,
        class_probs=top_probs,
    )


def grounding_similarity(query_embeddings: Tensor, text_embeddings: Tensor, logit_scale: Tensor) -> Tensor:
    """Scaled cosine similarity between grounding queries and sentences (the official vl_similarity).

    query_embeddings: (Q, D) float, decoder_norm(q) @ class_embed of the grounding queries.
    text_embeddings: (T, D) float, the unnormalised sentence embeddings (EOT token @ lang_proj).
    logit_scale: 0-dim float, the language encoder's log temperature; its exp is clamped at 100.
    Returns (Q, T) float.
    """
    queries = query_embeddings / (query_embeddings.norm(dim=-1, keepdim=True) + 1e-7)
    texts = text_embeddings / (text_embeddings.norm(dim=-1, keepdim=True) + 1e-7)
    return logit_scale.exp().clamp(max=100) * (queries @ texts.t())


def match_grounding_queries(similarity: Tensor) -> Tensor:
    """Best query per sentence. similarity: (Q, T). Returns (T,) int64 query indices (first maximum)."""
    return similarity.max(dim=0)[1]


def grounding_mask_logits(
    mask_logits: Tensor,
    matched_queries: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
) -> Tensor:
    """Mask logits of the matched grounding queries at the output size (bicubic path).

    mask_logits: (Q, H'/4, W'/4) float, the grounding queries' masks. matched_queries: (T,) int64.
    Returns (T, height, width) float logits; the binary masks are `> 0`.
    """
    return resize_mask_logits(mask_logits[matched_queries], padded_size, image_size, output_size, "bicubic")


def spatial_final_mask(
    prev_mask: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    probability_threshold: float = 0.5,
) -> Tensor:
    """Binary masks of the interactive (spatial) path, as the official evaluate_interactive makes them.

    prev_mask: (n, H'/4, W'/4) float logits of the selected spatial query per prompt.
    Returns (n, height, width) bool: sigmoid(bilinear resize) > probability_threshold.
    """
    logits = resize_mask_logits(prev_mask, padded_size, image_size, output_size, "bilinear")
    return logits.sigmoid() > probability_threshold


def demo_binary_mask(
    mask_logits: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int],
    logit_threshold: float = 0.0,
) -> Tensor:
    """Binary masks as the official demo makes them: bilinear to the padded size, crop, logit > threshold.

    mask_logits: (n, H'/4, W'/4) float. Returns (n, h, w) bool at the model input size.
    """
    return resize_mask_logits(mask_logits, padded_size, image_size, None) > logit_threshold
