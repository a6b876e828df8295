"""Weights at start: mapped from a file into a model built on the meta device, random weights drawn once
and cached, fingerprints hashed once per weights file, the PyTorch image encoder released under ONNX, the
pages of replaced weights given back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seem_ros.engine import onnx_decoder, vocabulary_cache
from seem_ros.engine.onnx_backend import release_torch_image_encoder
from seem_ros.engine.segmenter import load_model_and_source
from seem_ros.engine.weights import (
    MappedPages,
    WeightsFingerprints,
    cached_random_weights,
    model_from_file,
    random_weights_path,
    weights_source,
)
from seem_ros.model.checkpoint import CheckpointError
from seem_ros.model.presets import build_preset, randomize_weights


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEEM_ROS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_random_weights_are_drawn_once_and_mapped_afterwards(cache_dir: Path) -> None:
    drawn = randomize_weights(build_preset("focalt_tiny"), seed=3)
    path = cached_random_weights("focalt_tiny", seed=3)
    assert path == random_weights_path("focalt_tiny", 3) and path.is_relative_to(cache_dir)
    written = path.stat().st_mtime_ns
    model, source = load_model_and_source("focalt_tiny", random_weights=True, seed=3)
    assert path.stat().st_mtime_ns == written, "cached random weights were drawn again"
    assert source == weights_source(path, "focalt_tiny")
    assert _same_weights(model, drawn)
    assert not model.training
    assert model.pixel_mean.device.type == "cpu" and not any(t.is_meta for t in model.state_dict().values())


def test_model_from_file_equals_copying_the_checkpoint(tmp_path: Path) -> None:
    reference = randomize_weights(build_preset("focalt_tiny"), seed=1)
    path = tmp_path / "tiny.safetensors"
    save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, str(path))
    model = model_from_file("focalt_tiny", path)
    assert _same_weights(model, reference)
    image = torch.randint(0, 255, (1, 3, 64, 96), dtype=torch.uint8)
    with torch.inference_mode():
        expected = reference.eval().encode_image(reference.preprocess(image)).mask_features
        produced = model.encode_image(model.preprocess(image)).mask_features
    assert torch.equal(produced, expected)


def test_building_on_meta_draws_nothing(tmp_path: Path) -> None:
    """Initialisers do nothing on meta tensors: the meta kernel of normal_ would import torch._dynamo
    (seconds of every start). Checked in a fresh interpreter, since a test before may have imported it."""
    path = tmp_path / "tiny.safetensors"
    model = randomize_weights(build_preset("focalt_tiny"), seed=1)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    script = (
        "import sys\n"
        "from seem_ros.engine.weights import model_from_file\n"
        f"model_from_file('focalt_tiny', {str(path)!r})\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_half_precision_checkpoints_are_converted(tmp_path: Path) -> None:
    reference = randomize_weights(build_preset("focalt_tiny"), seed=1)
    path = tmp_path / "tiny_fp16.safetensors"
    save_file({key: value.half().contiguous() for key, value in reference.state_dict().items()}, str(path))
    model = model_from_file("focalt_tiny", path)
    assert all(tensor.dtype == torch.float32 for tensor in model.parameters())


def test_model_from_file_is_strict(tmp_path: Path) -> None:
    state = randomize_weights(build_preset("focalt_tiny")).state_dict()
    state.pop("sem_seg_head.predictor.query_feat.weight")
    path = tmp_path / "broken.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    with pytest.raises(CheckpointError, match="query_feat"):
        model_from_file("focalt_tiny", path)


def test_fingerprints_are_hashed_once_per_weights_file(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, source = load_model_and_source("focalt_tiny", random_weights=True)
    expected = (
        vocabulary_cache.encoder_fingerprint(model.language_encoder),
        onnx_decoder.decoder_fingerprint(model.decoder),
    )
    hashed: list[str] = []
    for module, name in ((vocabulary_cache, "encoder_fingerprint"), (onnx_decoder, "decoder_fingerprint")):
        real = getattr(module, name)
        monkeypatch.setattr(
            module, name, lambda part, real=real, name=name: hashed.append(name) or real(part)
        )
    first = WeightsFingerprints(model, source)
    assert (first.language(), first.decoder()) == expected
    assert sorted(hashed) == ["decoder_fingerprint", "encoder_fingerprint"]
    again = WeightsFingerprints(model, source)
    assert (again.language(), again.decoder()) == expected
    assert len(hashed) == 2, "a remembered fingerprint was hashed again"
    path = random_weights_path("focalt_tiny", 0)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
    assert WeightsFingerprints(model, weights_source(path, "focalt_tiny")).language() == expected[0]
    assert len(hashed) == 3, "a modified weights file must be hashed anew"
    WeightsFingerprints(model, None).language()
    assert len(hashed) == 4


def test_released_image_encoder_refuses_to_run() -> None:
    model = randomize_weights(build_preset("focalt_tiny"))
    release_torch_image_encoder(model)
    assert not any(key.startswith(("backbone.", "sem_seg_head.pixel_decoder.")) for key in model.state_dict())
    with pytest.raises(RuntimeError, match="backbone was released"):
        model.encode_image(torch.zeros(1, 3, 64, 64))


def _resident_bytes_mapped_from(path: Path) -> int:
    """Resident bytes of this process's mappings of `path` (the Rss lines of /proc/self/smaps)."""
    resident = 0
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) == 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1]) * 1024
    return resident


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")
def test_replaced_weights_give_back_their_mapped_pages_and_nothing_else(tmp_path: Path) -> None:
    path = (tmp_path / "weights.safetensors").resolve()
    tensor_bytes = 8 * 2**20
    replaced = torch.arange(tensor_bytes // 4, dtype=torch.float32)
    save_file({"replaced": replaced, "kept": torch.ones(tensor_bytes // 4)}, str(path))
    mapped = load_file(str(path))
    in_memory = torch.full((tensor_bytes // 4,), 7.0)
    assert float(mapped["replaced"].sum()) > 0 and float(mapped["kept"].sum()) == tensor_bytes // 4
    resident_before = _resident_bytes_mapped_from(path)
    assert resident_before >= 2 * tensor_bytes - 8192
    pages = MappedPages()
    released = pages.release(mapped["replaced"])
    assert tensor_bytes - 2 * 4096 <= released <= tensor_bytes
    assert _resident_bytes_mapped_from(path) <= resident_before - released + 8192
    assert torch.equal(mapped["kept"], torch.ones(tensor_bytes // 4))
    assert torch.equal(mapped["replaced"], replaced)  # read back from the file
    assert pages.release(in_memory) == 0  # not from a file: dropping would lose the values
    assert torch.equal(in_memory, torch.full((tensor_bytes // 4,), 7.0))
