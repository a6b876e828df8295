"""The model of a reference set and what its cases share: the input image, features, backbone checks
and the parity-mode spatial decoder call."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from seem_ros.model.checkpoint import load_weights, read_checkpoint
from seem_ros.model.decoder import DecoderOutput
from seem_ros.model.features import PixelFeatures
from seem_ros.model.seem import SEEM, SpatialSelection
from seem_ros.model.tokenizer import ClipTokenizer
from seem_ros.model.vocabulary import BACKGROUND_CLASS
from seem_ros.parity.official_config import build_from_official_config, load_official_config
from seem_ros.parity.report import CaseRows


def hw(values: Sequence[int]) -> tuple[int, int]:
    return int(values[0]), int(values[1])


@dataclass
class SpatialResult:
    """Our result of one spatial decoder call."""

    output: DecoderOutput
    selection: SpatialSelection


class ReferenceSet:
    """The model of a reference set, with the features and text embeddings its cases share."""

    def __init__(self, directory: Path, tokenizer: ClipTokenizer | None) -> None:
        self.directory = directory
        self.index = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        self.name = Path(self.index["model_file"]).stem
        config = load_official_config(directory / self.index["config_yaml"])
        self.model: SEEM = build_from_official_config(config).eval()
        load_weights(self.model, read_checkpoint(directory / self.index["model_file"]), self.name)
        self.language = self.model.language_encoder
        self.language.tokenizer = tokenizer if tokenizer is not None else ClipTokenizer()
        self._features: dict[bytes, tuple[Tensor, PixelFeatures]] = {}
        self._class_embeddings: dict[tuple[str, ...], Tensor] = {}

    @property
    def tokenizer(self) -> ClipTokenizer:
        return self.language.tokenizer

    def image_file(self, relative: str) -> Tensor:
        """(3, h, w) uint8 RGB from a PNG of the set."""
        bgr = cv2.imread(str(self.directory / relative), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"image {relative} not found in {self.directory}")
        return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1).contiguous()

    def encode(self, image: Tensor) -> tuple[Tensor, PixelFeatures]:
        """image: (3, h, w) uint8. Returns the padded normalised image (1, 3, H', W') and its features."""
        key = str(tuple(image.shape)).encode() + hashlib.sha256(image.numpy().tobytes()).digest()
        if key not in self._features:
            padded = self.model.preprocess(image[None])
            self._features[key] = (padded, self.model.encode_image(padded))
        return self._features[key]

    def class_embeddings(self, vocabulary: Sequence[str]) -> Tensor:
        """(K+1, D) for the vocabulary (background appended unless it is already last)."""
        names = tuple(vocabulary)
        if not names or names[-1] != BACKGROUND_CLASS:
            names = (*names, BACKGROUND_CLASS)
        if names not in self._class_embeddings:
            self._class_embeddings[names] = self.language.class_embeddings(list(names))
        return self._class_embeddings[names]

    def padded_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self.model.padded_size(*image_size)

    def spatial(
        self,
        features: PixelFeatures,
        class_embeddings: Tensor,
        seed: int | None,
        **prompts: Any,
    ) -> SpatialResult:
        """One spatial decoder call in parity mode: the default generator reseeded with the official seed
        right before it (None: continue the generator, as the official multi-round loop does)."""
        if seed is not None:
            torch.manual_seed(seed)
        output = self.model.decode(features, class_embeddings, generator=None, **prompts)
        return SpatialResult(output, self.model.select_spatial_masks(output))


def case_image(report: CaseRows, reference: ReferenceSet, name: str, file: str | None) -> Tensor:
    """The model-input image: the stored uint8 CHW tensor `name` if the case has it (cross-checked against
    the image file when one is named), else the image file."""
    from_file = reference.image_file(file) if file else None
    return report.input(name, "backbone", from_file, file or "")


def _plain(name: str) -> str:
    return name


def check_features(
    report: CaseRows, padded: Tensor, features: PixelFeatures, full: Callable[[str], str] = _plain
) -> None:
    """The padded input and the pixel decoder outputs; `full` maps a tensor name to its stored name."""
    report.close(full("image_padded_normalized"), "backbone", padded)
    report.close(full("mask_features"), "pixel_decoder", features.mask_features)
    report.close(full("transformer_encoder_features"), "pixel_decoder", features.transformer_encoder_features)
    for level, feature_map in enumerate(features.multi_scale_features):
        report.close(full(f"multi_scale_features_{level}"), "pixel_decoder", feature_map)


def check_backbone(
    reference: ReferenceSet, report: CaseRows, padded: Tensor, full: Callable[[str], str] = _plain
) -> None:
    """Backbone outputs, SAM-ViT's trunk tokens and the deformable pixel decoder's input projections,
    recomputed from the padded image (the cached features come from the same modules)."""
    model = reference.model
    levels = ("res2", "res3", "res4", "res5")
    if any(report.has(full(name)) for name in levels):
        backbone_features = model.backbone(padded)
        for name in levels:
            report.close(full(name), "backbone", backbone_features.get(name))
    if report.has(full("backbone_vit_tokens")):
        forward_tokens = getattr(model.backbone, "forward_tokens", None)
        report.close(
            full("backbone_vit_tokens"), "backbone", forward_tokens(padded) if forward_tokens else None
        )
    wanted = [level for level in range(8) if report.has(full(f"pixel_decoder_input_proj_{level}"))]
    if wanted:
        projections = _input_projections(model, padded)
        for level in wanted:
            projection = projections[level] if level < len(projections) else None
            report.close(full(f"pixel_decoder_input_proj_{level}"), "pixel_decoder", projection)


def _input_projections(model: SEEM, padded: Tensor) -> list[Tensor]:
    """Outputs of the pixel decoder's per-level input projections (deformable decoder: res5, res4, res3),
    caught with forward hooks during one pixel-decoder pass."""
    projections = getattr(model.sem_seg_head.pixel_decoder, "input_proj", None)
    if not isinstance(projections, torch.nn.ModuleList):
        return []
    outputs: list[Tensor] = []
    handles = [
        projection.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
        for projection in projections
    ]
    try:
        model.encode_image(padded)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def stored_seed(report: CaseRows, name: str, case: dict) -> int | None:
    """The official seed set right before a decoder call (stored tensor, else case.json)."""
    if report.has(name):
        seed = int(report.stored[name].flatten()[0])
        if name in case and int(case[name]) != seed:
            report.failed(name, "rng", f"stored seed {seed} != case.json {name} {case[name]}")
        else:
            report.given(name, "rng", "seed of torch.manual_seed before the decoder call")
        return seed
    return int(case[name]) if name in case else None
