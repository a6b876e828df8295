"""Visual prompt sampling (`seem_ros.model.spatial_prompts`): the points are drawn on the host with their
per-prompt counts, so encoding them on the device needs no count read back."""

from __future__ import annotations

import torch

from seem_ros.model.spatial_prompts import (
    PromptPixels,
    encode_spatial_prompts,
    sample_spatial_prompt_points,
)


def _masks() -> torch.Tensor:
    """Three prompts on a 16x24 grid: a block, nothing, a stripe."""
    masks = torch.zeros(3, 16, 24, dtype=torch.bool)
    masks[0, 2:6, 3:9] = True
    masks[2, 10, :] = True
    return masks


def test_points_come_per_prompt_in_raster_order_with_their_counts() -> None:
    points = PromptPixels.of(_masks()).sample(20, torch.Generator().manual_seed(0))
    assert points.rows.device.type == "cpu" and points.rows.shape == (20, 3)
    assert sum(points.counts) == 20 and points.counts[1] == 0 and min(points.counts[0], points.counts[2]) > 0
    expected_prompts = torch.repeat_interleave(torch.arange(3), torch.tensor(points.counts))
    assert torch.equal(points.rows[:, 0].long(), expected_prompts)
    again = PromptPixels.of(_masks()).sample(20, torch.Generator().manual_seed(0))
    assert torch.equal(points.rows, again.rows)


def test_every_pixel_is_kept_when_there_are_fewer_than_max_points() -> None:
    points = PromptPixels.of(_masks()).sample(1000, torch.Generator().manual_seed(0))
    assert points.counts == (24, 0, 24)


def test_tokens_of_sampled_points() -> None:
    masks = _masks()
    points = sample_spatial_prompt_points(masks, torch.zeros_like(masks), [8, 8, 8, 12], None)
    assert points.num_prompts == 3 and points.mean_negative.counts == (0, 0, 0)
    moved = points.to(torch.device("cpu"))
    assert torch.equal(moved.level_positive[2].rows, points.level_positive[2].rows)
    dim = 4
    mask_features = torch.randn(1, dim, 4, 6)
    sizes = [(1, 1), (1, 2), (2, 3)]
    levels = [torch.randn(1, dim, height, width) for height, width in sizes]
    tokens = encode_spatial_prompts(
        points, mask_features, levels, torch.randn(3, dim), [torch.eye(dim)] * 3, torch.randn(2, dim)
    )
    assert tokens.num_prompts == 3
    assert torch.equal(tokens.mean_positive[1], -torch.ones(1, dim))  # the empty prompt
    assert torch.equal(tokens.mean_negative, -torch.ones(3, 1, dim))
    assert [level.shape for level in tokens.level_tokens] == [(8, 1, dim)] * 3


def test_level_tokens_sample_the_decoder_memory_the_official_code_projects() -> None:
    """Each level's tokens are the official ones: its decoder memory (map + level embedding) projected, then
    read at the points; here the map and its embedding are read and projected instead."""
    masks = _masks()
    points = sample_spatial_prompt_points(masks, torch.zeros_like(masks), [30, 30, 30, 12], None)
    generator = torch.Generator().manual_seed(0)
    dim, sizes = 8, [(4, 6), (8, 12), (16, 24)]
    levels = [torch.randn(1, dim, height, width, generator=generator) for height, width in sizes]
    embeddings = torch.randn(3, dim, generator=generator)
    projections = [torch.randn(dim, dim, generator=generator) for _ in sizes]
    indicator = torch.zeros(2, dim)
    tokens = encode_spatial_prompts(
        points, torch.randn(1, dim, 16, 24), levels, embeddings, projections, indicator
    )
    for level, (level_map, tokens_of_level) in enumerate(zip(levels, tokens.level_tokens, strict=True)):
        memory = level_map + embeddings[level][None, :, None, None]
        projected = torch.einsum("bchw,cd->bdhw", memory, projections[level])
        rows = points.level_positive[level].rows
        grid = (2.0 * rows[None, :, 1:].flip(-1) - 1.0).unsqueeze(2)
        want = torch.nn.functional.grid_sample(projected, grid, align_corners=True)[0, :, :, 0].T
        torch.testing.assert_close(tokens_of_level[:, 0], want, rtol=1e-5, atol=1e-5)
