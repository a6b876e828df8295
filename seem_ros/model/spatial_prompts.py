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
seeded run reproduces the official tensors. Sampling (`sample_spatial_prompt_points`) runs on the host,
where the prompts are drawn, and encoding (`encode_spatial_prompts`) on the model's device: the device
gets the points in one transfer and never has to report a count back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seem_ros.model.transfer import to_device


@dataclass
class SpatialPromptTokens:
    """Everything the decoder needs from the visual prompts of B images (B = 1 as encoded; more images'
    as one batch with `stack_spatial_tokens`), n prompts each.

    mean_positive, mean_negative: (n, B, D) mean features per prompt (-1 where a prompt has no point).
    level_tokens: per decoder level, (N_i, B, D) point tokens (pn_indicator added).
    level_padding: per level, (B, N_i) bool, True = padding token.
    level_prompt_index: per level, (B, N_i, 1) float prompt index of each token (-1 for padding).
    """

    mean_positive: Tensor
    mean_negative: Tensor
    level_tokens: list[Tensor]
    level_padding: list[Tensor]
    level_prompt_index: list[Tensor]

    @property
    def num_prompts(self) -> int:
        return self.mean_positive.shape[0]

    def padded_to(self, lengths: Sequence[int]) -> SpatialPromptTokens:
        """The same prompts with each level's tokens padded to `lengths[level]` tokens (zeros, prompt index
        -1, padding True): a padding token attends only other padding tokens and nothing attends it, so
        the decoder gives the same answer, from inputs of a shape fixed per length."""
        tokens, paddings, indices = [], [], []
        for level, length in enumerate(lengths):
            count = self.level_tokens[level].shape[0]
            extra = length - count
            if extra < 0:
                raise ValueError(f"level {level} has {count} tokens, more than {length}")
            tokens.append(F.pad(self.level_tokens[level], (0, 0, 0, 0, 0, extra)))
            paddings.append(F.pad(self.level_padding[level], (0, extra), value=True))
            indices.append(F.pad(self.level_prompt_index[level], (0, 0, 0, extra), value=-1.0))
        return SpatialPromptTokens(self.mean_positive, self.mean_negative, tokens, paddings, indices)

    def select_images(self, index: Tensor) -> SpatialPromptTokens:
        """The prompts of images `index` ((B',) long, repeats allowed), in that order."""
        return SpatialPromptTokens(
            mean_positive=self.mean_positive[:, index],
            mean_negative=self.mean_negative[:, index],
            level_tokens=[tokens[:, index] for tokens in self.level_tokens],
            level_padding=[padding[index] for padding in self.level_padding],
            level_prompt_index=[prompt_index[index] for prompt_index in self.level_prompt_index],
        )


@dataclass
class PromptPoints:
    """Pixels sampled from prompt masks.

    rows: (K, 3) float32 (prompt index, y / H', x / W') in raster order, so each prompt's rows are
    consecutive. counts: how many rows each prompt has, known on the host.
    """

    rows: Tensor
    counts: tuple[int, ...]


@dataclass
class SpatialPromptPoints:
    """The points of one image's visual prompts, in the order they are drawn: positive and negative points
    for the prompts' mean vectors, then per decoder level positive and negative points."""

    mean_positive: PromptPoints
    mean_negative: PromptPoints
    level_positive: list[PromptPoints]
    level_negative: list[PromptPoints]

    @property
    def num_prompts(self) -> int:
        return len(self.mean_positive.counts)

    def to(self, device: torch.device) -> SpatialPromptPoints:
        """The same points on `device`, moved in one transfer."""
        groups = [self.mean_positive, self.mean_negative, *self.level_positive, *self.level_negative]
        rows = to_device(torch.cat([group.rows for group in groups]), device)
        moved = [
            PromptPoints(part, group.counts)
            for part, group in zip(rows.split([len(group.rows) for group in groups]), groups, strict=True)
        ]
        levels = len(self.level_positive)
        return SpatialPromptPoints(moved[0], moved[1], moved[2 : 2 + levels], moved[2 + levels :])


@dataclass
class PromptPixels:
    """The pixels of prompt masks, the population points are drawn from.

    normalized: (P, 3) float32 (prompt index, y / H', x / W') in raster order.
    prompt_of_pixel: (P,) long. probabilities: (P,) float32, every prompt present with the same total.
    """

    normalized: Tensor
    prompt_of_pixel: Tensor
    probabilities: Tensor
    num_prompts: int

    @classmethod
    def of(cls, masks: Tensor) -> PromptPixels:
        """masks: (n, H', W') bool prompt masks at the padded size (read on the CPU)."""
        num_prompts, height, width = masks.shape
        flat = np.flatnonzero(masks.cpu().numpy())  # in raster order, as torch's nonzero, 30 times faster
        prompt, pixel = np.divmod(flat, height * width)
        pixels = torch.from_numpy(np.stack([prompt, *np.divmod(pixel, width)], axis=1))
        normalized = pixels / torch.tensor([1, height, width])[None]
        prompt_of_pixel = pixels[:, 0]
        probabilities = torch.zeros(len(pixels), dtype=torch.float32)
        if len(pixels):
            present, counts = prompt_of_pixel.unique(return_counts=True)
            weight_per_prompt = torch.zeros(num_prompts, dtype=torch.float32)
            weight_per_prompt[present] = 1.0 / (len(present) * counts)
            probabilities = weight_per_prompt[prompt_of_pixel]
        return cls(normalized, prompt_of_pixel, probabilities, num_prompts)

    def sample(self, max_points: int, generator: torch.Generator | None) -> PromptPoints:
        """K = min(max_points, P) points drawn the way SEEM v1 does, on the CPU from a CPU generator (so a
        seeded call draws the same points on every device)."""
        if len(self.probabilities) == 0:
            return PromptPoints(torch.zeros((0, 3), dtype=torch.float32), (0,) * self.num_prompts)
        count = min(max_points, len(self.probabilities))
        chosen = torch.multinomial(self.probabilities, count, replacement=False, generator=generator)
        chosen = chosen.sort()[0]
        counts = torch.bincount(self.prompt_of_pixel[chosen], minlength=self.num_prompts)
        return PromptPoints(self.normalized[chosen], tuple(counts.tolist()))


def sample_spatial_prompt_points(
    positive_masks: Tensor, negative_masks: Tensor, max_points: list[int], generator: torch.Generator | None
) -> SpatialPromptPoints:
    """Draw the points of one image's visual prompts in the official order.

    positive_masks, negative_masks: (n, H', W') bool at the padded input size.
    max_points: per decoder level, then one more for the mean vectors (the official `MAX_SPATIAL_LEN`).
    """
    if positive_masks.shape != negative_masks.shape or positive_masks.dim() != 3:
        raise ValueError(
            "positive and negative prompt masks must both be (n, H, W), got "
            f"{tuple(positive_masks.shape)} and {tuple(negative_masks.shape)}"
        )
    positive, negative = PromptPixels.of(positive_masks), PromptPixels.of(negative_masks)
    mean_positive = positive.sample(max_points[-1], generator)
    mean_negative = negative.sample(max_points[-1], generator)
    level_positive, level_negative = [], []
    for level_max_points in max_points[:-1]:
        level_positive.append(positive.sample(level_max_points, generator))
        level_negative.append(negative.sample(level_max_points, generator))
    return SpatialPromptPoints(mean_positive, mean_negative, level_positive, level_negative)


def sample_features(features: Tensor, points_xy: Tensor) -> Tensor:
    """Bilinear features at normalised points.

    features: (B, C, H, W); points_xy: (B, N, 2) in [0, 1], (x, y) order, align_corners=True.
    Returns (B, C, N).
    """
    grid = (2.0 * points_xy - 1.0).unsqueeze(2)
    return F.grid_sample(features, grid, mode="bilinear", align_corners=True).squeeze(3)


def _mean_per_prompt(features: Tensor, counts: tuple[int, ...]) -> Tensor:
    """features: (C, K), each prompt's `counts` columns in turn. Returns (num_prompts, C), -1 rows for
    prompts without a point."""
    means = []
    start = 0
    for count in counts:
        if count:
            means.append(features[:, start : start + count].mean(dim=1))
        else:
            means.append(-torch.ones(features.shape[0], dtype=features.dtype, device=features.device))
        start += count
    return torch.stack(means)


def _point_features(features: Tensor, rows: Tensor) -> Tensor:
    """features: (1, C, H, W); rows: (K, 3) points. Returns (1, C, K)."""
    return sample_features(features, rows[None, :, 1:].flip(-1).to(features.dtype))


def encode_spatial_prompts(
    points: SpatialPromptPoints,
    mask_features: Tensor,
    level_features: list[Tensor],
    level_embeddings: Tensor,
    level_projections: list[Tensor],
    positive_negative_embedding: Tensor,
) -> SpatialPromptTokens:
    """Build the spatial prompt tokens of one image from its sampled points (`sample_spatial_prompt_points`).

    mask_features: (1, D, H'/4, W'/4). level_features: per decoder level (1, D, h_i, w_i), the maps whose
    decoder memory (map + level embedding) the official code samples; level_embeddings: (L, D).
    level_projections: per level (D, D) `mask_sptial_embed`. positive_negative_embedding: (2, D).
    Nothing here waits for the device: the points go up in one transfer and every count is on the host.
    """
    if mask_features.shape[0] != 1:
        raise ValueError(
            f"visual prompts are encoded one image at a time, got batch {mask_features.shape[0]}"
        )
    points = points.to(mask_features.device)
    means = [
        _mean_per_prompt(_point_features(mask_features, group.rows)[0], group.counts)[:, None]
        for group in (points.mean_positive, points.mean_negative)
    ]
    tokens, paddings, indices = [], [], []
    for level, level_map in enumerate(level_features):
        positive, negative = points.level_positive[level], points.level_negative[level]
        rows = torch.cat([positive.rows, negative.rows])
        # sampled, then the level embedding added, then projected: bilinear weights sum to one and sampling
        # is linear, so this is the official projection of the whole level's memory sampled, with a
        # product per point instead of per pixel and no copy of the level
        sampled = _point_features(level_map, rows) + level_embeddings[level][None, :, None]
        level_tokens = sampled.permute(2, 0, 1) @ level_projections[level]
        indicator = torch.cat(
            [
                positive_negative_embedding[0:1].expand(len(positive.rows), -1),
                positive_negative_embedding[1:2].expand(len(negative.rows), -1),
            ]
        )
        tokens.append(level_tokens + indicator[:, None])
        paddings.append(torch.zeros((1, rows.shape[0]), dtype=torch.bool, device=rows.device))
        indices.append(rows[None, :, 0:1])
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


def stack_spatial_tokens(parts: Sequence[SpatialPromptTokens]) -> SpatialPromptTokens:
    """The prompts of several images (one image each, the same number of prompts) as one batch, each
    level padded to its longest (padding changes no image's answer, see `padded_to`)."""
    if len({part.num_prompts for part in parts}) != 1:
        raise ValueError("images decoded in one batch need the same number of visual prompts")
    lengths = [
        max(part.level_tokens[level].shape[0] for part in parts)
        for level in range(len(parts[0].level_tokens))
    ]
    padded = [part.padded_to(lengths) for part in parts]
    return SpatialPromptTokens(
        mean_positive=torch.cat([part.mean_positive for part in padded], dim=1),
        mean_negative=torch.cat([part.mean_negative for part in padded], dim=1),
        level_tokens=[
            torch.cat([part.level_tokens[level] for part in padded], dim=1) for level in range(len(lengths))
        ],
        level_padding=[
            torch.cat([part.level_padding[level] for part in padded]) for level in range(len(lengths))
        ],
        level_prompt_index=[
            torch.cat([part.level_prompt_index[level] for part in padded]) for level in range(len(lengths))
        ],
    )
