"""Post-norm transformer layers of the SEEM decoder (Mask2Former style) and the mask MLP."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def masked_attention(
    attention: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    blocked: Tensor | None,
    rows_may_be_fully_blocked: bool = True,
) -> Tensor:
    """Multi-head attention whose fully blocked rows return zeros (before the output projection).

    query: (Lq, B, C); key, value: (Lk, B, C), sequence first.
    blocked: (B, Lq, Lk) bool, True = may not attend, the same for every head: the scores a masked fill
    would leave, computed by `scaled_dot_product_attention` (on a CPU with bf16 units 3 times as fast as
    separate products and softmax for the decoder's largest level).
    Returns (Lq, B, C). A row with every key blocked gets a zero attention vector, the official
    decoder's `softmax(...).nan_to_num()` behaviour; a caller that guarantees no such row passes
    rows_may_be_fully_blocked=False and skips that pass (it would change nothing).
    """
    num_heads = attention.num_heads
    length_q, batch, channels = query.shape
    length_k = key.shape[0]
    head_dim = channels // num_heads
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
    q = F.linear(query, w_q, b_q) * head_dim**-0.5
    k = F.linear(key, w_k, b_k)
    v = F.linear(value, w_v, b_v)
    q = q.reshape(length_q, batch, num_heads, head_dim).permute(1, 2, 0, 3)
    k = k.reshape(length_k, batch, num_heads, head_dim).permute(1, 2, 0, 3)
    v = v.reshape(length_k, batch, num_heads, head_dim).permute(1, 2, 0, 3)
    allowed = None if blocked is None else ~blocked[:, None]
    # q carries the scale already, as in the official layer; one fused kernel for the scores, softmax
    # and weighted sum (a fully blocked row comes out as zeros or NaN depending on the version)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=1.0)
    if rows_may_be_fully_blocked:
        out = out.nan_to_num()
    out = out.permute(2, 0, 1, 3).reshape(length_q, batch, channels)
    return attention.out_proj(out)


class SelfAttentionLayer(nn.Module):
    """Self-attention over queries, prompt tokens and memories; residual, then LayerNorm."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self, sequence: Tensor, position: Tensor, blocked: Tensor, query_rows: int | Tensor | None = None
    ) -> Tensor:
        """sequence, position: (L, B, C); blocked: (B, L, L) bool. query_rows: how many leading rows to
        update (all L by default); the rows after them are attended to only. Returns (query_rows, B, C)."""
        query_key = sequence + position
        rows = slice(0, query_rows)
        attended = masked_attention(self.self_attn, query_key[rows], query_key, sequence, blocked[:, rows])
        return self.norm(sequence[rows] + attended)


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention from queries to one feature level; residual, then LayerNorm."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, num_heads)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        queries: Tensor,
        query_position: Tensor,
        memory: Tensor,
        memory_position: Tensor,
        blocked: Tensor,
    ) -> Tensor:
        """queries: (Q, B, C); memory: (HW, B, C); blocked: (B, Q, HW) bool with no fully blocked row.
        Returns (Q, B, C)."""
        attended = masked_attention(
            self.multihead_attn,
            queries + query_position,
            memory + memory_position,
            memory,
            blocked,
            rows_may_be_fully_blocked=False,
        )
        return self.norm(queries + attended)


class FFNLayer(nn.Module):
    """Linear-ReLU-Linear feed-forward block; residual, then LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, sequence: Tensor) -> Tensor:
        return self.norm(sequence + self.linear2(F.relu(self.linear1(sequence))))


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x
