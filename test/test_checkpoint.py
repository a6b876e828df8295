"""Checkpoint reading and strict loading: round trips into the tiny official-format model, clear errors for
truncated, foreign and mismatched files, refusal of pickles that would run code, and `seem-ros convert`."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from seem_ros.cli import main
from seem_ros.model.checkpoint import CheckpointError, load_weights, read_checkpoint
from seem_ros.model.seem import SEEM
from seem_ros.parity.official_config import build_from_official_config, load_official_config


def _build(reference: Path) -> SEEM:
    index = json.loads((reference / "index.json").read_text())
    return build_from_official_config(load_official_config(reference / index["config_yaml"]))


def _weights_file(reference: Path) -> Path:
    return reference / json.loads((reference / "index.json").read_text())["model_file"]


@pytest.fixture(scope="module")
def tiny_state(reference_dir: Path) -> dict[str, Tensor]:
    return load_file(_weights_file(reference_dir))


def _assert_loaded(model: nn.Module, state: dict[str, Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


class _RunsShellCommand:
    """Pickles to a call of os.system: loading it with plain pickle would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_safetensors_round_trip(reference_dir: Path, tiny_state: dict[str, Tensor]) -> None:
    model = _build(reference_dir)
    load_weights(model, read_checkpoint(_weights_file(reference_dir)), "tiny")
    _assert_loaded(model, tiny_state)


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_pt_round_trip(
    reference_dir: Path, tiny_state: dict[str, Tensor], tmp_path: Path, wrapper: str | None
) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_state if wrapper is None else {wrapper: tiny_state}, path)
    model = _build(reference_dir)
    load_weights(model, read_checkpoint(path), "tiny")
    _assert_loaded(model, tiny_state)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file(
    reference_dir: Path, tiny_state: dict[str, Tensor], tmp_path: Path, suffix: str
) -> None:
    complete = tmp_path / f"complete{suffix}"
    if suffix == ".pt":
        torch.save(tiny_state, complete)
    else:
        complete.write_bytes(_weights_file(reference_dir).read_bytes())
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(complete.read_bytes()[: complete.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="unreadable or truncated") as error:
        read_checkpoint(truncated)
    assert str(truncated) in str(error.value)


def test_foreign_checkpoint_is_not_seem(reference_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "classifier.pt"
    torch.save(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict(), path)
    state = read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a SEEM v1 checkpoint"):
        load_weights(_build(reference_dir), state, "tiny")


def test_wrong_architecture_names_keys(
    reference_dir: Path, samvit_reference_dir: Path, tiny_state: dict[str, Tensor]
) -> None:
    samvit = _build(samvit_reference_dir)
    with pytest.raises(CheckpointError) as error:
        load_weights(samvit, tiny_state, "tiny_samvitb_v1")
    message = str(error.value)
    assert "does not fit tiny_samvitb_v1" in message
    first_missing = next(key for key in samvit.state_dict() if key not in tiny_state)
    first_unexpected = next(key for key in tiny_state if key not in samvit.state_dict())
    assert "missing keys" in message and first_missing in message
    assert "unexpected keys" in message and first_unexpected in message


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "code_ran"
    payload = {"weight": torch.zeros(2), "trap": _RunsShellCommand(f"touch {marker}")}
    path = tmp_path / "trap.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as stream:
            pickle.dump(payload, stream, protocol=2)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 1
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_subcommand(tiny_state: dict[str, Tensor], tmp_path: Path, capsys) -> None:
    source = tmp_path / "tiny.pt"
    torch.save(tiny_state, source)
    destination = tmp_path / "tiny.safetensors"
    assert main(["convert", str(source), str(destination)]) == 0
    assert f"wrote {len(tiny_state)} tensors" in capsys.readouterr().out
    converted = load_file(destination)
    assert converted.keys() == tiny_state.keys()
    assert all(torch.equal(converted[key], value) for key, value in tiny_state.items())


def test_convert_rejects_other_output_formats(tiny_state: dict[str, Tensor], tmp_path: Path, capsys) -> None:
    source = tmp_path / "tiny.pt"
    torch.save(tiny_state, source)
    assert main(["convert", str(source), str(tmp_path / "tiny.bin")]) == 1
    assert ".safetensors" in capsys.readouterr().err


def test_convert_copies_tied_weights_and_makes_the_output_folder(tmp_path: Path, capsys) -> None:
    shared = torch.arange(6.0).reshape(2, 3)
    source = tmp_path / "tied.pt"
    torch.save({"embedding.weight": shared, "head.weight": shared}, source)  # one storage, two keys
    destination = tmp_path / "new" / "folder" / "tied.safetensors"
    assert main(["convert", str(source), str(destination)]) == 0, capsys.readouterr().err
    converted = load_file(destination)
    assert all(torch.equal(converted[key], shared) for key in ("embedding.weight", "head.weight"))
