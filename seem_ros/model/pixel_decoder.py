"""Pixel decoder of SEEM v1 Focal/DaViT models: an FPN whose coarsest level passes a transformer encoder.

res5 is projected to ``conv_dim`` channels, refined by a post-norm transformer encoder (sine position
embedding added to queries and keys) and a 3x3 conv; each finer level adds a 1x1 lateral projection of its
backbone map to the nearest-upsampled coarser output and applies a 3x3 conv. The three coarsest outputs are
the decoder's memory levels; a 3x3 conv on the finest one gives the per-pixel mask features. Module names
reproduce the official checkpoint keys under ``sem_seg_head.pixel_decoder.``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from seem_ros.model.features import PixelFeatures
from seem_ros.model.position_encoding import sine_position_embedding

NUM_MULTI_SCALE_LEVELS = 3


class NormalizedConv2d(nn.Conv2d):
    """Bias-free conv followed by GroupNorm(32) (stored as ``norm``) and an optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(32, out_channels)
        self.relu = relu

    def forward(self, feature_map: Tensor) -> Tensor:
        """feature_map: (B, in_channels, H, W). Returns (B, out_channels, H, W)."""
        output = self.norm(super().forward(feature_map))
        return F.relu(output) if self.relu else output


class TransformerEncoderLayer(nn.Module):
    """Post-norm self-attention + ReLU feed-forward layer; position added to queries and keys only."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, position: Tensor) -> Tensor:
        """tokens, position: (N, B, dim), sequence first. Returns (N, B, dim)."""
        query_key = tokens + position
        attended = self.self_attn(query_key, query_key, tokens, need_weights=False)[0]
        tokens = self.norm1(tokens + attended)
        return self.norm2(tokens + self.linear2(F.relu(self.linear1(tokens))))


class TransformerEncoder(nn.Module):
    """A stack of `TransformerEncoderLayer` (``layers``) without a final norm."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(dim, num_heads, dim_feedforward) for _ in range(num_layers)
        )

    def forward(self, tokens: Tensor, position: Tensor) -> Tensor:
        """tokens, position: (N, B, dim), sequence first. Returns (N, B, dim)."""
        for layer in self.layers:
            tokens = layer(tokens, position)
        return tokens


class FeatureMapEncoder(nn.Module):
    """Runs `TransformerEncoder` (``encoder``) over the flattened grid of a feature map, with the
    normalised sine position embedding of the grid."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(dim, num_layers, num_heads, dim_feedforward)

    def forward(self, feature_map: Tensor) -> Tensor:
        """feature_map: (B, dim, h, w). Returns (B, dim, h, w)."""
        batch, dim, height, width = feature_map.shape
        # Sequence first and contiguous, the layout nn.MultiheadAttention computes in: its projections of
        # a strided view (a batch-first input, which it transposes) fall back to batched matrix products
        # that copy the weight per token (bf16 on the CPU at batch 2: 3 times slower than batch 1).
        position = sine_position_embedding(feature_map, dim // 2).flatten(2).permute(2, 0, 1).contiguous()
        tokens = feature_map.flatten(2).permute(2, 0, 1).contiguous()
        encoded = self.encoder(tokens, position)
        return encoded.permute(1, 2, 0).reshape(batch, dim, height, width)


class TransformerEncoderPixelDecoder(nn.Module):
    """FPN pixel decoder with a transformer encoder on the coarsest backbone level."""

    def __init__(
        self,
        in_channels: Sequence[int],
        conv_dim: int = 512,
        mask_dim: int = 512,
        num_encoder_layers: int = 6,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
    ) -> None:
        """
        in_channels: channels of the backbone maps "res2", "res3", ... in order of increasing stride
            (Focal-T 96/192/384/768, Focal-L 192/384/768/1536).
        conv_dim: channels of every FPN level and of the transformer encoder (divisible by 32 for GN).
        mask_dim: channels of the mask features.
        num_encoder_layers: transformer encoder layers on the coarsest level.
        num_heads: attention heads of the encoder.
        dim_feedforward: hidden width of the encoder's feed-forward layers.
        """
        super().__init__()
        if len(in_channels) < NUM_MULTI_SCALE_LEVELS:
            raise ValueError(
                f"in_channels needs at least {NUM_MULTI_SCALE_LEVELS} levels, got {list(in_channels)}"
            )
        self.feature_names = [f"res{level + 2}" for level in range(len(in_channels))]
        coarsest = len(in_channels)
        for level, channels in enumerate(in_channels[:-1], start=1):
            self.add_module(f"adapter_{level}", NormalizedConv2d(channels, conv_dim, 1, relu=False))
            self.add_module(f"layer_{level}", NormalizedConv2d(conv_dim, conv_dim, 3, relu=True))
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        self.input_proj = nn.Conv2d(in_channels[-1], conv_dim, kernel_size=1)
        self.transformer = FeatureMapEncoder(conv_dim, num_encoder_layers, num_heads, dim_feedforward)
        self.add_module(f"layer_{coarsest}", NormalizedConv2d(conv_dim, conv_dim, 3, relu=True))

    def forward(self, features: dict[str, Tensor]) -> PixelFeatures:
        """features: backbone maps {"res2": (B, C_0, H'/4, W'/4), ..., "res5": (B, C_3, H'/32, W'/32)}.

        Returns `PixelFeatures` with mask_features (B, mask_dim, H'/4, W'/4), multi_scale_features at
        strides 32, 16, 8 (B, conv_dim, ., .) and transformer_encoder_features (B, conv_dim, H'/32, W'/32).
        """
        missing = [name for name in self.feature_names if name not in features]
        if missing:
            raise KeyError(f"backbone features {missing} missing; got {sorted(features)}")
        coarsest = len(self.feature_names)
        encoded = self.transformer(self.input_proj(features[self.feature_names[-1]]))
        output = getattr(self, f"layer_{coarsest}")(encoded)
        outputs = [output]
        for level in range(coarsest - 1, 0, -1):
            lateral = getattr(self, f"adapter_{level}")(features[self.feature_names[level - 1]])
            upsampled = F.interpolate(output, size=lateral.shape[-2:], mode="nearest")
            output = getattr(self, f"layer_{level}")(lateral + upsampled)
            outputs.append(output)
        return PixelFeatures(
            mask_features=self.mask_features(output),
            multi_scale_features=outputs[:NUM_MULTI_SCALE_LEVELS],
            transformer_encoder_features=encoded,
        )
