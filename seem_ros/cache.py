"""Where seem_ros keeps what it computes or assembles once (tokenizer files, text embeddings, ONNX models,
the speech model, checkpoints by default). Imports nothing heavy."""

from __future__ import annotations

import os
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
