"""The PyTorch backends: the image encoder and the decoder run by PyTorch, plain or accelerated.

    acceleration = TorchAcceleration(precision="bf16", compile=True, cuda_graphs=True)
    predictor = SeemPredictor(
        model, tokenizer, device="cuda",
        image_encoder=TorchImageEncoder(model, acceleration),
        decoder_backend=TorchDecoder(model, acceleration),
    )

They implement the same protocols as the ONNX Runtime backends (`seem_ros.engine.backends`), so the
predictor treats every backend alike. The accelerations are for CUDA devices (bf16 for CPUs too):

- precision: the model runs under autocast in bf16 or fp16 (features are handed on as fp32). A node's
  model (`torch_backends`) keeps its matrix and convolution weights in that precision rather than have
  autocast cast them every frame; norms, embeddings and the text tower stay fp32. bf16 keeps fp32's
  range, so no logit overflows; fp16 has more mantissa. bf16 also runs on the CPU: about 2.2 times as
  fast as fp32 where the CPU has bf16 units (AMX, AVX-512 BF16), slowly where it has none. There the
  pixel decoder runs on channels-last maps, the layout oneDNN's bf16 convolutions compute in (NCHW maps
  are reordered around every convolution: Focal-T's encoder at 512x704 616 -> 440 ms on an AMX CPU; its
  features' error against fp32 is the same to four digits), and its features are handed on in that
  layout.
- compile: `torch.compile` (inductor, Triton kernels on CUDA) of the image encoder and of the decoder.
  Shapes are static: a graph is compiled per padded input size (a camera has one), per number of images
  in a pass (several cameras' frames; padded to 1, 2, 4 or 8 images) and, for the decoder, per prompt
  layout (number of text, visual and memory targets; their tokens padded to one of a few sizes).
  Dynamo's recompile limit bounds how many layouts are compiled; beyond it a call runs eagerly, never
  fails. What is compiled is kept in seem_ros's cache (`keep_compiled_code`), so a later start of
  the same model and shapes loads it instead of compiling again.
- cuda_graphs: the compiled graphs are recorded as CUDA graphs and replayed (inductor's
  "reduce-overhead" mode), which removes the per-kernel launch cost that dominates a small decoder.
  Outputs of a replay live in memory the next replay reuses: the encoder's features are copied out so an
  encoded frame stays valid while later frames are encoded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seem_ros.cache import default_cache_dir
from seem_ros.engine.backends import DecoderInputs, pytorch_decodes_batches
from seem_ros.engine.weights import MappedPages
from seem_ros.model.decoder import DecoderOutput
from seem_ros.model.features import PixelFeatures
from seem_ros.model.seem import SEEM

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
CPUINFO = Path("/proc/cpuinfo")
BF16_CPU_FLAGS = {"amx_bf16", "avx512_bf16"}
TOKEN_BUCKETS = (128, 256, 512, 1024)
BATCH_BUCKETS = (1, 2, 4, 8)
COMPILED_CODE_ENV = "TORCHINDUCTOR_CACHE_DIR"
"""Where inductor keeps what torch.compile compiled; read each time it looks for or stores code."""


@dataclass(frozen=True)
class TorchAcceleration:
    """How the PyTorch backends run. precision: "fp32", "bf16" or "fp16" (autocast; CUDA only).
    compile: torch.compile the encoder and decoder. cuda_graphs: replay them as CUDA graphs (needs
    compile and a CUDA device)."""

    precision: str = "fp32"
    compile: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.cuda_graphs and not self.compile:
            raise ValueError("cuda_graphs replays compiled graphs: set compile too")

    def check_device(self, device: torch.device) -> None:
        """Refuse what the device cannot do, naming the setting (bf16 autocast also runs on the CPU)."""
        if device.type != "cuda" and (self.precision == "fp16" or self.cuda_graphs):
            raise ValueError(
                f"precision 'fp16' and cuda_graphs need a CUDA device, got {device}; "
                "use precision 'fp32' or 'bf16' and cuda_graphs false on the CPU"
            )

    @property
    def name(self) -> str:
        parts = [self.precision]
        if self.compile:
            parts.append("compiled")
        if self.cuda_graphs:
            parts.append("cuda-graphs")
        return "torch-" + "-".join(parts)

    def caution(self, device: torch.device, cpuinfo: Path = CPUINFO) -> str | None:
        """What a user should know before running this acceleration on `device`, or None: bf16 on a CPU
        that reports no bf16 units runs slower than fp32."""
        if self.precision != "bf16" or device.type != "cpu" or cpu_has_bf16_units(cpuinfo) is not False:
            return None
        return (
            "precision bf16 on a CPU without bf16 units (no amx_bf16 or avx512_bf16 flag): expect frames "
            "slower than with fp32"
        )

    def channels_last(self, device: torch.device) -> bool:
        """Whether the pixel decoder runs on channels-last maps: bf16 on the CPU (fp32 gains nothing)."""
        return self.precision == "bf16" and device.type == "cpu"

    def autocast(self, device: torch.device) -> torch.autocast:
        dtype = PRECISIONS[self.precision]
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function` compiled as this acceleration asks (or unchanged); the compiled code is kept in the
        cache (`keep_compiled_code`)."""
        if not self.compile:
            return function
        keep_compiled_code()
        mode = "reduce-overhead" if self.cuda_graphs else "default"
        return torch.compile(function, mode=mode, dynamic=False, fullgraph=False)


def keep_compiled_code() -> Path:
    """Have torch.compile keep what it compiles (inductor's graphs, Triton or C++ kernels) in
    `<cache>/torch_compile` rather than in inductor's default, a temporary folder that a reboot empties, so
    a later start of the same model, shapes and torch loads it instead of compiling again (Focal-T's image
    encoder on a 2-core CPU: 51 s compiled anew, 5 s from the cache). A folder of the user's own in
    `TORCHINDUCTOR_CACHE_DIR` is kept. Inductor writes its default into that variable when it is first
    imported, so a value equal to that default counts as unset. Returns the folder used."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default_dir

    current = os.environ.get(COMPILED_CODE_ENV)
    if current is None or os.path.abspath(current) == os.path.abspath(inductor_default_dir()):
        os.environ[COMPILED_CODE_ENV] = str(default_cache_dir() / "torch_compile")
    return Path(os.environ[COMPILED_CODE_ENV])


def cpu_has_bf16_units(cpuinfo: Path = CPUINFO) -> bool | None:
    """Whether the CPU reports bf16 units (AMX or AVX-512 BF16) among its flags in `cpuinfo`; None where
    that file cannot be read (not Linux)."""
    try:
        flags = set(cpuinfo.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return None
    return bool(flags & BF16_CPU_FLAGS)


REDUCED_WEIGHT_MODULES = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
"""Modules whose weights feed matrix products and convolutions, the operations autocast runs reduced."""


def store_reduced_weights(model: SEEM, precision: str) -> int:
    """Store the weights of the image encoder's and decoder's matrix products and convolutions in
    `precision` ("bf16" or "fp16"), once, rather than have autocast cast them at every frame (Focal-T: 100
    M weights, 40 ms of a 780 ms bf16 frame on a 2-core CPU). The same values either way: autocast rounds
    fp32 weights to the same numbers. Norms, embeddings, raw parameters, the text tower (it also serves
    the paths that run without autocast: prompts, vocabulary) and modules marked `keeps_fp32` (they compute
    in fp32 under autocast, e.g. SAM-ViT's feature pyramid) stay fp32. Only for a model whose
    image encoder and decoder run from now on under that precision's autocast (`TorchImageEncoder`,
    `TorchDecoder`): without it these modules refuse fp32 inputs. The fp32 values' pages, where mapped from
    the weights file, are given back as each weight is cast (`MappedPages`), so the process holds the reduced
    copies instead of both. Returns the number of weights cast."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        raise ValueError("the weights are stored reduced for a reduced precision ('bf16' or 'fp16')")
    fp32_parts = [
        model.language_encoder,
        *(part for part in model.modules() if getattr(part, "keeps_fp32", False)),
    ]
    kept_fp32 = {id(module) for part in fp32_parts for module in part.modules()}
    parts = (model.backbone, model.sem_seg_head.pixel_decoder, model.decoder)
    reduced = [
        module
        for part in parts
        for module in part.modules()
        if id(module) not in kept_fp32 and isinstance(module, REDUCED_WEIGHT_MODULES)
    ]
    weights = [parameter for module in reduced for parameter in module.parameters(recurse=False)]
    mapped_pages = MappedPages()
    for weight in weights:  # the module's own: a convolution's norm child stays fp32
        full_precision = weight.data
        weight.data = full_precision.to(dtype)
        mapped_pages.release(full_precision)
    return sum(weight.numel() for weight in weights)


def _model_device(model: SEEM) -> torch.device:
    return next(model.parameters()).device


class TorchImageEncoder:
    """Backbone + pixel decoder in PyTorch (`ImageEncoderBackend`)."""

    def __init__(self, model: SEEM, acceleration: TorchAcceleration | None = None) -> None:
        self.acceleration = acceleration or TorchAcceleration()
        self.model = model
        self.name = self.acceleration.name
        self._encode = self.acceleration.wrap(model.encode_image)
        self._pixel_decoder_layout: torch.memory_format | None = None

    @torch.inference_mode()
    def __call__(self, padded_images: Tensor) -> PixelFeatures:
        """padded_images: (B, 3, H', W') float32 from `SEEM.preprocess`. Returns fp32 `PixelFeatures` owned
        by the caller (not reused by a later call), in the layout the pixel decoder computed them in:
        channels-last for bf16 on the CPU (turning those maps contiguous took 60 ms of a 870 ms Focal-T
        frame; the decoder reads them as they lie)."""
        device = padded_images.device
        self.acceleration.check_device(device)
        self._lay_out_pixel_decoder(device)
        count = padded_images.shape[0]
        if self.acceleration.compile and count != batch_bucket(count):
            padded_images = padded_images[_batch_index(count, device)]
        if self.acceleration.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.acceleration.autocast(device):
            features = self._encode(padded_images)
        owned = self.acceleration.cuda_graphs or self.acceleration.precision != "fp32"
        return PixelFeatures(
            mask_features=_owned_fp32(features.mask_features[:count], owned, keep_layout=True),
            multi_scale_features=[
                _owned_fp32(level[:count], owned, keep_layout=True) for level in features.multi_scale_features
            ],
        )

    def _lay_out_pixel_decoder(self, device: torch.device) -> None:
        """The pixel decoder's weights in the layout its maps run in on `device` (set at the first call)."""
        channels_last = self.acceleration.channels_last(device)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        if layout != self._pixel_decoder_layout:
            self.model.sem_seg_head.pixel_decoder.to(memory_format=layout)
            self._pixel_decoder_layout = layout


def token_bucket(count: int) -> int:
    """The number of prompt tokens a compiled decoder runs with for `count` tokens: 128, 256, 512 or 1024,
    then multiples of 1024 (a click's disk is about 70 pixels of the model input, one target's strokes
    or mask at most 1024 points per level: 4 sizes; extra tokens cost the decoder little, a compilation
    costs minutes)."""
    return _bucket(count, TOKEN_BUCKETS)


def batch_bucket(count: int) -> int:
    """The number of images a compiled encoder or decoder runs with for `count` images (cameras whose
    frames one step serves together): 1, 2, 4 or 8, then multiples of 8. A graph is compiled per bucket,
    not per number of cameras that a step happens to serve; the extra images, copies of the last, cost
    their compute (a step of 3 cameras runs 4 images)."""
    return _bucket(count, BATCH_BUCKETS)


def _bucket(count: int, buckets: tuple[int, ...]) -> int:
    """The first of `buckets` that holds `count`, then multiples of the last."""
    for bucket in buckets:
        if count <= bucket:
            return bucket
    return -(-count // buckets[-1]) * buckets[-1]


def _batch_index(count: int, device: torch.device) -> Tensor:
    """Rows 0..count-1, then the last row again up to `batch_bucket(count)` rows."""
    return torch.arange(batch_bucket(count), device=device).clamp(max=count - 1)


def _bucketed(inputs: DecoderInputs) -> DecoderInputs:
    """The pass with its prompt tokens padded to their buckets and its images to their bucket (copies of
    the last image): the decoder's answer for each image is unchanged."""
    if inputs.batch_size != batch_bucket(inputs.batch_size):
        inputs = inputs.select_images(_batch_index(inputs.batch_size, inputs.features.mask_features.device))
    grounding, spatial_tokens = inputs.grounding, inputs.spatial_tokens
    if grounding is not None:
        grounding = grounding.padded_to(token_bucket(grounding.tokens.shape[0]))
    if spatial_tokens is not None:
        spatial_tokens = spatial_tokens.padded_to(
            [token_bucket(level.shape[0]) for level in spatial_tokens.level_tokens]
        )
    return replace(inputs, grounding=grounding, spatial_tokens=spatial_tokens)


def _owned_fp32(tensor: Tensor, copy: bool, keep_layout: bool = False) -> Tensor:
    """Floating tensors as fp32 (a new tensor when converted, or copied when `copy`), contiguous unless
    `keep_layout`; others unchanged."""
    if not tensor.is_floating_point():
        return tensor.clone() if copy else tensor
    layout = torch.preserve_format if keep_layout else torch.contiguous_format
    converted = tensor.to(torch.float32, memory_format=layout)
    return converted.clone() if copy and converted is tensor else converted


class TorchDecoder:
    """`SEEM.decode` in PyTorch (`DecoderBackend`): every pass of one image, and batches where one pass pays.

    batches: whether it decodes several images in one pass; None = where that pays
    (`pytorch_decodes_batches`: on a GPU, and on the CPU in a reduced precision).
    """

    def __init__(
        self, model: SEEM, acceleration: TorchAcceleration | None = None, batches: bool | None = None
    ) -> None:
        self.acceleration = acceleration or TorchAcceleration()
        self.model = model
        self.name = self.acceleration.name
        self.batches = batches
        self._decode = self.acceleration.wrap(model.decode)

    def supports(self, inputs: DecoderInputs) -> bool:
        """Every pass of one image; several images as `batches` says."""
        if inputs.batch_size == 1:
            return True
        if self.batches is not None:
            return self.batches
        return pytorch_decodes_batches(inputs.features.mask_features.device, self.acceleration.precision)

    @torch.inference_mode()
    def __call__(self, inputs: DecoderInputs) -> DecoderOutput:
        """As `SEEM.decode`, with the pass's random choices drawn by the caller. `predictions` holds only the
        final step (`final_only`: the earlier steps' full-size masks are not computed); under autocast or
        CUDA graphs in fp32 and owned by the caller.

        Compiled, the prompt tokens are padded to a bucket (`token_bucket`) and the images to theirs
        (`batch_bucket`): a graph is compiled per bucket, not per count of a click's pixels, a sentence's
        words or the cameras a step serves. The choices go up to the device with the inputs: the decoder
        itself draws nothing, so a compiled decoder is one graph (a draw inside it would split it in
        five, each split a wait for the device)."""
        device = inputs.features.mask_features.device
        self.acceleration.check_device(device)
        requested = inputs
        if self.acceleration.compile:
            inputs = _bucketed(inputs)
        if inputs.query_choices is not None:
            inputs = replace(inputs, query_choices=inputs.query_choices.to(device))
        reduced = PRECISIONS[self.acceleration.precision]
        if reduced is not None:
            # cast once here rather than by autocast at each of the decoder's mask predictions
            features = inputs.features
            inputs = replace(
                inputs, features=replace(features, mask_features=features.mask_features.to(reduced))
            )
        if self.acceleration.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with self.acceleration.autocast(device):
            output = self._decode(**inputs.arguments(), final_only=True)
        count = requested.batch_size
        if (
            count == inputs.batch_size
            and self.acceleration.precision == "fp32"
            and not self.acceleration.cuda_graphs
        ):
            return output
        copy = self.acceleration.cuda_graphs
        final = replace(
            output.final,
            **{
                item.name: _owned_fp32(value[:count], copy)
                for item in fields(output.final)
                if isinstance(value := getattr(output.final, item.name), Tensor)
            },
        )
        return DecoderOutput([final], requested.spatial_tokens, requested.query_choices)


def torch_backends(model: SEEM, acceleration: TorchAcceleration) -> tuple[TorchImageEncoder, TorchDecoder]:
    """The image encoder and decoder backends of a model that from now on runs through them alone (a
    node's): with a reduced precision, its matrix and convolution weights are stored reduced first
    (`store_reduced_weights`: the same outputs, less memory, no casts per frame)."""
    if PRECISIONS[acceleration.precision] is not None:
        store_reduced_weights(model, acceleration.precision)
    return TorchImageEncoder(model, acceleration), TorchDecoder(model, acceleration)
