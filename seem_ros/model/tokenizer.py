"""CLIP BPE tokenizer for SEEM's text encoder, usable offline.

SEEM tokenizes with HF `CLIPTokenizer` of `openai/clip-vit-base-patch32`: lower-cased, ftfy-fixed text,
SOT 49406, the word tokens, EOT 49407, padded with 49407 to 77 tokens and truncated to 77.

Those HF files need a network download. The same vocabulary is defined by OpenAI's original BPE merge list
`bpe_simple_vocab_16e6.txt.gz`, which ships inside the `open_clip_torch` package. `ClipTokenizer` builds
the HF files (`vocab.json`, `merges.txt`) from it once into a cache folder and loads them from there. A
folder holding the standard `openai/clip-vit-base-patch32` tokenizer files can be given instead.

The files are run by the `tokenizers` library with the pipeline HF's `CLIPTokenizerFast` gives them (NFC,
whitespace collapsed, lower case; CLIP's word pattern; byte-level BPE with `</w>` word ends), without
importing `transformers` (about 2.5 s of a node's start on a 2-core machine).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import ftfy
import torch
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from torch import Tensor

from seem_ros.cache import default_cache_dir

CONTEXT_LENGTH = 77
"""Tokens per sentence, SOT and EOT included (CLIP's context length)."""

VOCAB_SIZE = 49408
"""256 byte tokens, 256 end-of-word byte tokens, 48,894 merges, SOT and EOT."""

START_OF_TEXT_ID = 49406
END_OF_TEXT_ID = 49407
"""EOT is also the padding id; it is the largest id, so `argmax(input_ids)` finds the first EOT."""

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
"""Environment variable that overrides the cache folder (default `$XDG_CACHE_HOME/seem_ros`)."""

_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
_TOKENIZER_FOLDER_NAME = "clip_tokenizer_bpe_16e6"
_VOCAB_FILE = "vocab.json"
_MERGES_FILE = "merges.txt"
_TOKENIZER_FILE = "tokenizer.json"
_WHITESPACE = re.compile(r"\s+")
_WORD_PATTERN = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
"""CLIP's pre-tokenization: the special tokens, English contractions, letter runs, single digits, and runs
of other non-space characters (HF `CLIPTokenizerFast`)."""


def find_bpe_file() -> Path:
    """Path of `bpe_simple_vocab_16e6.txt.gz` inside the installed `open_clip_torch` package.

    The package is located without importing it (importing `open_clip` needs torchvision).
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / BPE_FILE_NAME
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"the CLIP BPE file {BPE_FILE_NAME} was not found: it ships inside the 'open_clip_torch' package; "
        "install it with 'pip install --no-deps -r scripts/requirements-no-deps.txt' (or 'pip install "
        "--no-deps open_clip_torch'), or pass tokenizer_dir= a folder holding "
        "the openai/clip-vit-base-patch32 tokenizer files (vocab.json, merges.txt)"
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible map from the 256 byte values to printable unicode characters.

    Printable bytes map to themselves; the others map to code points 256 and up, in byte order.
    The insertion order (printable bytes first) is the order of the first 256 vocabulary entries.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(next_code_point)
            next_code_point += 1
    return mapping


def build_tokenizer_files(bpe_file: str | Path, output_dir: str | Path) -> Path:
    """Write HF CLIP tokenizer files built from OpenAI's BPE merge list into `output_dir`.

    Produces `vocab.json` (49,408 entries) and `merges.txt` (48,894 merges), the same content as the
    `openai/clip-vit-base-patch32` files. The folder is written to a temporary sibling first and then
    renamed, so concurrent builders never see a partial folder. Returns `output_dir`.
    """
    output_dir = Path(output_dir)
    with gzip.open(bpe_file, "rt", encoding="utf-8") as stream:
        lines = stream.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + _NUM_MERGES]]
    if len(merges) != _NUM_MERGES or any(len(merge) != 2 for merge in merges):
        raise ValueError(f"{bpe_file} is not CLIP's {BPE_FILE_NAME}: expected {_NUM_MERGES} merge pairs")

    byte_tokens = list(_bytes_to_unicode().values())
    tokens = byte_tokens + [token + "</w>" for token in byte_tokens]
    tokens += ["".join(merge) for merge in merges]
    tokens += [START_OF_TEXT, END_OF_TEXT]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{bpe_file} gives {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=output_dir.name + ".", dir=output_dir.parent))
    staging.chmod(0o755)
    (staging / _VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [" ".join(merge) for merge in merges]
    (staging / _MERGES_FILE).write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    try:
        staging.rename(output_dir)
    except OSError:
        if not (output_dir / _VOCAB_FILE).is_file():
            raise
        for path in staging.iterdir():
            path.unlink()
        staging.rmdir()
    return output_dir


def cached_tokenizer_dir(cache_dir: str | Path | None = None) -> Path:
    """Folder with HF tokenizer files built from the `open_clip_torch` BPE file; built on first use.

    cache_dir: parent folder; default `default_cache_dir()`.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / _TOKENIZER_FOLDER_NAME
    if not ((folder / _VOCAB_FILE).is_file() and (folder / _MERGES_FILE).is_file()):
        build_tokenizer_files(find_bpe_file(), folder)
    return folder


def clean_text(text: str) -> str:
    """Text as the official (slow) CLIP tokenizer sees it: ftfy-fixed, whitespace collapsed, lower-case."""
    return _WHITESPACE.sub(" ", ftfy.fix_text(text)).strip().lower()


class ClipTokenizer:
    """CLIP BPE tokenizer producing fixed-length (77) id and mask tensors, as SEEM feeds its text encoder."""

    def __init__(self, tokenizer_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> None:
        """
        Arguments:
          tokenizer_dir: a local folder with the `openai/clip-vit-base-patch32` tokenizer files
            (`vocab.json` + `merges.txt`, or `tokenizer.json`). Default: files built from the BPE file of
            the `open_clip_torch` package into `cache_dir`.
          cache_dir: where the built files go (default `default_cache_dir()`); unused with `tokenizer_dir`.
        """
        if tokenizer_dir is None:
            folder = cached_tokenizer_dir(cache_dir)
        else:
            folder = Path(tokenizer_dir).expanduser()
            if not folder.is_dir():
                raise FileNotFoundError(f"tokenizer_dir {folder} is not a folder")
        self.tokenizer_dir = folder
        self._tokenizer = _clip_pipeline(*_read_vocabulary_and_merges(folder))
        self._check_vocabulary()

    def _check_vocabulary(self) -> None:
        tokenizer = self._tokenizer
        found = {
            "vocabulary size": (tokenizer.get_vocab_size(), VOCAB_SIZE),
            "start-of-text id": (tokenizer.token_to_id(START_OF_TEXT), START_OF_TEXT_ID),
            "end-of-text id": (tokenizer.token_to_id(END_OF_TEXT), END_OF_TEXT_ID),
        }
        wrong = [
            f"{name} {seen} (expected {expected})"
            for name, (seen, expected) in found.items()
            if seen != expected
        ]
        if wrong:
            raise ValueError(
                f"the tokenizer files in {self.tokenizer_dir} are not CLIP's: "
                + ", ".join(wrong)
                + "; give a "
                "folder with the openai/clip-vit-base-patch32 tokenizer files, or none to build them offline"
            )

    def token_count(self, text: str) -> int:
        """Tokens of `text` with SOT and EOT, before truncation to the 77-token context."""
        return len(self._tokenizer.encode(clean_text(text), add_special_tokens=False).ids) + 2

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Tokenize sentences to CLIP's fixed context.

        texts: N >= 1 strings; any text, it is ftfy-fixed and lower-cased. Longer texts are truncated to
          SOT + 75 tokens + EOT.
        Returns input_ids (N, 77) int64 (SOT, tokens, EOT, then EOT as padding) and attention_mask (N, 77)
        int64 (1 from SOT to EOT included, 0 on padding).
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(
                f"texts must be a list of strings, got {type(texts).__name__}; wrap one text in a list"
            )
        if len(texts) == 0:
            raise ValueError("texts must hold at least one string, got an empty list")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] must be a string, got {type(text).__name__}")
        encodings = self._tokenizer.encode_batch(
            [clean_text(text) for text in texts], add_special_tokens=False
        )
        input_ids = torch.full((len(texts), CONTEXT_LENGTH), END_OF_TEXT_ID, dtype=torch.int64)
        attention_mask = torch.zeros((len(texts), CONTEXT_LENGTH), dtype=torch.int64)
        for row, encoding in enumerate(encodings):
            words = encoding.ids[: CONTEXT_LENGTH - 2]
            input_ids[row, 0] = START_OF_TEXT_ID
            input_ids[row, 1 : 1 + len(words)] = torch.tensor(words, dtype=torch.int64)
            attention_mask[row, : len(words) + 2] = 1
        return input_ids, attention_mask


def _read_vocabulary_and_merges(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges of a tokenizer folder: `vocab.json` + `merges.txt`, else the BPE
    model inside `tokenizer.json`."""
    if (folder / _VOCAB_FILE).is_file() and (folder / _MERGES_FILE).is_file():
        vocabulary = json.loads((folder / _VOCAB_FILE).read_text(encoding="utf-8"))
        lines = (folder / _MERGES_FILE).read_text(encoding="utf-8").splitlines()
        merges = [line.split() for line in lines if line and not line.startswith("#version")]
    elif (folder / _TOKENIZER_FILE).is_file():
        model = json.loads((folder / _TOKENIZER_FILE).read_text(encoding="utf-8"))["model"]
        vocabulary = model["vocab"]
        merges = [merge.split() if isinstance(merge, str) else merge for merge in model["merges"]]
    else:
        raise FileNotFoundError(
            f"{folder} holds neither {_VOCAB_FILE} + {_MERGES_FILE} nor {_TOKENIZER_FILE}; give the folder "
            "of the openai/clip-vit-base-patch32 tokenizer files, or none to build them offline"
        )
    if any(len(merge) != 2 for merge in merges):
        raise ValueError(f"the merges of {folder} are not pairs of symbols: it is not a CLIP BPE tokenizer")
    return vocabulary, [tuple(merge) for merge in merges]


def _clip_pipeline(vocabulary: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A `tokenizers` pipeline that tokenizes as HF `CLIPTokenizerFast` does (without SOT/EOT; the
    caller adds them)."""
    tokenizer = Tokenizer(
        BPE(
            vocab=vocabulary,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=END_OF_TEXT,
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in (START_OF_TEXT, END_OF_TEXT)]
    )
    return tokenizer
