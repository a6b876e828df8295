"""FocalNet backbone and FPN pixel decoder: parity with the official tiny Focal-T model, and the key/shape
layout of the released Focal-T and Focal-L checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import Tensor, nn

from seem_ros.model.focal import FocalNet
from seem_ros.model.pixel_decoder import TransformerEncoderPixelDecoder

BACKBONE_PREFIX = "backbone."
PIXEL_DECODER_PREFIX = "sem_seg_head.pixel_decoder."
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}

FULL_SIZE_PRESETS = {
    "layout_focalt_v1.json": {
        "backbone": {
            "embed_dim": 96,
            "depths": [2, 2, 6, 2],
            "focal_levels": [3, 3, 3, 3],
            "focal_windows": [3, 3, 3, 3],
            "variant": "focal_dw",
        },
    },
    "layout_focall_v1.json": {
        "backbone": {
            "embed_dim": 192,
            "depths": [2, 2, 18, 2],
            "focal_levels": [4, 4, 4, 4],
            "focal_windows": [3, 3, 3, 3],
            "variant": "focal",
        },
    },
}
FULL_SIZE_PIXEL_DECODER = {
    "conv_dim": 512,
    "mask_dim": 512,
    "num_encoder_layers": 6,
    "num_heads": 8,
    "dim_feedforward": 2048,
}


def _strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _build_modules(config: dict, backbone_name: str) -> tuple[FocalNet, TransformerEncoderPixelDecoder]:
    """config: the MODEL section of an official (merged) SEEM config."""
    focal = config["BACKBONE"]["FOCAL"]
    backbone = FocalNet(
        embed_dim=focal["EMBED_DIM"],
        depths=focal["DEPTHS"],
        focal_levels=focal["FOCAL_LEVELS"],
        focal_windows=focal["FOCAL_WINDOWS"],
        variant=backbone_name,
        mlp_ratio=focal["MLP_RATIO"],
        use_conv_embed=focal["USE_CONV_EMBED"],
        use_postln=focal["USE_POSTLN"],
        use_layerscale=focal["USE_LAYERSCALE"],
    )
    pixel_decoder = TransformerEncoderPixelDecoder(
        in_channels=backbone.out_channels,
        conv_dim=config["ENCODER"]["CONVS_DIM"],
        mask_dim=config["ENCODER"]["MASK_DIM"],
        num_encoder_layers=config["ENCODER"]["TRANSFORMER_ENC_LAYERS"],
        num_heads=config["DECODER"]["NHEADS"],
        dim_feedforward=config["DECODER"]["DIM_FEEDFORWARD"],
    )
    return backbone, pixel_decoder


@pytest.fixture(scope="module")
def tiny_model(reference_dir: Path) -> tuple[FocalNet, TransformerEncoderPixelDecoder]:
    index = json.loads((reference_dir / "index.json").read_text())
    config = yaml.safe_load((reference_dir / index["config_yaml"]).read_text())["MODEL"]
    assert not config["DECODER"]["PRE_NORM"], "the pixel decoder implements the post-norm encoder only"
    backbone, pixel_decoder = _build_modules(config, config["BACKBONE"]["NAME"])
    state_dict = load_file(reference_dir / index["model_file"])
    backbone.load_state_dict(_strip_prefix(state_dict, BACKBONE_PREFIX), strict=True)
    pixel_decoder.load_state_dict(_strip_prefix(state_dict, PIXEL_DECODER_PREFIX), strict=True)
    return backbone.eval(), pixel_decoder.eval()


def _normalize_and_pad(image_chw: Tensor, pixel_mean: list[float], pixel_std: list[float]) -> Tensor:
    """uint8 (3, h, w) RGB -> (1, 3, H', W') float32, zero-padded bottom/right to multiples of 32."""
    mean = torch.tensor(pixel_mean).view(3, 1, 1)
    std = torch.tensor(pixel_std).view(3, 1, 1)
    normalized = (image_chw.float() - mean) / std
    height, width = normalized.shape[-2:]
    pad_bottom, pad_right = -height % 32, -width % 32
    return F.pad(normalized, (0, pad_right, 0, pad_bottom))[None]


def test_tiny_focalt_matches_official_panoptic_features(tiny_model, reference_dir: Path) -> None:
    backbone, pixel_decoder = tiny_model
    reference = load_file(reference_dir / "panoptic" / "tensors.safetensors")
    with torch.no_grad():
        features = backbone(reference["image_padded_normalized"])
        pixel_features = pixel_decoder(features)

    assert sorted(features) == ["res2", "res3", "res4", "res5"]
    for name, feature_map in features.items():
        torch.testing.assert_close(feature_map, reference[name], **TOLERANCE, msg=name)
    torch.testing.assert_close(pixel_features.mask_features, reference["mask_features"], **TOLERANCE)
    torch.testing.assert_close(
        pixel_features.transformer_encoder_features, reference["transformer_encoder_features"], **TOLERANCE
    )
    assert len(pixel_features.multi_scale_features) == 3
    for level, feature_map in enumerate(pixel_features.multi_scale_features):
        name = f"multi_scale_features_{level}"
        torch.testing.assert_close(feature_map, reference[name], **TOLERANCE, msg=name)


def test_tiny_focalt_matches_official_on_second_image(tiny_model, reference_dir: Path) -> None:
    backbone, pixel_decoder = tiny_model
    index = json.loads((reference_dir / "index.json").read_text())
    derived = json.loads((reference_dir / index["config_json"]).read_text())["derived"]
    reference = load_file(reference_dir / "refimg" / "tensors.safetensors")
    images = _normalize_and_pad(reference["image_b_uint8_chw"], derived["pixel_mean"], derived["pixel_std"])
    with torch.no_grad():
        pixel_features = pixel_decoder(backbone(images))

    torch.testing.assert_close(pixel_features.mask_features, reference["image_b_mask_features"], **TOLERANCE)
    for level, feature_map in enumerate(pixel_features.multi_scale_features):
        name = f"image_b_multi_scale_features_{level}"
        torch.testing.assert_close(feature_map, reference[name], **TOLERANCE, msg=name)


def test_backbone_rejects_unpadded_images(tiny_model) -> None:
    backbone, _ = tiny_model
    with pytest.raises(ValueError, match="multiple of 32"):
        backbone(torch.zeros(1, 3, 256, 489))


def _key_shapes(module: nn.Module, prefix: str) -> list[tuple[str, list[int]]]:
    return [(prefix + key, list(value.shape)) for key, value in module.state_dict().items()]


@pytest.mark.parametrize("layout_file", sorted(FULL_SIZE_PRESETS))
def test_full_size_key_layout(layout_file: str, reference_dir: Path) -> None:
    layout = json.loads((reference_dir / layout_file).read_text())["keys"]
    with torch.device("meta"):
        backbone = FocalNet(**FULL_SIZE_PRESETS[layout_file]["backbone"])
        pixel_decoder = TransformerEncoderPixelDecoder(backbone.out_channels, **FULL_SIZE_PIXEL_DECODER)

    for module, prefix in ((backbone, BACKBONE_PREFIX), (pixel_decoder, PIXEL_DECODER_PREFIX)):
        expected = [(key, shape) for key, shape, _, _ in layout if key.startswith(prefix)]
        assert _key_shapes(module, prefix) == expected
