"""Typed containers passed between the image encoder stages and the decoder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
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

    @staticmethod
    def concatenate(parts: Sequence[PixelFeatures]) -> PixelFeatures:
        """The mask features and multi-scale maps of several parts' images as one batch; parts that lie one
        after another in one tensor (an encoder's batch cut into its images) are joined without a copy."""
        return PixelFeatures(
            mask_features=_joined([part.mask_features for part in parts]),
            multi_scale_features=[
                _joined([part.multi_scale_features[level] for part in parts])
                for level in range(len(parts[0].multi_scale_features))
            ],
        )

    def select_images(self, index: Tensor) -> PixelFeatures:
        """The features of images `index` ((B',) long, repeats allowed), in that order."""
        encoder = self.transformer_encoder_features
        return PixelFeatures(
            mask_features=self.mask_features[index],
            multi_scale_features=[level[index] for level in self.multi_scale_features],
            transformer_encoder_features=None if encoder is None else encoder[index],
        )


def _joined(tensors: Sequence[Tensor]) -> Tensor:
    """`torch.cat(tensors)` along the batch: a view of their storage where each tensor starts where the one
    before it ends (the same storage, strides and image shape), else a copy."""
    first = tensors[0]
    offset = first.storage_offset()
    for tensor in tensors:
        follows = (
            tensor.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
            and tensor.dtype == first.dtype
            and tensor.stride() == first.stride()
            and tensor.shape[1:] == first.shape[1:]
            and tensor.storage_offset() == offset
        )
        if not follows:
            return torch.cat(list(tensors))
        offset += tensor.shape[0] * tensor.stride(0)
    batch = sum(tensor.shape[0] for tensor in tensors)
    return first.as_strided((batch, *first.shape[1:]), first.stride())
