"""Writing a traced module to an ONNX file and checking ONNX Runtime against PyTorch, for every graph.

The exporter is the TorchScript-based `torch.onnx.export(..., dynamo=False)`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import onnxruntime

DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ExportCheck:
    """How far ONNX Runtime is from PyTorch on one input size.

    input_size: (H', W') of the padded input. max_abs_diff: per output name, max |ORT - PyTorch|.
    max_abs_value: per output name, max |PyTorch|, the scale the difference is relative to.
    """

    input_size: tuple[int, int]
    max_abs_diff: dict[str, float]
    max_abs_value: dict[str, float]

    def worst_relative(self) -> float:
        """Largest max_abs_diff / max(1, max_abs_value) over the outputs."""
        return max(self.max_abs_diff[name] / max(1.0, self.max_abs_value[name]) for name in self.max_abs_diff)

    @classmethod
    def compare(
        cls, input_size: tuple[int, int], names: Sequence[str], actual: Sequence, expected: Sequence
    ) -> ExportCheck:
        """The check of ONNX Runtime outputs `actual` against PyTorch outputs `expected` (numpy arrays)."""
        return cls(
            input_size=input_size,
            max_abs_diff={
                name: float(np.abs(got - want).max())
                for name, got, want in zip(names, actual, expected, strict=True)
            },
            max_abs_value={
                name: float(np.abs(want).max()) for name, want in zip(names, expected, strict=True)
            },
        )


def session_options(num_threads: int | None) -> onnxruntime.SessionOptions:
    """Options of every seem_ros session, the engine's and the export checks' (what is checked is what
    runs): all graph optimisations, `num_threads` intra-op threads of the CPU provider (None lets ONNX
    Runtime choose, one per core), and no CPU memory arena.

    Each session's arena grows to its own peak and keeps it: an image encoder and four decoder graphs held
    about 0.8 GiB more at Focal-T's 512x704 than the same sessions allocating from the C heap (peak RSS 3.0
    -> 2.2 GiB, measured over a panoptic frame, a text target and four tracked clicks). The export check of
    SAM-ViT-B's image encoder (one image, then two) peaked at 10.6 GB with ONNX Runtime's default options,
    6.5 GB with these."""
    import onnxruntime

    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    return options


def raise_if_export_differs(
    path: Path, what: str, checks: list[ExportCheck], max_relative_error: float
) -> None:
    """Remove the exported file and raise RuntimeError when a check exceeds max_relative_error."""
    failed = [check for check in checks if check.worst_relative() > max_relative_error]
    if failed:
        path.unlink(missing_ok=True)
        raise RuntimeError(
            f"the exported {what} differs from PyTorch by more than {max_relative_error} (relative): "
            + "; ".join(f"{check.input_size}: {check.max_abs_diff}" for check in failed)
        )


def write_onnx(
    module: nn.Module,
    example_inputs: tuple[Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None,
    opset: int,
    metadata: dict[str, str],
) -> Path:
    """Trace `module` on `example_inputs` into the ONNX file `path` (its folder is created) with the
    TorchScript exporter (`dynamo=False`: no onnxscript dependency), then store `metadata` and the torch
    version in the file's metadata_props. Returns the path."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the TorchScript exporter is chosen on purpose; silence its deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        # slices whose bounds follow the input size stay Slice nodes (Winograd bands); nothing to act on
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1 can be constant folded")
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"seem_ros.torch_version": torch.__version__, **metadata})
    onnx.save(proto, str(path))
    return path
