"""Shared fixtures: where the official reference data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
