"""Multi-scale deformable-attention pixel decoder (SEEM's `transformer_encoder_deform`, Mask2Former style).

The coarsest backbone levels (res3..res5 by default) are projected to `conv_dim` channels and refined
together by a deformable-attention transformer encoder (Deformable DETR). The finer levels (res2) are added
FPN-style on top of the finest encoder output, and `mask_features` is a 1x1 conv of the last of them.

Deformable attention is computed in pure PyTorch with `F.grid_sample` (bilinear, zero padding,
align_corners=False), the same sampling as the official CPU fallback, so it runs on any device and
exports to ONNX. There is no padding mask: the padded image area is attended like the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seem_ros.model.features import PixelFeatures
from seem_ros.model.position_encoding import sine_position_embedding

FEATURE_NAMES = ("res2", "res3", "res4", "res5")
FEATURE_STRIDES = (4, 8, 16, 32)
NUM_DECODER_LEVELS = 3
CPU_QUERIES_PER_CHUNK = 1024
"""`multi_scale_deformable_attention` on the CPU samples and sums this many queries at a time: SAM-ViT-B's
pixel decoder (21504 queries, 8 heads of 32, 3 levels, 4 points) 5.1 -> 3.1 s in bf16 and 8.3 -> 5.7 s in
fp32 on a 2-core CPU, against all queries at once, whose samples (88 MB a level) were written and read back
from memory. Elsewhere (CUDA, an ONNX export, torch.compile) all queries go at once: compiled, inductor
fuses the sampling with its weighted sum, and chunks would unroll into a graph it compiled for more than 15
minutes (SAM-ViT-B's whole image encoder on a 2-core CPU in bf16; at once, it compiled in 114 s and ran
3.6 s against 6.4 s eager)."""


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Sample every level bilinearly at the given locations and sum with the attention weights.

    value: (B, S, M, Dh), the levels' flattened maps concatenated along S (row-major per level).
    spatial_shapes: (H_l, W_l) per level, in the order of `value`.
    sampling_locations: (B, Lq, M, L, P, 2) in [0, 1] image coordinates, (x, y) order; (0, 0) is the
        top-left corner of the top-left pixel. Points outside read zeros.
    attention_weights: (B, Lq, M, L, P), normalised over L*P per head.
    Returns (B, Lq, M*Dh).

    On the CPU the queries are taken `CPU_QUERIES_PER_CHUNK` at a time (each query's sum in the same order,
    so the same values to the bit): a chunk's samples stay in cache while they are weighted and summed.
    """
    batch, _, num_heads, head_dim = value.shape
    _, num_queries, _, _, num_points, _ = sampling_locations.shape
    value_levels = value.split([height * width for height, width in spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    value_maps, grids, weights = [], [], []
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, H*W, M, Dh) -> (B*M, Dh, H, W)
        value_maps.append(
            value_levels[level].flatten(2).transpose(1, 2).reshape(batch * num_heads, head_dim, height, width)
        )
        # (B, Lq, M, P, 2) -> (B*M, P, Lq, 2): the queries last, so the samples (B*M, Dh, P, Lq) are
        # weighted and summed along contiguous rows of queries (with P last: 3 to 5 times slower)
        grids.append(sampling_grids[:, :, :, level].permute(0, 2, 3, 1, 4).flatten(0, 1))
        # (B, Lq, M, P) -> (B*M, 1, P, Lq)
        weights.append(
            attention_weights[:, :, :, level]
            .permute(0, 2, 3, 1)
            .reshape(batch * num_heads, 1, num_points, num_queries)
        )
    output = value.new_zeros(batch * num_heads, head_dim, num_queries)
    # an exported or compiled graph takes all queries at once, for any number of them (and writes no slice
    # in place)
    in_graph = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
    if value.device.type == "cpu" and not in_graph and num_queries > CPU_QUERIES_PER_CHUNK:
        for start in range(0, num_queries, CPU_QUERIES_PER_CHUNK):
            queries = slice(start, min(start + CPU_QUERIES_PER_CHUNK, num_queries))
            chunk_grids = [grid[:, :, queries] for grid in grids]
            chunk_weights = [level_weights[..., queries] for level_weights in weights]
            _add_weighted_samples(output[:, :, queries], value_maps, chunk_grids, chunk_weights)
    else:
        _add_weighted_samples(output, value_maps, grids, weights)
    return output.view(batch, num_heads * head_dim, num_queries).transpose(1, 2)


def _add_weighted_samples(
    output: Tensor, value_maps: Sequence[Tensor], grids: Sequence[Tensor], weights: Sequence[Tensor]
) -> None:
    """output (B*M, Dh, Lq) += every level's samples at `grids` (B*M, P, Lq, 2) times `weights`
    (B*M, 1, P, Lq), summed level by level, point by point."""
    for value_map, grid, level_weights in zip(value_maps, grids, weights, strict=True):
        sampled = F.grid_sample(value_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        for point in range(grid.shape[1]):
            output.addcmul_(sampled[:, :, point], level_weights[:, :, point])


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query reads P points per head and level around its reference."""

    def __init__(self, d_model: int, num_levels: int, num_heads: int, num_points: int) -> None:
        """d_model: token width (divisible by num_heads). num_levels, num_heads, num_points: L, M, P."""
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model {d_model} must be divisible by num_heads {num_heads}")
        self.d_model = d_model
        self.n_levels = num_levels
        self.n_heads = num_heads
        self.n_points = num_points
        self.sampling_offsets = nn.Linear(d_model, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(d_model, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """
        query: (B, Lq, C) queries with position embedding added.
        reference_points: (B or 1, Lq, L, 2) in [0, 1], (x, y) order.
        input_flatten: (B, S, C) all levels flattened and concatenated, S = sum H_l*W_l.
        spatial_shapes: (H_l, W_l) per level.
        Returns (B, Lq, C).
        """
        batch, num_queries, _ = query.shape
        value = self.value_proj(input_flatten).view(batch, -1, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        weights = weights.softmax(-1).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        normalizer = torch.tensor(
            [[width, height] for height, width in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = (
            reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        )
        # In fp32 under autocast too: a bf16 location on a 128-pixel level is off by up to a quarter of a
        # pixel, and a bf16 sum of the samples would round at every point
        with torch.autocast(query.device.type, enabled=False):
            output = multi_scale_deformable_attention(
                value.float(), spatial_shapes, locations.float(), weights.float()
            )
        return self.output_proj(output)


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, add & LayerNorm, ReLU FFN, add & LayerNorm."""

    def __init__(self, d_model: int, ffn_dim: int, num_levels: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, num_levels, num_heads, num_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """src, pos: (B, S, C). reference_points: (1, S, L, 2). Returns (B, S, C)."""
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, spatial_shapes))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class MSDeformAttnEncoder(nn.Module):
    """A stack of `MSDeformAttnEncoderLayer` (module name `encoder` in the checkpoint)."""

    def __init__(self, layers: Sequence[MSDeformAttnEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
    """Pixel centres of every level, ((j + 0.5) / W_l, (i + 0.5) / H_l), row-major.

    Returns (1, S, L, 2) in (x, y) order; the same point is repeated for every level L (no padding mask,
    so all valid ratios are 1).
    """
    points = []
    for height, width in spatial_shapes:
        ref_y = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        ref_x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ref_y, ref_x, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
    reference = torch.cat(points, 0)
    return reference[None, :, None, :].expand(1, -1, len(spatial_shapes), 2)


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Deformable encoder with a learned per-level embedding (module name `transformer` in the checkpoint)."""

    def __init__(
        self, d_model: int, num_heads: int, num_layers: int, ffn_dim: int, num_levels: int, num_points: int
    ) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(num_levels, d_model))
        self.encoder = MSDeformAttnEncoder(
            [
                MSDeformAttnEncoderLayer(d_model, ffn_dim, num_levels, num_heads, num_points)
                for _ in range(num_layers)
            ]
        )

    def forward(self, sources: Sequence[Tensor], pos_embeds: Sequence[Tensor]) -> list[Tensor]:
        """
        sources, pos_embeds: per level (B, C, H_l, W_l).
        Returns the encoded levels, each (B, C, H_l, W_l), in the input order.
        """
        spatial_shapes = [(source.shape[2], source.shape[3]) for source in sources]
        src = torch.cat([source.flatten(2).transpose(1, 2) for source in sources], 1)
        pos = torch.cat(
            [
                pos_embed.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
                for level, pos_embed in enumerate(pos_embeds)
            ],
            1,
        )
        reference_points = encoder_reference_points(spatial_shapes, src.device)
        memory = self.encoder(src, pos, reference_points, spatial_shapes)
        batch = memory.shape[0]
        levels = memory.split([height * width for height, width in spatial_shapes], dim=1)
        return [
            level.transpose(1, 2).reshape(batch, -1, height, width)
            for level, (height, width) in zip(levels, spatial_shapes, strict=True)
        ]


class ConvNormAct(nn.Conv2d):
    """Bias-free conv followed by a norm and an optional activation (detectron2 `Conv2d(norm=...)` keys)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        norm: nn.Module,
        activation: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(super().forward(x))
        return x if self.activation is None else self.activation(x)


class DeformablePixelDecoder(nn.Module):
    """SEEM's `MSDeformAttnPixelDecoder` with the official key names (`sem_seg_head.pixel_decoder.` stripped).

    Inputs are res2..res5 (strides 4, 8, 16, 32). The `num_transformer_levels` coarsest ones go through the
    deformable encoder (`input_proj.i` for res5, res4, res3 in that order); every finer level down to
    `common_stride` gets a lateral 1x1 conv (`adapter_k`, k = 1 for res2) added to the bilinearly upsampled
    coarser output, then a 3x3 conv + norm + ReLU (`layer_k`).
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        conv_dim: int,
        mask_dim: int,
        num_heads: int,
        num_encoder_layers: int,
        encoder_ffn_dim: int = 1024,
        num_points: int = 4,
        num_transformer_levels: int = 3,
        common_stride: int = 4,
        num_groups: int = 32,
    ) -> None:
        """
        in_channels: channels of res2, res3, res4, res5.
        conv_dim: width of the encoder and FPN (ENCODER.CONVS_DIM). mask_dim: mask_features channels.
        num_heads: deformable attention heads (DECODER.NHEADS in the official config).
        num_encoder_layers: ENCODER.TRANSFORMER_ENC_LAYERS.
        encoder_ffn_dim: encoder FFN width; the official builder fixes it at 1024 whatever the config says.
        num_points: sampling points per head and level.
        num_transformer_levels: how many of the coarsest levels the encoder refines (res3..res5 = 3).
        common_stride: stride of mask_features.
        num_groups: GroupNorm groups of every norm here (detectron2 "GN" = 32).
        """
        super().__init__()
        if len(in_channels) != len(FEATURE_NAMES):
            raise ValueError(f"in_channels needs one width per {FEATURE_NAMES}, got {list(in_channels)}")
        if not 1 <= num_transformer_levels <= len(FEATURE_NAMES):
            raise ValueError(f"num_transformer_levels must be in 1..4, got {num_transformer_levels}")
        first_transformer = len(FEATURE_NAMES) - num_transformer_levels
        # coarse to fine: res5, res4, res3
        self.transformer_in_features = list(FEATURE_NAMES[first_transformer:][::-1])
        transformer_channels = list(in_channels[first_transformer:][::-1])
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, conv_dim, kernel_size=1), nn.GroupNorm(num_groups, conv_dim))
            for channels in transformer_channels
        )
        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            num_heads=num_heads,
            num_layers=num_encoder_layers,
            ffn_dim=encoder_ffn_dim,
            num_levels=num_transformer_levels,
            num_points=num_points,
        )
        self.num_pos_feats = conv_dim // 2
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)

        num_fpn_levels = round(math.log2(FEATURE_STRIDES[first_transformer]) - math.log2(common_stride))
        first_fpn = first_transformer - num_fpn_levels
        if first_fpn < 0:
            raise ValueError(f"common_stride {common_stride} is finer than the finest input level (stride 4)")
        # fine to coarse naming (adapter_1 = finest), applied coarse to fine in forward
        self.fpn_in_features = list(FEATURE_NAMES[first_fpn:first_transformer])
        for index, channels in enumerate(in_channels[first_fpn:first_transformer]):
            lateral = ConvNormAct(channels, conv_dim, 1, nn.GroupNorm(num_groups, conv_dim))
            output = ConvNormAct(conv_dim, conv_dim, 3, nn.GroupNorm(num_groups, conv_dim), F.relu)
            self.add_module(f"adapter_{index + 1}", lateral)
            self.add_module(f"layer_{index + 1}", output)

    def forward(self, features: Mapping[str, Tensor]) -> PixelFeatures:
        """
        features: res2..res5, (B, C_i, H'/s_i, W'/s_i) float32 for strides s_i = 4, 8, 16, 32.
        Returns PixelFeatures: mask_features (B, mask_dim, H'/4, W'/4); multi_scale_features at strides
        32, 16, 8 (the encoder outputs, conv_dim channels); transformer_encoder_features = the stride-32
        encoder output (the same tensor as multi_scale_features[0]).
        """
        sources = []
        pos_embeds = []
        for projection, name in zip(self.input_proj, self.transformer_in_features, strict=True):
            feature = features[name].float()
            sources.append(projection(feature))
            pos_embeds.append(sine_position_embedding(feature, self.num_pos_feats))
        outputs = self.transformer(sources, pos_embeds)

        for index in reversed(range(len(self.fpn_in_features))):
            lateral = getattr(self, f"adapter_{index + 1}")
            output_conv = getattr(self, f"layer_{index + 1}")
            current = lateral(features[self.fpn_in_features[index]].float())
            upsampled = F.interpolate(
                outputs[-1], size=current.shape[-2:], mode="bilinear", align_corners=False
            )
            outputs.append(output_conv(current + upsampled))

        return PixelFeatures(
            mask_features=self.mask_features(outputs[-1]),
            multi_scale_features=outputs[:NUM_DECODER_LEVELS],
            transformer_encoder_features=outputs[0],
        )
