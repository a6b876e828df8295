"""CLIP tokenizer, language encoder and vocabulary: exact token ids and numerical parity with the official
tiny model's text tower, and the key/shape layout of the released checkpoints' text encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor

from seem_ros.model.language import LanguageEncoder, TextTransformer
from seem_ros.model.tokenizer import (
    CONTEXT_LENGTH,
    END_OF_TEXT_ID,
    START_OF_TEXT_ID,
    VOCAB_SIZE,
    ClipTokenizer,
    build_tokenizer_files,
    find_bpe_file,
)
from seem_ros.model.vocabulary import (
    BACKGROUND_CLASS,
    COCO_NUM_THING_CLASSES,
    COCO_PANOPTIC_CLASSES,
    COCO_PANOPTIC_IS_THING,
    PROMPT_TEMPLATES,
    clean_class_name,
    templated_sentences,
)

LANG_PREFIX = "sem_seg_head.predictor.lang_encoder."
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
LOGIT_TOLERANCE = {"atol": 1e-3, "rtol": 0.0}
FULL_SIZE_TEXT = {"width": 512, "layers": 12, "heads": 8, "dim_proj": 512}


def _read_case(reference_dir: Path, case: str) -> tuple[dict, dict[str, Tensor]]:
    folder = reference_dir / case
    return json.loads((folder / "case.json").read_text()), load_file(folder / "tensors.safetensors")


def _cases_of_kind(reference_dir: Path, kind: str) -> list[str]:
    index = json.loads((reference_dir / "index.json").read_text())
    return [case for case in index["cases"] if index["case_kinds"][case] == kind]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ClipTokenizer:
    return ClipTokenizer(cache_dir=tmp_path_factory.mktemp("seem_ros_cache"))


@pytest.fixture(scope="session")
def tiny_encoder(reference_dir: Path, tokenizer: ClipTokenizer) -> LanguageEncoder:
    index = json.loads((reference_dir / "index.json").read_text())
    config = yaml.safe_load((reference_dir / index["config_yaml"]).read_text())["MODEL"]
    text = config["TEXT"]
    encoder = LanguageEncoder(
        TextTransformer(
            width=text["WIDTH"],
            layers=text["LAYERS"],
            heads=text["HEADS"],
            context_length=text["CONTEXT_LENGTH"],
        ),
        dim_proj=config["DIM_PROJ"],
        tokenizer=tokenizer,
    )
    weights = load_file(reference_dir / index["model_file"])
    state_dict = {
        key[len(LANG_PREFIX) :]: value for key, value in weights.items() if key.startswith(LANG_PREFIX)
    }
    encoder.load_state_dict(state_dict, strict=True)
    return encoder.eval()


def test_vocabulary_constants_match_reference(reference_dir: Path) -> None:
    vocabulary = json.loads((reference_dir / "vocabulary.json").read_text())
    assert list(PROMPT_TEMPLATES) == vocabulary["prompt_templates"]
    assert len(PROMPT_TEMPLATES) == 81
    assert list(COCO_PANOPTIC_CLASSES) == vocabulary["coco_panoptic_classes"]
    assert len(COCO_PANOPTIC_CLASSES) == 133
    assert COCO_NUM_THING_CLASSES == vocabulary["num_thing_classes"] == 80
    assert COCO_PANOPTIC_IS_THING == tuple([True] * 80 + [False] * 53)
    case, _ = _read_case(reference_dir, "text_embeddings")
    assert list(PROMPT_TEMPLATES) == case["templates"]


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("sky-other-merged", "sky"),
        ("door-stuff", "door"),
        ("grass-merged", "grass"),
        ("wall-brick", "wall-brick"),
    ],
)
def test_clean_class_name(name: str, cleaned: str) -> None:
    assert clean_class_name(name) == cleaned
    assert templated_sentences(name, ["a photo of a {}."]) == [f"a photo of a {cleaned}."]


def test_tokenizer_known_ids(tokenizer: ClipTokenizer) -> None:
    input_ids, attention_mask = tokenizer(["a photo of a cat", "segment the red cup"])
    assert input_ids.shape == attention_mask.shape == (2, CONTEXT_LENGTH)
    assert input_ids.dtype == attention_mask.dtype == torch.int64
    assert input_ids[0, :7].tolist() == [START_OF_TEXT_ID, 320, 1125, 539, 320, 2368, END_OF_TEXT_ID]
    assert input_ids[1, :6].tolist() == [START_OF_TEXT_ID, 15615, 518, 736, 1937, END_OF_TEXT_ID]
    assert (input_ids[0, 7:] == END_OF_TEXT_ID).all()
    assert attention_mask[0].tolist() == [1] * 7 + [0] * (CONTEXT_LENGTH - 7)


def test_tokenizer_strings_exact(reference_dir: Path, tokenizer: ClipTokenizer) -> None:
    case, tensors = _read_case(reference_dir, "text_embeddings")
    input_ids, attention_mask = tokenizer(case["strings"])
    assert torch.equal(input_ids, tensors["strings_input_ids"])
    assert torch.equal(attention_mask, tensors["strings_attention_mask"])


def test_tokenizer_templates_exact(reference_dir: Path, tokenizer: ClipTokenizer) -> None:
    case, tensors = _read_case(reference_dir, "text_embeddings")
    sentences = [
        sentence for name in case["vocabulary"] for sentence in templated_sentences(name, case["templates"])
    ]
    input_ids, attention_mask = tokenizer(sentences)
    assert torch.equal(input_ids, tensors["template_input_ids"].long())
    assert torch.equal(attention_mask, tensors["template_attention_mask"].long())


def test_tokenizer_grounding_texts_exact(reference_dir: Path, tokenizer: ClipTokenizer) -> None:
    cases = _cases_of_kind(reference_dir, "grounding")
    assert cases
    for case_name in cases:
        case, tensors = _read_case(reference_dir, case_name)
        input_ids, attention_mask = tokenizer(case["texts"])
        assert torch.equal(input_ids, tensors["input_ids"]), case_name
        assert torch.equal(attention_mask, tensors["attention_mask"]), case_name


def test_tokenizer_applies_ftfy_and_whitespace_cleaning(tokenizer: ClipTokenizer) -> None:
    plain, _ = tokenizer(["the zebra's stripes"])
    variants, _ = tokenizer(["The  ZEBRA\u2019s\n stripes ", "the zebra\u2019s stripes"])
    assert torch.equal(variants, plain.expand(2, -1))


def test_tokenizer_truncates_to_context(tokenizer: ClipTokenizer) -> None:
    input_ids, attention_mask = tokenizer(["zebra " * 200])
    assert input_ids[0, 0] == START_OF_TEXT_ID and input_ids[0, -1] == END_OF_TEXT_ID
    assert attention_mask.sum() == CONTEXT_LENGTH


def test_tokenizer_rejects_bad_input(tokenizer: ClipTokenizer) -> None:
    with pytest.raises(TypeError, match="list of strings"):
        tokenizer("a zebra")
    with pytest.raises(ValueError, match="at least one"):
        tokenizer([])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tokenizer(["a zebra", 3])


def test_tokenizer_from_local_folder(tmp_path: Path, tokenizer: ClipTokenizer) -> None:
    folder = build_tokenizer_files(find_bpe_file(), tmp_path / "clip-vit-base-patch32")
    merges = (folder / "merges.txt").read_text().splitlines()
    assert len(json.loads((folder / "vocab.json").read_text())) == VOCAB_SIZE
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    texts = ["The zebra on the LEFT, near the tree!", "na\u00efve caf\u00e9 \U0001f436", ""]
    local = ClipTokenizer(tokenizer_dir=folder)
    for produced, expected in zip(local(texts), tokenizer(texts), strict=True):
        assert torch.equal(produced, expected)


def test_tokenizer_rejects_wrong_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ClipTokenizer(tokenizer_dir=tmp_path / "missing")
    (tmp_path / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="not CLIP's"):
        ClipTokenizer(tokenizer_dir=tmp_path)


def test_text_transformer_parity(reference_dir: Path, tiny_encoder: LanguageEncoder) -> None:
    _, tensors = _read_case(reference_dir, "text_embeddings")
    with torch.no_grad():
        hidden = tiny_encoder.lang_encoder(tensors["strings_input_ids"])
    torch.testing.assert_close(hidden, tensors["strings_last_hidden_state"], **TOLERANCE)


def test_encode_tokens_and_sentences_parity(reference_dir: Path, tiny_encoder: LanguageEncoder) -> None:
    _, tensors = _read_case(reference_dir, "text_embeddings")
    input_ids, attention_mask = tensors["strings_input_ids"], tensors["strings_attention_mask"]
    with torch.no_grad():
        token_embeddings, sentence_embeddings = tiny_encoder.encode_tokens(input_ids, attention_mask)
        normalized = tiny_encoder.encode_sentences(input_ids, normalize=True)
        unnormalized = tiny_encoder.encode_sentences(input_ids, normalize=False)
    torch.testing.assert_close(token_embeddings, tensors["strings_token_emb"], **TOLERANCE)
    torch.testing.assert_close(sentence_embeddings, tensors["strings_class_emb"], **TOLERANCE)
    torch.testing.assert_close(unnormalized, tensors["strings_class_emb"], **TOLERANCE)
    torch.testing.assert_close(normalized, tensors["strings_class_emb_normalized"], **TOLERANCE)
    assert (
        tiny_encoder.logit_scale.shape == ()
        and tiny_encoder.logit_scale.item() == tensors["logit_scale"].item()
    )


def test_template_and_class_embeddings_parity(reference_dir: Path, tiny_encoder: LanguageEncoder) -> None:
    case, tensors = _read_case(reference_dir, "text_embeddings")
    with torch.no_grad():
        template_embeddings = tiny_encoder.encode_sentences(
            tensors["template_input_ids"].long(), normalize=True
        )
    torch.testing.assert_close(template_embeddings, tensors["template_embeddings_normalized"], **TOLERANCE)
    class_embeddings = tiny_encoder.class_embeddings(case["vocabulary"], case["templates"], chunk_size=100)
    assert case["vocabulary"][-1] == BACKGROUND_CLASS
    torch.testing.assert_close(class_embeddings, tensors["class_text_embeddings"], **TOLERANCE)


def test_class_embeddings_default_templates(reference_dir: Path, tiny_encoder: LanguageEncoder) -> None:
    case, tensors = _read_case(reference_dir, "text_embeddings")
    names = case["vocabulary"][:3]
    torch.testing.assert_close(
        tiny_encoder.class_embeddings(names), tensors["class_text_embeddings"][:3], **TOLERANCE
    )


def test_grounding_embeddings_parity(reference_dir: Path, tiny_encoder: LanguageEncoder) -> None:
    for case_name in _cases_of_kind(reference_dir, "grounding"):
        case, tensors = _read_case(reference_dir, case_name)
        input_ids, attention_mask = tiny_encoder.tokenizer(case["texts"])
        with torch.no_grad():
            token_embeddings, sentence_embeddings = tiny_encoder.encode_tokens(input_ids, attention_mask)
            similarity = tiny_encoder.grounding_similarity(tensors["pred_gtexts"][0], sentence_embeddings)
        torch.testing.assert_close(token_embeddings, tensors["token_emb"], **TOLERANCE)
        torch.testing.assert_close(sentence_embeddings, tensors["class_emb"], **TOLERANCE)
        grounding_tokens = token_embeddings[attention_mask.bool()][:, None]
        torch.testing.assert_close(grounding_tokens, tensors["grounding_tokens"], **TOLERANCE)
        torch.testing.assert_close(similarity, tensors["similarity"], **LOGIT_TOLERANCE)
        assert similarity.argmax(dim=0).tolist() == tensors["matched_query"].tolist()


def test_class_similarity_parity(reference_dir: Path, tiny_encoder: LanguageEncoder) -> None:
    _, tensors = _read_case(reference_dir, "panoptic")
    queries = tensors["decoder_class_embed_per_layer"]
    with torch.no_grad():
        logits = tiny_encoder.similarity(queries[-1], tensors["class_text_embeddings"])
        aux_logits = tiny_encoder.similarity(queries[:-1].flatten(0, 1), tensors["class_text_embeddings"])
    torch.testing.assert_close(logits, tensors["pred_logits"], **LOGIT_TOLERANCE)
    torch.testing.assert_close(aux_logits, tensors["aux_pred_logits"].flatten(0, 1), **LOGIT_TOLERANCE)


def test_grounding_similarity_clamps_scale() -> None:
    encoder = LanguageEncoder(TextTransformer(width=8, layers=1, heads=2), dim_proj=4)
    with torch.no_grad():
        encoder.logit_scale.fill_(6.0)
    queries = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    texts = torch.tensor([[3.0, 0.0, 0.0, 0.0]])
    grounding = encoder.grounding_similarity(queries, texts)
    torch.testing.assert_close(grounding, torch.tensor([[100.0], [0.0]]), atol=1e-3, rtol=0.0)
    classes = encoder.similarity(queries[None], torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(classes, torch.tensor([[[403.4288], [0.0]]]), atol=1e-3, rtol=0.0)


def test_class_embeddings_requires_tokenizer() -> None:
    encoder = LanguageEncoder(TextTransformer(width=8, layers=1, heads=2), dim_proj=4)
    with pytest.raises(RuntimeError, match="tokenizer"):
        encoder.class_embeddings(["zebra"])


@pytest.mark.parametrize(
    "layout_name",
    ["layout_focalt_v1.json", "layout_focall_v1.json", "layout_samvitb_v1.json", "layout_samvitl_v1.json"],
)
def test_full_size_layout(reference_dir: Path, layout_name: str) -> None:
    layout = json.loads((reference_dir / layout_name).read_text())
    expected = [
        (key[len(LANG_PREFIX) :], shape) for key, shape, _, _ in layout["keys"] if key.startswith(LANG_PREFIX)
    ]
    with torch.device("meta"):
        encoder = LanguageEncoder(
            TextTransformer(
                width=FULL_SIZE_TEXT["width"], layers=FULL_SIZE_TEXT["layers"], heads=FULL_SIZE_TEXT["heads"]
            ),
            dim_proj=FULL_SIZE_TEXT["dim_proj"],
        )
    produced = [(key, list(value.shape)) for key, value in encoder.state_dict().items()]
    assert produced == expected
