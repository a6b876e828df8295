"""Build a SEEM model from an official merged config (the YAML dict the official `build_model` takes).

Used for the reference sets in the official format (tiny random-init variants of any width); the released
models have their own builders in `seem_ros.model.presets`. Only the keys that change the architecture are
read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from seem_ros.model.deformable_pixel_decoder import DeformablePixelDecoder
from seem_ros.model.focal import FocalNet
from seem_ros.model.pixel_decoder import TransformerEncoderPixelDecoder
from seem_ros.model.presets import build_seem
from seem_ros.model.sam_vit import SamViTBackbone
from seem_ros.model.seem import SEEM

_SAM_SIZES = {
    "base": {"EMBED_DIM": 768, "DEPTH": 12, "NUM_HEADS": 12, "GLOBAL_ATTN_INDEXES": [2, 5, 8, 11]},
    "large": {"EMBED_DIM": 1024, "DEPTH": 24, "NUM_HEADS": 16, "GLOBAL_ATTN_INDEXES": [5, 11, 17, 23]},
}


@dataclass(frozen=True)
class InferenceSettings:
    """Post-processing thresholds of an official config."""

    object_mask_threshold: float
    overlap_threshold: float
    detections_per_image: int


def load_official_config(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def inference_settings(config: dict[str, Any]) -> InferenceSettings:
    test = config["MODEL"]["DECODER"]["TEST"]
    return InferenceSettings(
        object_mask_threshold=float(test["OBJECT_MASK_THRESHOLD"]),
        overlap_threshold=float(test["OVERLAP_THRESHOLD"]),
        detections_per_image=int(config["TEST"]["DETECTIONS_PER_IMAGE"]),
    )


def build_from_official_config(config: dict[str, Any]) -> SEEM:
    """A SEEM v1 model with the architecture the official config describes (weights uninitialised)."""
    model_cfg = config["MODEL"]
    backbone_cfg = model_cfg["BACKBONE"]
    encoder_cfg = model_cfg["ENCODER"]
    decoder_cfg = model_cfg["DECODER"]
    text_cfg = model_cfg["TEXT"]
    attention_cfg = config["ATTENTION_ARCH"]
    fixed_input_size = None
    if backbone_cfg["NAME"] in ("focal_dw", "focal"):
        focal = backbone_cfg["FOCAL"]
        backbone = FocalNet(
            focal["EMBED_DIM"],
            focal["DEPTHS"],
            focal["FOCAL_LEVELS"],
            focal["FOCAL_WINDOWS"],
            variant=backbone_cfg["NAME"],
            mlp_ratio=focal["MLP_RATIO"],
            use_conv_embed=focal["USE_CONV_EMBED"],
            use_postln=focal["USE_POSTLN"],
            use_layerscale=focal["USE_LAYERSCALE"],
        )
        in_channels = list(backbone.out_channels)
    elif backbone_cfg["NAME"] == "vit":
        vit = backbone_cfg["VIT"]
        size = vit["SIZE"]
        numbers = vit.get(size.upper()) or _SAM_SIZES[size]
        fixed_input_size = int(numbers.get("IMAGE_SIZE", 1024))
        backbone = SamViTBackbone(
            img_size=fixed_input_size,
            embed_dim=numbers["EMBED_DIM"],
            depth=numbers["DEPTH"],
            num_heads=numbers["NUM_HEADS"],
            global_attn_indexes=tuple(numbers["GLOBAL_ATTN_INDEXES"]),
            out_channels=tuple(numbers.get("NECK_OUT_DIMS", (128, 256, 512, 1024))),
        )
        in_channels = list(backbone.out_channels.values())
    else:
        raise ValueError(f"unsupported backbone {backbone_cfg['NAME']!r}: expected focal_dw, focal or vit")

    if encoder_cfg["NAME"] == "transformer_encoder_fpn":
        pixel_decoder = TransformerEncoderPixelDecoder(
            in_channels,
            conv_dim=encoder_cfg["CONVS_DIM"],
            mask_dim=encoder_cfg["MASK_DIM"],
            num_encoder_layers=encoder_cfg["TRANSFORMER_ENC_LAYERS"],
            num_heads=decoder_cfg["NHEADS"],
            dim_feedforward=decoder_cfg["DIM_FEEDFORWARD"],
        )
    elif encoder_cfg["NAME"] == "transformer_encoder_deform":
        pixel_decoder = DeformablePixelDecoder(
            in_channels=in_channels,
            conv_dim=encoder_cfg["CONVS_DIM"],
            mask_dim=encoder_cfg["MASK_DIM"],
            num_heads=decoder_cfg["NHEADS"],
            num_encoder_layers=encoder_cfg["TRANSFORMER_ENC_LAYERS"],
        )
    else:
        raise ValueError(f"unsupported pixel decoder {encoder_cfg['NAME']!r}")

    if model_cfg["DIM_PROJ"] != decoder_cfg["HIDDEN_DIM"]:
        raise ValueError(
            f"MODEL.DIM_PROJ ({model_cfg['DIM_PROJ']}) must equal "
            f"DECODER.HIDDEN_DIM ({decoder_cfg['HIDDEN_DIM']})"
        )
    return build_seem(
        backbone,
        pixel_decoder,
        hidden_dim=decoder_cfg["HIDDEN_DIM"],
        num_queries=decoder_cfg["NUM_OBJECT_QUERIES"],
        num_heads=decoder_cfg["NHEADS"],
        dim_feedforward=decoder_cfg["DIM_FEEDFORWARD"],
        num_decoder_layers=decoder_cfg["DEC_LAYERS"] - 1,
        num_memory_slots=attention_cfg["SPATIAL_MEMORIES"],
        queries_per_prompt=attention_cfg["QUERY_NUMBER"],
        text_width=text_cfg["WIDTH"],
        text_layers=text_cfg["LAYERS"],
        text_heads=text_cfg["HEADS"],
        size_divisibility=fixed_input_size or decoder_cfg["SIZE_DIVISIBILITY"],
        fixed_input_size=fixed_input_size,
        num_training_classes=encoder_cfg["NUM_CLASSES"],
    )
