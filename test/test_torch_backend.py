"""The PyTorch backends (`TorchImageEncoder`, `TorchDecoder`): plain fp32 gives the predictor's own
outputs; bf16 autocast agrees within the stated tolerance; settings a device cannot run are refused; the
GPU benchmark runs on the CPU and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seem_ros.engine.api import SegmenterConfig
from seem_ros.engine.backends import DecoderInputs
from seem_ros.engine.predictor import Prediction, SeemPredictor
from seem_ros.engine.prompts import ClickPrompt, Target, TextPrompt
from seem_ros.engine.segmenter import build_segmenter, load_model
from seem_ros.engine.torch_backend import (
    TorchAcceleration,
    TorchDecoder,
    TorchImageEncoder,
    cpu_has_bf16_units,
    keep_compiled_code,
    store_reduced_weights,
    torch_backends,
)
from seem_ros.model.decoder import GroundingTokens
from seem_ros.model.features import PixelFeatures
from seem_ros.model.sam_vit import SimpleFeaturePyramid
from seem_ros.model.tokenizer import ClipTokenizer
from seem_ros.parity.reference import ReferenceSet

REPO_ROOT = Path(__file__).resolve().parents[1]
# The agreement stated for reduced precision (bench/README.md, GPU path): worst tracked-mask IoU and the
# largest logit difference relative to the largest logit.
BF16_MIN_IOU = 0.95
BF16_MAX_RELATIVE_LOGIT_DIFFERENCE = 0.03


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ClipTokenizer:
    return ClipTokenizer(cache_dir=tmp_path_factory.mktemp("seem_ros_cache"))


@pytest.fixture(scope="module")
def model():
    return load_model("focalt_tiny", random_weights=True).eval()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.coffee()[::4, ::4])


def _predict(model, tokenizer, photo: np.ndarray, acceleration: TorchAcceleration | None) -> Prediction:
    backends = {}
    if acceleration is not None:
        backends = {
            "image_encoder": TorchImageEncoder(model, acceleration),
            "decoder_backend": TorchDecoder(model, acceleration),
        }
    predictor = SeemPredictor(model, tokenizer, short_side=96, **backends)
    predictor.set_image(photo)
    targets = [Target(visual=(ClickPrompt(60.0, 40.0),)), Target(text=TextPrompt("the red cup"))]
    return predictor.predict(targets, generic=True)


def test_fp32_backends_give_the_predictors_outputs(model, tokenizer, photo):
    inline = _predict(model, tokenizer, photo, None)
    backend = _predict(model, tokenizer, photo, TorchAcceleration())
    for expected, actual in zip(inline.targets, backend.targets, strict=True):
        assert np.array_equal(expected.mask, actual.mask)
        torch.testing.assert_close(actual.mask_logits, expected.mask_logits, atol=1e-5, rtol=1e-5)
    assert np.array_equal(inline.generic.panoptic, backend.generic.panoptic)


def test_a_tracked_target_is_decoded_in_one_graph_with_the_predictors_draws(
    model, tokenizer, photo, monkeypatch
):
    """A click carried forward with its memory prompt (spatial and memory queries, the pass's random
    choices): TorchDecoder draws the choices before it calls the decode function, which dynamo then traces
    as one graph (a compiled decoder is one graph; CUDA graphs replay it whole), with the masks the
    predictor's own PyTorch decode gives."""
    explanations = []
    decode = model.decode

    def traced_decode(*args, **kwargs):
        explanations.append(torch._dynamo.explain(decode)(*args, **kwargs))
        return decode(*args, **kwargs)

    monkeypatch.setattr(model, "decode", traced_decode)
    backend = SeemPredictor(model, tokenizer, short_side=96, decoder_backend=TorchDecoder(model))
    monkeypatch.undo()
    inline = SeemPredictor(model, tokenizer, short_side=96)
    click = [Target(visual=(ClickPrompt(60.0, 40.0),))]
    previous = {}
    for predictor in (backend, inline):
        predictor.set_image(photo)
        first = predictor.predict(click).targets[0]
        second = predictor.predict(click, [first.mask_logits]).targets[0]
        previous[predictor] = (first, second)
    assert [explanation.graph_break_count for explanation in explanations] == [0, 0]
    assert [explanation.graph_count for explanation in explanations] == [1, 1]
    for expected, actual in zip(previous[inline], previous[backend], strict=True):
        assert np.array_equal(expected.mask, actual.mask)
        torch.testing.assert_close(actual.mask_logits, expected.mask_logits, atol=1e-5, rtol=1e-5)


def test_padding_prompt_tokens_changes_no_answer(model, tokenizer, photo):
    """Padding tokens (what a compiled decoder runs with) attend only each other: the same masks."""
    predictor = SeemPredictor(model, tokenizer, short_side=96)
    predictor.set_image(photo)
    features = predictor.encoded.features
    positive, negative = predictor._visual_masks(predictor.encoded, Target(visual=(ClickPrompt(60.0, 40.0),)))
    with torch.inference_mode():
        tokens = model.encode_spatial_reference(features, positive[None], negative[None])
    grounding = GroundingTokens(torch.randn(5, 1, tokens.level_tokens[0].shape[-1]), torch.zeros(1, 5).bool())
    class_embeddings = predictor.vocabulary_cache.embeddings(predictor.vocabulary)
    with torch.inference_mode():
        outputs = [
            model.decode(
                features,
                class_embeddings,
                grounding=words,
                spatial_tokens=points,
                generator=torch.Generator().manual_seed(0),
            ).final
            for words, points in (
                (grounding, tokens),
                (grounding.padded_to(128), tokens.padded_to([128] * 3)),
            )
        ]
    for name in ("object_masks", "grounding_masks", "spatial_masks", "spatial_class_embeddings"):
        torch.testing.assert_close(getattr(outputs[1], name), getattr(outputs[0], name), atol=1e-5, rtol=1e-5)


def test_a_compiled_decoder_compiles_one_graph_for_clicks_of_any_size(model, tokenizer, photo):
    """Clicks whose disks cover different numbers of pixels (inside the photo, at its edge) are decoded
    by one compiled graph (prompt tokens padded to a bucket), with the eager decoder's masks."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = SeemPredictor(
        model, tokenizer, short_side=96, decoder_backend=TorchDecoder(model, TorchAcceleration(compile=True))
    )
    eager = SeemPredictor(model, tokenizer, short_side=96)
    counts = []
    for x in (60.0, 2.0):
        click = [Target(visual=(ClickPrompt(x, 40.0),))]
        answers = []
        for predictor in (eager, compiled):
            predictor.set_image(photo)
            answers.append(predictor.predict(click).targets[0])
        counts.append(int(eager._visual_masks(eager.encoded, click[0])[0].sum()))
        torch.testing.assert_close(answers[1].mask_logits, answers[0].mask_logits, atol=1e-4, rtol=1e-4)
    assert counts[0] != counts[1]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_bf16_autocast_agrees_within_the_stated_tolerance(model, tokenizer, photo):
    reference = _predict(model, tokenizer, photo, None)
    reduced = _predict(model, tokenizer, photo, TorchAcceleration("bf16"))
    for expected, actual in zip(reference.targets, reduced.targets, strict=True):
        assert actual.mask_logits.dtype == torch.float32
        union = np.logical_or(expected.mask, actual.mask).sum()
        iou = 1.0 if union == 0 else np.logical_and(expected.mask, actual.mask).sum() / union
        assert iou >= BF16_MIN_IOU
        difference = float((expected.mask_logits - actual.mask_logits).abs().max())
        assert difference <= BF16_MAX_RELATIVE_LOGIT_DIFFERENCE * float(expected.mask_logits.abs().max())


def test_weights_stored_reduced_give_the_same_bf16_outputs(tokenizer, photo):
    """A node's bf16 model holds its matrix weights in bf16 (`torch_backends`): autocast would have cast
    them to the same values, so every output is the same to the bit."""
    cast_per_frame = load_model("focalt_tiny", random_weights=True).eval()
    stored = load_model("focalt_tiny", random_weights=True).eval()
    acceleration = TorchAcceleration("bf16")
    image_encoder, decoder = torch_backends(stored, acceleration)
    assert stored.backbone.patch_embed.proj.weight.dtype == torch.bfloat16
    assert all(parameter.dtype == torch.float32 for parameter in stored.language_encoder.parameters())
    norms = [
        module for module in stored.modules() if isinstance(module, torch.nn.LayerNorm | torch.nn.GroupNorm)
    ]
    assert norms and all(norm.weight.dtype == torch.float32 for norm in norms)
    want = _predict(cast_per_frame, tokenizer, photo, acceleration)
    predictor = SeemPredictor(
        stored, tokenizer, short_side=96, image_encoder=image_encoder, decoder_backend=decoder
    )
    predictor.set_image(photo)
    got = predictor.predict(
        [Target(visual=(ClickPrompt(60.0, 40.0),)), Target(text=TextPrompt("the red cup"))], generic=True
    )
    for expected, actual in zip(want.targets, got.targets, strict=True):
        assert torch.equal(actual.mask_logits, expected.mask_logits)
    assert np.array_equal(want.generic.panoptic, got.generic.panoptic)
    with pytest.raises(ValueError, match="reduced precision"):
        store_reduced_weights(stored, "fp32")


def test_sam_vit_feature_pyramid_computes_in_fp32_under_bf16_and_keeps_fp32_weights(
    samvit_reference_dir: Path, tokenizer: ClipTokenizer
) -> None:
    """SAM-ViT's pyramid (`keeps_fp32`) gives under bf16 autocast what it gives without, and a node's bf16
    model stores the ViT's weights reduced but not the pyramid's."""
    model = ReferenceSet(samvit_reference_dir, tokenizer).model
    pyramid = model.backbone.neck
    assert isinstance(pyramid, SimpleFeaturePyramid)
    tokens = torch.randn(1, pyramid.down_16[0].in_channels, 8, 8).bfloat16()  # as a bf16 ViT hands them on
    with torch.inference_mode():
        want = pyramid(tokens.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = pyramid(tokens)
    for name, level in want.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], level)
    image_encoder, _ = torch_backends(model, TorchAcceleration("bf16"))
    assert all(parameter.dtype == torch.float32 for parameter in pyramid.parameters())
    assert model.backbone.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    padded = model.preprocess(torch.zeros(1, 3, 40, 56, dtype=torch.uint8))
    features = image_encoder(padded)
    assert features.mask_features.dtype == torch.float32 and torch.isfinite(features.mask_features).all()


def test_compiled_sam_vit_feature_pyramid_still_computes_in_fp32_under_bf16(
    samvit_reference_dir: Path, tokenizer: ClipTokenizer
) -> None:
    """Inductor keeps the pyramid's fp32 region: compiled under bf16 autocast, its maps are the eager fp32
    maps to float rounding (a bf16 pyramid is off by about 1e-2). Full-size SAM-ViT-B on a photo, the same
    check: 4.5e-7 to 1.1e-6 mean relative error per level."""
    torch._dynamo.reset()
    pyramid = ReferenceSet(samvit_reference_dir, tokenizer).model.backbone.neck
    tokens = torch.randn(1, pyramid.down_16[0].in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(pyramid, dynamic=False)
    with torch.inference_mode():
        want = pyramid(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = compiled(tokens)
    torch._dynamo.reset()
    for name, level in want.items():
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], level, rtol=1e-5, atol=1e-5)


def test_bf16_on_the_cpu_runs_the_pixel_decoder_channels_last_and_hands_on_fp32_in_that_layout(model):
    pixel_decoder = model.sem_seg_head.pixel_decoder
    convolution = next(
        module
        for module in pixel_decoder.modules()
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1)  # 1x1: either layout
    )
    image = torch.randn(1, 3, 96, 128)
    try:
        features = TorchImageEncoder(model, TorchAcceleration("bf16"))(image)
        assert convolution.weight.is_contiguous(memory_format=torch.channels_last)
        for feature_map in (features.mask_features, *features.multi_scale_features):
            assert feature_map.dtype == torch.float32
            assert feature_map.is_contiguous(memory_format=torch.channels_last)
    finally:
        TorchImageEncoder(model, TorchAcceleration())(image)  # the module-scoped model back to NCHW
    assert convolution.weight.is_contiguous()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_decoder_reads_channels_last_features_as_it_reads_contiguous_ones(model, precision: str):
    features = TorchImageEncoder(model)(torch.randn(1, 3, 96, 128))
    channels_last = PixelFeatures(
        mask_features=features.mask_features.contiguous(memory_format=torch.channels_last),
        multi_scale_features=[
            level.contiguous(memory_format=torch.channels_last) for level in features.multi_scale_features
        ],
    )
    classes = torch.nn.functional.normalize(torch.randn(5, model.decoder.class_embed.shape[0]), dim=-1)
    decoder = TorchDecoder(model, TorchAcceleration(precision))
    want = decoder(DecoderInputs(features, classes)).final
    got = decoder(DecoderInputs(channels_last, classes)).final
    if precision != "fp32":  # reduced precision hands on contiguous fp32 masks, whatever the layout read
        assert got.object_masks.is_contiguous()
    tolerance = 1e-4 if precision == "fp32" else 0.05 * float(want.object_masks.abs().max())
    torch.testing.assert_close(got.object_masks, want.object_masks, atol=tolerance, rtol=0)
    torch.testing.assert_close(got.object_logits, want.object_logits, atol=tolerance, rtol=0)


@pytest.mark.parametrize(("precision", "takes_batches"), [("fp32", False), ("bf16", True)])
def test_the_decoder_takes_batches_on_the_cpu_in_bf16_only(model, precision: str, takes_batches: bool):
    """On the CPU a batched fp32 decoder pass is slower than one pass per image, a bf16 one faster
    (`pytorch_decodes_batches`); one image is always taken, and batches when asked (`batches=True`)."""
    decoder = TorchDecoder(model, TorchAcceleration(precision))
    features = TorchImageEncoder(model)(torch.randn(2, 3, 96, 128))
    one = PixelFeatures(features.mask_features[:1], [level[:1] for level in features.multi_scale_features])
    classes = torch.nn.functional.normalize(torch.randn(5, model.decoder.class_embed.shape[0]), dim=-1)
    batch = DecoderInputs(features, classes)
    assert decoder.supports(DecoderInputs(one, classes))
    assert decoder.supports(batch) is takes_batches
    assert TorchDecoder(model, TorchAcceleration(precision), batches=True).supports(batch)


def test_bf16_on_a_cpu_without_bf16_units_is_cautioned(tmp_path: Path):
    without_units = tmp_path / "cpuinfo_avx2"
    without_units.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n")
    with_units = tmp_path / "cpuinfo_amx"
    with_units.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16\n")
    cpu = torch.device("cpu")
    assert cpu_has_bf16_units(without_units) is False
    assert cpu_has_bf16_units(with_units) is True
    assert cpu_has_bf16_units(tmp_path / "absent") is None
    assert "no amx_bf16 or avx512_bf16" in TorchAcceleration("bf16").caution(cpu, without_units)
    assert TorchAcceleration("bf16").caution(cpu, with_units) is None
    assert TorchAcceleration("bf16").caution(cpu, tmp_path / "absent") is None
    assert TorchAcceleration("fp32").caution(cpu, without_units) is None
    assert TorchAcceleration("bf16").caution(torch.device("cuda"), without_units) is None


def test_settings_a_device_cannot_run_are_refused(model):
    with pytest.raises(ValueError, match="precision must be one of"):
        TorchAcceleration("int8")
    with pytest.raises(ValueError, match="set compile too"):
        TorchAcceleration("bf16", cuda_graphs=True)
    encoder = TorchImageEncoder(model, TorchAcceleration("fp16"))
    with pytest.raises(ValueError, match="need a CUDA device"):
        encoder(torch.zeros((1, 3, 64, 64)))


COMPILE_ONCE = """
import json, torch
from torch._dynamo.utils import counters
from seem_ros.engine.torch_backend import TorchAcceleration
scale = TorchAcceleration(compile=True).wrap(lambda x: torch.nn.functional.gelu(x * 3.0) + 1.0)
scale(torch.ones(8))
print(json.dumps(dict(counters["inductor"])))
"""


def _compile_in_a_new_process(environment: dict[str, str]) -> dict[str, int]:
    """Inductor's cache counters after a new process compiled a small function through the backends."""
    completed = subprocess.run(
        [sys.executable, "-c", COMPILE_ONCE], env=environment, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_compiled_code_is_kept_in_the_cache_for_the_next_start(tmp_path):
    """What torch.compile compiled goes to `<cache>/torch_compile`; a new process compiling the same
    function loads it from there instead of compiling it again."""
    environment = {key: value for key, value in os.environ.items() if key != "TORCHINDUCTOR_CACHE_DIR"}
    environment["SEEM_ROS_CACHE_DIR"] = str(tmp_path / "cache")
    first = _compile_in_a_new_process(environment)
    assert first.get("fxgraph_cache_miss", 0) >= 1 and not first.get("fxgraph_cache_hit")
    assert any((tmp_path / "cache" / "torch_compile").rglob("*.py"))
    second = _compile_in_a_new_process(environment)
    assert second.get("fxgraph_cache_hit", 0) >= 1 and not second.get("fxgraph_cache_miss")


def test_a_users_own_compiled_code_folder_is_kept(tmp_path, monkeypatch):
    """A folder the user chose stays; inductor's own default (written when it is imported) does not."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default_dir

    monkeypatch.setenv("SEEM_ROS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "own"))
    assert keep_compiled_code() == tmp_path / "own"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "own")
    for inductor_default in (inductor_default_dir(), None):
        if inductor_default is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", inductor_default)
        assert keep_compiled_code() == tmp_path / "cache" / "torch_compile"
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "torch_compile")


def test_gpu_benchmark_runs_on_the_cpu(tmp_path):
    report = tmp_path / "gpu.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu",
            "--device",
            "cpu",
            "--quick",
            "--profile",
            "1",
            "--json",
            str(report),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "fps" in completed.stdout and "focalt_tiny" in completed.stdout
    results = json.loads(report.read_text())
    measured = [row for row in results["rows"] if "skipped" not in row]
    assert {(row["batch"], row["variant"]) for row in measured} == {
        (1, "eager"),
        (1, "autocast"),
        (2, "eager"),
        (2, "autocast"),
    }
    for row in measured:
        assert set(row["stages"]) == {"preprocess", "image_encoder", "prompts", "decoder", "postprocess"}
        assert row["frames_per_second"] > 0
        assert row["weights"] == ("fp32" if row["variant"] == "eager" else "bf16, stored reduced")
        assert row["profile"]["steps"] == 1 and row["profile"]["ranked_by"] == "self host time"
        assert row["profile"]["top"] and row["profile"]["top"][0]["self_ms_per_step"] > 0
    assert "profile focalt_tiny B=1 eager" in completed.stdout
    for row in measured:
        if row["variant"] == "autocast":
            agreement = row["agreement_vs_eager_fp32"]
            assert agreement["masks"] == 36  # four photos, nine clicks each
            assert 0.0 <= agreement["mask_iou_min"] <= agreement["mask_iou_mean"] <= 1.0
            assert 0.0 < agreement["feature_error"] < 0.05


def test_gpu_benchmark_measures_the_reference_and_the_fastest_variant_first():
    from bench.gpu import parse_args, run_plan

    args = parse_args(["--variants", "graphs", "compiled", "eager", "autocast"])
    plan = run_plan(args, torch.device("cuda"))
    assert plan[:4] == [
        (1, "focalt_v1", "eager"),
        (1, "focalt_v1", "graphs"),
        (1, "samvitb_v1", "eager"),
        (1, "samvitb_v1", "graphs"),
    ]
    assert [variant for batch, preset, variant in plan[4:8]] == ["autocast", "compiled"] * 2
    assert {batch for batch, _, _ in plan[8:]} == {8} and len(plan) == 16
    on_cpu = run_plan(args, torch.device("cpu"))
    assert on_cpu[:2] == [(1, "focalt_v1", "eager"), (1, "focalt_v1", "compiled")]
    assert [variant for batch, _, variant in on_cpu if batch == 1][-2:] == ["graphs", "graphs"]


def test_segmenter_config_routes_precision_and_compile_to_the_torch_backends(photo):
    segmenter = build_segmenter(
        SegmenterConfig("focalt_tiny", device="cpu", random_weights=True, precision="bf16", short_side=64)
    )
    assert isinstance(segmenter.engine.predictor.image_encoder, TorchImageEncoder)
    assert segmenter.describe()["backend"] == "torch-bf16"
    assert segmenter.engine.predictor.model.backbone.patch_embed.proj.weight.dtype == torch.bfloat16
    result = segmenter.process(photo)
    assert result.panoptic.shape == photo.shape[:2]
    compiled = build_segmenter(
        SegmenterConfig("focalt_tiny", device="cpu", random_weights=True, compile=True, short_side=64)
    )
    facts = compiled.describe()
    assert facts["backend"] == "torch-fp32-compiled" and "backends" in facts["startup"]
    assert facts["compiled code"] == str(keep_compiled_code())
    with pytest.raises(ValueError, match="set compile too"):
        SegmenterConfig("focalt_tiny", cuda_graphs=True)
    with pytest.raises(ValueError, match="apply to the torch backend"):
        SegmenterConfig("focalt_tiny", backend="onnx", compile=True)


def _three_cameras_pass(model, tokenizer, photo: np.ndarray) -> DecoderInputs:
    """One decoder pass over three cameras' frames, each with a click carried by its memory prompt (clicks
    at different places: different numbers of prompt tokens) and a sentence of its own length."""
    predictor = SeemPredictor(model, tokenizer, short_side=96)
    views = (photo, photo[:, ::-1], photo[::-1])
    sentences = ("the red cup", "a cup", "the white saucer under the cup on the table")
    calls = []
    for index, (view, sentence) in enumerate(zip(views, sentences, strict=True)):
        encoded = predictor.encode(np.ascontiguousarray(view))
        previous = torch.randn(
            encoded.features.mask_features.shape[-2:], generator=torch.Generator().manual_seed(index)
        )
        targets = [
            Target(visual=(ClickPrompt(60.0 - 25.0 * index, 40.0),)),
            Target(text=TextPrompt(sentence)),
        ]
        calls.append(predictor._decoder_call(encoded, targets, [previous, None], index, predictor.vocabulary))
    return DecoderInputs.stack([call.inputs for call in calls])


DECODED_PER_IMAGE = (
    "object_logits",
    "object_masks",
    "grounding_masks",
    "spatial_masks",
    "spatial_mask_embeddings",
)


def test_copies_of_the_last_image_change_no_images_answer(model, tokenizer, photo):
    """What a compiled pass runs with (`batch_bucket`): three cameras' pass padded to four images."""
    inputs = _three_cameras_pass(model, tokenizer, photo)
    decoder = TorchDecoder(model, batches=True)
    alone = decoder(inputs).final
    padded = decoder(inputs.select_images(torch.tensor([0, 1, 2, 2]))).final
    for name in DECODED_PER_IMAGE:
        torch.testing.assert_close(getattr(padded, name)[:3], getattr(alone, name), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(getattr(padded, name)[3], getattr(alone, name)[2], atol=1e-5, rtol=1e-5)


def test_compiled_passes_of_three_and_four_cameras_run_one_graph_each_way(model, tokenizer, photo):
    """Three cameras' frames run the graphs of four (`batch_bucket`), and get the eager answers."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch.inference_mode():  # as the predictor runs its backends: inference tensors throughout
        acceleration = TorchAcceleration(compile=True)
        images = torch.randn(4, 3, 96, 128, generator=torch.Generator().manual_seed(0))
        encoder = TorchImageEncoder(model, acceleration)
        for count in (3, 4):
            want, got = TorchImageEncoder(model)(images[:count]), encoder(images[:count])
            assert got.mask_features.shape[0] == count
            torch.testing.assert_close(got.mask_features, want.mask_features, atol=1e-4, rtol=1e-4)
        three = _three_cameras_pass(model, tokenizer, photo)
        compiled, eager = TorchDecoder(model, acceleration, batches=True), TorchDecoder(model, batches=True)
        for inputs in (three, three.select_images(torch.tensor([0, 1, 2, 0]))):
            want, got = eager(inputs).final, compiled(inputs).final
            for name in DECODED_PER_IMAGE:
                assert getattr(got, name).shape == getattr(want, name).shape
                torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-4, rtol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()
