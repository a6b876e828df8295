"""Export SEEM's decoder to ONNX, one graph per decoder configuration, and check it in ONNX Runtime at once.

A decoder call's prompt inputs vary in kind (text grounding, visual prompts, memory of the previous frame),
so each combination is its own graph (`DecoderGraphKind`); within a graph every count varies freely: image
size, vocabulary size K, visual prompts n, prompt points N_i per level, grounding tokens L.

What stays in PyTorch, before the graph runs: the visual prompt tokens (point sampling is random and
data-dependent) and the random choices of the pass (`SEEMDecoder.draw_query_choices`: the object query
copied into each spatial query, the prompt each memory slot serves per layer), drawn from the same
generator in the same order, so a seeded call gives the same result as PyTorch. Picking the answer among
the spatial queries (`SEEM.select_spatial_masks`) also stays in PyTorch.

Graph inputs (float32 unless said; D = decoder width, Q = object queries, M = memory slots):
- ``mask_features`` (1, D, H'/4, W'/4), ``multi_scale_features_0/1/2`` (1, D, H'/s, W'/s), s = 32, 16, 8;
- ``class_text_embeddings`` (K+1, D), background last;
- grounding: ``grounding_tokens`` (L, 1, D) (no padding token);
- spatial: ``spatial_tokens_i`` (N_i, 1, D) and ``spatial_prompt_index_i`` (1, N_i, 1) (the prompt of each
  token, -1 for padding) per level i, ``spatial_query_index`` (3n,) int64;
- memory: ``previous_masks`` (1, n, H'/4, W'/4) logits, ``memory_slot_prompt_index`` (layers, M) int64.

Graph outputs, of the final decoder step: ``object_logits`` (1, Q, K+1), ``object_masks`` (1, Q, H'/4, W'/4),
``object_class_embeddings``, ``object_mask_embeddings`` (1, Q, D); grounding: ``grounding_masks``,
``grounding_class_embeddings``; spatial: ``spatial_masks`` (1, 3n, H'/4, W'/4), ``spatial_class_embeddings``,
``spatial_mask_embeddings`` (1, 3n, D).

Weights: every graph's large initializers are stored by content in `<graph folder>/weights/`
(`seem_ros.export.shared_weights`), so the graphs of one decoder share one copy on disk and, through
`SharedInitializers`, one memory-mapped copy in a process.

The exporter is the TorchScript-based `torch.onnx.export(..., dynamo=False)`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from seem_ros.export.onnx_file import (
    DEFAULT_OPSET,
    ExportCheck,
    raise_if_export_differs,
    session_options,
    write_onnx,
)
from seem_ros.export.shared_weights import SharedInitializers, store_by_content
from seem_ros.model.decoder import GroundingTokens, QueryChoices, SEEMDecoder
from seem_ros.model.spatial_prompts import SpatialPromptTokens

DECODER_EXPORT_FORMAT_VERSION = 8
"""Bumped when a decoder graph's inputs, outputs or meaning change, so cached files are rebuilt."""
FEATURE_NAMES = (
    "mask_features",
    "multi_scale_features_0",
    "multi_scale_features_1",
    "multi_scale_features_2",
)
FEATURE_STRIDES = (4, 32, 16, 8)


@dataclass(frozen=True)
class DecoderGraphKind:
    """Which prompt inputs a decoder graph takes.

    grounding: text tokens for the grounding queries. spatial: visual prompt tokens and spatial queries.
    memory: the previous masks of the visual prompts (needs spatial).
    """

    grounding: bool = False
    spatial: bool = False
    memory: bool = False

    def __post_init__(self) -> None:
        if self.memory and not self.spatial:
            raise ValueError("a memory graph needs spatial=True (memory slots serve visual prompts)")

    @property
    def batched(self) -> bool:
        """Whether the graph takes a batch of images (the object queries alone: several cameras' frames
        without prompts in one run); prompted graphs take one image."""
        return not (self.grounding or self.spatial)

    @property
    def name(self) -> str:
        """ "generic", or the prompt kinds joined by "_" (e.g. "spatial_memory")."""
        parts = [part for part in ("grounding", "spatial", "memory") if getattr(self, part)]
        return "_".join(parts) or "generic"

    def input_names(self, num_levels: int) -> list[str]:
        names = [*FEATURE_NAMES[: num_levels + 1], "class_text_embeddings"]
        if self.grounding:
            names.append("grounding_tokens")
        if self.spatial:
            names += [f"spatial_tokens_{level}" for level in range(num_levels)]
            names += [f"spatial_prompt_index_{level}" for level in range(num_levels)]
            names.append("spatial_query_index")
        if self.memory:
            names += ["previous_masks", "memory_slot_prompt_index"]
        return names

    def output_names(self) -> list[str]:
        names = ["object_logits", "object_masks", "object_class_embeddings", "object_mask_embeddings"]
        if self.grounding:
            names += ["grounding_masks", "grounding_class_embeddings"]
        if self.spatial:
            names += ["spatial_masks", "spatial_class_embeddings", "spatial_mask_embeddings"]
        return names

    def dynamic_axes(self, num_levels: int) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for name, stride in zip(FEATURE_NAMES[: num_levels + 1], FEATURE_STRIDES, strict=True):
            axes[name] = {2: f"height_div{stride}", 3: f"width_div{stride}"}
        axes["class_text_embeddings"] = {0: "classes"}
        axes["grounding_tokens"] = {0: "grounding_length"}
        for level in range(num_levels):
            axes[f"spatial_tokens_{level}"] = {0: f"points_{level}"}
            axes[f"spatial_prompt_index_{level}"] = {1: f"points_{level}"}
        axes["spatial_query_index"] = {0: "spatial_queries"}
        axes["previous_masks"] = {1: "prompts", 2: "height_div4", 3: "width_div4"}
        axes["object_logits"] = {2: "classes"}
        for group in ("object", "grounding", "spatial"):
            axes[f"{group}_masks"] = {2: "height_div4", 3: "width_div4"}
        if self.batched:
            for name in (*FEATURE_NAMES, *self.output_names()):
                axes.setdefault(name, {})[0] = "batch"
        for name in ("spatial_masks", "spatial_class_embeddings", "spatial_mask_embeddings"):
            axes.setdefault(name, {})[1] = "spatial_queries"
        wanted = set(self.input_names(num_levels)) | set(self.output_names())
        return {name: value for name, value in axes.items() if name in wanted}


ALL_GRAPH_KINDS = tuple(
    DecoderGraphKind(grounding, spatial, memory)
    for grounding in (False, True)
    for spatial in (False, True)
    for memory in (False, True)
    if spatial or not memory
)


class DecoderGraph(nn.Module):
    """`SEEMDecoder.forward` with tensor-only inputs (in `DecoderGraphKind.input_names` order) and the final
    step's predictions as outputs (in `output_names` order): the module that is traced. The intermediate
    attention masks come from the mask-feature pixels they read (`attention_sample_factors` of
    `SEEMDecoder.forward`): the same values with fewer products."""

    def __init__(self, decoder: SEEMDecoder, kind: DecoderGraphKind) -> None:
        super().__init__()
        self.decoder = decoder
        self.kind = kind
        self.num_levels = decoder.num_feature_levels

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        named = dict(zip(self.kind.input_names(self.num_levels), inputs, strict=True))
        grounding = None
        if self.kind.grounding:
            tokens = named["grounding_tokens"]
            padding = torch.zeros((1, tokens.shape[0]), dtype=torch.bool, device=tokens.device)
            grounding = GroundingTokens(tokens, padding)
        spatial_tokens = None
        if self.kind.spatial:
            level_tokens = [named[f"spatial_tokens_{level}"] for level in range(self.num_levels)]
            # the mean vectors only pick the answer, after the decoder: placeholders of the right shape
            num_prompts = named["spatial_query_index"].shape[0] // self.decoder.queries_per_prompt
            means = level_tokens[0].new_zeros((num_prompts, 1, level_tokens[0].shape[-1]))
            prompt_index = [named[f"spatial_prompt_index_{level}"] for level in range(self.num_levels)]
            spatial_tokens = SpatialPromptTokens(
                mean_positive=means,
                mean_negative=means,
                level_tokens=level_tokens,
                level_padding=[index[..., 0] < 0 for index in prompt_index],
                level_prompt_index=prompt_index,
            )
        output = self.decoder(
            [named[f"multi_scale_features_{level}"] for level in range(self.num_levels)],
            named["mask_features"],
            named["class_text_embeddings"],
            grounding=grounding,
            spatial_tokens=spatial_tokens,
            previous_masks=named.get("previous_masks"),
            query_choices=(
                QueryChoices(named["spatial_query_index"], named.get("memory_slot_prompt_index"))
                if self.kind.spatial
                else None
            ),
            attention_sample_factors=[
                stride // FEATURE_STRIDES[0] for stride in FEATURE_STRIDES[1 : self.num_levels + 1]
            ],
        )
        final = output.final
        outputs = [
            final.object_logits,
            final.object_masks,
            final.object_class_embeddings,
            final.object_mask_embeddings,
        ]
        if self.kind.grounding:
            outputs += [final.grounding_masks, final.grounding_class_embeddings]
        if self.kind.spatial:
            outputs += [final.spatial_masks, final.spatial_class_embeddings, final.spatial_mask_embeddings]
        return tuple(outputs)


def example_inputs(
    decoder: SEEMDecoder,
    kind: DecoderGraphKind,
    padded_size: tuple[int, int] = (512, 704),
    num_classes: int = 11,
    num_prompts: int = 2,
    points_per_level: Sequence[int] = (7, 5, 9),
    grounding_length: int = 6,
    seed: int = 0,
    batch: int = 1,
) -> list[Tensor]:
    """Random inputs of a graph of `kind` (in `input_names` order): features of `batch` (H', W') padded
    images, K+1 = num_classes normalised class embeddings, and the prompt inputs with the given counts."""
    generator = torch.Generator().manual_seed(seed)
    height, width = padded_size
    dim = decoder.class_embed.shape[0]
    mask_dim = decoder.mask_embed.layers[-1].out_features
    named = {"mask_features": torch.randn(batch, mask_dim, height // 4, width // 4, generator=generator)}
    for level, stride in enumerate(FEATURE_STRIDES[1 : decoder.num_feature_levels + 1]):
        named[f"multi_scale_features_{level}"] = torch.randn(
            batch, dim, height // stride, width // stride, generator=generator
        )
    classes = torch.randn(num_classes, dim, generator=generator)
    named["class_text_embeddings"] = classes / classes.norm(dim=-1, keepdim=True)
    named["grounding_tokens"] = torch.randn(grounding_length, 1, dim, generator=generator)
    for level, count in enumerate(points_per_level):
        named[f"spatial_tokens_{level}"] = torch.randn(count, 1, dim, generator=generator)
        prompt = torch.randint(0, num_prompts, (1, count, 1), generator=generator).float()
        prompt[0, -1] = -1.0
        named[f"spatial_prompt_index_{level}"] = prompt
    named["previous_masks"] = 4.0 * torch.randn(1, num_prompts, height // 4, width // 4, generator=generator)
    choices = decoder.draw_query_choices(num_prompts, True, generator)
    named["spatial_query_index"] = choices.spatial_query_index
    named["memory_slot_prompt_index"] = choices.memory_slot_prompt_index
    return [named[name] for name in kind.input_names(decoder.num_feature_levels)]


def export_decoder(
    decoder: SEEMDecoder,
    kind: DecoderGraphKind,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the decoder graph of `kind` (fp32, CPU) to an ONNX file, its weights stored by content in
    `<folder of path>/weights/` (`store_by_content`).

    path: the .onnx file to write (its folder is created). opset: 17 or newer.
    metadata: extra string entries stored in the file's metadata_props. Returns the path.
    """
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset must be {DEFAULT_OPSET} or newer (LayerNormalization), got {opset}")
    graph = _cpu_float_graph(decoder, kind)
    num_levels = decoder.num_feature_levels
    entries = {
        "seem_ros.decoder_export_format_version": str(DECODER_EXPORT_FORMAT_VERSION),
        "seem_ros.decoder_graph": kind.name,
        **(metadata or {}),
    }
    path = write_onnx(
        graph,
        tuple(example_inputs(graph.decoder, kind)),
        Path(path),
        kind.input_names(num_levels),
        kind.output_names(),
        kind.dynamic_axes(num_levels),
        opset,
        entries,
    )
    store_by_content(path)
    return path


@dataclass(frozen=True)
class CheckCase:
    """One input shape a decoder graph is checked on: padded image size, K+1, n and N_i, and the batch a
    batched graph (`DecoderGraphKind.batched`) runs it on."""

    padded_size: tuple[int, int]
    num_classes: int
    num_prompts: int
    points_per_level: tuple[int, int, int]
    batch: int = 1


DEFAULT_CHECK_CASES = (
    CheckCase((512, 704), 11, 2, (7, 5, 9)),
    CheckCase((384, 640), 4, 3, (12, 3, 1), batch=2),
)


CHECK_DRAWS = 4
"""Most random input draws per check case (see `check_decoder`)."""


def check_decoder(
    decoder: SEEMDecoder,
    kind: DecoderGraphKind,
    path: str | Path,
    cases: Sequence[CheckCase] = DEFAULT_CHECK_CASES,
    seed: int = 0,
    max_relative_error: float = 1e-3,
) -> list[ExportCheck]:
    """Run the exported graph in ONNX Runtime (CPU) and the decoder in PyTorch on random inputs of each
    case. Returns one `ExportCheck` per case (input_size = the padded image size).

    The decoder's cross-attention masks are hard thresholds (sigmoid(mask) < 0.5). On a random input where
    a mask logit lies within rounding of 0, any change of summation order flips an attention entry and
    moves the outputs far beyond rounding: PyTorch moves as much under a 1e-6 relative change of its own
    inputs (measured: about one draw in six on the full-size SAM-ViT-B decoder with random weights). Such a
    draw tests the model's decision boundary, not the export, so a case takes up to CHECK_DRAWS input draws
    (seeds seed + index, then steps of len(cases)) and keeps the first within `max_relative_error`, else
    the closest. A wrong export differs on every draw.

    The session is built as `OnnxDecoder` builds its own (shared, memory-mapped weights; no pre-packing),
    so what is checked is what runs."""
    import onnxruntime

    graph = _cpu_float_graph(decoder, kind)
    options = session_options(None)
    shared = SharedInitializers()
    shared.add_to(options, path)
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_names = kind.input_names(decoder.num_feature_levels)
    output_names = kind.output_names()
    checks = []
    for index, case in enumerate(cases):
        closest: ExportCheck | None = None
        for draw in range(CHECK_DRAWS):
            inputs = example_inputs(
                graph.decoder,
                kind,
                case.padded_size,
                case.num_classes,
                case.num_prompts,
                case.points_per_level,
                seed=seed + index + draw * len(cases),
                batch=case.batch if kind.batched else 1,
            )
            with torch.no_grad():
                expected = [output.numpy() for output in graph(*inputs)]
            feeds = {name: value.numpy() for name, value in zip(input_names, inputs, strict=True)}
            actual = session.run(output_names, feeds)
            check = ExportCheck.compare(case.padded_size, output_names, actual, expected)
            if closest is None or check.worst_relative() < closest.worst_relative():
                closest = check
            if check.worst_relative() <= max_relative_error:
                break
        assert closest is not None
        checks.append(closest)
    return checks


def export_and_check_decoder(
    decoder: SEEMDecoder,
    kind: DecoderGraphKind,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
    max_relative_error: float = 1e-3,
) -> list[ExportCheck]:
    """`export_decoder`, then `check_decoder`; removes the file and raises RuntimeError when an output
    differs from PyTorch by more than max_relative_error x max(1, its largest magnitude)."""
    path = export_decoder(decoder, kind, path, opset=opset, metadata=metadata)
    checks = check_decoder(decoder, kind, path, max_relative_error=max_relative_error)
    raise_if_export_differs(path, f"{kind.name} decoder", checks, max_relative_error)
    return checks


def _cpu_float_graph(decoder: SEEMDecoder, kind: DecoderGraphKind) -> DecoderGraph:
    """The decoder graph as an fp32 CPU module in eval mode (the decoder's own modules when already so)."""
    parameter = decoder.class_embed
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        decoder = copy.deepcopy(decoder).to("cpu", torch.float32)
    return DecoderGraph(decoder, kind).eval()
