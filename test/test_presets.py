"""The four released presets reproduce the official checkpoint layouts exactly: the same keys, in the same
order (the official `state_dict()` order), with the same shapes and dtypes, and the same split between
parameters, persistent buffers and non-persistent buffers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seem_ros.engine.api import PRESET_NAMES
from seem_ros.model.presets import PRESETS, RELEASED_PRESETS, build_preset


def _layout(reference_dir: Path, preset: str) -> dict:
    return json.loads((reference_dir / f"layout_{preset}.json").read_text())


def test_every_released_preset_has_a_layout(reference_dir: Path) -> None:
    assert set(RELEASED_PRESETS) == {"focalt_v1", "focall_v1", "samvitb_v1", "samvitl_v1"}
    assert set(PRESET_NAMES) == set(PRESETS)  # the parameter's choices, named without importing the model
    assert set(RELEASED_PRESETS) <= set(PRESETS)
    for preset in RELEASED_PRESETS:
        assert (reference_dir / f"layout_{preset}.json").is_file()


@pytest.mark.parametrize("preset", ["focalt_v1", "focall_v1", "samvitb_v1", "samvitl_v1"])
def test_preset_matches_released_layout(reference_dir: Path, preset: str) -> None:
    layout = _layout(reference_dir, preset)
    with torch.device("meta"):
        model = build_preset(preset)

    ours = [
        (key, list(value.shape), str(value.dtype).removeprefix("torch."))
        for key, value in model.state_dict().items()
    ]
    official = [(key, shape, dtype) for key, shape, dtype, _ in layout["keys"]]
    assert len(ours) == layout["n_keys"] == len(official)
    assert [key for key, _, _ in ours] == [key for key, _, _ in official], "key order differs"
    assert ours == official

    parameters = {name for name, _ in model.named_parameters()}
    assert parameters == {key for key, _, _, kind in layout["keys"] if kind == "parameter"}
    assert sum(p.numel() for p in model.parameters()) == layout["n_parameters"]
    buffers = dict(model.named_buffers())
    for name, shape, _ in layout["persistent_buffers"]:
        assert list(buffers[name].shape) == shape
    for name, shape, _ in layout["non_persistent_buffers"]:
        assert list(buffers[name].shape) == shape
        assert name not in model.state_dict()
