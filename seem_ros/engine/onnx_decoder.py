"""Decoder backends: SEEM's decoder in ONNX Runtime, one exported graph per decoder configuration.

    decoder = OnnxDecoder(model, preset="focalt_v1")
    predictor = SeemPredictor(model, tokenizer, decoder_backend=decoder)

Each configuration (`DecoderGraphKind`: generic, + grounding text, + visual prompts, + their memory) is
exported the first time a call needs it, checked against PyTorch, and kept in the same on-disk cache as the
image encoder (see `seem_ros.export.decoder`). The graphs' weights are one memory-mapped copy shared by
all sessions (`seem_ros.export.shared_weights`). Visual prompt tokens are made in PyTorch and
the pass's random choices drawn by the caller (`SEEMDecoder.draw_query_choices`), in the official order,
so a seeded call gives the same masks as `SEEM.decode`. `onnxruntime` is imported only when a session is made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from seem_ros.engine.backends import DecoderInputs
from seem_ros.engine.onnx_backend import buffer_device, cached_export, checked_providers
from seem_ros.export.decoder import DECODER_EXPORT_FORMAT_VERSION, DecoderGraphKind, export_and_check_decoder
from seem_ros.export.onnx_file import DEFAULT_OPSET, ExportCheck, session_options
from seem_ros.export.shared_weights import SharedInitializers
from seem_ros.model.decoder import DecoderOutput, DecoderPrediction, SEEMDecoder
from seem_ros.model.seem import SEEM

if TYPE_CHECKING:
    import onnxruntime

_ELEMENT_TYPES = {torch.float32: np.float32, torch.int64: np.int64}


def decoder_fingerprint(decoder: SEEMDecoder) -> str:
    """Hex digest (32 characters) of the decoder weights a graph holds (names, shapes, values): every
    parameter and buffer except the text tower, of which only the logit scale is used."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in decoder.state_dict().items():
        if name.startswith("lang_encoder.") and name != "lang_encoder.logit_scale":
            continue
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)};".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def export_cached_decoder(
    decoder: SEEMDecoder,
    preset: str,
    kind: DecoderGraphKind,
    cache_dir: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    fingerprint: str | None = None,
) -> tuple[Path, list[ExportCheck]]:
    """The cached ONNX file of `decoder`'s graph of `kind`, exported and checked against PyTorch when missing.

    The file is `<cache_dir>/<preset>-decoder-<kind>-<fingerprint>-v<format>-opset<opset>.onnx`; cache_dir
    defaults to `onnx_cache_dir()`, fingerprint to `decoder_fingerprint(decoder)`. Returns the path and
    the checks of a fresh export (empty when the file was already there).
    """
    fingerprint = fingerprint or decoder_fingerprint(decoder)
    name = f"{preset}-decoder-{kind.name}-{fingerprint}-v{DECODER_EXPORT_FORMAT_VERSION}-opset{opset}.onnx"
    metadata = {"seem_ros.preset": preset, "seem_ros.weights_fingerprint": fingerprint}
    return cached_export(
        cache_dir,
        name,
        lambda path: export_and_check_decoder(decoder, kind, path, opset=opset, metadata=metadata),
    )


class OnnxDecoder:
    """SEEM's decoder in ONNX Runtime sessions, one per decoder configuration, exported on first use.

    Args:
        model: the SEEM model whose decoder is exported (its PyTorch decoder also draws the random choices).
        preset: the preset name, part of the cached file names.
        cache_dir: where exported graphs are kept; `onnx_cache_dir()` by default.
        providers: execution providers in order of preference; `default_providers()` by default.
        num_threads: intra-op threads of the CPU provider; None lets ONNX Runtime choose.
        opset: ONNX opset of exported graphs (17 or newer).
        fingerprint: `decoder_fingerprint(model.decoder)` when already known (hashed when None).

    `shared_weights` maps the graphs' weight files, once each, for all of its sessions.

    Calls it supports (`supports`): any batch without prompts, batch 1 with prompts, grounding tokens
    without padding. `__call__` returns a `DecoderOutput` whose `predictions` holds only the final step
    (the graph returns no intermediate step).
    """

    name = "onnx"

    def __init__(
        self,
        model: SEEM,
        preset: str,
        cache_dir: str | Path | None = None,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
        opset: int = DEFAULT_OPSET,
        fingerprint: str | None = None,
    ) -> None:
        self.num_threads = num_threads
        self.decoder = model.decoder
        self.preset = preset
        self.cache_dir = cache_dir
        self.opset = opset
        self.requested_providers = checked_providers(providers)
        self.device = buffer_device(self.requested_providers)
        self.paths: dict[DecoderGraphKind, Path] = {}
        self._fingerprint = fingerprint or decoder_fingerprint(self.decoder)
        self._sessions: dict[DecoderGraphKind, onnxruntime.InferenceSession] = {}
        self.shared_weights = SharedInitializers()

    def prepare(self, kinds: Sequence[DecoderGraphKind]) -> None:
        """Export (when not cached) and load the graphs of `kinds` now rather than on first use."""
        for kind in kinds:
            self._session(kind)

    def _session(self, kind: DecoderGraphKind) -> onnxruntime.InferenceSession:
        session = self._sessions.get(kind)
        if session is None:
            import onnxruntime

            path, _ = export_cached_decoder(
                self.decoder, self.preset, kind, self.cache_dir, self.opset, self._fingerprint
            )
            options = session_options(self.num_threads)
            self.shared_weights.add_to(options, path)
            session = onnxruntime.InferenceSession(str(path), options, providers=self.requested_providers)
            self.paths[kind] = path
            self._sessions[kind] = session
        return session

    def supports(self, inputs: DecoderInputs) -> bool:
        """True for any batch without prompts, batch 1 with prompts, grounding tokens without padding
        (what `SeemPredictor` passes)."""
        if inputs.batch_size != 1 and not _graph_kind(inputs).batched:
            return False
        return inputs.grounding is None or not bool(inputs.grounding.padding.any())

    def __call__(self, inputs: DecoderInputs) -> DecoderOutput:
        """Decode the features of one image (of several without prompts). Outputs are float32 on the
        features' device."""
        if not self.supports(inputs):
            raise ValueError(
                "this pass is not supported by the ONNX decoder (batch 1 with prompts, grounding tokens "
                "without padding); run SEEM.decode instead"
            )
        features, grounding, spatial_tokens = inputs.features, inputs.grounding, inputs.spatial_tokens
        kind = _graph_kind(inputs)
        values = [features.mask_features, *features.multi_scale_features, inputs.class_text_embeddings]
        num_spatial = 0
        if grounding is not None:
            values.append(grounding.tokens)
        if inputs.query_choices is not None:
            values += [
                *spatial_tokens.level_tokens,
                *spatial_tokens.level_prompt_index,
                inputs.query_choices.spatial_query_index,
            ]
            num_spatial = inputs.query_choices.spatial_query_index.shape[0]
        if inputs.previous_masks is not None:
            values += [inputs.previous_masks, inputs.query_choices.memory_slots()]
        outputs = self._run(
            kind, values, features.mask_features.shape, inputs.class_text_embeddings.shape[0], num_spatial
        )
        outputs = [output.to(features.mask_features.device) for output in outputs]
        prediction = DecoderPrediction(*outputs[:4])
        rest = outputs[4:]
        if grounding is not None:
            prediction.grounding_masks, prediction.grounding_class_embeddings = rest[:2]
            rest = rest[2:]
        if spatial_tokens is not None:
            (
                prediction.spatial_masks,
                prediction.spatial_class_embeddings,
                prediction.spatial_mask_embeddings,
            ) = rest
        return DecoderOutput(
            predictions=[prediction],
            spatial_tokens=spatial_tokens,
            query_choices=inputs.query_choices,
        )

    def _run(
        self,
        kind: DecoderGraphKind,
        inputs: list[Tensor],
        mask_features_shape: Sequence[int],
        num_classes: int,
        num_spatial: int,
    ) -> list[Tensor]:
        """Bind inputs and preallocated outputs (torch tensors on the session's device) and run.

        mask_features_shape: (B, D, H'/4, W'/4). num_classes: K+1. num_spatial: 3n spatial queries (0
        without visual prompts)."""
        session = self._session(kind)
        decoder = self.decoder
        num_queries, dim = decoder.query_feat.weight.shape
        mask_dim = decoder.mask_embed.layers[-1].out_features
        batch, _, height, width = mask_features_shape
        shapes = [(num_queries, num_classes), (num_queries, height, width), (num_queries, dim)]
        shapes.append((num_queries, mask_dim))
        if kind.grounding:
            shapes += [(num_queries, height, width), (num_queries, dim)]
        if kind.spatial:
            shapes += [(num_spatial, height, width), (num_spatial, dim), (num_spatial, mask_dim)]
        outputs = [torch.empty((batch, *shape), device=self.device) for shape in shapes]
        # the bound buffers must stay alive until the run ends
        bound = [
            value.to(self.device, torch.int64 if value.dtype == torch.int64 else torch.float32).contiguous()
            for value in inputs
        ]
        binding = session.io_binding()
        for name, value in zip(kind.input_names(decoder.num_feature_levels), bound, strict=True):
            binding.bind_input(name, *_buffer(value))
        for name, output in zip(kind.output_names(), outputs, strict=True):
            binding.bind_output(name, *_buffer(output))
        if self.device.type == "cuda":
            binding.synchronize_inputs()
        session.run_with_iobinding(binding)
        if self.device.type == "cuda":
            binding.synchronize_outputs()
        return outputs


def _buffer(tensor: Tensor) -> tuple[str, int, type, list[int], int]:
    """The (device_type, device_id, element_type, shape, pointer) IO binding needs for a tensor."""
    return (
        tensor.device.type,
        tensor.device.index or 0,
        _ELEMENT_TYPES[tensor.dtype],
        list(tensor.shape),
        tensor.data_ptr(),
    )


def _graph_kind(inputs: DecoderInputs) -> DecoderGraphKind:
    """The exported graph that decodes `inputs`."""
    return DecoderGraphKind(
        grounding=inputs.grounding is not None,
        spatial=inputs.spatial_tokens is not None,
        memory=inputs.previous_masks is not None,
    )
