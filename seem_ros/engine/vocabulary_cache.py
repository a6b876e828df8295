"""Text embeddings of a vocabulary, computed once per (text tower weights, names, templates).

The official demo re-embeds 134 COCO names x 81 templates at every start (minutes on a CPU). Here the
embeddings are kept in memory and on disk, keyed by a fingerprint of the language encoder's weights,
the class names and the templates, so a restart with the same checkpoint and vocabulary is instant.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from seem_ros.cache import default_cache_dir, write_atomically
from seem_ros.engine.errors import InputError
from seem_ros.model.language import LanguageEncoder
from seem_ros.model.tokenizer import ClipTokenizer
from seem_ros.model.vocabulary import (
    BACKGROUND_CLASS,
    COCO_PANOPTIC_CLASSES,
    COCO_PANOPTIC_IS_THING,
    PROMPT_TEMPLATES,
)

MAX_VOCABULARY_SIZE = 1000


@dataclass(frozen=True)
class Vocabulary:
    """Class names for generic segmentation and which of them are countable things."""

    names: tuple[str, ...]
    is_thing: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.names) == 0:
            raise InputError("a vocabulary needs a non-empty list of class names")
        if len(self.names) > MAX_VOCABULARY_SIZE:
            raise InputError(f"vocabulary has {len(self.names)} names; the limit is {MAX_VOCABULARY_SIZE}")
        if len(self.is_thing) != len(self.names):
            raise InputError("is_thing needs one flag per class name")
        for name in self.names:
            if not isinstance(name, str) or not name.strip():
                raise InputError(f"class names must be non-empty strings, got {name!r}")
        if len(set(self.names)) != len(self.names):
            raise InputError("class names must be unique")

    @classmethod
    def from_names(cls, names: Sequence[str], thing_names: Sequence[str] = ()) -> Vocabulary:
        """thing_names: subset of names; empty = every name is a thing."""
        names = tuple(name.strip() for name in names)
        unknown = set(thing_names) - set(names)
        if unknown:
            raise InputError(f"thing names {sorted(unknown)} are not in the vocabulary")
        things = set(thing_names) if thing_names else set(names)
        return cls(names, tuple(name in things for name in names))

    @property
    def thing_class_ids(self) -> list[int]:
        return [index for index, thing in enumerate(self.is_thing) if thing]


COCO_PANOPTIC = Vocabulary(tuple(COCO_PANOPTIC_CLASSES), tuple(COCO_PANOPTIC_IS_THING))


def encoder_fingerprint(encoder: LanguageEncoder) -> str:
    """A short hash of the language encoder's weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class VocabularyCache:
    """(K+1, D) class embeddings (background last) for vocabularies, in memory and on disk.

    cache_dir: where embeddings are stored; None = the user cache (`$SEEM_ROS_CACHE_DIR` or
    `~/.cache/seem_ros`) under `text_embeddings/`; disk caching can be turned off with use_disk=False.
    fingerprint: `encoder_fingerprint(encoder)` when already known (e.g. remembered for the weights file);
    None hashes the encoder's weights on first use.
    """

    def __init__(
        self,
        encoder: LanguageEncoder,
        cache_dir: str | Path | None = None,
        use_disk: bool = True,
        templates: Sequence[str] = PROMPT_TEMPLATES,
        fingerprint: str | None = None,
    ) -> None:
        self.encoder = encoder
        self.templates = tuple(templates)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "text_embeddings"
        self.use_disk = use_disk
        self._fingerprint = fingerprint
        self._memory: dict[str, Tensor] = {}

    def _key(self, names: Sequence[str]) -> str:
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.encoder)
        digest = hashlib.sha256()
        digest.update(self._fingerprint.encode())
        for text in (*names, "\x00", *self.templates):
            digest.update(text.encode("utf-8") + b"\x1f")
        return digest.hexdigest()[:24]

    def embeddings(self, vocabulary: Vocabulary) -> Tensor:
        """L2-normalised (K+1, D) float32 embeddings of the names plus "background" (the no-object class)."""
        names = (*vocabulary.names, BACKGROUND_CLASS)
        key = self._key(names)
        if key in self._memory:
            return self._memory[key]
        path = self.cache_dir / f"{key}.safetensors"
        embeddings = None
        if self.use_disk and path.is_file():
            try:
                embeddings = load_file(str(path))["embeddings"]
            except Exception:  # a corrupt cache file is recomputed
                embeddings = None
        device = self.encoder.lang_proj.device
        if embeddings is None or embeddings.shape != (len(names), self.encoder.dim_proj):
            embeddings = self.encoder.class_embeddings(names, self.templates).float().cpu()
            if self.use_disk:
                self._write(path, embeddings)
        embeddings = embeddings.to(device)
        self._memory[key] = embeddings
        return embeddings

    def _write(self, path: Path, embeddings: Tensor) -> None:
        """Keep `embeddings` on disk when the cache folder is writable (a read-only cache costs only time)."""
        try:
            write_atomically(
                path, lambda temporary: save_file({"embeddings": embeddings.contiguous()}, temporary)
            )
        except OSError:
            return


DEFAULT_MAX_SENTENCES = 64


@dataclass(frozen=True)
class SentenceEmbedding:
    """A text prompt as the decoder reads it. tokens: (n, D) float32 projected embeddings of its n real
    tokens (SOT to EOT); sentence: (D,) float32 projected EOT embedding (not normalised)."""

    tokens: Tensor
    sentence: Tensor


class SentenceEmbeddingCache:
    """Text prompts embedded once: a bounded least-recently-used map from text to `SentenceEmbedding`.

    A tracked text target is decoded on every frame; its sentence only changes when the user gives a new
    one, so the text tower (about 6 GFLOPs for 77 tokens) runs when a text is first seen, not per frame.
    max_sentences: how many texts are kept (0 embeds every time).
    """

    def __init__(
        self, encoder: LanguageEncoder, tokenizer: ClipTokenizer, max_sentences: int = DEFAULT_MAX_SENTENCES
    ) -> None:
        if max_sentences < 0:
            raise ValueError(f"max_sentences must be >= 0, got {max_sentences}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_sentences = max_sentences
        self._entries: OrderedDict[str, SentenceEmbedding] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every cached embedding."""
        self._entries.clear()

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> list[SentenceEmbedding]:
        """The embeddings of `texts`, in order; texts not cached are embedded in one batch of the tower."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._entries))
        fresh: dict[str, SentenceEmbedding] = {}
        if missing:
            input_ids, attention_mask = self.tokenizer(missing)
            device = self.encoder.lang_proj.device
            token_embeddings, sentence_embeddings = self.encoder.encode_tokens(
                input_ids.to(device), attention_mask.to(device)
            )
            real = attention_mask.bool().to(device)
            for row, text in enumerate(missing):
                fresh[text] = SentenceEmbedding(token_embeddings[row][real[row]], sentence_embeddings[row])
        embeddings = []
        for text in texts:
            embedding = fresh[text] if text in fresh else self._entries[text]
            embeddings.append(embedding)
            if self.max_sentences > 0:
                self._entries[text] = embedding
                self._entries.move_to_end(text)
        while len(self._entries) > self.max_sentences:
            self._entries.popitem(last=False)
        return embeddings
