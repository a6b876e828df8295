"""A model's weights at start: mapped from a file, never drawn or hashed twice.

- The model is built on the meta device and takes the checkpoint's tensors as its own
  (`load_state_dict(assign=True)`), which safetensors and zip `.pt` files give memory-mapped: nothing is
  initialised at build, nothing copied at load, and weights the running path never reads (the PyTorch image
  encoder under the onnx backend) never become resident.
- Random weights are drawn once per (preset, seed) and kept as a safetensors file in the cache
  (`<cache>/random_weights/`); later starts map that file like a checkpoint.
- The fingerprints that key the text-embedding and ONNX caches are hashed from the tensors once per weights
  file and remembered under its path, size and modification time (`<cache>/fingerprints/`), so a warm start
  reads no tensor it does not run.
- Mapped pages a model has read stay resident (they count in the process's RSS) as long as the file stays
  mapped, which is as long as any of its tensors lives. Weights replaced by converted copies (bf16 weights
  stored once, `store_reduced_weights`) give their pages back at once (`MappedPages.release`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor
from torch.overrides import TorchFunctionMode

from seem_ros.allocator import c_library_function
from seem_ros.cache import default_cache_dir, write_atomically
from seem_ros.model.checkpoint import CheckpointError, load_weights, read_checkpoint
from seem_ros.model.presets import build_preset, randomize_weights
from seem_ros.model.seem import SEEM

RANDOM_WEIGHTS_FORMAT = 1
"""Part of a cached random-weights file's name: raise it when `randomize_weights` draws differently."""


def model_from_file(preset: str, path: str | Path) -> SEEM:
    """The preset's model whose tensors are those of the checkpoint at `path` (memory-mapped where the
    format allows), in eval mode. Raises CheckpointError as `load_weights` does."""
    state = read_checkpoint(path)
    with torch.device("meta"), _NoDrawsOnMeta():
        model = build_preset(preset)
    load_weights(model, state, preset, assign=True)
    tensors = (*model.named_parameters(), *model.named_buffers())
    unfilled = [name for name, tensor in tensors if tensor.is_meta]
    if unfilled:
        raise CheckpointError(f"the model has tensors no checkpoint fills: {', '.join(unfilled[:10])}")
    return model.eval()


class _NoDrawsOnMeta(TorchFunctionMode):
    """Skips the in-place random draws of parameter initialisation on meta tensors, which hold no values
    to draw: the meta kernel of `normal_` imports torch._dynamo on first use, about 2 CPU seconds of a
    warm start spent on nothing."""

    _DRAWS = frozenset(
        {
            torch.Tensor.normal_,
            torch.Tensor.uniform_,
            torch.nn.init.normal_,
            torch.nn.init.uniform_,
            torch.nn.init.trunc_normal_,
            torch.nn.init.kaiming_normal_,
            torch.nn.init.kaiming_uniform_,
            torch.nn.init.xavier_normal_,
            torch.nn.init.xavier_uniform_,
        }
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's signature)
        kwargs = kwargs or {}
        if func in self._DRAWS:
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def random_weights_path(preset: str, seed: int, cache_dir: str | Path | None = None) -> Path:
    """`<cache_dir>/<preset>-seed<seed>-v<format>.safetensors`; cache_dir defaults to
    `<seem_ros cache>/random_weights`."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "random_weights"
    return folder / f"{preset}-seed{seed}-v{RANDOM_WEIGHTS_FORMAT}.safetensors"


def cached_random_weights(preset: str, seed: int = 0, cache_dir: str | Path | None = None) -> Path | None:
    """The file of the preset's seeded random weights (`randomize_weights`), drawn and written on first use.
    None when the cache cannot be written (then draw them in memory)."""
    path = random_weights_path(preset, seed, cache_dir)
    if path.is_file():
        return path
    model = randomize_weights(build_preset(preset), seed)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    try:
        write_atomically(path, lambda temporary: save_file(state, temporary))
    except OSError:
        return None
    return path


def weights_source(path: str | Path, preset: str) -> str:
    """What names a weights file for the fingerprint memo: resolved path, size, modification time, preset."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{preset}"


class WeightsFingerprints:
    """The fingerprints that key seem_ros's caches for one model, each hashed from the tensors at most once
    per weights file: remembered in `<cache_dir>/<hash of source>.json` (cache_dir defaults to
    `<seem_ros cache>/fingerprints`). source: `weights_source(...)` of the file the model was loaded from;
    None (weights not from a file) hashes them every time.
    """

    def __init__(self, model: SEEM, source: str | None, cache_dir: str | Path | None = None) -> None:
        self.model = model
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "fingerprints"
        digest = hashlib.sha256(source.encode()).hexdigest()[:24] if source is not None else None
        self.path = folder / f"{digest}.json" if digest is not None else None
        self._values: dict[str, str] = {}
        if self.path is not None and self.path.is_file():
            try:
                self._values = dict(json.loads(self.path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                self._values = {}

    def language(self) -> str:
        """`encoder_fingerprint` of the text tower (text-embedding cache)."""
        from seem_ros.engine.vocabulary_cache import encoder_fingerprint

        return self._get("language", lambda: encoder_fingerprint(self.model.language_encoder))

    def image_encoder(self) -> str:
        """`weights_fingerprint` of the backbone and pixel decoder (ONNX image encoder files)."""
        from seem_ros.engine.onnx_backend import weights_fingerprint

        return self._get("image_encoder", lambda: weights_fingerprint(self.model))

    def decoder(self) -> str:
        """`decoder_fingerprint` of the decoder (ONNX decoder graph files)."""
        from seem_ros.engine.onnx_decoder import decoder_fingerprint

        return self._get("decoder", lambda: decoder_fingerprint(self.model.decoder))

    def _get(self, kind: str, compute: Callable[[], str]) -> str:
        value = self._values.get(kind)
        if value is None:
            value = compute()
            self._values[kind] = value
            if self.path is not None:
                text = json.dumps(self._values, indent=1)
                try:
                    write_atomically(self.path, lambda temporary: Path(temporary).write_text(text))
                except OSError:
                    pass
        return value


class MappedPages:
    """The file-backed memory mappings of this process (read once, from /proc/self/maps), to give back the
    resident pages of tensors mapped from a weights file that nothing reads any more."""

    def __init__(self) -> None:
        self.file_ranges = _file_mapped_ranges()
        self._madvise = (
            c_library_function("madvise", (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int)
            if self.file_ranges
            else None
        )

    def release(self, tensor: Tensor) -> int:
        """Drop `tensor`'s whole pages from this process's resident memory (madvise MADV_DONTNEED) when
        they lie in a file mapping; call it for a tensor that has been replaced. The pages are clean copies
        of the file: were they read again, they would be read back from it unchanged. Memory that is not
        mapped from a file (where dropping would lose values), a tensor that is not contiguous and pages it
        shares with its neighbours are left alone. Returns the bytes given back (0 where not Linux)."""
        if self._madvise is None or not tensor.is_contiguous() or tensor.device.type != "cpu":
            return 0
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        first_page = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
        end_page = end // mmap.PAGESIZE * mmap.PAGESIZE
        if end_page <= first_page:
            return 0
        if not any(low <= first_page and end_page <= high for low, high in self.file_ranges):
            return 0
        length = end_page - first_page
        if self._madvise(ctypes.c_void_p(first_page), ctypes.c_size_t(length), mmap.MADV_DONTNEED) != 0:
            return 0
        return length


def _file_mapped_ranges() -> list[tuple[int, int]]:
    """[start, end) of every mapping of this process backed by a file (an inode), from /proc/self/maps."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[4] != "0" and fields[5].startswith("/"):
            low, high = fields[0].split("-")
            ranges.append((int(low, 16), int(high, 16)))
    return ranges
