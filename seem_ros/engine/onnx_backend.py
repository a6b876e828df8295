"""Image encoder backends: the exported ONNX image encoder in ONNX Runtime, and its on-disk cache.

    encoder = exported_onnx_image_encoder(model, preset="focalt_v1")()
    predictor = SeemPredictor(model, tokenizer, image_encoder=encoder)

This module runs the image encoder (backbone + pixel decoder); `seem_ros.engine.onnx_decoder` runs the
decoder's graphs; the text encoder stays in PyTorch. `onnxruntime` is imported only when a session is made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from seem_ros.cache import default_cache_dir, write_atomically
from seem_ros.export.image_encoder import (
    EXPORT_FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAMES,
    OUTPUT_STRIDES,
    export_and_check_image_encoder,
)
from seem_ros.export.onnx_file import DEFAULT_OPSET, ExportCheck, session_options
from seem_ros.model.features import PixelFeatures
from seem_ros.model.seem import SEEM

ACCELERATED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"


def default_providers() -> list[str]:
    """TensorRT and CUDA where this onnxruntime build has them, then CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [provider for provider in ACCELERATED_PROVIDERS if provider in available] + [CPU_PROVIDER]


def checked_providers(providers: Sequence[str] | None) -> list[str]:
    """`providers` (or `default_providers()` when None) after checking this onnxruntime build has each."""
    import onnxruntime

    requested = list(providers) if providers is not None else default_providers()
    available = onnxruntime.get_available_providers()
    missing = [provider for provider in requested if provider not in available]
    if missing:
        raise ValueError(f"execution providers {missing} are not in this onnxruntime build ({available})")
    return requested


def buffer_device(providers: Sequence[str]) -> torch.device:
    """Where a session's input and output buffers live: CUDA device 0 when a GPU provider is among
    `providers` and torch has CUDA, else the CPU (ONNX Runtime then copies them)."""
    on_gpu = any(provider in ACCELERATED_PROVIDERS for provider in providers)
    return torch.device("cuda", 0) if on_gpu and torch.cuda.is_available() else torch.device("cpu")


class OnnxImageEncoder:
    """The exported image encoder in an ONNX Runtime session.

    Args:
        path: an .onnx file written by `seem_ros.export.image_encoder.export_image_encoder`.
        providers: execution providers in order of preference; `default_providers()` by default. GPU
            providers run on CUDA device 0.
        num_threads: intra-op threads of the CPU provider; None lets ONNX Runtime choose (one per core).

    Inputs and outputs are bound to torch tensors (IO binding), so nothing is copied on the way in or
    out when the session runs where the tensors live (CPU tensors with the CPU provider, CUDA tensors
    with the CUDA / TensorRT providers).
    """

    name = "onnx"

    def __init__(
        self, path: str | Path, providers: Sequence[str] | None = None, num_threads: int | None = None
    ) -> None:
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX image encoder {self.path} does not exist; export it first")
        options = session_options(num_threads)
        requested = checked_providers(providers)
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=requested)
        self.providers: list[str] = self.session.get_providers()
        self.device = buffer_device(self.providers)
        outputs = {output.name: output for output in self.session.get_outputs()}
        if set(outputs) != set(OUTPUT_NAMES):
            raise ValueError(f"{self.path} has outputs {sorted(outputs)}, expected {list(OUTPUT_NAMES)}")
        channels = [outputs[name].shape[1] for name in OUTPUT_NAMES]
        # a graph may leave a channel count to run time (SAM-ViT's pixel decoder reshapes to it): the
        # first call then learns them
        self._channels: list[int] | None = (
            channels if all(isinstance(count, int) for count in channels) else None
        )
        self._binding = self.session.io_binding()

    def __call__(self, padded_images: Tensor) -> PixelFeatures:
        """padded_images: (B, 3, H', W') float32, any batch B, H' and W' multiples of 32 (or the fixed size
        the graph was exported for). Returns `PixelFeatures` on the input's device;
        transformer_encoder_features is None (the graph does not return it)."""
        if padded_images.dim() != 4 or padded_images.shape[1] != 3:
            raise ValueError(f"padded_images must be (B, 3, H, W), got {tuple(padded_images.shape)}")
        image = padded_images.to(self.device, torch.float32).contiguous()
        outputs = self._run_bound(image) if self._channels is not None else self._run_learning_channels(image)
        outputs = [output.to(padded_images.device) for output in outputs]
        return PixelFeatures(mask_features=outputs[0], multi_scale_features=outputs[1:])

    def _run_bound(self, image: Tensor) -> list[Tensor]:
        """Run into output tensors allocated here and bound to the session (no copy out)."""
        assert self._channels is not None
        batch, _, height, width = image.shape
        outputs = [
            torch.empty((batch, channels, height // stride, width // stride), device=self.device)
            for channels, stride in zip(self._channels, OUTPUT_STRIDES, strict=True)
        ]
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_input(INPUT_NAME, *_buffer(image))
        for name, output in zip(OUTPUT_NAMES, outputs, strict=True):
            binding.bind_output(name, *_buffer(output))
        if self.device.type == "cuda":
            binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        if self.device.type == "cuda":
            binding.synchronize_outputs()
        return outputs

    def _run_learning_channels(self, image: Tensor) -> list[Tensor]:
        """Run with outputs allocated by ONNX Runtime, and remember their channel counts for `_run_bound`."""
        arrays = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.cpu().numpy()})
        self._channels = [int(array.shape[1]) for array in arrays]
        return [torch.from_numpy(array) for array in arrays]


class ReleasedModule(nn.Module):
    """Stands in for a part of the model whose weights were dropped because another backend runs it."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def forward(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            f"{self.what} was released: an ONNX image encoder runs it; build the model again to run it in "
            "PyTorch"
        )


def release_torch_image_encoder(model: SEEM) -> None:
    """Drop the PyTorch backbone and pixel decoder of a model whose image encoder runs in ONNX Runtime
    (export and fingerprint it first): their weights are no longer held, and calling them raises."""
    model.backbone = ReleasedModule("the PyTorch backbone")
    model.sem_seg_head.pixel_decoder = ReleasedModule("the PyTorch pixel decoder")


def _buffer(tensor: Tensor) -> tuple[str, int, type, list[int], int]:
    """The (device_type, device_id, element_type, shape, pointer) IO binding needs for a float32 tensor."""
    device_id = tensor.device.index or 0
    return tensor.device.type, device_id, np.float32, list(tensor.shape), tensor.data_ptr()


def weights_fingerprint(model: SEEM) -> str:
    """Hex digest (32 characters) of the image encoder's parameter and buffer names, shapes and values."""
    digest = hashlib.blake2b(digest_size=16)
    modules = {"backbone": model.backbone, "pixel_decoder": model.sem_seg_head.pixel_decoder}
    for prefix, module in modules.items():
        for name, tensor in module.state_dict().items():
            values = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(f"{prefix}.{name}:{tuple(values.shape)};".encode())
            digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def onnx_cache_dir() -> Path:
    """Where exported encoders are kept: `<seem_ros cache>/onnx`."""
    return default_cache_dir() / "onnx"


def winograd_suits(providers: Sequence[str]) -> bool:
    """Whether sessions on `providers` should run the Winograd form of the pixel decoder's convolutions:
    only on the CPU provider. CUDA and TensorRT choose their own convolution algorithms (Winograd among
    them) and run a direct convolution as one kernel, where the exported Winograd form is several."""
    return not any(provider in ACCELERATED_PROVIDERS for provider in providers)


def export_cached_image_encoder(
    model: SEEM,
    preset: str,
    cache_dir: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    winograd: bool = True,
    fingerprint: str | None = None,
) -> tuple[Path, list[ExportCheck]]:
    """The cached ONNX file of `model`'s image encoder, exported and checked against PyTorch when missing.

    The file is `<cache_dir>/<preset>-<weights fingerprint>-<form>-v<format>-opset<opset>.onnx` (form:
    `winograd` or `direct`, see `export_image_encoder`), so other weights, another preset, form or export
    format get a new file; cache_dir defaults to `onnx_cache_dir()`. Returns the path and the checks of a
    fresh export (empty when the file was already there). Exporting a full-size model takes tens of
    seconds on a CPU. fingerprint: `weights_fingerprint(model)` when already known (hashed when None).
    """
    fingerprint = fingerprint or weights_fingerprint(model)
    form = "winograd" if winograd else "direct"
    name = f"{preset}-{fingerprint}-{form}-v{EXPORT_FORMAT_VERSION}-opset{opset}.onnx"
    metadata = {"seem_ros.preset": preset, "seem_ros.weights_fingerprint": fingerprint}
    return cached_export(
        cache_dir,
        name,
        lambda path: export_and_check_image_encoder(
            model, path, opset=opset, metadata=metadata, winograd=winograd
        ),
    )


def cached_export(
    cache_dir: str | Path | None, name: str, export: Callable[[str], list[ExportCheck]]
) -> tuple[Path, list[ExportCheck]]:
    """`<cache_dir>/<name>` (cache_dir defaults to `onnx_cache_dir()`); when missing, `export(path)` writes
    it under a temporary name that is renamed into place, so a crash never leaves a half-written model.
    Returns the path and the checks of a fresh export (empty when the file was already there)."""
    path = (Path(cache_dir) if cache_dir is not None else onnx_cache_dir()) / name
    if path.is_file():
        return path, []
    checks: list[ExportCheck] = []
    write_atomically(path, lambda temporary: checks.extend(export(temporary)))
    return path, checks


def exported_onnx_image_encoder(
    model: SEEM,
    preset: str,
    cache_dir: str | Path | None = None,
    providers: Sequence[str] | None = None,
    num_threads: int | None = None,
    opset: int = DEFAULT_OPSET,
    fingerprint: str | None = None,
) -> Callable[[], OnnxImageEncoder]:
    """An `OnnxImageEncoder` for `model` in the form that suits its providers (`winograd_suits`), in two
    steps: the graph is exported and checked when missing (`export_cached_image_encoder`) now, in this
    thread; the returned call opens its session. ONNX Runtime releases the GIL while it builds a session
    (graph optimisation, most of a warm start's ONNX time), so another thread can make that call while
    this one goes on."""
    requested = checked_providers(providers)
    path, _ = export_cached_image_encoder(
        model,
        preset,
        cache_dir=cache_dir,
        opset=opset,
        winograd=winograd_suits(requested),
        fingerprint=fingerprint,
    )
    return partial(OnnxImageEncoder, path, providers=requested, num_threads=num_threads)
