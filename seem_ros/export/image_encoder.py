"""Export SEEM's image encoder (backbone + pixel decoder) to ONNX and check it in ONNX Runtime at once.

The image encoder is where the time goes (backbone + pixel decoder are about 3.4 s of the official
Focal-T's 6.7 s per image on CPU) and its only input is the padded image. The decoder has graphs of its own,
one per prompt configuration (`seem_ros.export.decoder`); the text encoder stays in PyTorch.

Graph: input ``padded_image`` (B, 3, H', W') float32, normalised and zero-padded bottom/right (the output of
`SEEM.preprocess`); outputs ``mask_features`` (B, D, H'/4, W'/4) and ``multi_scale_features_0/1/2``
(B, C, H'/s, W'/s) for s = 32, 16, 8, all float32. The batch B is dynamic (several cameras' frames of one
size in one run). Focal models get dynamic H', W' (multiples of 32); SAM-ViT models have a fixed square
input (1024 for the released ones).

With ``winograd`` (the default), the pixel decoder's large 3x3 convolutions are exported in Winograd form
(`seem_ros.export.winograd`): the same outputs up to float rounding, checked against the PyTorch model like
every export, with a quarter of their multiplications.

The exporter is the TorchScript-based `torch.onnx.export(..., dynamo=False)`.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from seem_ros.export.winograd import winograd_pixel_decoder
from seem_ros.model.pixel_decoder import TransformerEncoderPixelDecoder
from seem_ros.model.seem import SEEM

INPUT_NAME = "padded_image"
OUTPUT_NAMES = ("mask_features", "multi_scale_features_0", "multi_scale_features_1", "multi_scale_features_2")
OUTPUT_STRIDES = (4, 32, 16, 8)
"""Stride of each output in `OUTPUT_NAMES` relative to the padded image."""
EXPORT_FORMAT_VERSION = 6
"""Bumped when the graph's inputs, outputs or meaning change, so cached files are rebuilt."""


class ImageEncoderGraph(nn.Module):
    """Backbone + pixel decoder with tensor-only outputs, the module that is traced."""

    def __init__(self, backbone: nn.Module, pixel_decoder: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder

    def forward(self, padded_image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """padded_image: (B, 3, H', W') float32. Returns the tensors named in `OUTPUT_NAMES`."""
        features = self.pixel_decoder(self.backbone(padded_image))
        return (features.mask_features, *features.multi_scale_features)


def example_input_size(model: SEEM) -> tuple[int, int]:
    """(H', W') traced during export: the fixed input of SAM-ViT models, else a 512 x 704 image."""
    if model.fixed_input_size is not None:
        return model.fixed_input_size, model.fixed_input_size
    return 512, 704


def has_dynamic_input(model: SEEM) -> bool:
    """True when the model accepts any multiple of its size divisibility (Focal), False for a fixed size."""
    return model.fixed_input_size is None


def export_image_encoder(
    model: SEEM,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
    winograd: bool = True,
) -> Path:
    """Write the image encoder of `model` (fp32, CPU) to an ONNX file.

    path: the .onnx file to write (its folder is created). opset: ONNX opset, 17 or newer.
    metadata: extra string entries stored in the file's metadata_props (e.g. preset, weights fingerprint).
    winograd: export the pixel decoder's 3x3 convolutions at strides 4, 8 and 16 in Winograd form (pixel
        decoders that `winograd_pixel_decoder` converts; others are exported as they are).
    Returns the path. The model itself is not modified (the export runs on a CPU fp32 copy of the modules
    only when the model is elsewhere).
    """
    if opset < DEFAULT_OPSET:
        raise ValueError(
            f"opset must be {DEFAULT_OPSET} or newer (LayerNormalization, GridSample), got {opset}"
        )
    graph = _cpu_float_graph(model)
    winograd = winograd and isinstance(graph.pixel_decoder, TransformerEncoderPixelDecoder)
    if winograd:
        graph = ImageEncoderGraph(graph.backbone, winograd_pixel_decoder(graph.pixel_decoder))
    height, width = example_input_size(model)
    dynamic_axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch"}}
    for name in OUTPUT_NAMES:
        dynamic_axes[name] = {0: "batch"}
    if has_dynamic_input(model):
        dynamic_axes[INPUT_NAME] |= {2: "padded_height", 3: "padded_width"}
        for name, stride in zip(OUTPUT_NAMES, OUTPUT_STRIDES, strict=True):
            dynamic_axes[name] |= {2: f"padded_height_div{stride}", 3: f"padded_width_div{stride}"}
    entries = {
        "seem_ros.export_format_version": str(EXPORT_FORMAT_VERSION),
        "seem_ros.output_strides": ",".join(str(stride) for stride in OUTPUT_STRIDES),
        "seem_ros.dynamic_input": str(has_dynamic_input(model)),
        "seem_ros.winograd": str(winograd),
        **(metadata or {}),
    }
    return write_onnx(
        graph,
        (torch.zeros(1, 3, height, width),),
        Path(path),
        [INPUT_NAME],
        OUTPUT_NAMES,
        dynamic_axes,
        opset,
        entries,
    )


def check_image_encoder(
    model: SEEM,
    path: str | Path,
    input_sizes: Sequence[tuple[int, int]] | None = None,
    seed: int = 0,
    batch: int = 2,
) -> list[ExportCheck]:
    """Run the exported file in ONNX Runtime (CPU) and PyTorch on random normalised images.

    input_sizes: (H', W') padded sizes to try; by default the export size, then 384 x 640 for dynamic
    graphs (the export size again for fixed ones). The first size is run on one image, the others on a
    batch of `batch` images. Returns one `ExportCheck` per size.
    """
    import onnxruntime

    graph = _cpu_float_graph(model)
    if input_sizes is None:
        input_sizes = [example_input_size(model)]
        input_sizes.append((384, 640) if has_dynamic_input(model) else example_input_size(model))
    options = session_options(None)
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    checks = []
    for index, (height, width) in enumerate(input_sizes):
        image = torch.randn(1 if index == 0 else batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = [output.numpy() for output in graph(image)]
        actual = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})
        checks.append(ExportCheck.compare((height, width), OUTPUT_NAMES, actual, expected))
    return checks


def export_and_check_image_encoder(
    model: SEEM,
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
    max_relative_error: float = 1e-3,
    winograd: bool = True,
) -> list[ExportCheck]:
    """`export_image_encoder`, then `check_image_encoder`; removes the file and raises RuntimeError when
    an output differs from PyTorch by more than max_relative_error x max(1, its largest magnitude)."""
    path = export_image_encoder(model, path, opset=opset, metadata=metadata, winograd=winograd)
    checks = check_image_encoder(model, path)
    raise_if_export_differs(path, "image encoder", checks, max_relative_error)
    return checks


def _cpu_float_graph(model: SEEM) -> ImageEncoderGraph:
    """The image encoder as an fp32 CPU module in eval mode (the model's own modules when already so)."""
    graph = ImageEncoderGraph(model.backbone, model.sem_seg_head.pixel_decoder).eval()
    parameter = next(graph.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        import copy

        graph = copy.deepcopy(graph).to("cpu", torch.float32)
    return graph
