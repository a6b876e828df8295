"""Loading official SEEM checkpoints safely and strictly.

- `.pt` / `.pth` files are read with `torch.load(weights_only=True)`: no pickled code is executed; a
  file that needs it is refused. `.safetensors` files are read with safetensors.
- Keys must match the model exactly (the official loader silently skips missing, unexpected and
  mis-shaped keys; we never do): every problem is reported with the key names.
- A file that is not a SEEM checkpoint, or belongs to another preset, is named as such.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

SEEM_MARKER_KEYS = (
    "sem_seg_head.predictor.query_feat.weight",
    "sem_seg_head.pixel_decoder.mask_features.weight",
)
MAX_LISTED_KEYS = 10


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message says why and what to do."""


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read a flat {key: tensor} state dict from a `.pt`/`.pth` or `.safetensors` file without executing code.

    Accepts the official layout (keys at the top level) and a {"model": {...}} or {"state_dict": {...}}
    wrapper. Raises CheckpointError for a missing, truncated, unsafe or non-tensor file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; download seem_focalt_v1.pt (or another SEEM v1 file) "
            "from the "
            "xdecoder/SEEM model repository and pass its path"
        )
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint {path} was refused: it needs to run pickled code to load ({_first_line(error)}). "
            "Only plain tensor checkpoints are accepted: re-save a trusted file as a plain state dict "
            "(torch.save(model.state_dict(), path)) or as safetensors"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, SafetensorError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"checkpoint {path} is unreadable or truncated: {_first_line(error)}"
        ) from error
    if isinstance(state, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in state and isinstance(state[wrapper], Mapping) and len(state) <= 3:
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not all(isinstance(value, Tensor) for value in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a flat dictionary of tensors")
    return dict(state)


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = len(keys) - MAX_LISTED_KEYS
    return shown + (f" and {more} more" if more > 0 else "")


def describe_mismatch(model_shapes: Mapping[str, torch.Size], state: Mapping[str, Tensor]) -> str | None:
    """None if the keys and shapes match exactly, else a message naming the offending keys."""
    missing = [key for key in model_shapes if key not in state]
    unexpected = [key for key in state if key not in model_shapes]
    misshaped = [
        f"{key} {tuple(state[key].shape)} != {tuple(shape)}"
        for key, shape in model_shapes.items()
        if key in state and tuple(state[key].shape) != tuple(shape)
    ]
    if not (missing or unexpected or misshaped):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_listed(unexpected)}")
    if misshaped:
        parts.append(f"{len(misshaped)} keys with the wrong shape (file != model): {_listed(misshaped)}")
    return "; ".join(parts)


def matching_presets(state: Mapping[str, Tensor]) -> list[str]:
    """The released presets whose layout (keys and shapes) equals the state dict's."""
    from seem_ros.model.presets import PRESETS

    matches = []
    for name, build in PRESETS.items():
        with torch.device("meta"):
            shapes = {key: value.shape for key, value in build().state_dict().items()}
        if describe_mismatch(shapes, state) is None:
            matches.append(name)
    return matches


def load_weights(
    model: nn.Module, state: Mapping[str, Tensor], preset_name: str = "the chosen model", assign: bool = False
) -> None:
    """Copy a state dict into the model, strictly. Raises CheckpointError naming every mismatch and, where
    the file fits another released preset, that preset.

    assign: make the state dict's tensors the model's own instead of copying them (a model built on the
    meta device; memory-mapped tensors then stay mapped). Tensors of another dtype are converted first."""
    model_state = model.state_dict()
    shapes = {key: value.shape for key, value in model_state.items()}
    problem = describe_mismatch(shapes, state)
    if problem is not None:
        if not any(key in state for key in SEEM_MARKER_KEYS):
            prefixed = [
                prefix for prefix in ("model.", "module.") if f"{prefix}{SEEM_MARKER_KEYS[0]}" in state
            ]
            if prefixed:
                raise CheckpointError(
                    f"the checkpoint's keys start with {prefixed[0]!r}; official SEEM checkpoints have no "
                    "prefix: strip it from every key and save the file again"
                )
            raise CheckpointError(f"the file is not a SEEM v1 checkpoint (no SEEM decoder keys); {problem}")
        others = matching_presets(state)
        hint = f"; it matches preset {', '.join(others)}: choose that preset" if others else ""
        raise CheckpointError(f"checkpoint does not fit {preset_name}: {problem}{hint}")
    if assign:
        state = {
            key: value if value.dtype == model_state[key].dtype else value.to(model_state[key].dtype)
            for key, value in state.items()
        }
    model.load_state_dict(dict(state), strict=True, assign=assign)


def convert_to_safetensors(source: str | Path, destination: str | Path) -> int:
    """Write a checkpoint as safetensors (same keys; each tensor its own contiguous copy, so tied weights
    become equal copies, which safetensors requires). Returns the number of tensors; CheckpointError when
    the source cannot be read or the destination written."""
    state = read_checkpoint(source)
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        save_file({key: value.contiguous().clone() for key, value in state.items()}, str(destination))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"cannot write {destination}: {error}") from error
    return len(state)
