"""FocalNet image encoder (focal modulation networks), in both variants SEEM v1 ships.

- ``"focal_dw"`` (Focal-T): every block adds depthwise 3x3 residual convs (``dw1`` before the modulation,
  ``dw2`` before the MLP) and, with post-LN, normalises *after* each residual sum; stem conv padding 3.
- ``"focal"`` (Focal-L): no depthwise convs; with post-LN the LayerNorm is applied to the branch *before*
  it is added to the residual; stem conv padding 2.

Both use the scaled modulator (the context sum is divided by ``focal_level + 1``), depthwise focal convs
without bias, exact GELU, and one output LayerNorm per stage. Module names reproduce the official
checkpoint keys under ``backbone.``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

FocalVariant = Literal["focal_dw", "focal"]
FOCAL_VARIANTS: tuple[str, ...] = ("focal_dw", "focal")


def _channels_last_conv(conv: nn.Conv2d, tokens: Tensor) -> Tensor:
    """Apply an NCHW conv to (B, H, W, C) tokens and return (B, H, W, C')."""
    return conv(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class FocalModulation(nn.Module):
    """Focal modulation: a query times a gated sum of multi-scale depthwise contexts.

    Level l (0-based) uses a depthwise conv with kernel ``focal_window + 2 * l``, applied to the previous
    level's context; a global average of the last level is the extra (L+1)-th context.
    """

    def __init__(self, dim: int, focal_level: int, focal_window: int) -> None:
        """
        dim: channels C of the tokens.
        focal_level: number of local context levels L.
        focal_window: kernel size of the first level (levels grow by 2).
        """
        super().__init__()
        self.focal_level = focal_level
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.h = nn.Conv2d(dim, dim, kernel_size=1)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.focal_layers = nn.ModuleList()
        for level in range(focal_level):
            kernel_size = focal_window + 2 * level
            depthwise = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
            self.focal_layers.append(nn.Sequential(depthwise, nn.GELU()))

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: (B, H, W, C) float. Returns (B, H, W, C)."""
        channels = tokens.shape[-1]
        projected = self.f(tokens).permute(0, 3, 1, 2)
        query, context, gates = torch.split(projected, (channels, channels, self.focal_level + 1), dim=1)
        context_sum = 0
        for level, focal_layer in enumerate(self.focal_layers):
            context = focal_layer(context)
            context_sum = context_sum + context * gates[:, level : level + 1]
        global_context = self.act(context.mean(2, keepdim=True).mean(3, keepdim=True))
        context_sum = context_sum + global_context * gates[:, self.focal_level :]
        context_sum = context_sum / (self.focal_level + 1)
        modulated = (query * self.h(context_sum)).permute(0, 2, 3, 1)
        return self.proj(modulated)


class Mlp(nn.Module):
    """Two linear layers with exact GELU between them (``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: (..., dim). Returns (..., dim)."""
        return self.fc2(self.act(self.fc1(tokens)))


class FocalModulationBlock(nn.Module):
    """Focal modulation + MLP with residuals, layer scale and the variant's norm placement."""

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        variant: FocalVariant,
        mlp_ratio: float = 4.0,
        use_postln: bool = True,
        use_layerscale: bool = True,
        layerscale_value: float = 1e-4,
    ) -> None:
        """
        dim: channels C.
        focal_level, focal_window: see `FocalModulation`.
        variant: "focal_dw" adds the dw1/dw2 depthwise residual convs and normalises after each residual
            sum; "focal" normalises each branch before its residual sum (only matters with post-LN).
        mlp_ratio: MLP hidden width as a multiple of C.
        use_postln: LayerNorm after the branch (True in both released models) instead of before it.
        use_layerscale: learned per-channel scales gamma_1, gamma_2 on the two branches.
        layerscale_value: initial value of the layer scales (overwritten by a checkpoint).
        """
        super().__init__()
        if variant not in FOCAL_VARIANTS:
            raise ValueError(f"variant must be one of {FOCAL_VARIANTS}, got {variant!r}")
        self.variant = variant
        self.use_postln = use_postln
        has_depthwise = variant == "focal_dw"
        self.dw1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if has_depthwise else None
        self.norm1 = nn.LayerNorm(dim)
        self.modulation = FocalModulation(dim, focal_level, focal_window)
        self.dw2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if has_depthwise else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1: Tensor | float = 1.0
        self.gamma_2: Tensor | float = 1.0
        if use_layerscale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), layerscale_value))
            self.gamma_2 = nn.Parameter(torch.full((dim,), layerscale_value))

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: (B, H, W, C) float. Returns (B, H, W, C)."""
        x = tokens
        if self.dw1 is not None:
            x = x + _channels_last_conv(self.dw1, x)
        if not self.use_postln:
            x = x + self.gamma_1 * self.modulation(self.norm1(x))
            if self.dw2 is not None:
                x = x + _channels_last_conv(self.dw2, x)
            return x + self.gamma_2 * self.mlp(self.norm2(x))
        if self.variant == "focal_dw":
            x = self.norm1(x + self.gamma_1 * self.modulation(x))
            x = x + _channels_last_conv(self.dw2, x)
            return self.norm2(x + self.gamma_2 * self.mlp(x))
        x = x + self.gamma_1 * self.norm1(self.modulation(x))
        return x + self.gamma_2 * self.norm2(self.mlp(x))


class PatchEmbed(nn.Module):
    """Strided conv followed by a LayerNorm over channels: the stem and the between-stage downsampling."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, feature_map: Tensor) -> Tensor:
        """feature_map: (B, C_in, H, W). Returns (B, H/stride, W/stride, C_out) channels-last."""
        return self.norm(self.proj(feature_map).permute(0, 2, 3, 1))


class FocalNetStage(nn.Module):
    """``depth`` focal modulation blocks, optionally followed by a 2x downsampling `PatchEmbed`."""

    def __init__(
        self,
        dim: int,
        depth: int,
        focal_level: int,
        focal_window: int,
        variant: FocalVariant,
        mlp_ratio: float,
        use_postln: bool,
        use_layerscale: bool,
        downsample: PatchEmbed | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            FocalModulationBlock(
                dim,
                focal_level,
                focal_window,
                variant,
                mlp_ratio=mlp_ratio,
                use_postln=use_postln,
                use_layerscale=use_layerscale,
            )
            for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens: (B, H, W, C). Returns (stage output (B, H, W, C), input of the next stage
        (B, H/2, W/2, 2C), or the stage output again for the last stage)."""
        for block in self.blocks:
            tokens = block(tokens)
        if self.downsample is None:
            return tokens, tokens
        return tokens, self.downsample(tokens.permute(0, 3, 1, 2))


class FocalNet(nn.Module):
    """FocalNet backbone returning four feature maps at strides 4, 8, 16 and 32."""

    size_divisibility: int = 32

    def __init__(
        self,
        embed_dim: int,
        depths: Sequence[int],
        focal_levels: Sequence[int],
        focal_windows: Sequence[int],
        variant: FocalVariant,
        mlp_ratio: float = 4.0,
        use_conv_embed: bool = True,
        use_postln: bool = True,
        use_layerscale: bool = True,
    ) -> None:
        """
        embed_dim: channels of stage 0; stage i has embed_dim * 2**i (Focal-T 96, Focal-L 192).
        depths: blocks per stage, four entries (Focal-T [2, 2, 6, 2], Focal-L [2, 2, 18, 2]).
        focal_levels: focal levels per stage (Focal-T 3, Focal-L 4).
        focal_windows: first-level focal kernel per stage (3 in both).
        variant: "focal_dw" (Focal-T) or "focal" (Focal-L); see the module docstring.
        mlp_ratio: MLP hidden width as a multiple of the stage width.
        use_conv_embed: overlapping convs (stem 7x7 stride 4, downsampling 3x3 stride 2) instead of
            non-overlapping patch convs. True in both released models.
        use_postln: post-LN blocks (True in both released models).
        use_layerscale: per-channel layer scales gamma_1/gamma_2 (True in both released models).
        """
        super().__init__()
        if variant not in FOCAL_VARIANTS:
            raise ValueError(f"variant must be one of {FOCAL_VARIANTS}, got {variant!r}")
        num_stages = len(depths)
        if num_stages != 4 or len(focal_levels) != 4 or len(focal_windows) != 4:
            raise ValueError(
                "depths, focal_levels and focal_windows need 4 entries (one per stage), got "
                f"{list(depths)}, {list(focal_levels)}, {list(focal_windows)}"
            )
        self.out_channels: tuple[int, ...] = tuple(embed_dim * 2**stage for stage in range(num_stages))

        if use_conv_embed:
            stem_padding = 3 if variant == "focal_dw" else 2
            self.patch_embed = PatchEmbed(3, embed_dim, kernel_size=7, stride=4, padding=stem_padding)
        else:
            self.patch_embed = PatchEmbed(3, embed_dim, kernel_size=4, stride=4, padding=0)

        self.layers = nn.ModuleList()
        for stage, dim in enumerate(self.out_channels):
            downsample = None
            if stage < num_stages - 1:
                kernel_size, padding = (3, 1) if use_conv_embed else (2, 0)
                downsample = PatchEmbed(dim, 2 * dim, kernel_size=kernel_size, stride=2, padding=padding)
            self.layers.append(
                FocalNetStage(
                    dim,
                    depths[stage],
                    focal_levels[stage],
                    focal_windows[stage],
                    variant,
                    mlp_ratio,
                    use_postln,
                    use_layerscale,
                    downsample,
                )
            )
        for stage, dim in enumerate(self.out_channels):
            self.add_module(f"norm{stage}", nn.LayerNorm(dim))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images: (B, 3, H', W') float32, normalised and zero-padded so H', W' are multiples of 32.

        Returns {"res2", "res3", "res4", "res5"}: (B, out_channels[i], H'/s, W'/s) NCHW float32 with
        s = 4, 8, 16, 32.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.size_divisibility or width % self.size_divisibility:
            raise ValueError(
                f"image size must be a multiple of {self.size_divisibility}, got {height}x{width}; "
                "pad bottom/right with zeros after normalising"
            )
        features = {}
        tokens = self.patch_embed(images)
        for stage, layer in enumerate(self.layers):
            stage_output, tokens = layer(tokens)
            output_norm = getattr(self, f"norm{stage}")
            features[f"res{stage + 2}"] = output_norm(stage_output).permute(0, 3, 1, 2).contiguous()
        return features
