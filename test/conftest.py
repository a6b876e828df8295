"""Shared fixtures: where the official reference data lives; torch on one thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir(name: str) -> Path:
    env = os.environ.get("SEEM_SHARED_DIR")
    base = Path(env) if env else REPO_ROOT.parent / "shared"
    return base / name


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    path = _shared_dir("seem_reference")
    if not (path / "index.json").is_file():
        pytest.fail(f"SEEM reference data not found at {path}; set SEEM_SHARED_DIR")
    return path


@pytest.fixture(scope="session")
def samvit_reference_dir() -> Path:
    path = _shared_dir("seem_reference_samvit")
    if not (path / "index.json").is_file():
        pytest.fail(f"SAM-ViT reference data not found at {path}; set SEEM_SHARED_DIR")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): the
    tiny model is fastest on one thread; several threads thrash on a busy small machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
