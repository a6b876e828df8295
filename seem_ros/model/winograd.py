"""Winograd F(4x4, 3x3) convolution: what a 3x3, stride-1, zero-padded ("same") convolution computes, with
a quarter of the multiplications (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).

Each 4x4 block of the output is computed from the 6x6 input tile around it: the tile and the 3x3 kernel
are taken to a 6x6 "Winograd domain" by fixed matrices (B^T d B and G g G^T), multiplied element-wise there,
and brought back by A^T (.) A. Summed over input channels, the element-wise products become 36 independent
matrix products, (O x C) @ (C x tiles), which is where the time goes: 36 C O multiply-adds per 16 outputs
instead of 9 C O per output. The transforms use the interpolation points 0, +-1, +-2, which keep fp32
results within about 1e-5 (relative) of a direct convolution.

The tiles are cut with SpaceToDepth (each 4x4 block of the padded input becomes 16 channels; a tile is its
block plus the first two rows and columns of the blocks below and to the right) and the output blocks are
put in place with DepthToSpace: in ONNX Runtime these two are an order of magnitude faster than the general
transposes that strided slicing and a final permutation export to. Both transforms are then single matrix
products over all channels and tiles: (36 x 36) Kronecker products of B^T, and (16 x 36) of A^T.

The ONNX fast path uses it for the pixel decoder's 3x3 convolutions at strides 4 and 8, about 60% of
Focal-T's image-encoder time (`TransformerEncoderPixelDecoder.with_winograd_convolutions`)."""

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
    the 36 Winograd-domain positions first, row-major (computed in float64)."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"a Winograd F(4x4, 3x3) kernel must be 3x3, got {tuple(weight.shape[-2:])}")
    transformed = torch.einsum(
        "ai,ocij,bj->aboc", KERNEL_TRANSFORM, weight.detach().to(torch.float64), KERNEL_TRANSFORM
    )
    return transformed.reshape(INPUT_TILE * INPUT_TILE, *weight.shape[:2]).to(torch.float32)


def _tile_positions() -> list[tuple[int, int]]:
    """The (row, column) within a 6x6 tile of each of the 36 values as `_cut_tiles` stacks them: the 16 of
    the tile's own 4x4 block, the 8 of the block to its right (its first 2 columns), the 8 of the block
    below (its first 2 rows), the 4 of the block below right."""
    own, right, below, below_right = range(4), range(4, 6), range(4, 6), range(4, 6)
    return (
        [(row, column) for row in own for column in own]
        + [(row, column) for row in own for column in right]
        + [(row, column) for row in below for column in own]
        + [(row, column) for row in below_right for column in below_right]
    )


def tile_transform() -> Tensor:
    """(36, 36) float64: B^T d B as one matrix, from the tile values in `_tile_positions` order to the
    Winograd domain positions, row-major."""
    rows, columns = zip(*_tile_positions(), strict=True)
    return torch.einsum("ar,bc->abrc", INPUT_TRANSFORM, INPUT_TRANSFORM)[:, :, rows, columns].reshape(36, 36)


def block_transform() -> Tensor:
    """(16, 36) float64: A^T m A as one matrix, from the Winograd domain positions (row-major) to the 4x4
    output block (row-major)."""
    return torch.einsum("ia,jb->ijab", OUTPUT_TRANSFORM, OUTPUT_TRANSFORM).reshape(16, 36)


class _SpaceToDepth(torch.autograd.Function):
    """ONNX SpaceToDepth: (1, C, H, W) -> (1, b * b * C, H / b, W / b), the channel of input pixel
    (b y + i, b x + j) of channel c being (i b + j) C + c."""

    @staticmethod
    def forward(ctx: object, feature_map: Tensor, block: int) -> Tensor:
        _, channels, height, width = feature_map.shape
        blocks = feature_map.reshape(channels, height // block, block, width // block, block)
        return blocks.permute(2, 4, 0, 1, 3).reshape(1, block * block * channels, height // block, -1)

    @staticmethod
    def symbolic(graph: torch.Graph, feature_map: torch.Value, block: int) -> torch.Value:
        return graph.op("SpaceToDepth", feature_map, blocksize_i=block)


class _DepthToSpace(torch.autograd.Function):
    """ONNX DepthToSpace, mode DCR: the inverse of `_SpaceToDepth`."""

    @staticmethod
    def forward(ctx: object, blocks: Tensor, block: int) -> Tensor:
        _, depth, rows, columns = blocks.shape
        channels = depth // (block * block)
        pixels = blocks.reshape(block, block, channels, rows, columns).permute(2, 3, 0, 4, 1)
        return pixels.reshape(1, channels, rows * block, columns * block)

    @staticmethod
    def symbolic(graph: torch.Graph, blocks: torch.Value, block: int) -> torch.Value:
        return graph.op("DepthToSpace", blocks, blocksize_i=block, mode_s="DCR")


class WinogradConv2d(nn.Module):
    """A 3x3, stride-1, padding-1, ungrouped convolution computed with Winograd F(4x4, 3x3).

    Built from a convolution's weight (O, C, 3, 3) and optional bias (O,). Any input size works (the input
    is zero-padded to whole tiles and the output cropped back), batch size 1.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("kernel", transform_kernel(weight))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.register_buffer("tile_transform", tile_transform().to(torch.float32))
        self.register_buffer("block_transform", block_transform().to(torch.float32))

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
        tiles = self._cut_tiles(feature_map, tile_rows, tile_columns)
        winograd = (self.tile_transform @ tiles.reshape(INPUT_TILE * INPUT_TILE, -1)).reshape(
            INPUT_TILE * INPUT_TILE, channels, tile_rows * tile_columns
        )
        products = self.kernel @ winograd
        out_channels = products.shape[1]
        blocks = self.block_transform @ products.reshape(INPUT_TILE * INPUT_TILE, -1)
        blocks = blocks.reshape(1, OUTPUT_TILE * OUTPUT_TILE * out_channels, tile_rows, tile_columns)
        output = _DepthToSpace.apply(blocks, OUTPUT_TILE)[:, :, :height, :width]
        if self.bias is not None:
            output = output + self.bias[:, None, None]
        return output

    @staticmethod
    def _cut_tiles(feature_map: Tensor, tile_rows: int, tile_columns: int) -> Tensor:
        """(36, C, tile_rows, tile_columns): the values of every 6x6 input tile (the zero-padded input from
        row 4 r - 1 and column 4 t - 1), in `_tile_positions` order."""
        _, channels, height, width = feature_map.shape
        padded = F.pad(
            feature_map,
            (1, OUTPUT_TILE * (tile_columns + 1) - width - 1, 1, OUTPUT_TILE * (tile_rows + 1) - height - 1),
        )
        blocks = _SpaceToDepth.apply(padded, OUTPUT_TILE).reshape(
            OUTPUT_TILE, OUTPUT_TILE, channels, tile_rows + 1, tile_columns + 1
        )
        own = blocks[:, :, :, :tile_rows, :tile_columns]
        right = blocks[:, :2, :, :tile_rows, 1:]
        below = blocks[:2, :, :, 1:, :tile_columns]
        below_right = blocks[:2, :2, :, 1:, 1:]
        return torch.cat(
            [part.reshape(-1, channels, tile_rows, tile_columns) for part in (own, right, below, below_right)]
        )
