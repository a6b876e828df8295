"""Building an engine from a `SegmenterConfig`: weights, backends, tokenizer, vocabulary.

`build_engine(config)` gives the `SeemEngine` a multi-camera node serves; `build_segmenter(config)` the one
`Session` of a new engine, for a single stream.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from seem_ros.allocator import suit_backend
from seem_ros.cache import default_cache_dir
from seem_ros.engine.api import SegmenterConfig
from seem_ros.engine.backends import DecoderBackend, ImageEncoderBackend
from seem_ros.engine.engine import SeemEngine
from seem_ros.engine.predictor import PanopticSettings, SeemPredictor
from seem_ros.engine.session import Session, SessionSettings
from seem_ros.engine.torch_backend import (
    TorchAcceleration,
    TorchImageEncoder,
    keep_compiled_code,
    torch_backends,
)
from seem_ros.engine.vocabulary_cache import COCO_PANOPTIC, Vocabulary, VocabularyCache
from seem_ros.engine.weights import (
    WeightsFingerprints,
    cached_random_weights,
    model_from_file,
    weights_source,
)
from seem_ros.model.checkpoint import CheckpointError
from seem_ros.model.presets import CHECKPOINT_FILES, PRESETS, build_preset, randomize_weights
from seem_ros.model.seem import SEEM
from seem_ros.model.tokenizer import ClipTokenizer


def default_checkpoint_path(preset: str) -> Path:
    """Where a released checkpoint is looked for when none is given: `<cache>/checkpoints/<file>`."""
    return default_cache_dir() / "checkpoints" / CHECKPOINT_FILES.get(preset, f"{preset}.pt")


def resolve_device(device: str) -> torch.device:
    """ "auto" = cuda when available, else cpu. Asking for cuda without a GPU is an error (not a silent
    fallback): use "auto" to fall back."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but no CUDA device is available; use 'cpu' or 'auto'"
        )
    return resolved


def load_model(preset: str, checkpoint: str = "", random_weights: bool = False, seed: int = 0) -> SEEM:
    """Build a preset and fill it from a checkpoint (strict, safe) or with labelled random weights."""
    return load_model_and_source(preset, checkpoint, random_weights, seed)[0]


def load_model_and_source(
    preset: str, checkpoint: str = "", random_weights: bool = False, seed: int = 0
) -> tuple[SEEM, str | None]:
    """`load_model`, and the `weights_source` of the file the weights were mapped from (a checkpoint, or
    the cached random weights of (preset, seed)); None when random weights could not be cached."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if random_weights:
        path = cached_random_weights(preset, seed)
        if path is None:
            return randomize_weights(build_preset(preset), seed), None
    else:
        path = checkpoint_file(preset, checkpoint)
    return model_from_file(preset, path), weights_source(path, preset)


def checkpoint_file(preset: str, checkpoint: str = "") -> Path:
    """The checkpoint file a preset loads: `checkpoint` if given, else the preset's file in the cache;
    CheckpointError saying where to get one when there is none."""
    path = Path(checkpoint).expanduser() if checkpoint else default_checkpoint_path(preset)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}. Download {CHECKPOINT_FILES.get(preset, 'a SEEM v1 checkpoint')} "
            "from the xdecoder/SEEM model repository and put it there (or pass its path), "
            "or run with random weights to try the pipeline (outputs are meaningless)"
        )
    return path


class StartupPhases:
    """Seconds spent in each phase of building a segmenter, for the node's ready line."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = now - self._last
        self._last = now

    def describe(self) -> str:
        """E.g. "weights 0.3 s / onnx 1.1 s / tokenizer 0.1 s / vocabulary 0.0 s"."""
        return " / ".join(f"{phase} {seconds:.1f} s" for phase, seconds in self.seconds.items())


def build_segmenter(config: SegmenterConfig) -> Session:
    """A one-stream segmenter: the only session of a new engine (raises ValueError / CheckpointError)."""
    return build_engine(config).open_session()


def build_engine(config: SegmenterConfig) -> SeemEngine:
    """The engine (one model, any number of streams) a configuration describes (raises ValueError /
    CheckpointError)."""
    if config.backend == "remote":
        return _build_remote_engine(config)
    predictor, description = build_predictor(config)
    return SeemEngine(predictor, session_settings(config), description)


def build_predictor(config: SegmenterConfig) -> tuple[SeemPredictor, dict[str, str]]:
    """The local predictor (torch or onnx backend) of a configuration, and facts for logs (model, weights,
    backend, start-up phases). Sets the process's allocator policy for the backend from now on
    (`seem_ros.allocator`): PyTorch on the CPU keeps freed memory for reuse, ONNX Runtime gives large freed
    blocks back."""
    device = resolve_device(config.device)
    if config.backend not in ("torch", "onnx"):
        raise ValueError(f"backend {config.backend!r} is not available; use 'torch', 'onnx' or 'remote'")
    suit_backend(config.backend, device.type)
    phases = StartupPhases()
    model, source = load_model_and_source(config.preset, config.checkpoint, config.random_weights)
    fingerprints = WeightsFingerprints(model, source)
    phases.done("weights")
    image_encoder: ImageEncoderBackend | None = None
    decoder_backend: DecoderBackend | None = None
    acceleration = TorchAcceleration(config.precision, config.compile, config.cuda_graphs)
    if config.backend == "torch" and acceleration != TorchAcceleration():
        acceleration.check_device(device)
        image_encoder, decoder_backend = torch_backends(model, acceleration)
        phases.done("backends")
    if config.backend == "onnx":
        from seem_ros.engine.onnx_backend import exported_onnx_image_encoder, release_torch_image_encoder
        from seem_ros.engine.onnx_decoder import OnnxDecoder
        from seem_ros.export.decoder import DecoderGraphKind

        open_image_encoder = exported_onnx_image_encoder(
            model, config.preset, fingerprint=fingerprints.image_encoder()
        )
        release_torch_image_encoder(model)
        # the encoder's session is built in a thread while this one exports (when missing) and opens the
        # decoder graph every frame without prompts needs; prompt graphs are exported when first used
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx_session") as pool:
            opened = pool.submit(open_image_encoder)
            decoder_backend = OnnxDecoder(model, config.preset, fingerprint=fingerprints.decoder())
            decoder_backend.prepare([DecoderGraphKind()])
            image_encoder = opened.result()
        phases.done("onnx")
    vocabulary = (
        Vocabulary.from_names(config.vocabulary, config.thing_names) if config.vocabulary else COCO_PANOPTIC
    )
    tokenizer = ClipTokenizer()
    phases.done("tokenizer")
    vocabulary_cache = VocabularyCache(model.language_encoder, fingerprint=fingerprints.language())
    predictor = SeemPredictor(
        model,
        tokenizer,
        vocabulary,
        device=device,
        short_side=config.short_side,
        panoptic=PanopticSettings(config.score_threshold, config.overlap_threshold),
        mask_threshold=config.mask_threshold,
        vocabulary_cache=vocabulary_cache,
        image_encoder=image_encoder,
        decoder_backend=decoder_backend,
    )
    weights = "random (meaningless outputs)" if config.random_weights else (config.checkpoint or "default")
    phases.done("vocabulary")
    backend = image_encoder.name if isinstance(image_encoder, TorchImageEncoder) else config.backend
    description = {
        "model": config.preset,
        "weights": weights,
        "backend": backend,
        "startup": phases.describe(),
    }
    if config.backend == "torch" and acceleration.compile:
        # the first frame of each input size and prompt layout compiles (minutes); later starts load it
        description["compiled code"] = str(keep_compiled_code())
    caution = acceleration.caution(device)
    if caution is not None:
        description["caution"] = caution
    return predictor, description


def session_settings(config: SegmenterConfig) -> SessionSettings:
    """How the sessions of an engine built from `config` segment their streams."""
    return SessionSettings(
        generic=config.panoptic,
        max_instances=config.max_instances,
        max_image_pixels=config.max_image_pixels,
        max_tracks=config.max_tracks,
        track_min_score=config.track_min_score,
        max_lost_frames=config.max_lost_frames,
    )


def _build_remote_engine(config: SegmenterConfig) -> SeemEngine:
    """A segmenter whose model runs on a seem_ros server: tracking and prompts stay here (see
    `seem_ros.remote.client`); no model is loaded and the server need not be up yet."""
    from seem_ros.remote.client import RemotePredictor, ServerClient, read_token

    client = ServerClient(config.server_url, config.request_timeout, read_token(config.server_token_file))
    vocabulary = Vocabulary.from_names(config.vocabulary, config.thing_names) if config.vocabulary else None
    predictor = RemotePredictor(client, ClipTokenizer(), vocabulary, config.remote_image_format)
    description = {"model": "on the server", "backend": "remote", "server": config.server_url}
    return SeemEngine(predictor, session_settings(config), description)
