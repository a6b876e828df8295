"""Where seem_ros keeps what it computes or assembles once (tokenizer files, text embeddings, ONNX models,
the speech model, torch.compile's compiled code, checkpoints by default). Imports nothing heavy."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_DIR_ENV = "SEEM_ROS_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$SEEM_ROS_CACHE_DIR`, else `$XDG_CACHE_HOME/seem_ros`, else `~/.cache/seem_ros`."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg_cache).expanduser() if xdg_cache else Path.home() / ".cache"
    return base / "seem_ros"


def write_atomically(path: Path, write: Callable[[str], object]) -> None:
    """`write(temporary)` a sibling of `path`, then rename it into place (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
