"""`SeemPredictor`: encode an image once, then answer any number of prompt queries on its features.

    predictor = SeemPredictor(model, tokenizer)
    predictor.set_image(rgb)                       # HxWx3 uint8 RGB
    result = predictor.predict([Target(text=TextPrompt("the red cup"))], generic=True)

All targets of one call (text, visual, referring-image, and their combinations) are decoded in one
decoder pass, together with the generic (panoptic) segmentation of the object queries, so a frame costs
one image encoding and one decoder pass however many targets it has.

Semantics chosen where the official v1 code has none:
- Box: SEEM has no box encoder; the official v1 evaluation turns a box into a click at the box centre
  (distance-transform maximum). We do the same and clip the answer to the box.
- Text plus visual prompts on one target: the target is decoded as a visual prompt; among its spatial
  queries the answer maximises softmax(visual selection score) + softmax(text similarity), so both the
  clicks and the words choose the mask.
- Labels: every mask gets the vocabulary class its query's embedding is closest to (background
  excluded); text targets also carry their text.
- Randomness: the official spatial path draws random queries and points at inference; the predictor
  draws them from a generator seeded per call, so the same inputs always give the same output.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seem_ros.engine.backends import DecoderBackend, DecoderInputs, ImageEncoderBackend
from seem_ros.engine.errors import InputError
from seem_ros.engine.image_transform import ResizeShortestSide, validate_rgb
from seem_ros.engine.prompt_raster import Disk, PromptShape, Stroke, canvas_to_mask, draw_prompt_canvas
from seem_ros.engine.prompts import (
    BoxPrompt,
    ClickPrompt,
    MaskPrompt,
    ReferringImagePrompt,
    ScribblePrompt,
    Target,
)
from seem_ros.engine.torch_backend import TorchDecoder
from seem_ros.engine.vocabulary_cache import (
    COCO_PANOPTIC,
    SentenceEmbeddingCache,
    Vocabulary,
    VocabularyCache,
)
from seem_ros.model.decoder import DecoderPrediction, GroundingTokens
from seem_ros.model.features import PixelFeatures
from seem_ros.model.postprocess import panoptic_inference, resize_mask_logits
from seem_ros.model.seem import SEEM, SpatialSelection
from seem_ros.model.spatial_prompts import SpatialPromptTokens, concatenate_spatial_tokens
from seem_ros.model.tokenizer import ClipTokenizer
from seem_ros.model.transfer import to_device

EMPTY_MEMORY_LOGIT = -30.0
MAX_LONG_SIDE = 2048


@dataclass
class EncodedImage:
    """An image's features and its geometry: original (H0, W0), model input (h, w), padded (H', W')."""

    features: PixelFeatures
    original_size: tuple[int, int]
    image_size: tuple[int, int]
    padded_size: tuple[int, int]


@dataclass
class TargetResult:
    """The answer to one target.

    mask: (H0, W0) bool at the original image size. mask_logits: (H'/4, W'/4) float32 logits in the
    padded geometry (feed them back as the memory prompt of the next frame or round).
    score: mean mask probability inside the mask, in [0, 1]. label / class_id / class_probability: the
    closest vocabulary class.
    """

    mask: np.ndarray
    mask_logits: Tensor
    score: float
    label: str
    class_id: int
    class_probability: float


@dataclass
class GenericSegment:
    segment_id: int
    class_id: int
    label: str
    is_thing: bool
    score: float
    area: int


@dataclass
class GenericResult:
    """Panoptic segmentation over the vocabulary. panoptic: (H0, W0) int32 ids (0 = void); semantic:
    (H0, W0) int32 class ids of the panoptic segments (-1 = void)."""

    panoptic: np.ndarray
    semantic: np.ndarray
    segments: list[GenericSegment]


@dataclass
class Prediction:
    targets: list[TargetResult]
    generic: GenericResult | None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class FrameRequest:
    """What one stream asks of one frame: the image, its targets with their memory prompts (previous mask
    logits or None, one per target), whether to segment it panoptically, and over which vocabulary (None =
    the predictor's)."""

    image: np.ndarray
    targets: list[Target] = field(default_factory=list)
    previous_logits: list[Tensor | None] = field(default_factory=list)
    generic: bool = True
    vocabulary: Vocabulary | None = None


@dataclass(frozen=True)
class PanopticSettings:
    """object_mask_threshold: class probability a query needs; overlap_threshold: visible fraction a
    segment needs (official v1 evaluation: 0.8 / 0.8; demo configs 0.4 / 0.8)."""

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.object_mask_threshold < 1.0:
            raise ValueError(f"object_mask_threshold must be in [0, 1), got {self.object_mask_threshold}")
        if not 0.0 < self.overlap_threshold <= 1.0:
            raise ValueError(f"overlap_threshold must be in (0, 1], got {self.overlap_threshold}")


@dataclass
class _DecoderCall:
    """One frame's decoder pass as `SeemPredictor._decoder_call` prepared it (`inputs`, one image), and
    what its answer is read with: which targets are visual (spatial queries) and which text (grounding
    queries), their sentence embeddings, and the time the preparation took (prompt rasterisation,
    sampling, text embedding)."""

    encoded: EncodedImage
    targets: Sequence[Target]
    vocabulary: Vocabulary
    inputs: DecoderInputs
    visual_ids: list[int]
    text_ids: list[int]
    text_index: dict[int, int]
    sentence_embeddings: Tensor | None
    prepare_seconds: float

    @property
    def layout(self) -> tuple:
        """Calls of one layout can share a batched decoder pass: the same padded size and vocabulary,
        the same query groups (grounding, spatial, memory) and number of visual prompts."""
        inputs = self.inputs
        num_prompts = 0 if inputs.spatial_tokens is None else inputs.spatial_tokens.num_prompts
        return (
            self.encoded.padded_size,
            self.vocabulary,
            inputs.grounding is not None,
            num_prompts,
            inputs.previous_masks is not None,
        )


class SeemPredictor:
    """Encode once, prompt many times.

    Args:
        model: a SEEM model with weights.
        tokenizer: the CLIP tokenizer.
        vocabulary: classes for generic segmentation and labels (COCO panoptic by default).
        device: where the model runs.
        short_side: the model input's shorter side in pixels (the demo uses 512).
        panoptic: thresholds of the generic segmentation.
        mask_threshold: a pixel is in a target's mask when sigmoid(mask logit) > mask_threshold, in (0, 1);
            in panoptic output a pixel counts toward its segment when its probability reaches it (the
            official >= 0.5). 0.5 reproduces the official masks.
        click_radius: a click is drawn as a disk of this radius in model-input pixels (the demo's brush).
        vocabulary_cache: where text embeddings are kept; built on the model's encoder by default.
            Text prompts are embedded once and kept in `sentence_cache` (least recently used first out).
        image_encoder: runs backbone + pixel decoder instead of the model's PyTorch modules (e.g. an
            `OnnxImageEncoder`); None = the PyTorch modules, timed per stage.
        decoder_backend: runs the decoder instead of `SEEM.decode` for the calls it supports (e.g. an
            `OnnxDecoder`); other calls, and all when None, run in PyTorch.
    """

    def __init__(
        self,
        model: SEEM,
        tokenizer: ClipTokenizer,
        vocabulary: Vocabulary = COCO_PANOPTIC,
        device: str | torch.device = "cpu",
        short_side: int = 512,
        panoptic: PanopticSettings | None = None,
        mask_threshold: float = 0.5,
        click_radius: float = 4.0,
        vocabulary_cache: VocabularyCache | None = None,
        image_encoder: ImageEncoderBackend | None = None,
        decoder_backend: DecoderBackend | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.model.language_encoder.tokenizer = tokenizer
        # SAM-ViT inputs must fit the ViT's fixed square; for the others the long side is capped so an
        # extreme aspect ratio cannot blow the model input up (8 x 4096 would become 512 x 262144).
        max_long_side = model.fixed_input_size or max(MAX_LONG_SIDE, 2 * short_side)
        self.transform = ResizeShortestSide(short_side, max_long_side)
        self.panoptic = panoptic or PanopticSettings()
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold is a probability in (0, 1), got {mask_threshold}")
        self.mask_threshold = mask_threshold
        # sigmoid(x) > t  <=>  x > log(t / (1 - t)); exactly 0.0 for t = 0.5, so the default is `logit > 0`
        self._mask_logit_threshold = math.log(mask_threshold / (1.0 - mask_threshold))
        self.click_radius = click_radius
        self.vocabulary_cache = vocabulary_cache or VocabularyCache(model.language_encoder)
        self.sentence_cache = SentenceEmbeddingCache(model.language_encoder, tokenizer)
        self.vocabulary = vocabulary
        self.vocabulary_cache.embeddings(vocabulary)  # embedded now, not on the first frame
        self._encoded: EncodedImage | None = None
        self._reference_tokens: dict[int, tuple[ReferringImagePrompt, SpatialPromptTokens]] = {}
        self._encode_timings: dict[str, float] = {}
        self.image_encoder = image_encoder
        self.decoder_backend = decoder_backend
        self._pytorch_decoder = TorchDecoder(self.model)

    # ------------------------------------------------------------------ state
    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Switch the default vocabulary of labels and panoptic segments."""
        self.prepare_vocabulary(vocabulary)
        self.vocabulary = vocabulary

    def prepare_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Embed a vocabulary's names now (cached per vocabulary), not on the first frame that needs them."""
        self.vocabulary_cache.embeddings(vocabulary)

    def describe(self) -> dict[str, str]:
        return {"device": str(self.device), "vocabulary_size": str(len(self.vocabulary.names))}

    def _model_input(self, rgb: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
        """The padded, normalised (1, 3, H', W') model input of an RGB image, and its resized (H, W)."""
        validate_rgb(rgb)
        resized = self.transform.apply_image(rgb)
        image = torch.from_numpy(np.require(resized, requirements=["C", "W"])).permute(2, 0, 1)[None]
        return self.model.preprocess(to_device(image, self.device)), resized.shape[:2]

    def _image_features(self, padded: Tensor, timings: dict[str, float]) -> PixelFeatures:
        """Image encoder on (B, 3, H', W') padded inputs; its stage times go into `timings`."""
        if self.image_encoder is not None:
            start = time.perf_counter()
            features = self.image_encoder(padded)
            self._synchronize()
            timings["image_encoder"] = time.perf_counter() - start
            return features
        start = time.perf_counter()
        backbone_features = self.model.backbone(padded)
        self._synchronize()
        timings["backbone"] = time.perf_counter() - start
        start = time.perf_counter()
        features = self.model.sem_seg_head.pixel_decoder(backbone_features)
        self._synchronize()
        timings["pixel_decoder"] = time.perf_counter() - start
        return features

    @torch.inference_mode()
    def encode(self, rgb: np.ndarray) -> EncodedImage:
        """Features of an (H, W, 3) uint8 RGB image, without storing them."""
        start = time.perf_counter()
        padded, resized_size = self._model_input(rgb)
        timings = {"preprocess": time.perf_counter() - start}
        features = self._image_features(padded, timings)
        self._encode_timings = timings
        return EncodedImage(features, rgb.shape[:2], resized_size, tuple(padded.shape[-2:]))

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[np.ndarray]) -> list[tuple[EncodedImage, dict[str, float]]]:
        """Features of several images, each with the timings of the pass that made it.

        Images whose padded model inputs have the same size go through the image encoder (PyTorch, or the
        `image_encoder` backend: ONNX Runtime, compiled graphs) in one batched pass: grouped by size, not
        padded to the largest, which would change their features.
        """
        inputs = []
        for rgb in images:
            start = time.perf_counter()
            padded, resized_size = self._model_input(rgb)
            inputs.append((padded, resized_size, time.perf_counter() - start))
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (padded, _, _) in enumerate(inputs):
            groups.setdefault(tuple(padded.shape[-2:]), []).append(index)
        encoded: dict[int, tuple[EncodedImage, dict[str, float]]] = {}
        for size, members in groups.items():
            timings = {"preprocess": sum(inputs[index][2] for index in members)}
            features = self._image_features(torch.cat([inputs[index][0] for index in members]), timings)
            for row, index in enumerate(members):
                own = PixelFeatures(
                    mask_features=features.mask_features[row : row + 1],
                    multi_scale_features=[level[row : row + 1] for level in features.multi_scale_features],
                )
                image = EncodedImage(own, images[index].shape[:2], inputs[index][1], size)
                encoded[index] = (image, timings)
        return [encoded[index] for index in range(len(images))]

    def set_image(self, rgb: np.ndarray) -> None:
        """Encode an (H, W, 3) uint8 RGB image; later `predict` calls reuse its features."""
        self._encoded = self.encode(rgb)

    def set_encoded(self, encoded: EncodedImage, timings: dict[str, float] | None = None) -> None:
        """Use an image encoded elsewhere (e.g. in one batched pass over several frames, `encode_batch`);
        timings: those of that pass, reported with the next prediction."""
        self._encoded = encoded
        self._encode_timings = dict(timings or {})

    def reset_image(self) -> None:
        self._encoded = None

    @property
    def encoded(self) -> EncodedImage:
        if self._encoded is None:
            raise RuntimeError("no image is set: call set_image(rgb) before predict()")
        return self._encoded

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ prompts
    @staticmethod
    def _check_inside(encoded: EncodedImage, x: float, y: float) -> None:
        height, width = encoded.original_size
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"prompt point ({x}, {y}) is outside the {width}x{height} image")

    def _visual_masks(self, encoded: EncodedImage, target: Target) -> tuple[Tensor, Tensor]:
        """(H', W') bool positive and negative prompt masks of a target's visual prompts, on the host
        (their points are drawn there)."""
        height, width = encoded.original_size
        radius = max(1, round(self.click_radius * height / encoded.image_size[0]))
        shapes: dict[bool, list[PromptShape]] = {True: [], False: []}
        masks = {True: torch.zeros(encoded.image_size, dtype=torch.bool), False: None}
        masks[False] = torch.zeros_like(masks[True])
        for prompt in target.visual:
            if isinstance(prompt, ClickPrompt):
                self._check_inside(encoded, prompt.x, prompt.y)
                shapes[prompt.positive].append(Disk(round(prompt.x), round(prompt.y), radius))
            elif isinstance(prompt, BoxPrompt):
                self._check_inside(encoded, prompt.x_min, prompt.y_min)
                self._check_inside(encoded, prompt.x_max, prompt.y_max)
                centre = (round((prompt.x_min + prompt.x_max) / 2), round((prompt.y_min + prompt.y_max) / 2))
                shapes[True].append(Disk(*centre, radius))
            elif isinstance(prompt, ScribblePrompt):
                for x, y in prompt.points:
                    self._check_inside(encoded, x, y)
                points = tuple((round(x), round(y)) for x, y in prompt.points)
                shapes[prompt.positive].append(Stroke(points, max(1, round(prompt.width))))
            elif isinstance(prompt, MaskPrompt):
                if prompt.mask.shape != (height, width):
                    raise ValueError(f"mask prompt is {prompt.mask.shape}, the image is {(height, width)}")
                canvas = prompt.mask.astype(np.uint8) * 255
                masks[prompt.positive] |= canvas_to_mask(canvas, encoded.image_size)
        for positive in (True, False):
            if shapes[positive]:
                canvas = draw_prompt_canvas(shapes[positive], (height, width))
                masks[positive] |= canvas_to_mask(canvas, encoded.image_size)
        if not masks[True].any():
            raise ValueError("the positive prompts of a target cover no pixel of the model input")
        pad = (
            0,
            encoded.padded_size[1] - encoded.image_size[1],
            0,
            encoded.padded_size[0] - encoded.image_size[0],
        )
        return F.pad(masks[True], pad), F.pad(masks[False], pad)

    @torch.inference_mode()
    def _reference(self, prompt: ReferringImagePrompt) -> SpatialPromptTokens:
        """Tokens of a referring image's mask, computed once per prompt object."""
        cached = self._reference_tokens.get(id(prompt))
        if cached is not None and cached[0] is prompt:
            return cached[1]
        reference = self.encode(prompt.image)
        mask = canvas_to_mask(prompt.mask.astype(np.uint8) * 255, reference.image_size)
        if not mask.any():
            raise ValueError("the referring mask covers no pixel of the model input")
        pad = (
            0,
            reference.padded_size[1] - reference.image_size[1],
            0,
            reference.padded_size[0] - reference.image_size[0],
        )
        positive = F.pad(mask, pad)[None]
        tokens = self.model.encode_spatial_reference(
            reference.features, positive, torch.zeros_like(positive), torch.Generator().manual_seed(0)
        )
        if len(self._reference_tokens) >= 16:
            self._reference_tokens.clear()
        self._reference_tokens[id(prompt)] = (prompt, tokens)
        return tokens

    # ------------------------------------------------------------------ predict
    def _decoder_call(
        self,
        encoded: EncodedImage,
        targets: Sequence[Target],
        previous_logits: Sequence[Tensor | None] | None,
        seed: int,
        vocabulary: Vocabulary,
    ) -> _DecoderCall:
        """One frame's prompts as the decoder takes them: text tokens, visual prompt tokens, memory
        prompts and the pass's random choices, drawn from a generator seeded with `seed`."""
        if previous_logits is not None and len(previous_logits) != len(targets):
            raise ValueError("previous_logits needs one entry (or None) per target")
        start = time.perf_counter()
        previous_logits = list(previous_logits) if previous_logits is not None else [None] * len(targets)
        generator = torch.Generator().manual_seed(seed)
        visual_ids = [i for i, t in enumerate(targets) if t.visual or t.reference is not None]
        text_ids = [i for i, t in enumerate(targets) if t.text is not None and i not in visual_ids]
        texts = [t.text.text for t in targets if t.text is not None]
        text_index = {i: n for n, i in enumerate(i for i, t in enumerate(targets) if t.text is not None)}
        sentence_embeddings = None
        grounding = None
        if texts:
            embedded = self.sentence_cache.embed(texts)
            sentence_embeddings = torch.stack([embedding.sentence for embedding in embedded])
            if text_ids:
                tokens = torch.cat([embedded[text_index[i]].tokens for i in text_ids])
                grounding = GroundingTokens(
                    tokens[:, None], torch.zeros((1, tokens.shape[0]), dtype=torch.bool, device=self.device)
                )

        spatial_tokens = None
        previous = None
        query_choices = None
        if visual_ids:
            parts = []
            for i in visual_ids:
                target = targets[i]
                if target.reference is not None:
                    parts.append(self._reference(target.reference))
                else:
                    positive, negative = self._visual_masks(encoded, target)
                    parts.append(
                        self.model.encode_spatial_reference(
                            encoded.features, positive[None], negative[None], generator
                        )
                    )
            spatial_tokens = concatenate_spatial_tokens(parts)
            if any(previous_logits[i] is not None for i in visual_ids):
                size = encoded.features.mask_features.shape[-2:]
                previous = torch.full((1, len(visual_ids), *size), EMPTY_MEMORY_LOGIT)
                for slot, i in enumerate(visual_ids):
                    if previous_logits[i] is None:
                        continue
                    if previous_logits[i].shape != size:
                        raise InputError(
                            f"target {i}'s previous mask logits are {tuple(previous_logits[i].shape)}; this "
                            f"image's are {tuple(size)} (mask_logits of a frame of the same size)"
                        )
                    previous[0, slot] = previous_logits[i]
                previous = to_device(previous, self.device)
            query_choices = self.model.decoder.draw_query_choices(
                spatial_tokens.num_prompts, previous is not None, generator
            )
        inputs = DecoderInputs(
            encoded.features,
            self.vocabulary_cache.embeddings(vocabulary),
            grounding=grounding,
            spatial_tokens=spatial_tokens,
            previous_masks=previous,
            query_choices=query_choices,
        )
        return _DecoderCall(
            encoded=encoded,
            targets=targets,
            vocabulary=vocabulary,
            inputs=inputs,
            visual_ids=visual_ids,
            text_ids=text_ids,
            text_index=text_index,
            sentence_embeddings=sentence_embeddings,
            prepare_seconds=time.perf_counter() - start,
        )

    @torch.inference_mode()
    def predict(
        self,
        targets: Sequence[Target] = (),
        previous_logits: Sequence[Tensor | None] | None = None,
        generic: bool = False,
        seed: int = 0,
        vocabulary: Vocabulary | None = None,
    ) -> Prediction:
        """Answer every target (and optionally segment everything) on the current image in one pass.

        previous_logits: per target, the mask logits of the previous frame or round ((H'/4, W'/4), as in
            `TargetResult.mask_logits`) or None; visual targets with one get SEEM's memory prompt.
        generic: also run panoptic segmentation over the vocabulary.
        vocabulary: the classes of labels and panoptic segments; None = `self.vocabulary`.
        """
        call = self._decoder_call(self.encoded, targets, previous_logits, seed, vocabulary or self.vocabulary)
        answer = self._predict_calls([call], [generic], [self._encode_timings])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @torch.inference_mode()
    def predict_frames(self, requests: Sequence[FrameRequest]) -> list[Prediction | Exception]:
        """Answer several streams' frames, in order; a frame that fails gets its exception, the others
        their predictions.

        Frames are encoded together where their padded model inputs agree in size (`encode_batch`), and
        decoded together where their decoder passes agree in layout (`_DecoderCall.layout`: padded size,
        vocabulary, the query groups, the number of visual prompts) and the decoder takes the batch
        (`DecoderBackend.supports`; PyTorch on a GPU, and on the CPU in bf16: `pytorch_decodes_batches`;
        else one by one). Each frame keeps its own prompt tokens (padded to the batch's longest, which
        changes no answer) and random draws, so its answer equals the one it would get alone (the same
        work, batched). A shared pass's time is reported with each of
        its frames ("image_encoder" or "backbone" and "pixel_decoder", "decoder"); "prompts" (the frame's
        prompt tokens and random draws) and "postprocess" are the frame's own.
        """
        answers: list[Prediction | Exception | None] = [None] * len(requests)
        try:
            encoded = self.encode_batch([request.image for request in requests])
        except Exception as error:  # the batch shares one pass: every frame of it failed
            return [error] * len(requests)
        calls: dict[int, _DecoderCall] = {}
        for index, request in enumerate(requests):
            try:
                calls[index] = self._decoder_call(
                    encoded[index][0],
                    request.targets,
                    request.previous_logits,
                    0,
                    request.vocabulary or self.vocabulary,
                )
            except Exception as error:
                answers[index] = error
        groups: dict[tuple, list[int]] = {}
        for index, call in calls.items():
            groups.setdefault(call.layout, []).append(index)
        for members in groups.values():
            batch = self._predict_calls(
                [calls[index] for index in members],
                [requests[index].generic for index in members],
                [encoded[index][1] for index in members],
            )
            for index, answer in zip(members, batch, strict=True):
                answers[index] = answer
        return [answer for answer in answers if answer is not None]

    def _predict_calls(
        self, calls: Sequence[_DecoderCall], generics: Sequence[bool], timings: Sequence[dict[str, float]]
    ) -> list[Prediction | Exception]:
        """Decode calls of one layout in one pass where a decoder takes them together (the backend, else
        PyTorch; else one by one), then read each frame's answer; a failed pass fails its frames, a failed
        answer its own."""
        inputs = DecoderInputs.stack([call.inputs for call in calls])
        decoder = next(
            (
                decoder
                for decoder in (self.decoder_backend, self._pytorch_decoder)
                if decoder is not None and decoder.supports(inputs)
            ),
            None,
        )
        if decoder is None:
            return self._predict_one_by_one(calls, generics, timings)
        start = time.perf_counter()
        try:
            output = decoder(inputs)
            self._synchronize()
        except Exception as error:  # the calls share one pass: every frame of it failed
            return [error] * len(calls)
        decoder_seconds = time.perf_counter() - start
        selection = self.model.select_spatial_masks(output) if inputs.spatial_tokens is not None else None
        answers: list[Prediction | Exception] = []
        for row, (call, generic, timing) in enumerate(zip(calls, generics, timings, strict=True)):
            start = time.perf_counter()
            try:
                targets, generic_result = self._answer(call, output.final, selection, row, generic)
            except Exception as error:
                answers.append(error)
                continue
            stages = {
                **timing,
                "prompts": call.prepare_seconds,
                "decoder": decoder_seconds,
                "postprocess": time.perf_counter() - start,
            }
            answers.append(Prediction(targets, generic_result, stages))
        return answers

    def _predict_one_by_one(
        self, calls: Sequence[_DecoderCall], generics: Sequence[bool], timings: Sequence[dict[str, float]]
    ) -> list[Prediction | Exception]:
        return [
            answer
            for call, generic, timing in zip(calls, generics, timings, strict=True)
            for answer in self._predict_calls([call], [generic], [timing])
        ]

    def _answer(
        self,
        call: _DecoderCall,
        final: DecoderPrediction,
        selection: SpatialSelection | None,
        row: int,
        generic: bool,
    ) -> tuple[list[TargetResult], GenericResult | None]:
        """One frame's answer (row `row` of its decoder pass): each target's chosen query read out, and
        the panoptic segmentation when `generic`."""
        encoded, targets = call.encoded, call.targets
        chosen: dict[int, tuple[Tensor, Tensor]] = {}
        if call.visual_ids:
            per_prompt = self.model.decoder.queries_per_prompt
            for slot, i in enumerate(call.visual_ids):
                query = int(selection.query_index[row, slot])
                if targets[i].text is not None and targets[i].reference is None:
                    candidates = slice(slot * per_prompt, (slot + 1) * per_prompt)
                    visual_score = selection.logits[row, candidates, slot].float().softmax(0)
                    sentence = call.text_index[i]
                    text_score = self.model.language_encoder.grounding_similarity(
                        final.spatial_class_embeddings[row, candidates].float(),
                        call.sentence_embeddings[sentence : sentence + 1].float(),
                    )[:, 0].softmax(0)
                    query = slot * per_prompt + int((visual_score + text_score).argmax())
                chosen[i] = (final.spatial_masks[row, query], final.spatial_class_embeddings[row, query])
        if call.text_ids:
            similarity = self.model.language_encoder.grounding_similarity(
                final.grounding_class_embeddings[row].float(),
                call.sentence_embeddings[[call.text_index[i] for i in call.text_ids]].float(),
            )
            for column, i in enumerate(call.text_ids):
                query = int(similarity[:, column].argmax())
                chosen[i] = (final.grounding_masks[row, query], final.grounding_class_embeddings[row, query])
        results = [
            self._target_result(
                encoded, call.vocabulary, call.inputs.class_text_embeddings, targets[i], *chosen[i]
            )
            for i in range(len(targets))
        ]
        generic_result = None
        if generic:
            generic_result = self._generic(
                encoded, call.vocabulary, final.object_logits[row].float(), final.object_masks[row].float()
            )
        return results, generic_result

    def _target_result(
        self,
        encoded: EncodedImage,
        vocabulary: Vocabulary,
        class_embeddings: Tensor,
        target: Target,
        mask_logits: Tensor,
        class_embedding: Tensor,
    ) -> TargetResult:
        mask_logits = mask_logits.float()
        full = resize_mask_logits(
            mask_logits[None], encoded.padded_size, encoded.image_size, encoded.original_size, "bilinear"
        )[0]
        mask = (full > self._mask_logit_threshold).cpu().numpy()
        for prompt in target.visual:
            if isinstance(prompt, BoxPrompt):
                outside = np.ones_like(mask)
                outside[
                    int(prompt.y_min) : int(np.floor(prompt.y_max)) + 1,
                    int(prompt.x_min) : int(np.floor(prompt.x_max)) + 1,
                ] = False
                mask[outside] = False
        inside = mask_logits > self._mask_logit_threshold
        score = float(mask_logits.sigmoid()[inside].mean()) if inside.any() else 0.0
        if not mask.any():
            score = 0.0
        logits = self.model.language_encoder.similarity(class_embedding.float()[None, None], class_embeddings)
        probabilities = logits[0, 0].softmax(-1)[:-1]
        class_id = int(probabilities.argmax())
        return TargetResult(
            mask=mask,
            mask_logits=mask_logits.detach().cpu(),
            score=score,
            label=vocabulary.names[class_id],
            class_id=class_id,
            class_probability=float(probabilities[class_id]),
        )

    def _generic(
        self, encoded: EncodedImage, vocabulary: Vocabulary, class_logits: Tensor, mask_logits: Tensor
    ) -> GenericResult:
        """Panoptic segmentation as the official demo computes it at the model input size, resizing only
        the queries that pass the class threshold (the others never reach a segment), then the id map
        to the original size (nearest)."""
        probabilities = class_logits.softmax(-1)
        scores, labels = probabilities.max(-1)
        background = class_logits.shape[-1] - 1
        kept = ((labels != background) & (scores > self.panoptic.object_mask_threshold)).nonzero()[:, 0]
        height, width = encoded.original_size
        if kept.numel() == 0:
            empty = np.zeros((height, width), dtype=np.int32)
            return GenericResult(empty, np.full((height, width), -1, dtype=np.int32), [])
        resized = resize_mask_logits(
            mask_logits[kept], encoded.padded_size, encoded.image_size, encoded.image_size
        )
        panoptic = panoptic_inference(
            class_logits[kept],
            resized,
            vocabulary.thing_class_ids,
            self.panoptic.object_mask_threshold,
            self.panoptic.overlap_threshold,
            self.mask_threshold,
        )
        ids = panoptic.panoptic_seg.cpu().numpy()
        if ids.shape != (height, width):
            ids = cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)
        # segment ids are 1..n (0 = void): one pass over the pixels for all classes and areas
        class_of_id = np.full(len(panoptic.segments) + 1, -1, dtype=np.int32)
        for segment in panoptic.segments:
            class_of_id[segment.segment_id] = segment.category_id
        semantic = class_of_id[ids]
        areas = np.bincount(ids.ravel(), minlength=len(class_of_id))
        segments = []
        kept_list = kept.tolist()
        for segment in panoptic.segments:
            source = [kept_list[q] for q in segment.source_queries]
            segments.append(
                GenericSegment(
                    segment_id=segment.segment_id,
                    class_id=segment.category_id,
                    label=vocabulary.names[segment.category_id],
                    is_thing=segment.is_thing,
                    score=float(scores[source].max()),
                    area=int(areas[segment.segment_id]),
                )
            )
        return GenericResult(ids.astype(np.int32), semantic, segments)
