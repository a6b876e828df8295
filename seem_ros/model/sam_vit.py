"""SAM ViT image encoder with the simple feature pyramid SEEM puts on top of it (SAM-ViT-B/L v1 backbone).

The trunk is the Segment Anything image encoder: a 16x16 patch embedding, an absolute position embedding of
the fixed token grid, and pre-norm transformer blocks that attend either inside 14x14 windows or over the
whole grid, with decomposed relative positions. SAM's own neck is replaced by `SimpleFeaturePyramid`, which
turns the single stride-16 map into res2..res5 (strides 4, 8, 16, 32).

The position embedding is added without interpolation, so the input must be exactly `img_size` x `img_size`:
callers pad the normalised image bottom/right with zeros to that size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURE_NAMES = ("res2", "res3", "res4", "res5")
FEATURE_STRIDES = (4, 8, 16, 32)
BIAS_ELEMENTS_PER_CHUNK = 2**25
"""`Attention` builds its relative-position bias, and attends, for as many query rows at a time as keep
one image's bias under this many elements (128 MiB in fp32). A global block of SAM-ViT-B (4096 tokens, 12
heads) built it whole: 805 MB in fp32 and a 1.9 GB peak for one block on a CPU; in chunks of 10 rows the
outputs are the same to the bit (each query's softmax is its own) and one block peaks at about 0.7 GB.
The chunks are fixed at construction, from the grid, so an exported graph holds them for any batch."""


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, S, S) image -> (B, S/p, S/p, C) channels-last tokens."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).permute(0, 2, 3, 1)


class MLPBlock(nn.Module):
    """Linear -> GELU (exact) -> Linear on the last axis."""

    def __init__(self, embedding_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


def relative_position_table(rel_pos: Tensor, size: int) -> Tensor:
    """Gather a (2*size-1, C) relative-position table into (size, size, C) indexed by (query, key).

    Entry [i, j] is the table row for the offset i - j. The table must have exactly 2*size-1 rows (the
    official model never resizes it because the token grid is fixed).
    """
    if rel_pos.shape[0] != 2 * size - 1:
        raise ValueError(
            f"relative-position table has {rel_pos.shape[0]} rows, expected {2 * size - 1} for a grid of "
            f"{size}; the input must be exactly the ViT image size"
        )
    coords = torch.arange(size, device=rel_pos.device)
    offsets = coords[:, None] - coords[None, :] + (size - 1)
    return rel_pos[offsets]


class Attention(nn.Module):
    """Multi-head self-attention over a token grid with decomposed relative positions (MViTv2 style).

    The attention logit of query (qh, qw) and key (kh, kw) is scale * q.k + q.Rh[qh - kh] + q.Rw[qw - kw],
    where q is unscaled in the two relative terms. Query rows are attended in chunks that bound the bias
    (`BIAS_ELEMENTS_PER_CHUNK`).
    """

    def __init__(self, dim: int, num_heads: int, grid_size: int) -> None:
        """
        dim: token width C (divisible by num_heads).
        num_heads: number of heads.
        grid_size: side of the square grid this layer attends over (window size, or the full token grid
            for global blocks); sets the relative-position tables to (2*grid_size-1, C/num_heads).
        """
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))
        self.rows_per_chunk = max(1, BIAS_ELEMENTS_PER_CHUNK // (num_heads * grid_size**3))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) float32. Returns (B, H, W, C)."""
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # each (B, heads, H*W, head_dim)

        table_h = relative_position_table(self.rel_pos_h, height)  # (H, H, head_dim)
        table_w = relative_position_table(self.rel_pos_w, width)  # (W, W, head_dim)
        grid_query = query.reshape(batch, self.num_heads, height, width, -1)
        # contiguous, so the bias chunks summed from them are too (einsum hands on a permuted layout, and
        # each chunk was then copied once more to be reshaped: 0.3 of SAM-ViT-B's 3.3 s bf16 ViT on a CPU)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_query, table_h).contiguous()  # (B, heads, H, W, H)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_query, table_w).contiguous()  # (B, heads, H, W, W)

        chunks = []
        for top in range(0, height, self.rows_per_chunk):
            bottom = min(top + self.rows_per_chunk, height)
            bias = rel_h[:, :, top:bottom, :, :, None] + rel_w[:, :, top:bottom, :, None, :]
            bias = bias.reshape(batch, self.num_heads, (bottom - top) * width, height * width)
            rows = query[:, :, top * width : bottom * width]
            chunks.append(F.scaled_dot_product_attention(rows, key, value, attn_mask=bias, scale=self.scale))
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=2)
        out = out.reshape(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, height, width, -1))


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Zero-pad (B, H, W, C) bottom/right to multiples of window_size and cut it into windows.

    Returns (B * nH * nW, window_size, window_size, C), windows in row-major order per image.
    """
    batch, height, width, channels = x.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    rows, cols = (height + pad_h) // window_size, (width + pad_w) // window_size
    x = x.reshape(batch, rows, window_size, cols, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, channels)


def window_unpartition(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of `window_partition`: (B * nH * nW, ws, ws, C) -> (B, height, width, C), padding dropped."""
    rows = (height + window_size - 1) // window_size
    cols = (width + window_size - 1) // window_size
    channels = windows.shape[-1]
    x = windows.reshape(-1, rows, cols, window_size, window_size, channels)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, rows * window_size, cols * window_size, channels)
    return x[:, :height, :width, :]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)); windowed or global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid_size: int) -> None:
        """
        window_size: side of the attention windows; 0 means global attention over the whole grid.
        grid_size: side of the full token grid (image size / patch size).
        """
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, window_size if window_size > 0 else grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) float32. Returns (B, H, W, C)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, height, width)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class SimpleFeaturePyramid(nn.Module):
    """Four independent branches from the stride-16 ViT map to strides 4, 8, 16 and 32.

    Every norm is GroupNorm with one group; GELU is the exact form. Inner widths follow the official rule:
    res2 branch max(2*out[0], C/2), res3 branch max(out[1], C/2), res5 branch max(out[3], 2*C).
    Sequential indices reproduce the official checkpoint keys (`down_4.0`, `down_4.1`, `down_4.3`, ...).

    Under autocast the pyramid still computes in fp32 (`keeps_fp32`): its maps become the pixel decoder's
    inputs and mask features at full resolution, and rounded to bf16 they flipped near-threshold mask
    pixels. SAM-ViT-B in bf16 on a CPU, 36 click masks on four photos against fp32: mean / worst mask IoU
    0.944 / 0.604 with a bf16 pyramid, 0.962 / 0.887 with an fp32 one (the whole ViT in fp32 gives 0.964 /
    0.877); the pyramid is about 0.4 s of an fp32 encoder's 11 s, 0.26 s in bf16.
    """

    keeps_fp32 = True
    """Computes in fp32 under autocast: its weights are never stored reduced."""

    def __init__(self, in_dim: int, out_dims: Sequence[int]) -> None:
        """in_dim: ViT width C. out_dims: channels of res2, res3, res4, res5."""
        super().__init__()
        res2_dim, res3_dim, res4_dim, res5_dim = out_dims
        down_4_dim = max(res2_dim * 2, in_dim // 2)
        down_8_dim = max(res3_dim, in_dim // 2)
        down_32_dim = max(res5_dim, in_dim * 2)
        self.down_4 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, down_4_dim, 2, stride=2),
            nn.GroupNorm(1, down_4_dim),
            nn.GELU(),
            nn.ConvTranspose2d(down_4_dim, down_4_dim // 2, 2, stride=2),
            nn.GroupNorm(1, down_4_dim // 2),
            nn.Conv2d(down_4_dim // 2, res2_dim, 1),
            nn.GroupNorm(1, res2_dim),
            nn.GELU(),
        )
        self.down_8 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, down_8_dim, 2, stride=2),
            nn.GroupNorm(1, down_8_dim),
            nn.Conv2d(down_8_dim, res3_dim, 1),
            nn.GroupNorm(1, res3_dim),
            nn.GELU(),
        )
        self.down_16 = nn.Sequential(
            nn.Conv2d(in_dim, res4_dim, 1),
            nn.GroupNorm(1, res4_dim),
            nn.GELU(),
        )
        self.down_32 = nn.Sequential(
            nn.Conv2d(in_dim, down_32_dim, 2, stride=2),
            nn.GroupNorm(1, down_32_dim),
            nn.Conv2d(down_32_dim, res5_dim, 1),
            nn.GroupNorm(1, res5_dim),
            nn.GELU(),
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (B, C, h, w) stride-16 map. Returns res2..res5, (B, out_dims[i], 4h/2^i, 4w/2^i), fp32."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            return {
                "res2": self.down_4(x),
                "res3": self.down_8(x),
                "res4": self.down_16(x),
                "res5": self.down_32(x),
            }


class SamViTBackbone(nn.Module):
    """SAM ViT trunk + SimpleFeaturePyramid, with the official SEEM key names (`backbone.` stripped).

    The released SAM-ViT-B v1 uses embed_dim 768, depth 12, heads 12, global blocks (2, 5, 8, 11); SAM-ViT-L
    1024, 24, 16, (5, 11, 17, 23); both img_size 1024 and out_channels (128, 256, 512, 1024).
    """

    def __init__(
        self,
        *,
        img_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        global_attn_indexes: Sequence[int],
        out_channels: Sequence[int],
        patch_size: int = 16,
        window_size: int = 14,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
    ) -> None:
        """
        img_size: side of the square input the position embedding was trained for; inputs must match it.
        embed_dim, depth, num_heads: ViT width, number of blocks and attention heads.
        global_attn_indexes: blocks that attend over the whole grid; all others use windows.
        out_channels: channels of res2, res3, res4, res5.
        patch_size, window_size, mlp_ratio, in_chans: fixed at 16, 14, 4, 3 in every official size.
        """
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        if len(out_channels) != len(FEATURE_NAMES):
            raise ValueError(f"out_channels needs one width per {FEATURE_NAMES}, got {list(out_channels)}")
        self.img_size = img_size
        grid_size = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size, grid_size, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                window_size=0 if index in global_attn_indexes else window_size,
                grid_size=grid_size,
            )
            for index in range(depth)
        )
        self.neck = SimpleFeaturePyramid(embed_dim, out_channels)
        self.out_channels = dict(zip(FEATURE_NAMES, out_channels, strict=True))
        self.out_strides = dict(zip(FEATURE_NAMES, FEATURE_STRIDES, strict=True))

    def forward_tokens(self, images: Tensor) -> Tensor:
        """Run the ViT trunk.

        images: (B, 3, img_size, img_size) float32, normalised and zero-padded.
        Returns the token grid (B, C, img_size/16, img_size/16), NCHW.
        """
        if images.shape[-2] != self.img_size or images.shape[-1] != self.img_size:
            raise ValueError(
                f"SAM ViT input must be exactly {self.img_size}x{self.img_size}, got "
                f"{tuple(images.shape[-2:])}; pad the normalised image bottom/right with zeros to that size"
            )
        x = self.patch_embed(images) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images: (B, 3, img_size, img_size) float32. Returns res2..res5 at strides 4, 8, 16, 32 (NCHW)."""
        return self.neck(self.forward_tokens(images))
