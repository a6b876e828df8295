"""Winograd F(4x4, 3x3) convolution: what a 3x3, stride-1, zero-padded ("same") convolution computes, with
a quarter of the multiplications (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).

Each 4x4 block of the output is computed from the 6x6 input tile around it: the tile and the 3x3 kernel
are taken to a 6x6 "Winograd domain" by fixed matrices (B^T d B and G g G^T), multiplied element-wise there,
and brought back by A^T (.) A. Summed over input channels, the element-wise products become 36 independent
matrix products, (O x C) @ (C x tiles), which is where the time goes: 36 C O multiply-adds per 16 outputs
instead of 9 C O per output. The transforms use the interpolation points 0, +-1, +-2, which keep fp32
results within about 1e-5 (relative) of a direct convolution.

The ONNX fast path uses it for the pixel decoder's 3x3 convolutions at strides 4 and 8, about 60% of
Focal-T's image-encoder time (`TransformerEncoderPixelDecoder.with_winograd_convolutions`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OUTPUT_TILE = 4
INPUT_TILE = OUTPUT_TILE + 2

INPUT_TRANSFORM = torch.tensor(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=torch.float64,
)
"""B^T (6 x 6): takes a 6-long run of input values to the Winograd domain."""

KERNEL_TRANSFORM = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
"""G (6 x 3): takes a 3-tap kernel to the Winograd domain."""

OUTPUT_TRANSFORM = torch.tensor(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=torch.float64,
)
"""A^T (4 x 6): takes a Winograd-domain run back to 4 output values."""


def transform_kernel(weight: Tensor) -> Tensor:
    """weight: (O, C, 3, 3) convolution kernel. Returns (36, O, C) float32, G g G^T of every kernel, with
    the 36 Winograd-domain positions first (computed in float64)."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"a Winograd F(4x4, 3x3) kernel must be 3x3, got {tuple(weight.shape[-2:])}")
    transformed = torch.einsum(
        "ai,ocij,bj->aboc", KERNEL_TRANSFORM, weight.detach().to(torch.float64), KERNEL_TRANSFORM
    )
    return transformed.reshape(INPUT_TILE * INPUT_TILE, *weight.shape[:2]).to(torch.float32)


class WinogradConv2d(nn.Module):
    """A 3x3, stride-1, padding-1, ungrouped convolution computed with Winograd F(4x4, 3x3).

    Built from a convolution's weight (O, C, 3, 3) and optional bias (O,). Any input size works (the input
    is zero-padded to a multiple of 4 and the output cropped back), batch size 1.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("kernel", transform_kernel(weight))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.register_buffer("input_transform", INPUT_TRANSFORM.to(torch.float32))
        self.register_buffer("output_transform", OUTPUT_TRANSFORM.to(torch.float32))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> WinogradConv2d:
        """The Winograd form of `conv`, which must be 3x3 with stride 1, padding 1, dilation 1, groups 1."""
        shape = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
        if shape != ((3, 3), (1, 1), (1, 1), (1, 1), 1):
            raise ValueError(
                "Winograd F(4x4, 3x3) replaces only 3x3 convolutions with stride 1, padding 1, dilation 1"
                f" and groups 1; got kernel, stride, padding, dilation, groups = {shape}"
            )
        return cls(conv.weight, conv.bias)

    def forward(self, feature_map: Tensor) -> Tensor:
        """feature_map: (1, C, H, W). Returns (1, O, H, W), the convolution's output."""
        _, channels, height, width = feature_map.shape
        tile_rows = (height + OUTPUT_TILE - 1) // OUTPUT_TILE
        tile_columns = (width + OUTPUT_TILE - 1) // OUTPUT_TILE
        covered_height = tile_rows * OUTPUT_TILE
        covered_width = tile_columns * OUTPUT_TILE
        padded = F.pad(feature_map, (1, 1 + covered_width - width, 1, 1 + covered_height - height))[0]
        # (6, C, tile_rows, W + 2): row r of tile t is input row 4 t + r
        rows = torch.stack([padded[:, r : r + covered_height : OUTPUT_TILE] for r in range(INPUT_TILE)])
        rows = (self.input_transform @ rows.reshape(INPUT_TILE, -1)).reshape(rows.shape)
        # (6 rows, 6 columns, C * tiles) after the column transform
        tiles = torch.stack(
            [rows[..., c : c + covered_width : OUTPUT_TILE] for c in range(INPUT_TILE)], dim=1
        )
        tiles = self.input_transform @ tiles.reshape(INPUT_TILE, INPUT_TILE, -1)
        num_tiles = tile_rows * tile_columns
        products = self.kernel @ tiles.reshape(INPUT_TILE * INPUT_TILE, channels, num_tiles)
        out_channels = products.shape[1]
        # back over columns, then rows: (4 rows, 4 columns, O, tile_rows, tile_columns)
        products = self.output_transform @ products.reshape(INPUT_TILE, INPUT_TILE, -1)
        blocks = self.output_transform @ products.reshape(INPUT_TILE, -1)
        blocks = blocks.reshape(OUTPUT_TILE, OUTPUT_TILE, out_channels, tile_rows, tile_columns)
        output = blocks.permute(2, 3, 0, 4, 1).reshape(1, out_channels, covered_height, covered_width)
        output = output[:, :, :height, :width]
        if self.bias is not None:
            output = output + self.bias[:, None, None]
        return output
