"""Typed containers passed between the image encoder stages and the decoder."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class PixelFeatures:
    """Output of a pixel decoder for a padded image of size (H', W').

    mask_features: (B, D, H'/4, W'/4) float32, the per-pixel embedding every mask is a dot product with.
    multi_scale_features: three (B, D, h_i, w_i) maps at strides 32, 16, 8, in that order; decoder
        layer i cross-attends level i % 3.
    transformer_encoder_features: (B, D, H'/32, W'/32) encoder output before the last FPN conv
        (returned for parity checks; the decoder does not use it).
    """

    mask_features: Tensor
    multi_scale_features: list[Tensor]
    transformer_encoder_features: Tensor | None = None
