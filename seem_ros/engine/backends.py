"""What `SeemPredictor` runs its model through: the image encoder and decoder backends' protocols.

The PyTorch backends (`seem_ros.engine.torch_backend`) and the ONNX Runtime ones
(`seem_ros.engine.onnx_backend`, `seem_ros.engine.onnx_decoder`) implement them. The predictor draws a
pass's random choices (`SEEMDecoder.draw_query_choices`) once, on the host, and hands them to whichever
decoder backend runs the pass.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from seem_ros.model.decoder import DecoderOutput, GroundingTokens, QueryChoices
from seem_ros.model.features import PixelFeatures
from seem_ros.model.spatial_prompts import SpatialPromptTokens


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
    """Something that runs `SEEM.decode` for some calls (what `SeemPredictor` calls instead of PyTorch)."""

    name: str

    def supports(
        self,
        features: PixelFeatures,
        grounding: GroundingTokens | None = None,
        spatial_tokens: SpatialPromptTokens | None = None,
        previous_masks: Tensor | None = None,
    ) -> bool:
        """Whether `__call__` can run a call with these inputs, batch included (a batch it cannot take
        the caller decodes one image at a time; a call it cannot take, in PyTorch)."""
        ...

    def __call__(
        self,
        features: PixelFeatures,
        class_text_embeddings: Tensor,
        grounding: GroundingTokens | None = None,
        spatial_tokens: SpatialPromptTokens | None = None,
        previous_masks: Tensor | None = None,
        query_choices: QueryChoices | None = None,
    ) -> DecoderOutput:
        """`SEEM.decode` with precomputed spatial tokens and the pass's random choices drawn by the caller
        (`SEEMDecoder.draw_query_choices`; needed with spatial tokens); `predictions` may hold only the
        final step."""
        ...


def pytorch_decodes_batches(device: torch.device, precision: str) -> bool:
    """Whether the PyTorch decoder decodes several images in one pass: on a GPU, where one pass launches the
    decoder's many small kernels once for all, and on the CPU in a reduced precision; in fp32 on the CPU
    one image a pass. Measured on a 2-core CPU with AMX (`bench.cameras`, Focal-T, cameras tracking a
    click each, frames per second against one camera a step): bf16 1.05 to 1.07x with the decoder batched,
    0.95 to 0.97x without; fp32 0.87 to 0.88x with, 0.90 to 0.92x without (the fp32 decoder alone, two
    images in one pass against two passes: 0.85x)."""
    return device.type != "cpu" or precision != "fp32"


def required_query_choices(
    spatial_tokens: SpatialPromptTokens | None, query_choices: QueryChoices | None
) -> QueryChoices | None:
    """A decoder backend's check of the caller's random choices: a pass with spatial tokens needs them
    (their memory slots, where it has previous masks, are checked where they are read:
    `QueryChoices.memory_slots`); one without uses none (returns None)."""
    if spatial_tokens is None:
        return None
    if query_choices is None:
        raise ValueError("a pass with spatial tokens needs its query choices (draw_query_choices)")
    return query_choices
