"""SAM-ViT backbone and deformable pixel decoder against the official implementation's recorded tensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from seem_ros.model import deformable_pixel_decoder, sam_vit
from seem_ros.model.deformable_pixel_decoder import DeformablePixelDecoder
from seem_ros.model.sam_vit import Attention, SamViTBackbone

ATOL = 1e-4
RTOL = 1e-4
BACKBONE_PREFIX = "backbone."
PIXEL_DECODER_PREFIX = "sem_seg_head.pixel_decoder."


def _field(section: dict[str, Any], name: str) -> Any:
    """Config entries are named like 'n_heads (DECODER.NHEADS)': match on the first word."""
    for key, value in section.items():
        if key.split(" ")[0] == name:
            return value
    raise KeyError(f"{name!r} not in {sorted(section)}")


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}


def _build_backbone(derived: dict[str, Any]) -> SamViTBackbone:
    return SamViTBackbone(
        img_size=_field(derived, "image_size"),
        patch_size=_field(derived, "patch_size"),
        embed_dim=_field(derived, "embed_dim"),
        depth=_field(derived, "depth"),
        num_heads=_field(derived, "num_heads"),
        mlp_ratio=_field(derived, "mlp_ratio"),
        window_size=_field(derived, "window_size"),
        global_attn_indexes=_field(derived, "global_attn_indexes"),
        out_channels=_field(derived["neck"], "out_dims"),
    )


def _build_pixel_decoder(derived: dict[str, Any], in_channels: list[int]) -> DeformablePixelDecoder:
    encoder = derived["encoder"]
    return DeformablePixelDecoder(
        in_channels=in_channels,
        conv_dim=_field(derived, "conv_dim"),
        mask_dim=_field(derived, "mask_dim"),
        num_heads=_field(encoder, "n_heads"),
        num_encoder_layers=_field(encoder, "num_layers"),
        encoder_ffn_dim=_field(encoder, "dim_feedforward"),
        num_points=_field(encoder, "n_points"),
        num_transformer_levels=_field(encoder, "n_levels"),
    )


@pytest.fixture(scope="module")
def tiny_model(samvit_reference_dir: Path) -> tuple[SamViTBackbone, DeformablePixelDecoder]:
    index = json.loads((samvit_reference_dir / "index.json").read_text())
    config = json.loads((samvit_reference_dir / index["config_json"]).read_text())
    derived = config["derived"]
    state_dict = load_file(samvit_reference_dir / index["model_file"])

    backbone = _build_backbone(derived["backbone"])
    backbone.load_state_dict(_strip_prefix(state_dict, BACKBONE_PREFIX), strict=True)
    pixel_decoder = _build_pixel_decoder(derived["pixel_decoder"], list(backbone.out_channels.values()))
    pixel_decoder.load_state_dict(_strip_prefix(state_dict, PIXEL_DECODER_PREFIX), strict=True)
    return backbone.eval(), pixel_decoder.eval()


@pytest.fixture(scope="module")
def panoptic_tensors(samvit_reference_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(samvit_reference_dir / "panoptic" / "tensors.safetensors")


def _assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


def test_stages_match_official(tiny_model, panoptic_tensors) -> None:
    backbone, pixel_decoder = tiny_model
    images = panoptic_tensors["image_padded_normalized"]
    input_projections: dict[int, torch.Tensor] = {}
    hooks = [
        projection.register_forward_hook(
            lambda _module, _inputs, output, level=level: input_projections.__setitem__(level, output)
        )
        for level, projection in enumerate(pixel_decoder.input_proj)
    ]
    try:
        with torch.no_grad():
            tokens = backbone.forward_tokens(images)
            features = backbone.neck(tokens)
            pixel_features = pixel_decoder(features)
    finally:
        for hook in hooks:
            hook.remove()

    _assert_close("backbone_vit_tokens", tokens, panoptic_tensors["backbone_vit_tokens"])
    for name in ("res2", "res3", "res4", "res5"):
        _assert_close(name, features[name], panoptic_tensors[name])
    for level in range(len(pixel_decoder.input_proj)):
        name = f"pixel_decoder_input_proj_{level}"
        _assert_close(name, input_projections[level], panoptic_tensors[name])
    _assert_close("mask_features", pixel_features.mask_features, panoptic_tensors["mask_features"])
    _assert_close(
        "transformer_encoder_features",
        pixel_features.transformer_encoder_features,
        panoptic_tensors["transformer_encoder_features"],
    )
    assert len(pixel_features.multi_scale_features) == 3
    for level, feature in enumerate(pixel_features.multi_scale_features):
        name = f"multi_scale_features_{level}"
        _assert_close(name, feature, panoptic_tensors[name])


def test_backbone_forward_equals_neck_of_tokens(tiny_model, panoptic_tensors) -> None:
    backbone, _ = tiny_model
    with torch.no_grad():
        features = backbone(panoptic_tensors["image_padded_normalized"])
    for name in ("res2", "res3", "res4", "res5"):
        _assert_close(name, features[name], panoptic_tensors[name])


def test_backbone_rejects_wrong_input_size(tiny_model) -> None:
    backbone, _ = tiny_model
    with pytest.raises(ValueError, match="exactly"):
        backbone(torch.zeros(1, 3, backbone.img_size, backbone.img_size * 2))


def _layout_entries(layout_file: Path, prefix: str) -> dict[str, tuple[int, ...]]:
    layout = json.loads(layout_file.read_text())
    return {key[len(prefix) :]: tuple(shape) for key, shape, *_ in layout["keys"] if key.startswith(prefix)}


def _module_entries(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


@pytest.mark.parametrize(
    ("layout_name", "embed_dim", "depth", "num_heads", "global_attn_indexes"),
    [
        ("layout_samvitb_v1.json", 768, 12, 12, (2, 5, 8, 11)),
        ("layout_samvitl_v1.json", 1024, 24, 16, (5, 11, 17, 23)),
    ],
)
def test_full_size_keys_and_shapes_match_release(
    reference_dir: Path,
    layout_name: str,
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: tuple[int, ...],
) -> None:
    layout_file = reference_dir / layout_name
    with torch.device("meta"):
        backbone = SamViTBackbone(
            img_size=1024,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            global_attn_indexes=global_attn_indexes,
            out_channels=(128, 256, 512, 1024),
        )
        pixel_decoder = DeformablePixelDecoder(
            in_channels=list(backbone.out_channels.values()),
            conv_dim=512,
            mask_dim=512,
            num_heads=8,
            num_encoder_layers=6,
        )
    assert _module_entries(backbone) == _layout_entries(layout_file, BACKBONE_PREFIX)
    assert _module_entries(pixel_decoder) == _layout_entries(layout_file, PIXEL_DECODER_PREFIX)


def _attention_over_a_grid_of_10(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attention = Attention(dim=32, num_heads=2, grid_size=10).eval()
    with torch.no_grad():
        attention.rel_pos_h.normal_()
        attention.rel_pos_w.normal_()
    return attention


def test_attention_in_chunks_of_query_rows_equals_attention_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    at_once = _attention_over_a_grid_of_10()
    assert at_once.rows_per_chunk >= 10
    monkeypatch.setattr(
        sam_vit, "BIAS_ELEMENTS_PER_CHUNK", 3 * 2 * 10 * 10 * 10
    )  # 3 rows: heads, width, keys
    in_chunks = _attention_over_a_grid_of_10()
    assert in_chunks.rows_per_chunk == 3  # rows 0-2, 3-5, 6-8, 9
    tokens = torch.randn(2, 10, 10, 32)
    with torch.inference_mode():
        assert torch.equal(in_chunks(tokens), at_once(tokens))


def test_attention_in_chunks_exports_for_any_batch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The chunks are fixed when the graph is traced: a graph traced with one image runs batches of two."""
    import onnxruntime

    monkeypatch.setattr(sam_vit, "BIAS_ELEMENTS_PER_CHUNK", 3 * 2 * 10 * 10 * 10)
    attention = _attention_over_a_grid_of_10()
    path = tmp_path / "attention.onnx"
    torch.onnx.export(
        attention,
        (torch.randn(1, 10, 10, 32),),
        str(path),
        dynamo=False,
        input_names=["tokens"],
        dynamic_axes={"tokens": {0: "batch"}},
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens = torch.randn(2, 10, 10, 32)
    (exported,) = session.run(None, {"tokens": tokens.numpy()})
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(exported), attention(tokens), atol=1e-5, rtol=1e-5)


def test_deformable_attention_in_chunks_of_queries_equals_all_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(12, 10), (6, 5), (3, 3)]
    batch, heads, head_dim, queries, points = 2, 3, 4, 150, 4
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, head_dim, generator=generator)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator) * 1.2 - 0.1
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator)
    all_at_once = deformable_pixel_decoder.multi_scale_deformable_attention(value, shapes, locations, weights)
    monkeypatch.setattr(deformable_pixel_decoder, "CPU_QUERIES_PER_CHUNK", 64)  # 64, 64 and 22 queries
    in_chunks = deformable_pixel_decoder.multi_scale_deformable_attention(value, shapes, locations, weights)
    assert torch.equal(in_chunks, all_at_once)


def test_compiled_deformable_attention_samples_all_queries_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torch.compile the queries are not taken in chunks: dynamo traces one grid sample per level,
    not one per level and chunk (SAM-ViT-B's pixel decoder in chunks: 21 chunks in each of 6 layers,
    which inductor compiled for more than 15 minutes on a 2-core CPU; at once, in about a minute)."""
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    shapes = [(12, 10), (6, 5), (3, 3)]
    batch, heads, head_dim, queries, points = 1, 2, 4, 150, 2
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, head_dim, generator=generator)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator)
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator)
    attention = deformable_pixel_decoder.multi_scale_deformable_attention
    monkeypatch.setattr(deformable_pixel_decoder, "CPU_QUERIES_PER_CHUNK", 64)
    explanation = torch._dynamo.explain(attention)(value, shapes, locations, weights)
    grid_samples = [
        node
        for graph in explanation.graphs
        for node in graph.graph.nodes
        if node.op == "call_function" and node.target is torch.nn.functional.grid_sample
    ]
    assert explanation.graph_count == 1
    assert len(grid_samples) == len(shapes)
    torch._dynamo.reset()
