"""Text cases: vocabulary and string embeddings, and grounding (referring text) on an image."""

from __future__ import annotations

import torch

from seem_ros.model import postprocess
from seem_ros.model.decoder import GroundingTokens
from seem_ros.model.vocabulary import BACKGROUND_CLASS, PROMPT_TEMPLATES, templated_sentences
from seem_ros.parity.reference import ReferenceSet, case_image, check_features, hw
from seem_ros.parity.report import CaseRows, scalar_row

SENTENCE_CHUNK = 256


def run_text_embeddings(reference: ReferenceSet, case: dict, report: CaseRows) -> None:
    language = reference.language
    vocabulary = list(case["vocabulary"])
    templates = list(case.get("templates", PROMPT_TEMPLATES))
    sentences = [sentence for name in vocabulary for sentence in templated_sentences(name, templates)]
    input_ids, attention_mask = reference.tokenizer(sentences)
    report.exact("template_input_ids", "text", input_ids)
    report.exact("template_attention_mask", "text", attention_mask)
    if report.has("template_embeddings_normalized"):
        embeddings = torch.cat(
            [language.encode_sentences(chunk, normalize=True) for chunk in input_ids.split(SENTENCE_CHUNK)]
        )
        report.close("template_embeddings_normalized", "text", embeddings)
    names = vocabulary if vocabulary[-1] == BACKGROUND_CLASS else [*vocabulary, BACKGROUND_CLASS]
    report.close("class_text_embeddings", "text", language.class_embeddings(names, templates))

    strings = list(case.get("strings", []))
    if strings:
        string_ids, string_mask = reference.tokenizer(strings)
        report.exact("strings_input_ids", "text", string_ids)
        report.exact("strings_attention_mask", "text", string_mask)
        report.close("strings_last_hidden_state", "text", language.lang_encoder(string_ids))
        token_embeddings, sentence_embeddings = language.encode_tokens(string_ids, string_mask)
        report.close("strings_token_emb", "text", token_embeddings)
        report.close("strings_class_emb", "text", sentence_embeddings)
        report.close("strings_class_emb_normalized", "text", language.encode_sentences(string_ids, True))
    report.close("logit_scale", "text", language.logit_scale, logit_scaled=True)


def run_grounding(reference: ReferenceSet, case: dict, report: CaseRows) -> None:
    image = case_image(report, reference, "image_uint8_chw", case.get("image_file"))
    padded, features = reference.encode(image)
    check_features(report, padded, features)
    language = reference.language
    input_ids, attention_mask = reference.tokenizer(list(case["texts"]))
    report.exact("input_ids", "text", input_ids)
    report.exact("attention_mask", "text", attention_mask)
    token_embeddings, sentence_embeddings = language.encode_tokens(input_ids, attention_mask)
    report.close("token_emb", "text", token_embeddings)
    report.close("class_emb", "text", sentence_embeddings)
    tokens = token_embeddings[attention_mask.bool()][:, None]
    padding = torch.zeros((1, tokens.shape[0]), dtype=torch.bool)
    report.close("grounding_tokens", "text", tokens)
    report.exact("grounding_nonzero_mask", "text", padding)

    text = reference.class_embeddings(case["vocabulary"])
    report.close("class_text_embeddings", "text", text)
    output = reference.model.decode(features, text, grounding=GroundingTokens(tokens, padding))
    final = output.final
    earlier = output.predictions[:-1]
    report.close("pred_gmasks", "decoder", final.grounding_masks)
    report.close("pred_gtexts", "decoder", final.grounding_class_embeddings)
    report.close("pred_logits", "decoder", final.object_logits, logit_scaled=True)
    report.close("aux_pred_gmasks", "decoder", torch.stack([p.grounding_masks for p in earlier]))
    report.close("aux_pred_gtexts", "decoder", torch.stack([p.grounding_class_embeddings for p in earlier]))

    similarity = language.grounding_similarity(final.grounding_class_embeddings[0], sentence_embeddings)
    report.close("similarity", "postprocess", similarity, logit_scaled=True)
    matched = postprocess.match_grounding_queries(similarity)
    report.exact("matched_query", "postprocess", matched)
    image_size = hw(image.shape[-2:])
    output_size = hw(case.get("output_hw", image_size))
    logits = postprocess.grounding_mask_logits(
        final.grounding_masks[0], matched, reference.padded_size(image_size), image_size, output_size
    )
    report.close("grounding_mask_logits", "postprocess", logits)
    report.binary("final_mask", "postprocess", logits > 0, logits)
    if "matched_query" in case:
        scalar_row(report, "matched_query", matched.tolist(), case["matched_query"])
