"""Winograd F(4x4, 3x3) convolution against a direct convolution computed in float64, and the pixel decoder
with its Winograd convolutions against the model's own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from assets import tiny_reference_model
from safetensors.torch import load_file

from seem_ros.export.onnx_file import DEFAULT_OPSET, write_onnx
from seem_ros.export.winograd import WinogradConv2d, winograd_pixel_decoder

MAX_RELATIVE_ERROR = 5e-5


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).abs().max() / expected.abs().max())


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "height", "width", "bias"),
    [(8, 16, 13, 7, True), (64, 32, 16, 24, False), (3, 5, 1, 1, True), (256, 128, 32, 44, True)],
)
def test_matches_direct_convolution(in_channels: int, out_channels: int, height: int, width: int, bias: bool):
    generator = torch.Generator().manual_seed(in_channels + height)
    conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
    torch.nn.init.normal_(conv.weight, std=(2.0 / (9 * in_channels)) ** 0.5, generator=generator)
    feature_map = torch.randn(1, in_channels, height, width, generator=generator)
    aligned = height % 4 == 0 and width % 4 == 0
    with torch.no_grad():
        bias_64 = None if conv.bias is None else conv.bias.double()
        expected = F.conv2d(feature_map.double(), conv.weight.double(), bias_64, padding=1)
        actual = WinogradConv2d.from_conv(conv)(feature_map)
        actual_aligned = WinogradConv2d.from_conv(conv, aligned=True)(feature_map) if aligned else actual
    assert actual.shape == (1, out_channels, height, width)
    assert _relative_error(actual, expected) < MAX_RELATIVE_ERROR
    assert _relative_error(actual_aligned, expected) < MAX_RELATIVE_ERROR


@pytest.mark.parametrize(("bands", "height"), [(2, 8), (2, 20), (3, 12), (3, 28), (4, 16)])
def test_bands_of_rows_give_the_same_output(bands: int, height: int):
    generator = torch.Generator().manual_seed(bands + height)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1)
    feature_map = torch.randn(2, 16, height, 12, generator=generator)
    with torch.no_grad():
        banded = WinogradConv2d.from_conv(conv, aligned=True, bands=bands)(feature_map)
        expected = F.conv2d(feature_map.double(), conv.weight.double(), conv.bias.double(), padding=1)
    assert banded.shape == expected.shape
    assert _relative_error(banded, expected) < MAX_RELATIVE_ERROR


def test_bands_need_aligned_inputs():
    with pytest.raises(ValueError, match="bands must be 1, or more with aligned inputs"):
        WinogradConv2d.from_conv(torch.nn.Conv2d(4, 4, 3, padding=1), bands=2)


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv2d(4, 4, 1),
        torch.nn.Conv2d(4, 4, 3, padding=1, stride=2),
        torch.nn.Conv2d(4, 4, 3, padding=0),
        torch.nn.Conv2d(4, 4, 3, padding=1, groups=2),
    ],
)
def test_refuses_other_convolutions(conv: torch.nn.Conv2d):
    with pytest.raises(ValueError, match="only 3x3 convolutions with stride 1, padding 1"):
        WinogradConv2d.from_conv(conv)


def test_pixel_decoder_with_winograd_matches_the_model(reference_dir: Path):
    model = tiny_reference_model(reference_dir)
    tensors = load_file(reference_dir / "panoptic" / "tensors.safetensors")
    pixel_decoder = model.sem_seg_head.pixel_decoder
    fast = winograd_pixel_decoder(pixel_decoder)
    with torch.no_grad():
        features = model.backbone(tensors["image_padded_normalized"])
        expected = pixel_decoder(features)
        actual = fast(features)
    torch.testing.assert_close(actual.mask_features, expected.mask_features, atol=1e-4, rtol=1e-4)
    for got, want in zip(actual.multi_scale_features, expected.multi_scale_features, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert isinstance(pixel_decoder.mask_features, torch.nn.Conv2d), "the model itself must stay unchanged"


@pytest.mark.parametrize(("aligned", "bands"), [(False, 1), (True, 1), (True, 2)])
def test_exported_convolution_transforms_tiles_with_a_grouped_convolution_in_onnx_runtime(
    tmp_path: Path, aligned: bool, bands: int
):
    import onnx
    import onnxruntime

    conv = torch.nn.Conv2d(32, 16, 3, padding=1)
    path = write_onnx(
        WinogradConv2d.from_conv(conv, aligned=aligned, bands=bands).eval(),
        (torch.zeros(1, 32, 8, 8),),
        tmp_path / "winograd.onnx",
        ["feature_map"],
        ["output"],
        {"feature_map": {2: "height", 3: "width"}},
        DEFAULT_OPSET,
        {},
    )
    nodes = onnx.load(str(path)).graph.node
    tile_transforms = [node for node in nodes if node.op_type == "Conv"]
    assert len(tile_transforms) == bands
    assert all(
        {attribute.name: attribute.i for attribute in conv.attribute}["group"] == 32
        for conv in tile_transforms
    )
    assert "DepthToSpace" in {node.op_type for node in nodes}
    assert (aligned and bands == 1) != any(node.op_type in ("Pad", "Slice") for node in nodes)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    height, width = (20, 28) if aligned else (21, 30)  # not the traced 8x8: bands follow the size
    feature_map = torch.randn(1, 32, height, width, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = F.conv2d(feature_map.double(), conv.weight.double(), conv.bias.double(), padding=1)
    (actual,) = session.run(None, {"feature_map": feature_map.numpy()})
    assert _relative_error(torch.from_numpy(actual), expected) < MAX_RELATIVE_ERROR


def test_aligned_convolution_refuses_partial_tiles():
    aligned = WinogradConv2d.from_conv(torch.nn.Conv2d(4, 4, 3, padding=1), aligned=True)
    with pytest.raises(ValueError, match="multiples of 4"):
        aligned(torch.zeros(1, 4, 8, 10))
