"""Sine position embedding of DETR / Mask2Former, as SEEM's pixel decoder and decoder use it."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_embedding(
    feature_map: Tensor, num_pos_feats: int, temperature: float = 10000.0, eps: float = 1e-6
) -> Tensor:
    """Normalised 2-D sine embedding of a feature map's grid (no padding mask).

    feature_map: (B, C, H, W); only its shape, dtype and device are used.
    Returns (B, 2 * num_pos_feats, H, W): channels [pos_y, pos_x], each interleaving sin (even
    frequencies) and cos (odd frequencies). Cumulative positions start at 1 and are scaled to 2*pi.
    """
    batch, _, height, width = feature_map.shape
    device = feature_map.device
    ones = torch.ones((batch, height, width), device=device, dtype=torch.float32)
    y_embed = ones.cumsum(1, dtype=torch.float32)
    x_embed = ones.cumsum(2, dtype=torch.float32)
    scale = 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale

    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)

    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
    return pos.to(feature_map.dtype)
