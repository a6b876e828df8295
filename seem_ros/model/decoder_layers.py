"""Post-norm transformer layers of the SEEM decoder (Mask2Former style) and the mask MLP."""

from __future__ import annotations

import torch
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
    blocked: (B, Lq, Lk) bool, True = may not attend, the same for every head. It is added to the scores
    as a bias of 0 / -inf, which gives exactly the scores a masked fill would.
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
    q = q.reshape(length_q, batch * num_heads, head_dim).transpose(0, 1)
    k = k.reshape(length_k, batch * num_heads, head_dim).transpose(0, 1)
    v = v.reshape(length_k, batch * num_heads, head_dim).transpose(0, 1)
    scores = torch.bmm(q, k.transpose(1, 2))
    if blocked is not None:
        bias = torch.zeros(blocked.shape, dtype=scores.dtype, device=scores.device)
        bias = bias.masked_fill(blocked, float("-inf"))
        scores = scores.view(batch, num_heads, length_q, length_k) + bias[:, None]
        scores = scores.view(batch * num_heads, length_q, length_k)
    weights = torch.softmax(scores, dim=-1)
    if rows_may_be_fully_blocked:
        weights = weights.nan_to_num()
    out = torch.bmm(weights, v).transpose(0, 1).reshape(length_q, batch, channels)
    return attention.out_proj(out)


class SelfAttentionLayer(nn.Module):
    """Self-attention over queries, prompt tokens and memories; residual, then LayerNorm."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, sequence: Tensor, position: Tensor, blocked: Tensor) -> Tensor:
        """sequence, position: (L, B, C); blocked: (B, L, L) bool. Returns (L, B, C)."""
        query_key = sequence + position
        attended = masked_attention(self.self_attn, query_key, query_key, sequence, blocked)
        return self.norm(sequence + attended)


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
