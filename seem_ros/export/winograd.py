"""Winograd F(4x4, 3x3) convolution: what a 3x3, stride-1, zero-padded ("same") convolution computes, with
a quarter of the multiplications (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).

Each 4x4 block of the output is computed from the 6x6 input tile around it: the tile and the 3x3 kernel
are taken to a 6x6 "Winograd domain" by fixed matrices (B^T d B and G g G^T), multiplied element-wise there,
and brought back by A^T (.) A. Summed over input channels, the element-wise products become 36 independent
matrix products, (O x C) @ (C x tiles), which is where the time goes: 36 C O multiply-adds per 16 outputs
instead of 9 C O per output. The transforms use the interpolation points 0, +-1, +-2, which keep fp32
results within about 1e-5 (relative) of a direct convolution.

The input transform of every overlapping 6x6 tile (stride 4) is one grouped convolution: 36 fixed 6x6
filters (the Kronecker products of B^T's rows) per input channel, which ONNX Runtime runs about twice as
fast as cutting the tiles out (SpaceToDepth, slices, concatenation) and multiplying them by the (36 x 36)
transform. The output transform is one (16 x 36) matrix product (A^T's Kronecker products) and the 4x4
output blocks are put in place with DepthToSpace.

The ONNX fast path uses it for the pixel decoder's 3x3 convolutions at strides 4, 8 and 16, about 60% of
Focal-T's image-encoder time (`winograd_pixel_decoder`)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seem_ros.model.pixel_decoder import NormalizedConv2d, TransformerEncoderPixelDecoder

OUTPUT_TILE = 4
INPUT_TILE = OUTPUT_TILE + 2
STRIDE_4_BANDS = 2
"""Row bands of the pixel decoder's stride-4 convolutions: an input padded to a multiple of 32 gives them
an even number of tile rows, at least 2."""

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


def tile_kernel() -> Tensor:
    """(36, 6, 6) float64: B^T d B as 36 6x6 filters, one per Winograd-domain position (row-major); their
    cross-correlation with a 6x6 input tile gives that tile in the Winograd domain."""
    return torch.einsum("ar,bc->abrc", INPUT_TRANSFORM, INPUT_TRANSFORM).reshape(36, INPUT_TILE, INPUT_TILE)


def block_transform() -> Tensor:
    """(16, 36) float64: A^T m A as one matrix, from the Winograd domain positions (row-major) to the 4x4
    output block (row-major)."""
    return torch.einsum("ia,jb->ijab", OUTPUT_TRANSFORM, OUTPUT_TRANSFORM).reshape(16, 36)


class _DepthToSpace(torch.autograd.Function):
    """ONNX DepthToSpace, mode DCR: (B, b * b * C, H, W) -> (B, C, b H, b W), channel (i b + j) C + c of
    block (y, x) going to pixel (b y + i, b x + j) of channel c."""

    @staticmethod
    def forward(ctx: object, blocks: Tensor, block: int) -> Tensor:
        batch, depth, rows, columns = blocks.shape
        channels = depth // (block * block)
        pixels = blocks.reshape(batch, block, block, channels, rows, columns).permute(0, 3, 4, 1, 5, 2)
        return pixels.reshape(batch, channels, rows * block, columns * block)

    @staticmethod
    def symbolic(graph: torch.Graph, blocks: torch.Value, block: int) -> torch.Value:
        return graph.op("DepthToSpace", blocks, blocksize_i=block, mode_s="DCR")


class WinogradConv2d(nn.Module):
    """A 3x3, stride-1, padding-1, ungrouped convolution computed with Winograd F(4x4, 3x3).

    Args:
        weight: (O, C, 3, 3) convolution kernel.
        bias: (O,) or None.
        aligned: the caller only passes inputs whose height and width are multiples of 4 (a stride-4 or
            stride-8 map of an image padded to a multiple of 32): no padding to whole tiles and no crop,
            two copies of the feature map fewer. Otherwise any size works (the input is zero-padded to whole
            tiles and the output cropped back). Any batch size.
        bands: with aligned, the tile rows are computed in this many bands of rows, one after the other:
            the Winograd-domain tiles and products, each about 36 / 16 times the feature map, then exist for
            one band at a time (the same values). Needs at least `bands` tile rows (16 * bands input rows
            of an image padded to a multiple of 32 at stride 4: 2 bands always fit there).
    """

    def __init__(
        self, weight: Tensor, bias: Tensor | None = None, aligned: bool = False, bands: int = 1
    ) -> None:
        super().__init__()
        if bands < 1 or (bands > 1 and not aligned):
            raise ValueError(f"bands must be 1, or more with aligned inputs; got {bands} (aligned={aligned})")
        self.aligned = aligned
        self.bands = bands
        in_channels = weight.shape[1]
        self.register_buffer("kernel", transform_kernel(weight))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.register_buffer(
            "tile_filters", tile_kernel().to(torch.float32).repeat(in_channels, 1, 1).unsqueeze(1)
        )
        self.register_buffer("block_transform", block_transform().to(torch.float32))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, aligned: bool = False, bands: int = 1) -> WinogradConv2d:
        """The Winograd form of `conv`, which must be 3x3 with stride 1, padding 1, dilation 1, groups 1."""
        shape = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
        if shape != ((3, 3), (1, 1), (1, 1), (1, 1), 1):
            raise ValueError(
                "Winograd F(4x4, 3x3) replaces only 3x3 convolutions with stride 1, padding 1, dilation 1"
                f" and groups 1; got kernel, stride, padding, dilation, groups = {shape}"
            )
        return cls(conv.weight, conv.bias, aligned=aligned, bands=bands)

    def forward(self, feature_map: Tensor) -> Tensor:
        """feature_map: (B, C, H, W). Returns (B, O, H, W), the convolution's output."""
        height, width = feature_map.shape[-2:]
        if not self.aligned:
            tile_rows = (height + OUTPUT_TILE - 1) // OUTPUT_TILE
            tile_columns = (width + OUTPUT_TILE - 1) // OUTPUT_TILE
            padded = F.pad(
                feature_map, (0, OUTPUT_TILE * tile_columns - width, 0, OUTPUT_TILE * tile_rows - height)
            )
            output = self._convolve_tiles(padded, padding=(1, 1))[:, :, :height, :width]
        else:
            if not torch.jit.is_tracing() and (height % OUTPUT_TILE or width % OUTPUT_TILE):
                raise ValueError(
                    f"an aligned WinogradConv2d needs sizes that are multiples of 4, got {height}x{width}"
                )
            output = torch.cat([self._band(feature_map, band) for band in range(self.bands)], dim=2)
        if self.bias is not None:
            output = output + self.bias[:, None, None]
        return output

    def _band(self, feature_map: Tensor, band: int) -> Tensor:
        """The output rows of tile rows [T band / bands, T (band + 1) / bands) of an aligned input (T tile
        rows): tile row t reads input rows 4t - 1 to 4t + 4, zero outside the map."""
        if self.bands == 1:
            return self._convolve_tiles(feature_map, padding=(1, 1))
        tile_rows = feature_map.shape[-2] // OUTPUT_TILE
        first = tile_rows * band // self.bands
        last = tile_rows * (band + 1) // self.bands
        if band == 0:  # the zero row above the map comes from the convolution's padding
            return self._convolve_tiles(feature_map[:, :, : OUTPUT_TILE * last + 1], padding=(1, 1))
        rows = feature_map[:, :, OUTPUT_TILE * first - 1 : OUTPUT_TILE * last + 1]
        if band == self.bands - 1:
            rows = F.pad(rows, (0, 0, 0, 1))  # the zero row below the map
        return self._convolve_tiles(rows, padding=(0, 1))

    def _convolve_tiles(self, rows: Tensor, padding: tuple[int, int]) -> Tensor:
        """rows: (B, C, R, W) input rows, W a multiple of 4, R such that the tiles (stride 4) after
        `padding` (rows, columns) are whole. Returns (B, O, 4 tile rows, W) without bias."""
        batch, channels = rows.shape[:2]
        tiles = F.conv2d(rows, self.tile_filters, stride=OUTPUT_TILE, padding=padding, groups=channels)
        tile_rows, tile_columns = tiles.shape[-2:]
        winograd = tiles.reshape(batch, channels, INPUT_TILE * INPUT_TILE, -1).transpose(1, 2)
        products = self.kernel @ winograd
        out_channels = products.shape[2]
        blocks = self.block_transform @ products.reshape(batch, INPUT_TILE * INPUT_TILE, -1)
        blocks = blocks.reshape(batch, OUTPUT_TILE * OUTPUT_TILE * out_channels, tile_rows, tile_columns)
        return _DepthToSpace.apply(blocks, OUTPUT_TILE)


def winograd_normalized_conv(conv: NormalizedConv2d, aligned: bool, bands: int = 1) -> nn.Sequential:
    """The computation of a 3x3 `NormalizedConv2d` with its convolution done by `WinogradConv2d` (see its
    `aligned` and `bands`), followed by the same GroupNorm module and ReLU."""
    return nn.Sequential(
        WinogradConv2d.from_conv(conv, aligned=aligned, bands=bands),
        conv.norm,
        nn.ReLU() if conv.relu else nn.Identity(),
    )


def winograd_pixel_decoder(pixel_decoder: TransformerEncoderPixelDecoder) -> TransformerEncoderPixelDecoder:
    """A copy of `pixel_decoder` whose 3x3 convolutions at strides 4, 8 and 16 (the mask-feature conv and
    the three finest FPN layers, about 93% of this decoder's FLOPs) run as Winograd F(4x4, 3x3): the same
    outputs up to float rounding (about 1e-5 relative), a quarter of the multiplications. Inputs padded to a
    multiple of 32 make the stride-4 and stride-8 maps whole tiles (`WinogradConv2d`'s `aligned`); the two
    stride-4 convolutions run in two bands of rows (`bands`), which halves the largest transient tensors of
    the image encoder. For the exported fast path; the model itself keeps direct convolutions and is not
    modified."""
    fast = copy.deepcopy(pixel_decoder)
    for level, aligned, bands in ((1, True, STRIDE_4_BANDS), (2, True, 1), (3, False, 1)):
        name = f"layer_{level}"
        setattr(fast, name, winograd_normalized_conv(getattr(fast, name), aligned, bands))
    fast.mask_features = WinogradConv2d.from_conv(fast.mask_features, aligned=True, bands=STRIDE_4_BANDS)
    return fast
