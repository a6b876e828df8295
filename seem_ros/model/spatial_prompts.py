"""Visual prompts (clicks, strokes, boxes, masks) turned into SEEM's spatial prompt tokens.

Every visual prompt reaches the decoder as a binary mask at the padded input size. Its pixels are
sampled (at most `max_points` per call, shared equally between prompts), and the features at those
points become (a) one mean vector per prompt, read from the mask features and used to pick the
answer among the spatial queries, and (b) one token per point and per decoder feature level, read
from the level features projected by `mask_sptial_embed[i]`, which the spatial queries attend.

Point coordinates are (y / H', x / W') of the padded grid, sampled with `grid_sample(...,
align_corners=True)`, as the official v1 code does. The official code draws the points with
`torch.multinomial` even when every point is kept; the draws are made here in the same order from
the given generator (positive mean, negative mean, then positive and negative per level), so a
seeded run reproduces the official tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class SpatialPromptTokens:
    """Everything the decoder needs from the visual prompts of one image (batch size 1).

    mean_positive, mean_negative: (n, 1, D) mean features per prompt (-1 where a prompt has no point).
    level_tokens: per decoder level, (N_i, 1, D) point tokens (pn_indicator added).
    level_padding: per level, (1, N_i) bool, True = padding token.
    level_prompt_index: per level, (1, N_i, 1) float prompt index of each token (-1 for padding).
    """

    mean_positive: Tensor
    mean_negative: Tensor
    level_tokens: list[Tensor]
    level_padding: list[Tensor]
    level_prompt_index: list[Tensor]

    @property
    def num_prompts(self) -> int:
        return self.mean_positive.shape[0]


def sample_prompt_points(masks: Tensor, max_points: int, generator: torch.Generator | None) -> Tensor:
    """Sample prompt pixels the way SEEM v1 does.

    masks: (n, H', W') bool prompt masks at the padded size.
    Returns (K, 3) float32 rows (prompt index, y / H', x / W'), K = min(max_points, #pixels), in raster
    order. Every prompt present gets the same total probability.
    """
    points = masks.nonzero()
    if points.shape[0] == 0:
        return torch.zeros((0, 3), dtype=torch.float32, device=masks.device)
    _, height, width = masks.shape
    scale = torch.tensor([1, height, width], device=masks.device)[None]
    normalized = points / scale
    prompt_of_point = points[:, 0]
    present, counts = prompt_of_point.unique(return_counts=True)
    weight_per_prompt = torch.zeros(masks.shape[0], dtype=torch.float32, device=masks.device)
    weight_per_prompt[present] = 1.0 / (len(present) * counts)
    probabilities = weight_per_prompt[prompt_of_point]
    # drawn on the CPU with a CPU generator, so a seeded call draws the same points on every device
    chosen = torch.multinomial(
        probabilities.cpu(), min(max_points, len(probabilities)), replacement=False, generator=generator
    ).sort()[0]
    return normalized[chosen.to(masks.device)]


def sample_features(features: Tensor, points_xy: Tensor) -> Tensor:
    """Bilinear features at normalised points.

    features: (B, C, H, W); points_xy: (B, N, 2) in [0, 1], (x, y) order, align_corners=True.
    Returns (B, C, N).
    """
    grid = (2.0 * points_xy - 1.0).unsqueeze(2)
    return F.grid_sample(features, grid, mode="bilinear", align_corners=True).squeeze(3)


def _mean_per_prompt(features: Tensor, prompt_index: Tensor, num_prompts: int) -> Tensor:
    """features: (C, K); prompt_index: (K,) long. Returns (num_prompts, C), -1 rows for empty prompts."""
    means = []
    for prompt in range(num_prompts):
        selected = prompt_index == prompt
        if selected.any():
            means.append(features[:, selected].mean(dim=1))
        else:
            means.append(-torch.ones(features.shape[0], dtype=features.dtype, device=features.device))
    return torch.stack(means)


def encode_spatial_prompts(
    positive_masks: Tensor,
    negative_masks: Tensor,
    mask_features: Tensor,
    level_sources: list[Tensor],
    level_sizes: list[tuple[int, int]],
    level_projections: list[Tensor],
    positive_negative_embedding: Tensor,
    max_points: list[int],
    generator: torch.Generator | None,
) -> SpatialPromptTokens:
    """Build the spatial prompt tokens of one image.

    positive_masks, negative_masks: (n, H', W') bool at the padded input size.
    mask_features: (1, D, H'/4, W'/4). level_sources: per level (h_i * w_i, 1, D) decoder memory
    (features + level embedding, no position embedding), sizes in level_sizes.
    level_projections: per level (D, D) `mask_sptial_embed`. positive_negative_embedding: (2, D).
    max_points: per level, then one more for the mean vectors (the official `MAX_SPATIAL_LEN`).
    """
    if positive_masks.shape != negative_masks.shape or positive_masks.dim() != 3:
        raise ValueError(
            "positive and negative prompt masks must both be (n, H, W), got "
            f"{tuple(positive_masks.shape)} and {tuple(negative_masks.shape)}"
        )
    if mask_features.shape[0] != 1:
        raise ValueError(
            f"visual prompts are encoded one image at a time, got batch {mask_features.shape[0]}"
        )
    num_prompts = positive_masks.shape[0]
    means = []
    for masks in (positive_masks, negative_masks):
        points = sample_prompt_points(masks, max_points[-1], generator)
        sampled = sample_features(mask_features, points[None, :, 1:].flip(-1).to(mask_features.dtype))
        means.append(_mean_per_prompt(sampled[0], points[:, 0].long(), num_prompts)[:, None])

    tokens, paddings, indices = [], [], []
    for level, (source, (height, width)) in enumerate(zip(level_sources, level_sizes, strict=True)):
        projected = (source.view(height, width, 1, -1) @ level_projections[level]).permute(2, 3, 0, 1)
        positive_points = sample_prompt_points(positive_masks, max_points[level], generator)
        negative_points = sample_prompt_points(negative_masks, max_points[level], generator)
        points = torch.cat([positive_points, negative_points])
        level_tokens = sample_features(projected, points[None, :, 1:].flip(-1).to(projected.dtype))
        level_tokens = level_tokens.permute(2, 0, 1)
        is_positive = torch.arange(points.shape[0], device=points.device) < positive_points.shape[0]
        indicator = torch.where(
            is_positive[:, None], positive_negative_embedding[0:1], positive_negative_embedding[1:2]
        )
        tokens.append(level_tokens + indicator[:, None])
        paddings.append(torch.zeros((1, points.shape[0]), dtype=torch.bool, device=points.device))
        indices.append(points[None, :, 0:1])
    return SpatialPromptTokens(
        mean_positive=means[0],
        mean_negative=means[1],
        level_tokens=tokens,
        level_padding=paddings,
        level_prompt_index=indices,
    )


def concatenate_spatial_tokens(parts: list[SpatialPromptTokens]) -> SpatialPromptTokens:
    """Merge the prompts of several token sets (e.g. clicks on this image and a referring image) into one
    set, prompt indices renumbered in order, so all prompts are decoded in one pass."""
    if len(parts) == 1:
        return parts[0]
    tokens, paddings, indices = [], [], []
    for level in range(len(parts[0].level_tokens)):
        offset = 0
        level_indices = []
        for part in parts:
            index = part.level_prompt_index[level]
            level_indices.append(torch.where(index >= 0, index + offset, index))
            offset += part.num_prompts
        tokens.append(torch.cat([part.level_tokens[level] for part in parts]))
        paddings.append(torch.cat([part.level_padding[level] for part in parts], dim=1))
        indices.append(torch.cat(level_indices, dim=1))
    return SpatialPromptTokens(
        mean_positive=torch.cat([part.mean_positive for part in parts]),
        mean_negative=torch.cat([part.mean_negative for part in parts]),
        level_tokens=tokens,
        level_padding=paddings,
        level_prompt_index=indices,
    )
