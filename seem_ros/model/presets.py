"""Builders for the released SEEM v1 checkpoints, one function each, with only the numbers that differ.

| preset      | checkpoint             | backbone                      | input                      |
|-------------|------------------------|-------------------------------|----------------------------|
| focalt_v1   | seem_focalt_v1.pt      | FocalNet-T (focal_dw)         | any size, padded to /32    |
| focall_v1   | seem_focall_v1.pt      | FocalNet-L (focal)            | any size, padded to /32    |
| samvitb_v1  | seem_samvitb_v1.pt     | SAM ViT-B + SimpleFPN         | padded to 1024 x 1024      |
| samvitl_v1  | seem_samvitl_v1.pt     | SAM ViT-L + SimpleFPN         | padded to 1024 x 1024      |
| focalt_tiny | (none: tests, smoke)   | FocalNet, 16 wide             | any size, padded to /32    |

All four share the decoder (101 object queries, 9 layers, width 512) and the text tower (CLIP-style,
12 layers, width 512).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from seem_ros.model.decoder import SEEMDecoder
from seem_ros.model.deformable_pixel_decoder import DeformablePixelDecoder
from seem_ros.model.focal import FocalNet
from seem_ros.model.language import LanguageEncoder, TextTransformer
from seem_ros.model.pixel_decoder import TransformerEncoderPixelDecoder
from seem_ros.model.sam_vit import SamViTBackbone
from seem_ros.model.seem import SEEM

HIDDEN_DIM = 512
COCO_TRAINING_CLASSES = 133


def build_seem(
    backbone: nn.Module,
    pixel_decoder: nn.Module,
    hidden_dim: int = HIDDEN_DIM,
    num_queries: int = 101,
    num_heads: int = 8,
    dim_feedforward: int = 2048,
    num_decoder_layers: int = 9,
    num_memory_slots: int = 32,
    queries_per_prompt: int = 3,
    text_width: int = 512,
    text_layers: int = 12,
    text_heads: int = 8,
    size_divisibility: int = 32,
    fixed_input_size: int | None = None,
    num_training_classes: int = COCO_TRAINING_CLASSES,
) -> SEEM:
    """Wire a SEEM model from its image encoder and the decoder / text tower sizes."""
    language = LanguageEncoder(TextTransformer(text_width, text_layers, text_heads), dim_proj=hidden_dim)
    decoder = SEEMDecoder(
        language,
        hidden_dim=hidden_dim,
        num_queries=num_queries,
        num_heads=num_heads,
        dim_feedforward=dim_feedforward,
        num_layers=num_decoder_layers,
        mask_dim=hidden_dim,
        num_memory_slots=num_memory_slots,
        queries_per_prompt=queries_per_prompt,
    )
    return SEEM(
        backbone,
        pixel_decoder,
        decoder,
        size_divisibility=size_divisibility,
        fixed_input_size=fixed_input_size,
        num_training_classes=num_training_classes,
    )


def _fpn_pixel_decoder(in_channels: tuple[int, ...]) -> TransformerEncoderPixelDecoder:
    return TransformerEncoderPixelDecoder(
        in_channels,
        conv_dim=HIDDEN_DIM,
        mask_dim=HIDDEN_DIM,
        num_encoder_layers=6,
        num_heads=8,
        dim_feedforward=2048,
    )


def build_focalt_v1() -> SEEM:
    """SEEM v1 with FocalNet-T (`seem_focalt_v1.pt`)."""
    backbone = FocalNet(96, [2, 2, 6, 2], [3, 3, 3, 3], [3, 3, 3, 3], variant="focal_dw")
    return build_seem(backbone, _fpn_pixel_decoder(backbone.out_channels))


def build_focall_v1() -> SEEM:
    """SEEM v1 with FocalNet-L (`seem_focall_v1.pt`)."""
    backbone = FocalNet(192, [2, 2, 18, 2], [4, 4, 4, 4], [3, 3, 3, 3], variant="focal")
    return build_seem(backbone, _fpn_pixel_decoder(backbone.out_channels))


SAM_INPUT_SIZE = 1024


def _sam_seem(embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...]) -> SEEM:
    backbone = SamViTBackbone(
        img_size=SAM_INPUT_SIZE,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        global_attn_indexes=global_attn_indexes,
        out_channels=(128, 256, 512, 1024),
    )
    pixel_decoder = DeformablePixelDecoder(
        in_channels=list(backbone.out_channels.values()),
        conv_dim=HIDDEN_DIM,
        mask_dim=HIDDEN_DIM,
        num_heads=8,
        num_encoder_layers=6,
    )
    return build_seem(
        backbone, pixel_decoder, size_divisibility=SAM_INPUT_SIZE, fixed_input_size=SAM_INPUT_SIZE
    )


def build_samvitb_v1() -> SEEM:
    """SEEM v1 with the SAM ViT-B image encoder (`seem_samvitb_v1.pt`); input padded to 1024x1024."""
    return _sam_seem(768, 12, 12, (2, 5, 8, 11))


def build_samvitl_v1() -> SEEM:
    """SEEM v1 with the SAM ViT-L image encoder (`seem_samvitl_v1.pt`); input padded to 1024x1024."""
    return _sam_seem(1024, 24, 16, (5, 11, 17, 23))


def build_focalt_tiny() -> SEEM:
    """A tiny Focal-T SEEM (4.1 M parameters) with the layout of the tiny reference model; for tests and
    smoke runs with random weights. Not a released checkpoint: its outputs mean nothing without weights."""
    backbone = FocalNet(16, [1, 1, 2, 1], [3, 3, 3, 3], [3, 3, 3, 3], variant="focal_dw")
    pixel_decoder = TransformerEncoderPixelDecoder(
        backbone.out_channels,
        conv_dim=64,
        mask_dim=64,
        num_encoder_layers=1,
        num_heads=4,
        dim_feedforward=128,
    )
    return build_seem(
        backbone,
        pixel_decoder,
        hidden_dim=64,
        num_queries=11,
        num_heads=4,
        dim_feedforward=128,
        num_decoder_layers=3,
        num_memory_slots=4,
        text_width=64,
        text_layers=2,
        text_heads=4,
    )


PRESETS: dict[str, Callable[[], SEEM]] = {
    "focalt_tiny": build_focalt_tiny,
    "focalt_v1": build_focalt_v1,
    "focall_v1": build_focall_v1,
    "samvitb_v1": build_samvitb_v1,
    "samvitl_v1": build_samvitl_v1,
}


CHECKPOINT_FILES = {
    "focalt_v1": "seem_focalt_v1.pt",
    "focall_v1": "seem_focall_v1.pt",
    "samvitb_v1": "seem_samvitb_v1.pt",
    "samvitl_v1": "seem_samvitl_v1.pt",
}
RELEASED_PRESETS = tuple(CHECKPOINT_FILES)


def build_preset(name: str) -> SEEM:
    """Build a released model by preset name (weights uninitialised until a checkpoint is loaded)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def randomize_weights(model: SEEM, seed: int = 0, logit_scale: float = 6.0) -> SEEM:
    """Fill a model with seeded random weights (tests and smoke runs without a checkpoint).

    Matrices and conv kernels get Xavier-uniform values, other vectors N(0, 0.02), then every norm layer
    is reset to weight 1 / bias 0. The logit scale is set high (as in the tiny reference model) so random
    class embeddings still give some confident segments. The outputs mean nothing.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                receptive = parameter[0][0].numel()
                bound = (6.0 / ((parameter.shape[1] + parameter.shape[0]) * receptive)) ** 0.5
                parameter.copy_((torch.rand(parameter.shape, generator=generator) * 2 - 1) * bound)
            elif parameter.dim() == 0:
                parameter.fill_(logit_scale)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        for module in model.modules():
            is_norm = isinstance(module, nn.LayerNorm | nn.GroupNorm) or type(module).__name__.endswith(
                "LayerNorm"
            )
            if is_norm:
                module.weight.fill_(1.0)
                module.bias.zero_()
    return model
