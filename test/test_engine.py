"""`SeemPredictor` on real photos with the tiny reference weights.

The tiny model's answers mean nothing semantically, so these tests check mechanics: every prompt kind
gives a bool mask at the original image size with a score in [0, 1] and a vocabulary label; the image
is encoded once; the output is deterministic; the memory prompt reaches the decoder; bad prompts raise
ValueError. One test checks the generic (panoptic) output against the official implementation's.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from assets import reference_image, skimage_image, tiny_reference_model
from safetensors.torch import load_file

from seem_ros.engine.backends import DecoderInputs
from seem_ros.engine.engine import SeemEngine
from seem_ros.engine.predictor import PanopticSettings, Prediction, SeemPredictor, TargetResult
from seem_ros.engine.prompts import (
    BoxPrompt,
    ClickPrompt,
    MaskPrompt,
    ReferringImagePrompt,
    ScribblePrompt,
    Target,
    TextPrompt,
)
from seem_ros.engine.session import SessionSettings
from seem_ros.engine.torch_backend import TorchDecoder
from seem_ros.engine.vocabulary_cache import Vocabulary, VocabularyCache
from seem_ros.model.decoder import DecoderOutput
from seem_ros.model.features import PixelFeatures
from seem_ros.model.postprocess import resize_mask_logits
from seem_ros.model.seem import SEEM
from seem_ros.model.tokenizer import ClipTokenizer

SHORT_SIDE = 256
CUP_CLICK = ClickPrompt(300.0, 190.0)
"""Inside the red cup of skimage's coffee image (400x600)."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_model(reference_dir: Path) -> SEEM:
    return tiny_reference_model(reference_dir)


@pytest.fixture(scope="module")
def panoptic_case(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "panoptic" / "case.json").read_text())


@pytest.fixture(scope="module")
def vocabulary(panoptic_case: dict) -> Vocabulary:
    names = [name for name in panoptic_case["vocabulary"] if name != "background"]
    things = [names[index] for index in panoptic_case["thing_class_ids"]]
    return Vocabulary.from_names(names, things)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ClipTokenizer:
    return ClipTokenizer(cache_dir=tmp_path_factory.mktemp("seem_ros_cache"))


@pytest.fixture(scope="module")
def model(reference_dir: Path) -> SEEM:
    return _tiny_model(reference_dir)


def _predictor(model: SEEM, tokenizer: ClipTokenizer, vocabulary: Vocabulary) -> SeemPredictor:
    return SeemPredictor(
        model,
        tokenizer,
        vocabulary,
        short_side=SHORT_SIDE,
        panoptic=PanopticSettings(0.4, 0.8),
        vocabulary_cache=VocabularyCache(model.language_encoder, use_disk=False),
    )


@pytest.fixture(scope="module")
def predictor(model: SEEM, tokenizer: ClipTokenizer, vocabulary: Vocabulary) -> SeemPredictor:
    return _predictor(model, tokenizer, vocabulary)


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return skimage_image("coffee")


@pytest.fixture(scope="module")
def zebras1(reference_dir: Path) -> np.ndarray:
    return reference_image(reference_dir, "zebras1")


@pytest.fixture(scope="module")
def zebras2(reference_dir: Path) -> np.ndarray:
    return reference_image(reference_dir, "zebras2")


def _check_target(result: TargetResult, predictor: SeemPredictor, image: np.ndarray) -> None:
    """A valid answer for the image the predictor holds."""
    encoded = predictor.encoded
    assert result.mask.shape == image.shape[:2]
    assert result.mask.dtype == np.bool_
    assert result.mask.any(), "the tiny model always answers with some pixels"
    assert 0.0 <= result.score <= 1.0
    assert result.label in predictor.vocabulary.names
    assert predictor.vocabulary.names[result.class_id] == result.label
    assert 0.0 <= result.class_probability <= 1.0
    assert result.mask_logits.dtype == torch.float32
    assert tuple(result.mask_logits.shape) == (encoded.padded_size[0] // 4, encoded.padded_size[1] // 4)
    assert torch.isfinite(result.mask_logits).all()


def _predict_on(predictor: SeemPredictor, image: np.ndarray, *targets: Target) -> Prediction:
    predictor.set_image(image)
    prediction = predictor.predict(list(targets))
    assert len(prediction.targets) == len(targets)
    for result in prediction.targets:
        _check_target(result, predictor, image)
    return prediction


def _same_result(first: TargetResult, second: TargetResult) -> bool:
    return (
        np.array_equal(first.mask, second.mask)
        and torch.equal(first.mask_logits, second.mask_logits)
        and first.score == second.score
        and first.class_id == second.class_id
    )


# ---------------------------------------------------------------------------------- prompt kinds
def test_text_prompt(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    prediction = _predict_on(predictor, coffee, Target(text=TextPrompt("the red cup")))
    assert prediction.generic is None
    assert {"backbone", "pixel_decoder", "decoder", "postprocess"} <= set(prediction.timings)


def test_positive_click(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    _predict_on(predictor, coffee, Target(visual=(CUP_CLICK,)))


def test_negative_click_changes_the_answer(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    positive_only = Target(visual=(CUP_CLICK,))
    with_negative = Target(visual=(CUP_CLICK, ClickPrompt(80.0, 60.0, positive=False)))
    positive_result = _predict_on(predictor, coffee, positive_only).targets[0]
    negative_result = predictor.predict([with_negative]).targets[0]
    _check_target(negative_result, predictor, coffee)
    assert not torch.equal(positive_result.mask_logits, negative_result.mask_logits)


def test_box_is_its_centre_click_clipped_to_the_box(predictor: SeemPredictor) -> None:
    astronaut = skimage_image("astronaut")
    box = BoxPrompt(170.0, 40.0, 300.5, 220.0)
    result = _predict_on(predictor, astronaut, Target(visual=(box,))).targets[0]
    rows, columns = np.nonzero(result.mask)
    assert rows.min() >= 40 and rows.max() <= 220
    assert columns.min() >= 170 and columns.max() <= 300
    centre = predictor.predict([Target(visual=(ClickPrompt(235.0, 130.0),))]).targets[0]
    inside = np.zeros_like(centre.mask)
    inside[40:221, 170:301] = True
    assert np.array_equal(result.mask, centre.mask & inside)
    assert centre.mask[~inside].any(), "this box does clip something"


def test_scribble(predictor: SeemPredictor) -> None:
    chelsea = skimage_image("chelsea")
    scribble = ScribblePrompt(((120.0, 150.0), (180.0, 140.0), (240.0, 160.0)), width=6.0)
    _predict_on(predictor, chelsea, Target(visual=(scribble,)))


def test_mask_prompt(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    clicked = _predict_on(predictor, coffee, Target(visual=(CUP_CLICK,))).targets[0]
    _predict_on(predictor, coffee, Target(visual=(MaskPrompt(clicked.mask),)))
    negative = np.zeros_like(clicked.mask)
    negative[:50, :50] = True
    _predict_on(predictor, coffee, Target(visual=(MaskPrompt(clicked.mask), MaskPrompt(negative, False))))


def test_referring_image_from_zebras1_on_zebras2(
    predictor: SeemPredictor, zebras1: np.ndarray, zebras2: np.ndarray
) -> None:
    marked = np.zeros(zebras1.shape[:2], dtype=bool)
    marked[120:180, 180:260] = True
    reference = ReferringImagePrompt(zebras1, marked)
    target = Target(reference=reference)
    assert target.kind == "referring_image"
    first = _predict_on(predictor, zebras2, target).targets[0]
    assert first.mask.shape == (256, 538)
    again = predictor.predict([target]).targets[0]
    assert _same_result(first, again)
    assert len(predictor._reference_tokens) <= 16


def test_text_and_click_on_one_target(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    target = Target(text=TextPrompt("the red cup"), visual=(CUP_CLICK,))
    assert target.kind == "click"
    _predict_on(predictor, coffee, target)


def test_several_targets_in_one_call(
    predictor: SeemPredictor, coffee: np.ndarray, zebras1: np.ndarray
) -> None:
    marked = np.zeros(zebras1.shape[:2], dtype=bool)
    marked[100:200, 100:300] = True
    targets = [
        Target(text=TextPrompt("the red cup")),
        Target(visual=(CUP_CLICK,)),
        Target(visual=(BoxPrompt(20.0, 20.0, 200.0, 150.0),)),
        Target(text=TextPrompt("saucer")),
        Target(reference=ReferringImagePrompt(zebras1, marked)),
        Target(text=TextPrompt("a spoon"), visual=(ClickPrompt(450.0, 300.0),)),
    ]
    prediction = _predict_on(predictor, coffee, *targets)
    box_mask = prediction.targets[2].mask
    assert not box_mask[151:].any() and not box_mask[:, 201:].any()
    text_only = predictor.predict([targets[0], targets[3]])
    for multi, single in zip((prediction.targets[0], prediction.targets[3]), text_only.targets, strict=True):
        torch.testing.assert_close(multi.mask_logits, single.mask_logits, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------- encode once, determinism
def test_encode_once_predict_many(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    targets = [Target(text=TextPrompt("the red cup")), Target(visual=(CUP_CLICK,))]
    predictor.set_image(coffee)
    features = predictor.encoded
    first = predictor.predict(targets, generic=True)
    second = predictor.predict(targets, generic=True)
    assert predictor.encoded is features
    for a, b in zip(first.targets, second.targets, strict=True):
        assert _same_result(a, b)
    assert np.array_equal(first.generic.panoptic, second.generic.panoptic)

    others = [
        [],
        [Target(text=TextPrompt("coffee"))],
        [Target(visual=(ClickPrompt(50.0, 50.0), ClickPrompt(500.0, 350.0, positive=False)))],
        [Target(visual=(BoxPrompt(100.0, 100.0, 400.0, 300.0),)), Target(text=TextPrompt("table"))],
    ]
    for prompts in others:
        generic = predictor.predict(prompts, generic=True).generic
        assert np.array_equal(generic.panoptic, first.generic.panoptic)
        assert np.array_equal(generic.semantic, first.generic.semantic)
        assert [(s.label, s.area) for s in generic.segments] == [
            (s.label, s.area) for s in first.generic.segments
        ]


def test_an_encoder_batchs_images_join_a_decoder_pass_without_a_copy(
    predictor: SeemPredictor, coffee: np.ndarray
) -> None:
    """Frames encoded in one pass and decoded in one pass hand the decoder the encoder's batch itself; a
    pass over some of them gets a copy; both hold what `torch.cat` would."""
    encoded = [image for image, _ in predictor.encode_batch([coffee, coffee[::-1], coffee[:, ::-1]])]
    features = [image.features for image in encoded]

    def maps(part: PixelFeatures) -> list[torch.Tensor]:
        return [part.mask_features, *part.multi_scale_features]

    every = maps(PixelFeatures.concatenate(features))
    some = maps(PixelFeatures.concatenate(features[::2]))
    for level, (joined, picked) in enumerate(zip(every, some, strict=True)):
        parts = [maps(part)[level] for part in features]
        assert joined.data_ptr() == parts[0].data_ptr()
        assert torch.equal(joined, torch.cat(parts))
        assert picked.data_ptr() != parts[0].data_ptr()
        assert torch.equal(picked, torch.cat(parts[::2]))


def test_deterministic_across_predictor_instances(
    reference_dir: Path, tokenizer: ClipTokenizer, vocabulary: Vocabulary, coffee: np.ndarray
) -> None:
    targets = [
        Target(visual=(CUP_CLICK, ClickPrompt(80.0, 60.0, positive=False))),
        Target(text=TextPrompt("the red cup")),
        Target(visual=(ScribblePrompt(((200.0, 300.0), (400.0, 320.0))),)),
    ]
    results = []
    for _ in range(2):
        predictor = _predictor(_tiny_model(reference_dir), tokenizer, vocabulary)
        predictor.set_image(coffee)
        results.append(predictor.predict(targets, generic=True))
    for a, b in zip(results[0].targets, results[1].targets, strict=True):
        assert _same_result(a, b)
    assert np.array_equal(results[0].generic.panoptic, results[1].generic.panoptic)


def test_seed_is_the_only_randomness(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    predictor.set_image(coffee)
    target = [Target(visual=(CUP_CLICK,))]
    assert _same_result(
        predictor.predict(target, seed=3).targets[0], predictor.predict(target, seed=3).targets[0]
    )
    torch.manual_seed(1234)
    np.random.seed(1234)
    assert _same_result(predictor.predict(target).targets[0], predictor.predict(target, seed=0).targets[0])


# ----------------------------------------------------------------------------------- memory prompt
def test_memory_prompt_reaches_the_decoder(
    predictor: SeemPredictor, coffee: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _predict_on(predictor, coffee, Target(visual=(CUP_CLICK,))).targets[0]
    seen: list[torch.Tensor | None] = []

    class Spy:
        name = "spy"
        decoder = TorchDecoder(predictor.model)

        def supports(self, inputs: DecoderInputs) -> bool:
            return self.decoder.supports(inputs)

        def __call__(self, inputs: DecoderInputs) -> DecoderOutput:
            seen.append(inputs.previous_masks)
            return self.decoder(inputs)

    monkeypatch.setattr(predictor, "decoder_backend", Spy())
    targets = [
        Target(text=TextPrompt("the red cup")),
        Target(visual=(CUP_CLICK,)),
        Target(visual=(CUP_CLICK,)),
    ]
    prediction = predictor.predict(targets, previous_logits=[first.mask_logits, first.mask_logits, None])
    for result in prediction.targets:
        _check_target(result, predictor, coffee)
    previous = seen[-1]
    assert previous is not None and previous.shape == (1, 2, *first.mask_logits.shape)
    torch.testing.assert_close(previous[0, 0], first.mask_logits, atol=0, rtol=0)
    assert (previous[0, 1] < 0).all(), "a visual target without memory gets an empty memory mask"

    no_memory = predictor.predict([Target(visual=(CUP_CLICK,))]).targets[0]
    assert seen[-1] is None
    assert _same_result(no_memory, first)
    with_memory = predictor.predict([Target(visual=(CUP_CLICK,))], previous_logits=[first.mask_logits])
    assert not torch.equal(with_memory.targets[0].mask_logits, first.mask_logits)


def test_memory_of_a_text_target_is_ignored(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    target = [Target(text=TextPrompt("the red cup"))]
    plain = _predict_on(predictor, coffee, *target).targets[0]
    remembered = predictor.predict(target, previous_logits=[plain.mask_logits]).targets[0]
    assert _same_result(plain, remembered)


def test_previous_logits_need_one_entry_per_target(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    predictor.set_image(coffee)
    with pytest.raises(ValueError, match="previous_logits"):
        predictor.predict([Target(visual=(CUP_CLICK,))], previous_logits=[None, None])


# ------------------------------------------------------------------------------------------ errors
def test_predict_before_set_image(model: SEEM, tokenizer: ClipTokenizer, vocabulary: Vocabulary) -> None:
    fresh = _predictor(model, tokenizer, vocabulary)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict([Target(text=TextPrompt("the red cup"))])
    fresh.set_image(skimage_image("coffee"))
    fresh.reset_image()
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict([], generic=True)


@pytest.mark.parametrize(
    "prompt",
    [
        ClickPrompt(600.0, 100.0),
        ClickPrompt(-1.0, 100.0),
        ClickPrompt(100.0, 400.0),
        BoxPrompt(10.0, 10.0, 650.0, 100.0),
        ScribblePrompt(((10.0, 10.0), (10.0, 420.0))),
    ],
)
def test_prompt_outside_the_image(predictor: SeemPredictor, coffee: np.ndarray, prompt: object) -> None:
    predictor.set_image(coffee)
    with pytest.raises(ValueError, match="outside"):
        predictor.predict([Target(visual=(prompt,))])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_coordinates(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        ClickPrompt(value, 10.0)
    with pytest.raises(ValueError, match="finite"):
        ClickPrompt(10.0, value)
    with pytest.raises(ValueError, match="finite"):
        BoxPrompt(0.0, 0.0, value, 10.0)
    with pytest.raises(ValueError, match="finite"):
        ScribblePrompt(((0.0, 0.0), (value, 1.0)))


@pytest.mark.parametrize("text", ["", " ", "\t\n  "])
def test_empty_text(text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        TextPrompt(text)


def test_text_longer_than_the_context_is_truncated(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    long_text = "the red cup on the saucer " * 20
    input_ids, attention_mask = predictor.tokenizer([long_text])
    assert input_ids.shape == (1, 77) and int(attention_mask.sum()) == 77
    longer = _predict_on(predictor, coffee, Target(text=TextPrompt(long_text))).targets[0]
    even_longer = predictor.predict([Target(text=TextPrompt(long_text + "and a spoon " * 20))]).targets[0]
    assert _same_result(longer, even_longer)
    with pytest.raises(ValueError, match="characters"):
        TextPrompt("cup " * 300)


def test_invalid_targets() -> None:
    with pytest.raises(ValueError, match="needs a text"):
        Target()
    with pytest.raises(ValueError, match="positive"):
        Target(visual=(ClickPrompt(1.0, 1.0, positive=False),))
    with pytest.raises(ValueError, match="x_min <= x_max"):
        BoxPrompt(100.0, 10.0, 50.0, 20.0)
    with pytest.raises(ValueError, match="empty"):
        MaskPrompt(np.zeros((10, 10), dtype=bool))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        MaskPrompt(np.ones((10, 10, 3), dtype=bool))


def test_mask_prompt_of_the_wrong_size(predictor: SeemPredictor, coffee: np.ndarray) -> None:
    predictor.set_image(coffee)
    wrong = np.ones((200, 300), dtype=bool)
    with pytest.raises(ValueError, match="mask prompt"):
        predictor.predict([Target(visual=(MaskPrompt(wrong),))])


def test_referring_mask_empty_or_of_the_wrong_size(zebras1: np.ndarray) -> None:
    with pytest.raises(ValueError, match="empty"):
        ReferringImagePrompt(zebras1, np.zeros(zebras1.shape[:2], dtype=bool))
    with pytest.raises(ValueError, match="size"):
        ReferringImagePrompt(zebras1, np.ones((100, 100), dtype=bool))
    with pytest.raises(ValueError, match="uint8"):
        ReferringImagePrompt(zebras1.astype(np.float32), np.ones(zebras1.shape[:2], dtype=bool))
    with pytest.raises(ValueError, match="visual"):
        Target(visual=(ClickPrompt(1.0, 1.0),), reference=ReferringImagePrompt(zebras1, zebras1[:, :, 0] > 0))


@pytest.mark.parametrize(
    "image",
    [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 3), np.float32), np.zeros((4, 64, 3), np.uint8)],
)
def test_invalid_images(predictor: SeemPredictor, image: np.ndarray) -> None:
    with pytest.raises(ValueError):
        predictor.set_image(image)


def test_mask_threshold_is_the_probability_a_pixel_needs(
    model: SEEM,
    tokenizer: ClipTokenizer,
    vocabulary: Vocabulary,
    predictor: SeemPredictor,
    coffee: np.ndarray,
) -> None:
    """A target's mask is sigmoid(mask logit at the image size) > mask_threshold; the default 0.5 is the
    official logit > 0, and a higher threshold gives a subset."""
    default = _predict_on(predictor, coffee, Target(visual=(CUP_CLICK,))).targets[0]
    encoded = predictor.encoded
    full = resize_mask_logits(
        default.mask_logits[None], encoded.padded_size, encoded.image_size, encoded.original_size, "bilinear"
    )[0]
    assert np.array_equal(default.mask, (full > 0).numpy())
    strict = SeemPredictor(
        model,
        tokenizer,
        vocabulary,
        short_side=SHORT_SIDE,
        mask_threshold=0.7,
        vocabulary_cache=predictor.vocabulary_cache,
    )
    higher = _predict_on(strict, coffee, Target(visual=(CUP_CLICK,))).targets[0]
    assert torch.equal(higher.mask_logits, default.mask_logits)
    assert np.array_equal(higher.mask, (full.sigmoid() > 0.7).numpy())
    assert higher.mask.sum() < default.mask.sum() and not (higher.mask & ~default.mask).any()
    with pytest.raises(ValueError, match="mask_threshold"):
        SeemPredictor(model, tokenizer, vocabulary, mask_threshold=1.0)


# -------------------------------------------------------------------------- generic segmentation
def test_generic_matches_the_official_panoptic_result(
    predictor: SeemPredictor, zebras1: np.ndarray, panoptic_case: dict, reference_dir: Path
) -> None:
    assert tuple(panoptic_case["image_hw"]) == zebras1.shape[:2]
    assert predictor.panoptic == PanopticSettings(
        panoptic_case["object_mask_threshold"], panoptic_case["overlap_threshold"]
    )
    predictor.set_image(zebras1)
    generic = predictor.predict([], generic=True).generic
    names = predictor.vocabulary.names

    expected_areas = {
        (names[info["category_id"]], info["isthing"]): panoptic_case["panoptic_pixel_counts"][str(info["id"])]
        for info in panoptic_case["segments_info"]
    }
    assert {(s.label, s.is_thing): s.area for s in generic.segments} == expected_areas
    assert {s.label: s.area for s in generic.segments} == {"dirt-merged": 14417, "dog": 4639}

    official = load_file(reference_dir / "panoptic" / "tensors.safetensors")["panoptic_seg"].numpy()
    official_ids = {info["id"]: info["category_id"] for info in panoptic_case["segments_info"]}
    ours_ids = {s.segment_id: s.class_id for s in generic.segments}
    assert np.array_equal(generic.panoptic == 0, official == 0)
    for segment_id, class_id in official_ids.items():
        ours = [i for i, c in ours_ids.items() if c == class_id]
        assert len(ours) == 1 and np.array_equal(generic.panoptic == ours[0], official == segment_id)


def test_generic_result_is_consistent(predictor: SeemPredictor) -> None:
    astronaut = skimage_image("astronaut")
    predictor.set_image(astronaut)
    generic = predictor.predict([], generic=True).generic
    assert generic.panoptic.shape == generic.semantic.shape == astronaut.shape[:2]
    assert generic.panoptic.dtype == np.int32 and generic.semantic.dtype == np.int32
    ids = {s.segment_id for s in generic.segments}
    assert set(np.unique(generic.panoptic)) - {0} == ids
    for segment in generic.segments:
        region = generic.panoptic == segment.segment_id
        assert segment.area == int(region.sum()) > 0
        assert (generic.semantic[region] == segment.class_id).all()
        assert predictor.vocabulary.names[segment.class_id] == segment.label
        assert predictor.vocabulary.is_thing[segment.class_id] == segment.is_thing
        assert predictor.panoptic.object_mask_threshold < segment.score <= 1.0
    assert (generic.semantic[generic.panoptic == 0] == -1).all()


@pytest.mark.parametrize("size", [(90, 130), (300, 451), (512, 512)])
def test_masks_come_back_at_the_original_size(predictor: SeemPredictor, size: tuple[int, int]) -> None:
    image = cv2.resize(skimage_image("chelsea"), size[::-1], interpolation=cv2.INTER_AREA)
    x, y = size[1] / 2, size[0] / 2
    prediction = _predict_on(
        predictor, image, Target(visual=(ClickPrompt(x, y),)), Target(text=TextPrompt("a cat"))
    )
    assert min(predictor.encoded.image_size) == SHORT_SIDE
    generic = predictor.predict([], generic=True).generic
    assert generic.panoptic.shape == size
    assert prediction.targets[0].mask.shape == size


def test_the_engine_runs_the_model_on_one_thread_whoever_calls(predictor, coffee, monkeypatch):
    """One OpenMP thread team for all model work (see `seem_ros.engine.engine`)."""
    model_threads: set[int] = set()
    predict_frames = predictor.predict_frames

    def recording(requests):
        model_threads.add(threading.get_ident())
        return predict_frames(requests)

    monkeypatch.setattr(predictor, "predict_frames", recording)
    session = SeemEngine(predictor, SessionSettings()).open_session()
    session.process(coffee)
    caller = threading.Thread(target=session.process, args=(coffee,))
    caller.start()
    caller.join()
    assert len(model_threads) == 1
    assert threading.get_ident() not in model_threads and caller.ident not in model_threads
