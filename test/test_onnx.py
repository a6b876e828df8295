"""The ONNX image encoder: parity with the official tensors, dynamic input size, the cache, and the predictor
giving the same answers with it as with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from assets import tiny_reference_model
from PIL import Image
from safetensors.torch import load_file

from seem_ros.engine.backends import ImageEncoderBackend
from seem_ros.engine.onnx_backend import (
    OnnxImageEncoder,
    export_cached_image_encoder,
    exported_onnx_image_encoder,
    weights_fingerprint,
    winograd_suits,
)
from seem_ros.engine.predictor import SeemPredictor
from seem_ros.engine.prompts import ClickPrompt, Target, TextPrompt
from seem_ros.engine.vocabulary_cache import Vocabulary, VocabularyCache
from seem_ros.export.image_encoder import OUTPUT_NAMES, export_image_encoder
from seem_ros.model.presets import build_preset, randomize_weights
from seem_ros.model.seem import SEEM
from seem_ros.model.tokenizer import ClipTokenizer
from seem_ros.parity.reference import ReferenceSet

TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
MIN_MASK_IOU = 0.99


@pytest.fixture(scope="module")
def tiny_model(reference_dir: Path) -> SEEM:
    return tiny_reference_model(reference_dir)


@pytest.fixture(scope="module")
def onnx_path(tiny_model: SEEM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_image_encoder(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny_focalt_v1.onnx")


@pytest.fixture(scope="module")
def encoder(onnx_path: Path) -> OnnxImageEncoder:
    return OnnxImageEncoder(onnx_path, providers=["CPUExecutionProvider"])


def test_encoder_matches_official_tensors(encoder: OnnxImageEncoder, reference_dir: Path) -> None:
    tensors = load_file(reference_dir / "panoptic" / "tensors.safetensors")
    features = encoder(tensors["image_padded_normalized"])
    torch.testing.assert_close(features.mask_features, tensors["mask_features"], **TOLERANCE)
    for level, feature in enumerate(features.multi_scale_features):
        torch.testing.assert_close(feature, tensors[f"multi_scale_features_{level}"], **TOLERANCE)


def test_sam_vit_encoder_matches_official_tensors(samvit_reference_dir: Path, tmp_path: Path) -> None:
    """The SAM-ViT backbone and its deformable-attention pixel decoder, exported (the tiny reference
    model): the official tensors."""
    model = ReferenceSet(samvit_reference_dir, tokenizer=None).model
    encoder = OnnxImageEncoder(
        export_image_encoder(model, tmp_path / "tiny_samvitb_v1.onnx"), providers=["CPUExecutionProvider"]
    )
    tensors = load_file(samvit_reference_dir / "panoptic" / "tensors.safetensors")
    features = encoder(tensors["image_padded_normalized"])
    torch.testing.assert_close(features.mask_features, tensors["mask_features"], **TOLERANCE)
    for level, feature in enumerate(features.multi_scale_features):
        torch.testing.assert_close(feature, tensors[f"multi_scale_features_{level}"], **TOLERANCE)


@pytest.mark.parametrize("size", [(320, 416), (96, 64)])
def test_dynamic_input_size_matches_pytorch(
    encoder: OnnxImageEncoder, tiny_model: SEEM, size: tuple[int, int]
) -> None:
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = tiny_model.encode_image(image)
    features = encoder(image)
    assert features.mask_features.shape[-2:] == (size[0] // 4, size[1] // 4)
    torch.testing.assert_close(features.mask_features, expected.mask_features, **TOLERANCE)
    for got, want in zip(features.multi_scale_features, expected.multi_scale_features, strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE)


def test_encoder_reports_its_providers_and_checks_input(encoder: OnnxImageEncoder) -> None:
    assert isinstance(encoder, ImageEncoderBackend)
    assert encoder.providers == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encoder(torch.zeros(3, 64, 64))
    with pytest.raises(FileNotFoundError, match="export it first"):
        OnnxImageEncoder("missing.onnx")


def test_cache_exports_once_per_weights(tiny_model: SEEM, tmp_path: Path) -> None:
    first = exported_onnx_image_encoder(tiny_model, "focalt_tiny", cache_dir=tmp_path)()
    modified = first.path.stat().st_mtime_ns
    again = exported_onnx_image_encoder(tiny_model, "focalt_tiny", cache_dir=tmp_path)()
    assert again.path == first.path
    assert again.path.stat().st_mtime_ns == modified
    assert weights_fingerprint(tiny_model) in first.path.name

    other = randomize_weights(build_preset("focalt_tiny"), seed=3).eval()
    assert exported_onnx_image_encoder(other, "focalt_tiny", cache_dir=tmp_path)().path != first.path
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".onnx", ".onnx"]


def test_winograd_form_only_for_the_cpu_provider(tiny_model: SEEM, tmp_path: Path) -> None:
    assert winograd_suits(["CPUExecutionProvider"])
    assert not winograd_suits(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert not winograd_suits(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    paths = {
        winograd: export_cached_image_encoder(tiny_model, "focalt_tiny", tmp_path, winograd=winograd)[0]
        for winograd in (True, False)
    }
    assert paths[True] != paths[False]
    operators = {
        winograd: {node.op_type for node in onnx.load(str(path)).graph.node}
        for winograd, path in paths.items()
    }
    assert "DepthToSpace" in operators[True]
    assert "DepthToSpace" not in operators[False]
    image = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = tiny_model.encode_image(image)
    features = OnnxImageEncoder(paths[False], providers=["CPUExecutionProvider"])(image)
    torch.testing.assert_close(features.mask_features, expected.mask_features, **TOLERANCE)


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    union = np.logical_or(first, second).sum()
    return 1.0 if union == 0 else float(np.logical_and(first, second).sum() / union)


def test_predictor_gives_the_same_masks(
    tiny_model: SEEM, encoder: OnnxImageEncoder, reference_dir: Path, tmp_path: Path
) -> None:
    case = json.loads((reference_dir / "panoptic" / "case.json").read_text())
    names = [name for name in case["vocabulary"] if name != "background"]
    things = [names[index] for index in case["thing_class_ids"]]
    vocabulary = Vocabulary.from_names(names, things)
    rgb = np.asarray(Image.open(reference_dir / "images" / "zebras1.png").convert("RGB"))
    tokenizer = ClipTokenizer(cache_dir=tmp_path)
    cache = VocabularyCache(tiny_model.language_encoder, use_disk=False, templates=("a photo of a {}.",))
    targets = [
        Target(text=TextPrompt("the zebra on the left")),
        Target(visual=(ClickPrompt(rgb.shape[1] * 0.3, rgb.shape[0] * 0.6),)),
    ]
    predictions = {}
    for name, image_encoder in (("torch", None), ("onnx", encoder)):
        predictor = SeemPredictor(
            tiny_model,
            tokenizer,
            vocabulary=vocabulary,
            short_side=256,
            vocabulary_cache=cache,
            image_encoder=image_encoder,
        )
        predictor.set_image(rgb)
        predictions[name] = predictor.predict(targets, generic=True)
    assert "image_encoder" in predictions["onnx"].timings

    for torch_target, onnx_target in zip(
        predictions["torch"].targets, predictions["onnx"].targets, strict=True
    ):
        assert torch_target.mask.any()
        assert _iou(torch_target.mask, onnx_target.mask) >= MIN_MASK_IOU
        torch.testing.assert_close(onnx_target.mask_logits, torch_target.mask_logits, **TOLERANCE)
    torch_generic, onnx_generic = predictions["torch"].generic, predictions["onnx"].generic
    assert torch_generic.segments
    assert [s.class_id for s in onnx_generic.segments] == [s.class_id for s in torch_generic.segments]
    assert np.mean(onnx_generic.panoptic == torch_generic.panoptic) >= MIN_MASK_IOU


def test_output_names_are_stable() -> None:
    assert OUTPUT_NAMES == (
        "mask_features",
        "multi_scale_features_0",
        "multi_scale_features_1",
        "multi_scale_features_2",
    )


def test_encoder_learns_channel_counts_the_graph_leaves_to_run_time(tmp_path: Path) -> None:
    """SAM-ViT's exported pixel decoder reshapes to its channel counts, so the graph declares them as
    symbols; the encoder learns them from its first run and binds outputs from then on."""
    from onnx import TensorProto, helper

    nodes, outputs = [], []
    for name, stride in zip(OUTPUT_NAMES, (4, 32, 16, 8), strict=True):
        pooled = f"{name}_pooled"
        nodes.append(helper.make_node("AveragePool", ["padded_image"], [pooled], kernel_shape=[stride] * 2,
                                      strides=[stride] * 2))  # fmt: skip
        nodes.append(helper.make_node("Concat", [pooled, pooled], [name], axis=1))
        outputs.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", f"{name}_channels", None, None])
        )
    graph = helper.make_graph(
        nodes,
        "symbolic_channels",
        [helper.make_tensor_value_info("padded_image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        outputs,
    )
    path = tmp_path / "symbolic_channels.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    encoder = OnnxImageEncoder(path, providers=["CPUExecutionProvider"])
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # learning the channel counts, then bound outputs
        features = encoder(images)
        expected = torch.nn.functional.avg_pool2d(images, 4)
        torch.testing.assert_close(features.mask_features, torch.cat([expected, expected], dim=1))
        assert [tuple(level.shape) for level in features.multi_scale_features] == [
            (2, 6, 2, 3),
            (2, 6, 4, 6),
            (2, 6, 8, 12),
        ]
