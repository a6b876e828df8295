"""The SEEM v1 decoder: object, grounding, spatial and memory queries over a masked-attention decoder.

Sequence layout (fixed by SEEM v1's attention architecture):
- cross-attention runs over [object queries, grounding queries, spatial queries, memory slots];
- self-attention runs over [object queries, grounding queries, spatial queries, grounding tokens,
  spatial tokens, memory slots], with a hand-built mask (see `_self_attention_blocked`).

Object queries never see any prompt, so generic segmentation does not change when prompts are given.
Grounding queries are copies of the initial object queries that also attend the text tokens.
Spatial queries are `queries_per_prompt` copies per visual prompt of randomly chosen object queries,
attending only their own prompt's point tokens and memory slots. Memory slots cross-attend only the
pixels inside the previous round's (or previous frame's) mask of their prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seem_ros.model.decoder_layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from seem_ros.model.position_encoding import sine_position_embedding
from seem_ros.model.spatial_prompts import (
    SpatialPromptTokens,
    encode_spatial_prompts,
    sample_spatial_prompt_points,
)
from seem_ros.model.transfer import to_device

if TYPE_CHECKING:
    from seem_ros.model.language import LanguageEncoder


@dataclass
class GroundingTokens:
    """Text tokens that grounding queries attend.

    tokens: (L, B, D) projected token embeddings of all sentences (SOT..EOT) of each image, concatenated.
    padding: (B, L) bool, True = padding.
    """

    tokens: Tensor
    padding: Tensor

    def padded_to(self, length: int) -> GroundingTokens:
        """The same tokens padded to `length` (zeros, padding True): the decoder gives the same answer."""
        extra = length - self.tokens.shape[0]
        if extra < 0:
            raise ValueError(f"{self.tokens.shape[0]} grounding tokens are more than {length}")
        return GroundingTokens(
            F.pad(self.tokens, (0, 0, 0, 0, 0, extra)), F.pad(self.padding, (0, extra), value=True)
        )

    def select_images(self, index: Tensor) -> GroundingTokens:
        """The tokens of images `index` ((B',) long, repeats allowed), in that order."""
        return GroundingTokens(self.tokens[:, index], self.padding[index])

    @staticmethod
    def stack(parts: Sequence[GroundingTokens]) -> GroundingTokens:
        """The tokens of several images (one each) as one batch, each padded to the longest."""
        length = max(part.tokens.shape[0] for part in parts)
        padded = [part.padded_to(length) for part in parts]
        return GroundingTokens(
            torch.cat([part.tokens for part in padded], dim=1), torch.cat([part.padding for part in padded])
        )


@dataclass
class DecoderPrediction:
    """Predictions of one decoder step (before the first layer, or after a layer).

    object_logits: (B, Q, K+1) class logits of the object queries (last = background).
    object_masks: (B, Q, H'/4, W'/4) mask logits; object_class_embeddings, object_mask_embeddings: (B, Q, D).
    grounding_*: the same for the grounding queries (None without text prompt).
    spatial_*: the same for the spatial queries, (B, 3n, ...) (None without visual prompt).
    """

    object_logits: Tensor
    object_masks: Tensor
    object_class_embeddings: Tensor
    object_mask_embeddings: Tensor
    grounding_masks: Tensor | None = None
    grounding_class_embeddings: Tensor | None = None
    spatial_masks: Tensor | None = None
    spatial_class_embeddings: Tensor | None = None
    spatial_mask_embeddings: Tensor | None = None


@dataclass(frozen=True)
class QueryChoices:
    """The random choices of a pass with visual prompts (`SEEMDecoder.draw_query_choices`).

    spatial_query_index: (queries_per_prompt * n,) long, the object query copied into each spatial query
        (of every image), or (B, queries_per_prompt * n), each image's own (`stack`).
    memory_slot_prompt_index: (num_layers, M) long, the prompt each memory slot serves in each layer, or
        (num_layers, B, M) per image; None for a pass without memory prompts.
    """

    spatial_query_index: Tensor
    memory_slot_prompt_index: Tensor | None = None

    def memory_slots(self) -> Tensor:
        """memory_slot_prompt_index, which a pass with memory prompts (previous masks) needs."""
        if self.memory_slot_prompt_index is None:
            raise ValueError("a pass with previous_masks needs query choices with memory slots")
        return self.memory_slot_prompt_index

    def select_images(self, index: Tensor) -> QueryChoices:
        """The choices of images `index` ((B',) long, repeats allowed) of a batched pass; choices shared by
        every image stay shared."""
        spatial, slots = self.spatial_query_index, self.memory_slot_prompt_index
        return QueryChoices(
            spatial if spatial.dim() == 1 else spatial[index],
            slots if slots is None or slots.dim() == 2 else slots[:, index],
        )

    @staticmethod
    def stack(choices: Sequence[QueryChoices]) -> QueryChoices:
        """The choices of several images' passes (one image each, the same number of prompts) as the
        choices of one batched pass."""
        slots = [choice.memory_slot_prompt_index for choice in choices]
        if any(slot is None for slot in slots) and any(slot is not None for slot in slots):
            raise ValueError("a batched pass has memory slots for every image or for none")
        return QueryChoices(
            torch.stack([choice.spatial_query_index for choice in choices]),
            None if slots[0] is None else torch.stack(slots, dim=1),
        )

    def to(self, device: torch.device) -> QueryChoices:
        """The same choices on `device` (page-locked, non-blocking uploads to a GPU)."""
        slots = self.memory_slot_prompt_index
        return QueryChoices(
            to_device(self.spatial_query_index, device), None if slots is None else to_device(slots, device)
        )


@dataclass
class DecoderOutput:
    """predictions: one entry per step (initial + one per layer); the last is the final one.
    query_choices: the random choices of a pass with visual prompts (None without)."""

    predictions: list[DecoderPrediction]
    spatial_tokens: SpatialPromptTokens | None = None
    query_choices: QueryChoices | None = None

    @property
    def final(self) -> DecoderPrediction:
        return self.predictions[-1]


@dataclass
class _Sequence:
    """Content, position and cross-attention rows of the query groups and tokens of one forward pass."""

    content: dict[str, Tensor] = field(default_factory=dict)
    position: dict[str, Tensor] = field(default_factory=dict)


_CROSS_ORDER = ("object", "grounding", "spatial", "memory")
_SELF_ORDER = ("object", "grounding", "spatial", "grounding_tokens", "memory", "spatial_tokens")
"""Spatial tokens last: every layer takes its level's tokens afresh, so they are only attended to; their
own self-attention and FFN outputs would never be read and are not computed (the rows before them are)."""


def attention_mask_samples(mask_features: Tensor, size: tuple[int, int], factor: int) -> Tensor:
    """The mask-feature pixels that bilinear down-sampling (align_corners=False) to `size` reads.

    mask_features: (B, D, factor * h, factor * w), factor even; size: (h, w). Shrinking by an even factor
    f, output pixel y is the mean of input rows f y + f/2 - 1 and f y + f/2 (weights 1/2 each; columns
    likewise). Returns those rows and columns, (B, D, 2 h, 2 w): down-sampling their masks to (h, w)
    (a factor of 2, the same weights) gives what down-sampling the full-size masks gives.
    """
    if factor % 2:
        raise ValueError(f"the sampling factor must be even, got {factor}")
    batch, dim = mask_features.shape[:2]
    height, width = size
    blocks = mask_features.reshape(batch, dim, height, factor, width, factor)
    middle = slice(factor // 2 - 1, factor // 2 + 1)
    return blocks[:, :, :, middle, :, middle].reshape(batch, dim, 2 * height, 2 * width)


def _even_factor(mask_size: Sequence[int], size: tuple[int, int]) -> int | None:
    """How many times larger `mask_size` (H, W) is than `size` (h, w), where that is one even factor in both
    directions; else None."""
    factor = mask_size[-1] // size[1]
    if factor % 2 or (mask_size[-2], mask_size[-1]) != (factor * size[0], factor * size[1]):
        return None
    return factor


def _chosen_queries(queries: Tensor, index: Tensor) -> Tensor:
    """queries: (Q, B, D); index: (n,) the same queries for every image, or (B, n) each image's own.
    Returns (n, B, D)."""
    if index.dim() == 1:
        return queries[index]
    images = torch.arange(queries.shape[1], device=queries.device)
    return queries[index.transpose(0, 1), images]


def mask_logits(mask_embeddings: Tensor, mask_features: Tensor) -> Tensor:
    """Mask logits (B, Q, H, W): each of the Q mask embeddings (B, Q, D) dotted with every pixel of
    mask_features (B, D, H, W). Channels-last features are multiplied as they lie in memory, a (H W, D)
    row per pixel, giving channels-last logits: bf16 matrix products on the CPU read a transposed
    operand more than ten times slower."""
    if mask_features.is_contiguous() or not mask_features.is_contiguous(memory_format=torch.channels_last):
        return (mask_embeddings @ mask_features.flatten(2)).unflatten(2, mask_features.shape[-2:])
    pixels = mask_features.permute(0, 2, 3, 1).flatten(1, 2)  # (B, H W, D), a view
    logits = (pixels @ mask_embeddings.transpose(1, 2)).unflatten(1, mask_features.shape[-2:])
    return logits.permute(0, 3, 1, 2)


class SEEMDecoder(nn.Module):
    """SEEM v1 decoder head (the official `sem_seg_head.predictor`).

    Args:
        language_encoder: the text tower; its similarity gives the class logits.
        hidden_dim: query width D (must equal the language projection width).
        num_queries: object queries Q (101 in released models).
        num_heads, dim_feedforward: attention heads and FFN width.
        num_layers: decoder layers (DEC_LAYERS - 1 in the official config; 9 released).
        mask_dim: width of the mask features.
        num_feature_levels: decoder memory levels (3: strides 32, 16, 8).
        num_memory_slots: memory prompt slots (32 released).
        queries_per_prompt: spatial queries per visual prompt (3).
        max_spatial_points: per level, then for the mean vectors: most points sampled per call (512).
    """

    def __init__(
        self,
        language_encoder: LanguageEncoder,
        hidden_dim: int = 512,
        num_queries: int = 101,
        num_heads: int = 8,
        dim_feedforward: int = 2048,
        num_layers: int = 9,
        mask_dim: int = 512,
        num_feature_levels: int = 3,
        num_memory_slots: int = 32,
        queries_per_prompt: int = 3,
        max_spatial_points: tuple[int, ...] = (512, 512, 512, 512),
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.num_feature_levels = num_feature_levels
        self.queries_per_prompt = queries_per_prompt
        self.max_spatial_points = list(max_spatial_points)
        self.class_embed = nn.Parameter(torch.empty(hidden_dim, hidden_dim))
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, num_heads) for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.lang_encoder = language_encoder
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.mask_sptial_embed = nn.ParameterList(
            nn.Parameter(torch.empty(hidden_dim, hidden_dim)) for _ in range(num_feature_levels)
        )
        self.spatial_embed = nn.Embedding(num_memory_slots, hidden_dim)
        self.spatial_featured = nn.Embedding(num_memory_slots, hidden_dim)
        self.pn_indicator = nn.Embedding(2, hidden_dim)

    # ------------------------------------------------------------------ features
    def prepare_levels(self, multi_scale_features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list]:
        """Flatten the decoder memory levels.

        multi_scale_features: num_feature_levels maps (B, D, h_i, w_i), strides 32, 16, 8.
        Returns sources (h_i*w_i, B, D) with the level embedding added, sine positions of the same
        shape, and the (h_i, w_i) sizes.
        """
        sources, positions, sizes = [], [], []
        for level, features in enumerate(multi_scale_features):
            sizes.append((features.shape[-2], features.shape[-1]))
            source = features.flatten(2) + self.level_embed.weight[level][None, :, None]
            position = sine_position_embedding(features, features.shape[1] // 2).flatten(2)
            # contiguous: attention projections of strided (h*w, B, D) views fall back to batched matrix
            # products with a copy per call (in bf16 on the CPU, seconds per frame)
            sources.append(source.permute(2, 0, 1).contiguous())
            positions.append(position.permute(2, 0, 1).contiguous())
        return sources, positions, sizes

    def encode_spatial_prompts(
        self,
        multi_scale_features: list[Tensor],
        mask_features: Tensor,
        positive_masks: Tensor,
        negative_masks: Tensor,
        generator: torch.Generator | None = None,
    ) -> SpatialPromptTokens:
        """Visual prompts of one image as tokens; also the referring-image encoder.

        positive_masks, negative_masks: (n, H', W') bool at the padded input size.
        """
        return self._spatial_tokens(
            multi_scale_features, mask_features, positive_masks, negative_masks, generator
        )

    def _spatial_tokens(
        self,
        multi_scale_features: list[Tensor],
        mask_features: Tensor,
        positive_masks: Tensor,
        negative_masks: Tensor,
        generator: torch.Generator | None,
    ) -> SpatialPromptTokens:
        points = sample_spatial_prompt_points(
            positive_masks, negative_masks, self.max_spatial_points, generator
        )
        return encode_spatial_prompts(
            points,
            mask_features,
            multi_scale_features,
            self.level_embed.weight,
            list(self.mask_sptial_embed),
            self.pn_indicator.weight,
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        multi_scale_features: list[Tensor],
        mask_features: Tensor,
        class_text_embeddings: Tensor,
        grounding: GroundingTokens | None = None,
        spatial_masks: tuple[Tensor, Tensor] | None = None,
        spatial_tokens: SpatialPromptTokens | None = None,
        previous_masks: Tensor | None = None,
        generator: torch.Generator | None = None,
        query_choices: QueryChoices | None = None,
        attention_sample_factors: Sequence[int | None] | None = None,
        final_only: bool = False,
    ) -> DecoderOutput:
        """Run the decoder.

        multi_scale_features: (B, D, h_i, w_i) at strides 32, 16, 8. mask_features: (B, D, H'/4, W'/4).
        class_text_embeddings: (K+1, D) L2-normalised vocabulary embeddings, background last.
        grounding: text tokens for grounding queries, each image's (`GroundingTokens.stack`).
        spatial_masks: (positive, negative) (n, H', W') bool prompt masks of one image (B = 1), or
        spatial_tokens: prompt tokens computed beforehand (e.g. from a referring image), the same n
            prompts of every image or each image's own (`stack_spatial_tokens`, with `QueryChoices.stack`).
        previous_masks: (B, n, H'/4, W'/4) mask logits of the previous round or frame per visual
            prompt; switches the memory prompts on.
        generator: the random source for query and point sampling (see spatial_prompts).
        query_choices: the random choices of `draw_query_choices`, drawn beforehand (by an engine that
            draws them on the host, or for an exported graph); by default drawn here from `generator`.
        attention_sample_factors: how many times larger the mask features are than each level, one even
            factor per level (8, 4, 2 for strides 32, 16, 8 over stride 4), for a caller that reads only
            the final step (an exported graph). Each intermediate cross-attention mask is then computed
            from the mask-feature pixels its bilinear down-sampling reads (`attention_mask_samples`):
            the same products and the same interpolation weights, so the same values, with 1/16 of the
            products at stride 32 and 1/4 at stride 16 (a factor of 2 reads every pixel; None, a level
            that is no even factor smaller). The intermediate steps' own masks are still returned at full
            size. By default, every step's full-size masks are down-sampled.
        final_only: return the final step alone (`predictions` of one entry), for a caller that reads
            nothing else (an engine): the intermediate steps' full-size masks are then computed only where
            an attention mask needs every pixel, the others from their samples (factors found from the
            shapes unless given). The final step is the same as without.
        """
        if spatial_masks is not None and spatial_tokens is not None:
            raise ValueError("give either spatial_masks or spatial_tokens, not both")
        if previous_masks is not None and spatial_masks is None and spatial_tokens is None:
            raise ValueError("previous_masks need a visual prompt (spatial_masks or spatial_tokens)")
        sources, positions, sizes = self.prepare_levels(multi_scale_features)
        if final_only and attention_sample_factors is None:
            attention_sample_factors = [_even_factor(mask_features.shape[-2:], size) for size in sizes]
        attention_samples: list[Tensor | None] = [None] * len(sizes)
        if attention_sample_factors is not None:
            attention_samples = [
                attention_mask_samples(mask_features, size, factor)
                if factor is not None and factor > 2
                else None
                for size, factor in zip(sizes, attention_sample_factors, strict=True)
            ]
        batch = mask_features.shape[0]
        sequence = _Sequence()
        object_content = self.query_feat.weight[:, None].repeat(1, batch, 1)
        object_position = self.query_embed.weight[:, None].repeat(1, batch, 1)
        sequence.content["object"] = object_content
        sequence.position["object"] = object_position

        if spatial_masks is not None:
            spatial_tokens = self._spatial_tokens(
                multi_scale_features, mask_features, *spatial_masks, generator
            )
        slot_prompts: list[Tensor] = []
        if spatial_tokens is not None:
            if query_choices is None:
                query_choices = self.draw_query_choices(
                    spatial_tokens.num_prompts, previous_masks is not None, generator
                )
            # the choices are drawn on the CPU (the same on every device); the queries live on the model's
            spatial_query_index = query_choices.spatial_query_index.to(object_content.device)
            if previous_masks is not None:
                slot_prompts = list(query_choices.memory_slots().to(object_content.device))
            sequence.content["spatial"] = _chosen_queries(object_content, spatial_query_index)
            sequence.position["spatial"] = _chosen_queries(object_position, spatial_query_index)
            if previous_masks is not None:
                sequence.content["memory"] = self.spatial_featured.weight[:, None].repeat(1, batch, 1)
                sequence.position["memory"] = self.spatial_embed.weight[:, None].repeat(1, batch, 1)
        if grounding is not None:
            sequence.content["grounding_tokens"] = grounding.tokens
            sequence.position["grounding_tokens"] = grounding.tokens.detach().clone()
            sequence.content["grounding"] = object_content.clone()
            sequence.position["grounding"] = object_position.clone()

        cross_names = [name for name in _CROSS_ORDER if name in sequence.content]
        predictions = []
        prediction, attention_blocked = self._predict(
            sequence,
            cross_names,
            mask_features,
            class_text_embeddings,
            sizes[0],
            attention_samples[0],
            returned=not final_only or self.num_layers == 0,
        )
        if prediction is not None:
            predictions.append(prediction)
        for layer in range(self.num_layers):
            level = layer % self.num_feature_levels
            cross_lengths = [sequence.content[name].shape[0] for name in cross_names]
            if "memory" in sequence.content:
                attention_blocked = self._with_memory_rows(
                    attention_blocked, cross_lengths, previous_masks, sizes[level], slot_prompts[layer]
                )
            attention_blocked = attention_blocked & ~attention_blocked.all(dim=-1, keepdim=True)
            queries = torch.cat([sequence.content[name] for name in cross_names])
            query_position = torch.cat([sequence.position[name] for name in cross_names])
            queries = self.transformer_cross_attention_layers[layer](
                queries, query_position, sources[level], positions[level], attention_blocked
            )
            self._split_into(sequence, cross_names, queries)

            if spatial_tokens is not None:
                level_tokens = spatial_tokens.level_tokens[level]
                sequence.content["spatial_tokens"] = level_tokens
                sequence.position["spatial_tokens"] = level_tokens.detach().clone()
            self_names = [name for name in _SELF_ORDER if name in sequence.content]
            blocked = self._self_attention_blocked(
                sequence,
                self_names,
                batch,
                grounding,
                spatial_tokens,
                level,
                slot_prompts[layer] if "memory" in sequence.content else None,
            )
            updated = torch.cat([sequence.content[name] for name in self_names])
            position = torch.cat([sequence.position[name] for name in self_names])
            updated_names = [name for name in self_names if name != "spatial_tokens"]
            rows = self._spans(sequence, updated_names)[updated_names[-1]].stop
            updated = self.transformer_self_attention_layers[layer](updated, position, blocked, rows)
            updated = self.transformer_ffn_layers[layer](updated)
            self._split_into(sequence, updated_names, updated)

            next_level = (layer + 1) % self.num_feature_levels
            prediction, attention_blocked = self._predict(
                sequence,
                cross_names,
                mask_features,
                class_text_embeddings,
                sizes[next_level],
                attention_samples[next_level],
                returned=not final_only or layer == self.num_layers - 1,
            )
            if prediction is not None:
                predictions.append(prediction)
        return DecoderOutput(
            predictions=predictions,
            spatial_tokens=spatial_tokens,
            query_choices=query_choices,
        )

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _spans(sequence: _Sequence, names: list[str]) -> dict[str, slice]:
        """Where each named group lies in the concatenation of `names`, in order."""
        spans = {}
        start = 0
        for name in names:
            # a new object each step, never `+=`: while tracing for ONNX, sizes are tensors
            end = start + sequence.content[name].shape[0]
            spans[name] = slice(start, end)
            start = end
        return spans

    @staticmethod
    def _split_into(sequence: _Sequence, names: list[str], stacked: Tensor) -> None:
        for name, span in SEEMDecoder._spans(sequence, names).items():
            sequence.content[name] = stacked[span]

    def _predict(
        self,
        sequence: _Sequence,
        cross_names: list[str],
        mask_features: Tensor,
        class_text_embeddings: Tensor,
        attention_size: tuple[int, int],
        attention_samples: Tensor | None,
        returned: bool = True,
    ) -> tuple[DecoderPrediction | None, Tensor]:
        """Heads on every cross-attending query (None unless `returned`: then only the attention mask is
        computed); also the next cross-attention mask (B, Q_cross, h * w) bool, True where sigmoid(mask) <
        0.5 at the next level's size, down-sampled from the full-size masks or, when given, from the masks
        at `attention_samples` (B, D, h', w')."""
        queries = torch.cat([sequence.content[name] for name in cross_names])
        normalized = self.decoder_norm(queries).transpose(0, 1)
        mask_embeddings = self.mask_embed(normalized)
        masks = mask_logits(mask_embeddings, mask_features) if returned or attention_samples is None else None
        if attention_samples is not None:
            masks_to_resize = mask_logits(mask_embeddings, attention_samples)
        else:
            masks_to_resize = masks
        resized = F.interpolate(masks_to_resize, size=attention_size, mode="bilinear", align_corners=False)
        blocked = resized.sigmoid().flatten(2) < 0.5
        blocked = blocked.detach()
        if not returned:
            return None, blocked
        class_embeddings = normalized @ self.class_embed

        groups = self._spans(sequence, cross_names)
        objects = groups["object"]
        prediction = DecoderPrediction(
            object_logits=self.lang_encoder.similarity(class_embeddings[:, objects], class_text_embeddings),
            object_masks=masks[:, objects],
            object_class_embeddings=class_embeddings[:, objects],
            object_mask_embeddings=mask_embeddings[:, objects],
        )
        if "grounding" in groups:
            prediction.grounding_masks = masks[:, groups["grounding"]]
            prediction.grounding_class_embeddings = class_embeddings[:, groups["grounding"]]
        if "spatial" in groups:
            prediction.spatial_masks = masks[:, groups["spatial"]]
            prediction.spatial_class_embeddings = class_embeddings[:, groups["spatial"]]
            prediction.spatial_mask_embeddings = mask_embeddings[:, groups["spatial"]]
        return prediction, blocked

    def draw_query_choices(
        self, num_prompts: int, with_memory: bool, generator: torch.Generator | None
    ) -> QueryChoices:
        """The random choices of a pass with `num_prompts` visual prompts, drawn on the CPU in the
        official order (memory slots only `with_memory`)."""
        spatial_query_index = torch.randint(
            0, self.query_feat.weight.shape[0], (self.queries_per_prompt * num_prompts,), generator=generator
        )
        if not with_memory:
            return QueryChoices(spatial_query_index)
        slots = [self._assign_memory_slots(num_prompts, generator) for _ in range(self.num_layers)]
        return QueryChoices(spatial_query_index, torch.stack(slots))

    def _assign_memory_slots(self, num_prompts: int, generator: torch.Generator | None) -> Tensor:
        """Which prompt each memory slot serves: (M,) long, sorted (drawn as the official code does)."""
        num_slots = self.spatial_featured.weight.shape[0]
        repeat = num_slots // num_prompts
        if repeat == 0:  # more prompts than slots (the official code divides by zero): uniform weights
            probabilities = torch.ones(num_prompts)
        else:
            probabilities = torch.tensor([1.0 / repeat for _ in range(num_prompts)])
        return torch.multinomial(probabilities, num_slots, replacement=True, generator=generator).sort()[0]

    def _with_memory_rows(
        self,
        blocked: Tensor,
        cross_lengths: list[int],
        previous_masks: Tensor,
        size: tuple[int, int],
        slot_prompt: Tensor,
    ) -> Tensor:
        """Memory slots may attend only inside their prompt's previous mask at this level."""
        resized = F.interpolate(previous_masks, size=size, mode="bilinear", align_corners=False)
        memory_blocked = resized.sigmoid().flatten(2) < 0.5
        if slot_prompt.dim() == 1:
            slot_rows = memory_blocked[:, slot_prompt]
        else:
            images = torch.arange(memory_blocked.shape[0], device=memory_blocked.device)
            slot_rows = memory_blocked[images[:, None], slot_prompt]
        blocked = blocked.clone()
        memory_start = sum(cross_lengths[:-1])
        blocked[:, memory_start : memory_start + cross_lengths[-1]] = slot_rows
        return blocked

    def _self_attention_blocked(
        self,
        sequence: _Sequence,
        names: list[str],
        batch: int,
        grounding: GroundingTokens | None,
        spatial_tokens: SpatialPromptTokens | None,
        level: int,
        slot_prompt: Tensor | None,
    ) -> Tensor:
        """(B, L, L) bool self-attention mask (every head), True = may not attend.

        Allowed: object<->object; grounding queries and grounding tokens among themselves;
        spatial queries to their own prompt's spatial queries, tokens and memory slots; spatial
        tokens to tokens of the same prompt; memory slots to slots of the same prompt. Padding
        tokens are cut off (spatial padding tokens only see each other).
        """
        spans = self._spans(sequence, names)
        length = spans[names[-1]].stop
        device = sequence.content["object"].device
        blocked = torch.ones((batch, length, length), dtype=torch.bool, device=device)
        blocked[:, spans["object"], spans["object"]] = False
        if grounding is not None:
            queries, tokens = spans["grounding"], spans["grounding_tokens"]
            for rows in (queries, tokens):
                for cols in (queries, tokens):
                    blocked[:, rows, cols] = False
            padding = grounding.padding
            padded_pairs = padding[:, :, None] | padding[:, None, :]
            blocked[:, tokens, tokens] = blocked[:, tokens, tokens] | padded_pairs
            blocked[:, queries, tokens] = blocked[:, queries, tokens] | padding[:, None, :]
            blocked[:, tokens, queries] = blocked[:, tokens, queries] | padding[:, :, None]
        if spatial_tokens is not None:
            queries, tokens = spans["spatial"], spans["spatial_tokens"]
            num_queries = sequence.content["spatial"].shape[0]
            query_prompt = torch.arange(num_queries, device=device) // self.queries_per_prompt
            blocked[:, queries, queries] = query_prompt[None, :, None] != query_prompt[None, None, :]
            token_prompt = spatial_tokens.level_prompt_index[level].permute(0, 2, 1)
            blocked[:, queries, tokens] = token_prompt != query_prompt[None, :, None]
            blocked[:, tokens, tokens] = token_prompt != token_prompt.transpose(1, 2)
            if slot_prompt is not None:
                memory = spans["memory"]
                slots = slot_prompt if slot_prompt.dim() == 2 else slot_prompt[None]  # (B or 1, M)
                blocked[:, queries, memory] = query_prompt[None, :, None] != slots[:, None, :]
                blocked[:, memory, memory] = slots[:, :, None] != slots[:, None, :]
        return blocked
