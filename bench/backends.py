"""The backends a benchmark compares, by name: what the node's parameters and the engine make of each.

`torch` and `onnx` are the node's `backend` values; `torch_bf16` is the PyTorch backend under bf16
autocast (`precision: bf16`), fast on CPUs with bf16 units (AMX, AVX-512 BF16); `torch_bf16_compiled` the
same compiled with torch.compile (`compile: true`; minutes at a cold start, its code cached after). Names
are also ROS namespaces and node names in the node section, so they hold letters, digits and underscores
only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seem_ros.engine.torch_backend import TorchAcceleration

BACKENDS: dict[str, dict[str, str | bool]] = {
    "torch": {"backend": "torch", "precision": "fp32", "compile": False},
    "onnx": {"backend": "onnx", "precision": "fp32", "compile": False},
    "torch_bf16": {"backend": "torch", "precision": "bf16", "compile": False},
    "torch_bf16_compiled": {"backend": "torch", "precision": "bf16", "compile": True},
}


def node_parameters(name: str) -> dict[str, str | bool]:
    """The seem_node parameters (`backend`, `precision`, `compile`) of the benchmark backend `name`."""
    return dict(BACKENDS[name])


def engine_backend(name: str) -> str:
    """The engine backend ("torch" or "onnx") that the benchmark backend `name` runs on."""
    return str(BACKENDS[name]["backend"])


def acceleration(name: str) -> TorchAcceleration:
    """How the PyTorch model of the benchmark backend `name` runs (precision, torch.compile); the default
    `TorchAcceleration()` for plain fp32 and for onnx, whose PyTorch model only exports."""
    from seem_ros.engine.torch_backend import TorchAcceleration

    return TorchAcceleration(str(BACKENDS[name]["precision"]), compile=bool(BACKENDS[name]["compile"]))
