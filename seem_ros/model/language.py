"""SEEM's language encoder: a causal CLIP-style text transformer plus a projection to the decoder width.

Attribute names reproduce the official checkpoint keys below `sem_seg_head.predictor.lang_encoder.`:
`lang_proj`, `logit_scale`, `lang_encoder.{token_embedding, positional_embedding, resblocks.{i}, ln_final}`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .tokenizer import CONTEXT_LENGTH, VOCAB_SIZE, ClipTokenizer
from .vocabulary import PROMPT_TEMPLATES, templated_sentences

NORM_EPS = 1e-7
"""Added to the L2 norm before dividing, as the official sentence and query normalisation does."""

MAX_LOGIT_SCALE = 100.0
"""Upper clamp of exp(logit_scale) in the grounding similarity (the official `vl_similarity`)."""


class TextLayerNorm(nn.Module):
    """TF-style LayerNorm of the official text encoder: eps 1e-12, statistics computed in float32."""

    def __init__(self, width: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., width). Returns the same shape and dtype."""
        values = x.float()
        centered = values - values.mean(-1, keepdim=True)
        variance = centered.pow(2).mean(-1, keepdim=True)
        normalized = centered / torch.sqrt(variance + self.eps)
        return self.weight * normalized.to(x.dtype) + self.bias


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), CLIP's GELU approximation."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)) with a causal mask, then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int) -> None:
        """
        Arguments:
          width: channels of the token states.
          heads: attention heads; must divide `width`.
        """
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = TextLayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", QuickGELU()),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )
        self.ln_2 = TextLayerNorm(width)

    def forward(self, x: Tensor, causal_mask: Tensor) -> Tensor:
        """x: (N, L, width); causal_mask: (L, L) additive, -inf above the diagonal. Returns (N, L, width)."""
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, attn_mask=causal_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """Causal (autoregressive) CLIP text transformer, returning the states after `ln_final`.

    No padding mask is applied (as in the official encoder): a token only sees itself and earlier
    tokens, so padding after EOT cannot change the states up to EOT.
    """

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        vocab_size: int = VOCAB_SIZE,
        context_length: int = CONTEXT_LENGTH,
    ) -> None:
        """
        Arguments:
          width: token state channels (512 in the released models).
          layers: number of residual attention blocks (12 released).
          heads: attention heads per block (8 released).
          vocab_size: token embedding rows (CLIP BPE: 49,408).
          context_length: positional embedding rows, the longest accepted sequence (77).
        """
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width must be divisible by heads, got width {width} and heads {heads}")
        self.width = width
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])
        self.ln_final = TextLayerNorm(width)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.token_embedding.weight, std=0.02)
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids: (N, L) int64 token ids, L <= context_length, position 0 first.

        Returns the last hidden states (N, L, width), after `ln_final` and before any projection.
        """
        if input_ids.dim() != 2 or input_ids.shape[1] > self.context_length:
            raise ValueError(
                f"input_ids must be (N, L) with L <= {self.context_length}, got {tuple(input_ids.shape)}"
            )
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        causal_mask = torch.full((length, length), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
        for block in self.resblocks:
            x = block(x, causal_mask)
        return self.ln_final(x)


class LanguageEncoder(nn.Module):
    """Text tower of SEEM: token and sentence embeddings in the decoder's embedding space, class embeddings.

    The sentence embedding of a text is the projected state at its EOT token, found as `argmax(input_ids)`
    (EOT 49407 is the largest id, and argmax returns the first maximum).
    """

    def __init__(
        self, lang_encoder: TextTransformer, dim_proj: int, tokenizer: ClipTokenizer | None = None
    ) -> None:
        """
        Arguments:
          lang_encoder: the text transformer.
          dim_proj: width of the projected embeddings; equals the decoder's hidden width.
          tokenizer: turns strings into ids; needed only by `class_embeddings`.
        """
        super().__init__()
        self.lang_proj = nn.Parameter(torch.empty(lang_encoder.width, dim_proj))
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.lang_encoder = lang_encoder
        self.tokenizer = tokenizer
        nn.init.trunc_normal_(self.lang_proj, std=0.02)

    @property
    def dim_proj(self) -> int:
        return self.lang_proj.shape[1]

    def encode_tokens(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Projected embeddings of every token and of every sentence (not normalised), for grounding.

        input_ids: (N, 77) int64 from `ClipTokenizer`.
        attention_mask: (N, 77) from `ClipTokenizer`, checked for shape only: the causal encoder needs no
          padding mask. Use it to select the real tokens, e.g. `token_embeddings[attention_mask.bool()]`.
        Returns token_embeddings (N, 77, dim_proj) float32 (all positions, padding included) and
        sentence_embeddings (N, dim_proj) float32 (the EOT position).
        """
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        input_ids = input_ids.to(self.lang_proj.device)
        hidden = self.lang_encoder(input_ids)
        token_embeddings = hidden @ self.lang_proj
        eot_index = input_ids.argmax(dim=-1)
        sentence_embeddings = token_embeddings[
            torch.arange(input_ids.shape[0], device=input_ids.device), eot_index
        ]
        return token_embeddings, sentence_embeddings

    def encode_sentences(self, input_ids: Tensor, normalize: bool) -> Tensor:
        """Projected EOT embedding per sentence.

        input_ids: (N, L) int64, L <= 77; the sequences are cut after the last EOT of the batch, which
          leaves the EOT states unchanged (causal attention) and saves most of the work for short texts.
        normalize: divide by (L2 norm + 1e-7), as the official `forward_language(norm=True)`.
        Returns (N, dim_proj) float32.
        """
        input_ids = input_ids.to(self.lang_proj.device)
        eot_index = input_ids.argmax(dim=-1)
        length = int(eot_index.max()) + 1
        hidden = self.lang_encoder(input_ids[:, :length])
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        embeddings = hidden[rows, eot_index] @ self.lang_proj
        if normalize:
            embeddings = embeddings / (embeddings.norm(dim=-1, keepdim=True) + NORM_EPS)
        return embeddings

    @torch.no_grad()
    def class_embeddings(
        self, names: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES, chunk_size: int = 256
    ) -> Tensor:
        """L2-normalised template-averaged embedding per class name (the official eval-mode class embeddings).

        Each name is cleaned (`-other`, `-merged`, `-stuff` removed) and put in every template; each sentence
        embedding is normalised (+1e-7), the mean over templates is divided by its norm.
        names: K class names; append "background" for the no-object class.
        templates: `{}` templates, default the 81 official ones.
        chunk_size: sentences per encoder batch; sentences are sorted by length so each batch is cut short.
        Returns (K, dim_proj) float32 on the encoder's device.
        """
        if self.tokenizer is None:
            raise RuntimeError(
                "class_embeddings needs a tokenizer: build LanguageEncoder with tokenizer=ClipTokenizer()"
            )
        if isinstance(names, str) or len(names) == 0:
            raise ValueError(f"names must be a non-empty list of class names, got {names!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        sentences = [sentence for name in names for sentence in templated_sentences(name, templates)]
        input_ids, _ = self.tokenizer(sentences)
        order = torch.argsort(input_ids.argmax(dim=-1), stable=True)
        embeddings = torch.empty(len(sentences), self.dim_proj, device=self.lang_proj.device)
        for chunk in order.split(chunk_size):
            embeddings[chunk.to(embeddings.device)] = self.encode_sentences(input_ids[chunk], normalize=True)
        mean = embeddings.view(len(names), len(templates), -1).mean(dim=1)
        return mean / mean.norm(dim=-1, keepdim=True)

    def similarity(self, queries_embed: Tensor, class_text_embeddings: Tensor) -> Tensor:
        """Class logits of decoder queries: exp(logit_scale) * cos(query, class), no clamp.

        queries_embed: (B, Q, dim_proj), the queries projected by the decoder's `class_embed`.
        class_text_embeddings: (K+1, dim_proj) from `class_embeddings`, already normalised; last = background.
        Returns (B, Q, K+1) float32 logits (pre-softmax).
        """
        queries = queries_embed / (queries_embed.norm(dim=-1, keepdim=True) + NORM_EPS)
        return self.logit_scale.exp() * queries @ class_text_embeddings.transpose(0, 1)

    def grounding_similarity(self, queries_embed: Tensor, text_embeddings: Tensor) -> Tensor:
        """Query-to-text scores for grounding: min(exp(logit_scale), 100) * cos(query, text).

        queries_embed: (..., Q, dim_proj), e.g. the grounding queries' projected outputs.
        text_embeddings: (T, dim_proj), the sentence embeddings from `encode_tokens` (not normalised).
        Returns (..., Q, T) float32.
        """
        queries = queries_embed / (queries_embed.norm(dim=-1, keepdim=True) + NORM_EPS)
        texts = text_embeddings / (text_embeddings.norm(dim=-1, keepdim=True) + NORM_EPS)
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) * queries @ texts.transpose(0, 1)
