"""What `SeemPredictor` runs its model through: the image encoder and decoder backends' protocols, and
`DecoderInputs`, what one decoder pass decodes.

The PyTorch backends (`seem_ros.engine.torch_backend`) and the ONNX Runtime ones
(`seem_ros.engine.onnx_backend`, `seem_ros.engine.onnx_decoder`) implement them. The predictor draws a
pass's random choices (`SEEMDecoder.draw_query_choices`) once, on the host, and hands them to whichever
decoder backend runs the pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from seem_ros.model.decoder import DecoderOutput, GroundingTokens, QueryChoices
from seem_ros.model.features import PixelFeatures
from seem_ros.model.spatial_prompts import SpatialPromptTokens, stack_spatial_tokens


@dataclass(frozen=True)
class DecoderInputs:
    """What one decoder pass decodes, for B images; the names and shapes of `SEEM.decode`'s arguments.

    features: the B images' pixel features. class_text_embeddings: (K+1, D) the vocabulary, background last.
    grounding: text tokens of the grounding queries. spatial_tokens: visual prompt tokens (made
    beforehand, e.g. `SEEM.encode_spatial_reference`). previous_masks: (B, n, H'/4, W'/4) mask logits of
    the previous frame per visual prompt (SEEM's memory prompts). query_choices: the pass's random choices
    (`SEEMDecoder.draw_query_choices`), which every pass with spatial tokens has and no other.
    """

    features: PixelFeatures
    class_text_embeddings: Tensor
    grounding: GroundingTokens | None = None
    spatial_tokens: SpatialPromptTokens | None = None
    previous_masks: Tensor | None = None
    query_choices: QueryChoices | None = None

    def __post_init__(self) -> None:
        if (self.spatial_tokens is None) != (self.query_choices is None):
            raise ValueError(
                "a pass has query choices (draw_query_choices) exactly when it has spatial tokens"
            )
        if self.previous_masks is not None and self.spatial_tokens is None:
            raise ValueError("previous_masks are the memory of visual prompts: they need spatial tokens")

    @property
    def batch_size(self) -> int:
        return int(self.features.mask_features.shape[0])

    def arguments(self) -> dict[str, Any]:
        """The inputs as keyword arguments of `SEEM.decode`."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def select_images(self, index: Tensor) -> DecoderInputs:
        """The pass over images `index` ((B',) long, repeats allowed) of this one, in that order."""
        return DecoderInputs(
            features=self.features.select_images(index),
            class_text_embeddings=self.class_text_embeddings,
            grounding=None if self.grounding is None else self.grounding.select_images(index),
            spatial_tokens=None if self.spatial_tokens is None else self.spatial_tokens.select_images(index),
            previous_masks=None if self.previous_masks is None else self.previous_masks[index],
            query_choices=None if self.query_choices is None else self.query_choices.select_images(index),
        )

    @staticmethod
    def stack(passes: Sequence[DecoderInputs]) -> DecoderInputs:
        """One pass over the images of `passes` (one image each, the same vocabulary and query groups):
        features concatenated (without a copy where they are one encoder batch's consecutive images), each
        image's prompt tokens padded to the longest, its own random choices."""
        first = passes[0]
        if len(passes) == 1:
            return first
        return DecoderInputs(
            features=PixelFeatures.concatenate([inputs.features for inputs in passes]),
            class_text_embeddings=first.class_text_embeddings,
            grounding=None
            if first.grounding is None
            else GroundingTokens.stack([inputs.grounding for inputs in passes]),
            spatial_tokens=None
            if first.spatial_tokens is None
            else stack_spatial_tokens([inputs.spatial_tokens for inputs in passes]),
            previous_masks=None
            if first.previous_masks is None
            else torch.cat([inputs.previous_masks for inputs in passes]),
            query_choices=None
            if first.query_choices is None
            else QueryChoices.stack([inputs.query_choices for inputs in passes]),
        )


@runtime_checkable
class ImageEncoderBackend(Protocol):
    """Something that maps a padded, normalised image to pixel features (what `SeemPredictor` calls)."""

    name: str

    def __call__(self, padded_images: Tensor) -> PixelFeatures:
        """padded_images: (B, 3, H', W') float32 from `SEEM.preprocess`, any batch B. Returns
        `PixelFeatures` (mask features and the three multi-scale maps, float32) on the input's device."""
        ...


@runtime_checkable
class DecoderBackend(Protocol):
    """Something that runs `SEEM.decode` for some passes (what `SeemPredictor` calls)."""

    name: str

    def supports(self, inputs: DecoderInputs) -> bool:
        """Whether `__call__` can run this pass, batch included (a batch it cannot take the caller decodes
        one image at a time; a pass it cannot take, in PyTorch)."""
        ...

    def __call__(self, inputs: DecoderInputs) -> DecoderOutput:
        """`SEEM.decode` of `inputs`; `predictions` may hold only the final step."""
        ...


def pytorch_decodes_batches(device: torch.device, precision: str) -> bool:
    """Whether the PyTorch decoder decodes several images in one pass: on a GPU, where one pass launches the
    decoder's many small kernels once for all, and on the CPU in a reduced precision; in fp32 on the CPU
    one image a pass. Measured on a 2-core CPU with AMX (`bench.cameras`, Focal-T, cameras tracking a
    click each, frames per second against one camera a step): bf16 1.05 to 1.07x with the decoder batched,
    0.95 to 0.97x without; fp32 0.87 to 0.88x with, 0.90 to 0.92x without (the fp32 decoder alone, two
    images in one pass against two passes: 0.85x)."""
    return device.type != "cpu" or precision != "fp32"
