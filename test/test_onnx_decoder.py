"""The ONNX decoder: parity with the official tensors (generic and spatial with memory), dynamic counts and
sizes, the export cache, and the predictor / segmenter giving the same masks with it as with PyTorch."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from assets import tiny_reference_model
from PIL import Image
from safetensors.torch import load_file

from seem_ros.engine.api import SegmenterConfig
from seem_ros.engine.backends import DecoderBackend, DecoderInputs
from seem_ros.engine.onnx_decoder import OnnxDecoder, decoder_fingerprint
from seem_ros.engine.predictor import SeemPredictor
from seem_ros.engine.prompts import ClickPrompt, Target, TextPrompt
from seem_ros.engine.segmenter import build_segmenter
from seem_ros.engine.torch_backend import TorchDecoder
from seem_ros.engine.vocabulary_cache import Vocabulary, VocabularyCache
from seem_ros.export.decoder import (
    ALL_GRAPH_KINDS,
    DecoderGraphKind,
    check_decoder,
    export_and_check_decoder,
    export_decoder,
)
from seem_ros.export.onnx_file import raise_if_export_differs
from seem_ros.export.shared_weights import MIN_SHARED_BYTES, WEIGHTS_FOLDER
from seem_ros.model.decoder import DecoderOutput, GroundingTokens, attention_mask_samples
from seem_ros.model.decoder_layers import SelfAttentionLayer
from seem_ros.model.features import PixelFeatures
from seem_ros.model.presets import build_preset, randomize_weights
from seem_ros.model.seem import SEEM
from seem_ros.model.tokenizer import ClipTokenizer

TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
LOGIT_TOLERANCE = {"atol": 1e-3, "rtol": 0.0}
MIN_MASK_IOU = 0.99


@pytest.fixture(scope="module")
def tiny_model(reference_dir: Path) -> SEEM:
    return tiny_reference_model(reference_dir)


@pytest.fixture(scope="module")
def onnx_decoder(tiny_model: SEEM, tmp_path_factory: pytest.TempPathFactory) -> OnnxDecoder:
    cache = tmp_path_factory.mktemp("onnx_decoder")
    return OnnxDecoder(tiny_model, "focalt_tiny", cache_dir=cache, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def panoptic(reference_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(reference_dir / "panoptic" / "tensors.safetensors")


def _features(tensors: dict[str, torch.Tensor]) -> PixelFeatures:
    return PixelFeatures(
        mask_features=tensors["mask_features"],
        multi_scale_features=[tensors[f"multi_scale_features_{level}"] for level in range(3)],
    )


def _assert_same_final(got: DecoderOutput, want: DecoderOutput) -> None:
    for name in (
        "object_logits",
        "object_masks",
        "object_class_embeddings",
        "object_mask_embeddings",
        "grounding_masks",
        "grounding_class_embeddings",
        "spatial_masks",
        "spatial_class_embeddings",
        "spatial_mask_embeddings",
    ):
        expected = getattr(want.final, name)
        if expected is None:
            assert getattr(got.final, name) is None, name
        else:
            torch.testing.assert_close(getattr(got.final, name), expected, **TOLERANCE, msg=name)
    assert got.query_choices is want.query_choices


def test_generic_decoder_matches_official_tensors(
    onnx_decoder: OnnxDecoder, panoptic: dict[str, torch.Tensor]
) -> None:
    assert isinstance(onnx_decoder, DecoderBackend)
    output = onnx_decoder(DecoderInputs(_features(panoptic), panoptic["class_text_embeddings"]))
    assert len(output.predictions) == 1
    torch.testing.assert_close(output.final.object_logits, panoptic["pred_logits"], **LOGIT_TOLERANCE)
    torch.testing.assert_close(output.final.object_masks, panoptic["pred_masks"], **TOLERANCE)
    assert set(onnx_decoder.paths) == {DecoderGraphKind()}


def test_spatial_memory_matches_pytorch_and_official_tensors(
    tiny_model: SEEM,
    onnx_decoder: OnnxDecoder,
    panoptic: dict[str, torch.Tensor],
    reference_dir: Path,
) -> None:
    stored = load_file(reference_dir / "memory_round2" / "tensors.safetensors")
    features = _features(panoptic)
    positive = stored["spatial_query_pos_mask"][0].bool()
    negative = stored["spatial_query_neg_mask"][0].bool()
    generator = torch.Generator().manual_seed(int(stored["rng_seed"][0]))
    with torch.no_grad():
        tokens = tiny_model.encode_spatial_reference(features, positive, negative, generator)
    choices = tiny_model.decoder.draw_query_choices(tokens.num_prompts, True, generator)
    assert torch.equal(choices.spatial_query_index, stored["spatial_query_sample_index"])
    assert torch.equal(choices.memory_slot_prompt_index, stored["memory_slot_prompt_index"])
    inputs = DecoderInputs(
        features,
        panoptic["class_text_embeddings"],
        spatial_tokens=tokens,
        previous_masks=stored["input_prev_mask"],
        query_choices=choices,
    )
    with torch.no_grad():
        outputs = {"torch": tiny_model.decode(**inputs.arguments()), "onnx": onnx_decoder(inputs)}
    onnx_output = outputs["onnx"]
    _assert_same_final(onnx_output, outputs["torch"])
    final = onnx_output.final
    torch.testing.assert_close(final.spatial_masks, stored["pred_smasks"], **TOLERANCE)
    torch.testing.assert_close(final.spatial_mask_embeddings, stored["pred_smaskembs"], **TOLERANCE)
    torch.testing.assert_close(final.spatial_class_embeddings, stored["pred_stexts"], **TOLERANCE)
    torch.testing.assert_close(final.object_logits, stored["pred_logits"], **LOGIT_TOLERANCE)
    selection = tiny_model.select_spatial_masks(onnx_output)
    torch.testing.assert_close(selection.masks, stored["prev_mask"], **TOLERANCE)
    assert DecoderGraphKind(spatial=True, memory=True) in onnx_decoder.paths


@pytest.mark.parametrize(
    ("padded_size", "num_prompts", "kind"),
    [
        ((320, 416), 1, DecoderGraphKind(spatial=True)),
        ((96, 64), 3, DecoderGraphKind(spatial=True, memory=True)),
        ((128, 256), 2, DecoderGraphKind(grounding=True)),
        ((192, 160), 2, DecoderGraphKind(grounding=True, spatial=True, memory=True)),
    ],
)
def test_dynamic_counts_and_sizes_match_pytorch(
    tiny_model: SEEM,
    onnx_decoder: OnnxDecoder,
    panoptic: dict[str, torch.Tensor],
    padded_size: tuple[int, int],
    num_prompts: int,
    kind: DecoderGraphKind,
) -> None:
    generator = torch.Generator().manual_seed(num_prompts)
    image = torch.randn(1, 3, *padded_size, generator=generator)
    with torch.no_grad():
        features = tiny_model.encode_image(image)
    height, width = padded_size
    positive = torch.zeros(num_prompts, height, width, dtype=torch.bool)
    negative = torch.zeros_like(positive)
    for prompt in range(num_prompts):
        top, left = (prompt + 1) * height // (num_prompts + 2), (prompt + 1) * width // (num_prompts + 2)
        positive[prompt, top : top + 6, left : left + 6 * (prompt + 1)] = True
        negative[prompt, top + 12 : top + 14, left : left + 4] = prompt > 0
    previous = 3.0 * torch.randn(1, num_prompts, height // 4, width // 4, generator=generator)
    grounding_tokens = torch.randn(
        4 + num_prompts, 1, tiny_model.decoder.class_embed.shape[0], generator=generator
    )
    grounding = GroundingTokens(
        grounding_tokens, torch.zeros((1, grounding_tokens.shape[0]), dtype=torch.bool)
    )
    classes = panoptic["class_text_embeddings"][: 3 + num_prompts]
    prompt_generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        tokens = tiny_model.encode_spatial_reference(features, positive, negative, prompt_generator)
    choices = tiny_model.decoder.draw_query_choices(num_prompts, kind.memory, prompt_generator)
    inputs = DecoderInputs(
        features,
        classes,
        grounding=grounding if kind.grounding else None,
        spatial_tokens=tokens if kind.spatial else None,
        previous_masks=previous if kind.memory else None,
        query_choices=choices if kind.spatial else None,
    )
    with torch.no_grad():
        outputs = {"torch": tiny_model.decode(**inputs.arguments()), "onnx": onnx_decoder(inputs)}
    _assert_same_final(outputs["onnx"], outputs["torch"])
    assert outputs["onnx"].final.object_masks.shape[-2:] == (height // 4, width // 4)
    assert kind in onnx_decoder.paths


def test_unsupported_calls_are_refused(onnx_decoder: OnnxDecoder, panoptic: dict[str, torch.Tensor]) -> None:
    features, classes = _features(panoptic), panoptic["class_text_embeddings"]
    tokens = torch.zeros(3, 1, classes.shape[1])
    padded = GroundingTokens(tokens, torch.tensor([[False, False, True]]))
    assert not onnx_decoder.supports(DecoderInputs(features, classes, grounding=padded))
    batch = PixelFeatures(
        mask_features=features.mask_features.repeat(2, 1, 1, 1),
        multi_scale_features=[level.repeat(2, 1, 1, 1) for level in features.multi_scale_features],
    )
    assert onnx_decoder.supports(DecoderInputs(batch, classes))  # several cameras' frames without prompts
    grounding = GroundingTokens(tokens[:2], torch.tensor([[False, False]]))
    prompted = DecoderInputs(batch, classes, grounding=grounding)
    assert not onnx_decoder.supports(prompted)  # prompted graphs take one image
    with pytest.raises(ValueError, match="not supported by the ONNX decoder"):
        onnx_decoder(prompted)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_visual_prompt_needs_its_random_choices(
    tiny_model: SEEM, onnx_decoder: OnnxDecoder, panoptic: dict[str, torch.Tensor], backend: str
) -> None:
    """The caller draws a pass's random choices (once, in the official order); a backend draws none: a
    pass without them is refused where it is made, one whose choices lack the memory slots by the
    backend."""
    decode = onnx_decoder if backend == "onnx" else TorchDecoder(tiny_model)
    features = _features(panoptic)
    height, width = features.mask_features.shape[-2:]
    positive = torch.zeros(1, 4 * height, 4 * width, dtype=torch.bool)
    positive[0, 40:48, 60:70] = True
    with torch.no_grad():
        tokens = tiny_model.encode_spatial_reference(features, positive, torch.zeros_like(positive))
    classes = panoptic["class_text_embeddings"]
    with pytest.raises(ValueError, match="exactly when it has spatial tokens"):
        DecoderInputs(features, classes, spatial_tokens=tokens)
    without_memory = tiny_model.decoder.draw_query_choices(1, False, None)
    previous = torch.zeros(1, 1, height, width)
    memory = DecoderInputs(
        features, classes, spatial_tokens=tokens, previous_masks=previous, query_choices=without_memory
    )
    with pytest.raises(ValueError, match="query choices with memory slots"):
        decode(memory)


def test_cache_exports_each_graph_once_per_weights(tiny_model: SEEM, tmp_path: Path) -> None:
    first = OnnxDecoder(tiny_model, "focalt_tiny", cache_dir=tmp_path, providers=["CPUExecutionProvider"])
    first.prepare([DecoderGraphKind()])
    path = first.paths[DecoderGraphKind()]
    modified = path.stat().st_mtime_ns
    assert decoder_fingerprint(tiny_model.decoder) in path.name and "-decoder-generic-" in path.name
    again = OnnxDecoder(tiny_model, "focalt_tiny", cache_dir=tmp_path, providers=["CPUExecutionProvider"])
    again.prepare([DecoderGraphKind()])
    assert again.paths[DecoderGraphKind()] == path and path.stat().st_mtime_ns == modified

    other = randomize_weights(build_preset("focalt_tiny"), seed=3).eval()
    third = OnnxDecoder(other, "focalt_tiny", cache_dir=tmp_path, providers=["CPUExecutionProvider"])
    kind = DecoderGraphKind()
    third.prepare([kind])
    assert third.paths[kind] != path
    assert sorted(path.name for path in tmp_path.glob("*.onnx")) == sorted(
        [path.name, third.paths[kind].name]
    )


def test_graphs_of_one_decoder_share_one_copy_of_its_weights(tiny_model: SEEM, tmp_path: Path) -> None:
    decoder = OnnxDecoder(tiny_model, "focalt_tiny", cache_dir=tmp_path, providers=["CPUExecutionProvider"])
    kinds = [DecoderGraphKind(), DecoderGraphKind(spatial=True), DecoderGraphKind(grounding=True)]
    decoder.prepare(kinds)
    weight_files = list((tmp_path / WEIGHTS_FOLDER).glob("*.bin"))
    stored = sum(file.stat().st_size for file in weight_files)
    graphs = [onnx.load(str(decoder.paths[kind]), load_external_data=False).graph for kind in kinds]
    assert all(len(tensor.raw_data) < MIN_SHARED_BYTES for graph in graphs for tensor in graph.initializer)
    external = [
        [tensor.name for tensor in graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL]
        for graph in graphs
    ]
    assert set(external[0]) <= set(external[1]) and set(external[0]) <= set(external[2])
    assert len(weight_files) == len(set().union(*external)) < sum(len(names) for names in external)
    assert decoder.shared_weights.nbytes == stored  # each file mapped once for the three sessions

    assert len(list((tmp_path / WEIGHTS_FOLDER).glob("graph-*.json"))) == len(kinds)  # loaded without onnx

    (tmp_path / WEIGHTS_FOLDER / f"{external[0][0]}.bin").unlink()
    again = OnnxDecoder(tiny_model, "focalt_tiny", cache_dir=tmp_path, providers=["CPUExecutionProvider"])
    with pytest.raises(FileNotFoundError, match="delete that graph to export it again"):
        again.prepare([DecoderGraphKind()])


def test_graph_kinds() -> None:
    assert [kind.name for kind in ALL_GRAPH_KINDS] == [
        "generic",
        "spatial",
        "spatial_memory",
        "grounding",
        "grounding_spatial",
        "grounding_spatial_memory",
    ]
    with pytest.raises(ValueError, match="spatial=True"):
        DecoderGraphKind(memory=True)


def _iou(first: np.ndarray, second: np.ndarray) -> float:
    union = np.logical_or(first, second).sum()
    return 1.0 if union == 0 else float(np.logical_and(first, second).sum() / union)


def test_predictor_gives_the_same_masks(
    tiny_model: SEEM, onnx_decoder: OnnxDecoder, reference_dir: Path, tmp_path: Path
) -> None:
    case = json.loads((reference_dir / "panoptic" / "case.json").read_text())
    names = [name for name in case["vocabulary"] if name != "background"]
    vocabulary = Vocabulary.from_names(names, [names[index] for index in case["thing_class_ids"]])
    rgb = np.asarray(Image.open(reference_dir / "images" / "zebras1.png").convert("RGB"))
    tokenizer = ClipTokenizer(cache_dir=tmp_path)
    cache = VocabularyCache(tiny_model.language_encoder, use_disk=False, templates=("a photo of a {}.",))
    targets = [
        Target(text=TextPrompt("the zebra on the left")),
        Target(visual=(ClickPrompt(rgb.shape[1] * 0.3, rgb.shape[0] * 0.6),)),
        Target(visual=(ClickPrompt(rgb.shape[1] * 0.7, rgb.shape[0] * 0.5),), text=TextPrompt("zebra")),
    ]
    predictors = {
        name: SeemPredictor(
            tiny_model,
            tokenizer,
            vocabulary=vocabulary,
            short_side=256,
            vocabulary_cache=cache,
            decoder_backend=backend,
        )
        for name, backend in (("torch", None), ("onnx", onnx_decoder))
    }
    ious = []
    for predictor in predictors.values():
        predictor.set_image(rgb)
    first = {name: predictor.predict(targets, generic=True) for name, predictor in predictors.items()}
    memory = {
        name: predictor.predict(targets, [t.mask_logits for t in first[name].targets], generic=True)
        for name, predictor in predictors.items()
    }
    for results in (first, memory):
        torch_generic, onnx_generic = results["torch"].generic, results["onnx"].generic
        assert torch_generic.segments
        assert [s.class_id for s in onnx_generic.segments] == [s.class_id for s in torch_generic.segments]
        assert np.mean(onnx_generic.panoptic == torch_generic.panoptic) >= MIN_MASK_IOU
        for torch_target, onnx_target in zip(results["torch"].targets, results["onnx"].targets, strict=True):
            assert torch_target.mask.any()
            ious.append(_iou(torch_target.mask, onnx_target.mask))
            torch.testing.assert_close(onnx_target.mask_logits, torch_target.mask_logits, **TOLERANCE)
            assert onnx_target.class_id == torch_target.class_id
    assert min(ious) >= MIN_MASK_IOU
    assert DecoderGraphKind(grounding=True, spatial=True, memory=True) in onnx_decoder.paths


def test_onnx_segmenter_gives_the_same_masks(
    reference_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEEM_ROS_CACHE_DIR", str(tmp_path))
    rgb = np.asarray(Image.open(reference_dir / "images" / "zebras1.png").convert("RGB"))
    segmenters = {
        backend: build_segmenter(
            SegmenterConfig(
                preset="focalt_tiny",
                checkpoint=str(reference_dir / "tiny_focalt_v1.safetensors"),
                device="cpu",
                backend=backend,
                short_side=256,
                score_threshold=0.4,
            )
        )
        for backend in ("torch", "onnx")
    }
    assert segmenters["onnx"].engine.predictor.decoder_backend is not None
    frames = {}
    for segmenter in segmenters.values():
        segmenter.add_click(rgb.shape[1] * 0.3, rgb.shape[0] * 0.6, True)
        segmenter.set_text_prompt("zebra")
    for backend, segmenter in segmenters.items():
        frames[backend] = [segmenter.process(rgb) for _ in range(2)]
    for torch_frame, onnx_frame in zip(frames["torch"], frames["onnx"], strict=True):
        tracked = [instance for instance in torch_frame.instances if instance.track_id]
        assert len(tracked) == 2
        onnx_tracks = {instance.track_id: instance for instance in onnx_frame.instances if instance.track_id}
        for instance in tracked:
            assert instance.mask.any()
            assert _iou(instance.mask, onnx_tracks[instance.track_id].mask) >= MIN_MASK_IOU
        assert np.mean(torch_frame.panoptic == onnx_frame.panoptic) >= MIN_MASK_IOU
    used = set(segmenters["onnx"].engine.predictor.decoder_backend.paths)
    assert DecoderGraphKind(spatial=True, memory=True) in used
    assert any(kind.grounding for kind in used)


@pytest.mark.parametrize("factor", [8, 4, 2])
def test_attention_mask_samples_down_sample_to_what_the_full_map_does(factor: int) -> None:
    mask_features = torch.randn(1, 6, 64, 88, generator=torch.Generator().manual_seed(factor))
    size = (64 // factor, 88 // factor)
    samples = attention_mask_samples(mask_features, size, factor)
    assert samples.shape == (1, 6, 2 * size[0], 2 * size[1])
    resize = {"size": size, "mode": "bilinear", "align_corners": False}
    assert torch.equal(F.interpolate(samples, **resize), F.interpolate(mask_features, **resize))


def _decoded_with_and_without(
    model: SEEM, panoptic: dict[str, torch.Tensor], **options: object
) -> tuple[DecoderOutput, DecoderOutput]:
    """The generic decoder pass of the reference panoptic inputs as the official code runs it, and with
    `options`."""
    features = _features(panoptic)
    arguments = (features.multi_scale_features, features.mask_features, panoptic["class_text_embeddings"])
    with torch.no_grad():
        return model.decoder(*arguments), model.decoder(*arguments, **options)


def test_sampled_attention_masks_leave_every_step_unchanged(
    tiny_model: SEEM, panoptic: dict[str, torch.Tensor]
) -> None:
    """What the exported graphs compute (`attention_sample_factors`) against the official order."""
    official, sampled = _decoded_with_and_without(tiny_model, panoptic, attention_sample_factors=(8, 4, 2))
    for got, want in zip(sampled.predictions, official.predictions, strict=True):
        torch.testing.assert_close(got.object_masks, want.object_masks, atol=1e-6, rtol=0.0)
        torch.testing.assert_close(got.object_logits, want.object_logits, atol=1e-6, rtol=0.0)


def test_final_only_returns_the_final_step_unchanged(
    tiny_model: SEEM, panoptic: dict[str, torch.Tensor]
) -> None:
    """What engines read (`final_only`: the earlier steps' full-size masks skipped) against every step."""
    every_step, final_only = _decoded_with_and_without(tiny_model, panoptic, final_only=True)
    assert len(final_only.predictions) == 1
    got, want = final_only.final, every_step.final
    torch.testing.assert_close(got.object_masks, want.object_masks, atol=1e-6, rtol=0.0)
    torch.testing.assert_close(got.object_logits, want.object_logits, atol=1e-6, rtol=0.0)
    torch.testing.assert_close(got.object_mask_embeddings, want.object_mask_embeddings, atol=1e-6, rtol=0.0)


@pytest.mark.parametrize("preset", ["focalt_v1", "samvitb_v1"])
def test_full_size_generic_decoder_passes_its_export_check(preset: str, tmp_path: Path) -> None:
    """The released decoder width (512, 101 queries, 9 layers) with random weights: the exported graph must
    stay within the export check on both check sizes, as the node's onnx backend requires at start."""
    model = randomize_weights(build_preset(preset), seed=0).eval()
    checks = export_and_check_decoder(model.decoder, DecoderGraphKind(), tmp_path / f"{preset}_generic.onnx")
    assert len(checks) == 2
    assert all(check.worst_relative() <= 1e-3 for check in checks), checks


def test_an_export_that_differs_from_the_model_fails_its_check(tiny_model: SEEM, tmp_path: Path) -> None:
    """The check's redraws (for inputs on the decoder's decision boundary) never let a wrong graph through:
    a graph exported before a weight changed differs on every draw, and the file is removed."""
    path = tmp_path / "generic.onnx"
    decoder = copy.deepcopy(tiny_model.decoder)
    export_decoder(decoder, DecoderGraphKind(), path)
    with torch.no_grad():
        decoder.class_embed.mul_(1.1)
    checks = check_decoder(decoder, DecoderGraphKind(), path)
    assert all(check.worst_relative() > 1e-3 for check in checks), checks
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        raise_if_export_differs(path, "generic decoder", checks, 1e-3)
    assert not path.exists()


def test_self_attention_updates_only_the_rows_asked_for() -> None:
    """The rows after `query_rows` are attended to but not updated: the rows before them come out as in
    the layer's full pass."""
    torch.manual_seed(0)
    layer = SelfAttentionLayer(16, 4).eval()
    sequence, position = torch.randn(2, 11, 2, 16).unbind(0)
    blocked = torch.rand(2, 11, 11) < 0.3
    blocked[:, :, 0] = False  # no row fully blocked
    with torch.no_grad():
        full = layer(sequence, position, blocked)
        first_rows = layer(sequence, position, blocked, 7)
    assert first_rows.shape == (7, 2, 16)
    torch.testing.assert_close(first_rows, full[:7], atol=1e-6, rtol=0.0)


def test_visual_prompt_tokens_are_attended_to_but_never_updated(
    tiny_model: SEEM, panoptic: dict[str, torch.Tensor]
) -> None:
    """Every layer takes its level's prompt tokens afresh, so no layer computes their FFN (a tracked
    target's tokens are most of the self-attention's rows)."""
    features = _features(panoptic)
    height, width = features.mask_features.shape[-2:]
    positive = torch.zeros(1, 4 * height, 4 * width, dtype=torch.bool)  # the padded input's size
    positive[:, 20:30, 20:34] = True
    tokens = tiny_model.encode_spatial_reference(
        features, positive, torch.zeros_like(positive), torch.Generator().manual_seed(0)
    )
    rows_seen = []
    hooks = [
        layer.register_forward_pre_hook(lambda _, inputs: rows_seen.append(inputs[0].shape[0]))
        for layer in tiny_model.decoder.transformer_ffn_layers
    ]
    try:
        with torch.no_grad():
            tiny_model.decode(
                features,
                panoptic["class_text_embeddings"],
                spatial_tokens=tokens,
                query_choices=tiny_model.decoder.draw_query_choices(
                    1, False, torch.Generator().manual_seed(0)
                ),
            )
    finally:
        for hook in hooks:
            hook.remove()
    queries = tiny_model.decoder.query_feat.weight.shape[0] + tiny_model.decoder.queries_per_prompt
    assert rows_seen == [queries] * tiny_model.decoder.num_layers
