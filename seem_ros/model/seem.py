"""SEEM v1 assembled: image encoder (backbone + pixel decoder), decoder with its language encoder.

The attribute names (`backbone`, `sem_seg_head.pixel_decoder`, `sem_seg_head.predictor`,
`criterion.empty_weight`, `dilation_kernel`) reproduce the official checkpoint keys, so released
checkpoints load unchanged and strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seem_ros.model.decoder import DecoderOutput, GroundingTokens, QueryChoices, SEEMDecoder
from seem_ros.model.features import PixelFeatures
from seem_ros.model.spatial_prompts import SpatialPromptTokens

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class SegmentationHead(nn.Module):
    """Container that gives the pixel decoder and the decoder their official key prefixes."""

    def __init__(self, pixel_decoder: nn.Module, predictor: SEEMDecoder) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor


class TrainingCriterionState(nn.Module):
    """The only state of the official training criterion that checkpoints carry: the class weights
    (ones, last entry 0.1). Unused at inference; kept so checkpoints load strictly."""

    def __init__(self, num_training_classes: int) -> None:
        super().__init__()
        weights = torch.ones(num_training_classes + 1)
        weights[-1] = 0.1
        self.register_buffer("empty_weight", weights)


@dataclass
class SpatialSelection:
    """The answer to each visual prompt among its spatial queries.

    query_index: (B, n) index into the 3n spatial queries; logits: (B, 3n, n) selection scores
    (-inf outside the prompt's own queries); masks: (B, n, H'/4, W'/4) selected mask logits.
    """

    query_index: Tensor
    logits: Tensor
    masks: Tensor


class SEEM(nn.Module):
    """SEEM v1.

    Args:
        backbone: maps (B, 3, H', W') normalised images to {"res2".."res5"}.
        pixel_decoder: maps those features to `PixelFeatures`.
        decoder: the SEEM decoder (holds the language encoder).
        size_divisibility: images are zero-padded bottom/right to a multiple of this.
        fixed_input_size: if set (SAM-ViT), images are padded to exactly this square size instead.
        num_training_classes: length - 1 of the criterion weights stored in checkpoints (133 for COCO).
    """

    def __init__(
        self,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        decoder: SEEMDecoder,
        size_divisibility: int = 32,
        fixed_input_size: int | None = None,
        num_training_classes: int = 133,
    ) -> None:
        super().__init__()
        self.register_buffer("dilation_kernel", torch.ones(1, 1, 3, 3))
        self.backbone = backbone
        self.sem_seg_head = SegmentationHead(pixel_decoder, decoder)
        self.criterion = TrainingCriterionState(num_training_classes)
        # Constants, not weights: made on the CPU even when the model is built on the meta device to be
        # filled from a checkpoint (which does not hold them).
        self.register_buffer(
            "pixel_mean", torch.tensor(PIXEL_MEAN, device="cpu").view(3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(PIXEL_STD, device="cpu").view(3, 1, 1), persistent=False
        )
        self.size_divisibility = size_divisibility
        self.fixed_input_size = fixed_input_size

    @property
    def decoder(self) -> SEEMDecoder:
        return self.sem_seg_head.predictor

    @property
    def language_encoder(self) -> nn.Module:
        return self.sem_seg_head.predictor.lang_encoder

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') the model runs at for an input image of (height, width)."""
        if self.fixed_input_size is not None:
            if height > self.fixed_input_size or width > self.fixed_input_size:
                raise ValueError(
                    f"image {height}x{width} is larger than this model's fixed input size "
                    f"{self.fixed_input_size}; resize its longer side to at most {self.fixed_input_size}"
                )
            return self.fixed_input_size, self.fixed_input_size
        divisor = self.size_divisibility
        return -(-height // divisor) * divisor, -(-width // divisor) * divisor

    def preprocess(self, images: Tensor) -> Tensor:
        """images: (B, 3, h, w) uint8 or float RGB 0..255. Returns (B, 3, H', W') normalised,
        zero-padded bottom/right (padding is 0 after normalisation)."""
        normalized = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        padded_h, padded_w = self.padded_size(images.shape[-2], images.shape[-1])
        return F.pad(normalized, (0, padded_w - images.shape[-1], 0, padded_h - images.shape[-2]))

    def encode_image(self, padded_images: Tensor) -> PixelFeatures:
        """padded_images: (B, 3, H', W') from `preprocess`. Returns the pixel decoder's features."""
        return self.sem_seg_head.pixel_decoder(self.backbone(padded_images))

    def decode(
        self,
        features: PixelFeatures,
        class_text_embeddings: Tensor,
        grounding: GroundingTokens | None = None,
        spatial_masks: tuple[Tensor, Tensor] | None = None,
        spatial_tokens: SpatialPromptTokens | None = None,
        previous_masks: Tensor | None = None,
        generator: torch.Generator | None = None,
        query_choices: QueryChoices | None = None,
        final_only: bool = False,
    ) -> DecoderOutput:
        """Run the decoder on encoded features; see `SEEMDecoder.forward` for the prompt arguments, the
        random choices (drawn from `generator` unless given) and `final_only`."""
        return self.decoder(
            features.multi_scale_features,
            features.mask_features,
            class_text_embeddings,
            grounding=grounding,
            spatial_masks=spatial_masks,
            spatial_tokens=spatial_tokens,
            previous_masks=previous_masks,
            generator=generator,
            query_choices=query_choices,
            final_only=final_only,
        )

    def encode_spatial_reference(
        self,
        features: PixelFeatures,
        positive_masks: Tensor,
        negative_masks: Tensor,
        generator: torch.Generator | None = None,
    ) -> SpatialPromptTokens:
        """Tokens of visual prompts drawn on a reference image, to segment the same thing in
        another image (`decode(..., spatial_tokens=...)`). Masks: (n, H', W') bool, padded."""
        return self.decoder.encode_spatial_prompts(
            features.multi_scale_features, features.mask_features, positive_masks, negative_masks, generator
        )

    def select_spatial_masks(self, output: DecoderOutput) -> SpatialSelection:
        """Pick, per visual prompt, the spatial query whose mask embedding best matches the mean
        feature under the prompt's positive points (= highest mean mask logit there)."""
        final = output.final
        if final.spatial_mask_embeddings is None or output.spatial_tokens is None:
            raise ValueError("the decoder ran without a visual prompt; nothing to select")
        prompt_means = output.spatial_tokens.mean_positive.transpose(0, 1)
        num_prompts = prompt_means.shape[1]
        per_prompt = self.decoder.queries_per_prompt
        own_prompt = torch.eye(num_prompts, device=prompt_means.device, dtype=torch.bool)
        own_prompt = own_prompt.repeat_interleave(per_prompt, dim=0)
        offset = torch.zeros(own_prompt.shape, device=prompt_means.device).masked_fill(
            ~own_prompt, float("-inf")
        )
        logits = final.spatial_mask_embeddings @ prompt_means.transpose(1, 2) + offset[None]
        query_index = logits.argmax(dim=1)
        masks = torch.gather(
            final.spatial_masks,
            1,
            query_index[:, :, None, None].expand(-1, -1, *final.spatial_masks.shape[-2:]),
        )
        return SpatialSelection(query_index=query_index, logits=logits, masks=masks)
