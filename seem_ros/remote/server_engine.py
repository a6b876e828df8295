"""What one server replica does with a request body: check it, decode it, predict, encode the reply.

No Ray and no ROS here (`seem_ros.remote.service` puts this behind Ray Serve). The replica keeps no
per-client state: each request carries its targets and their memory prompts, so consecutive frames of one
camera may land on different replicas. What it keeps is shared and bounded: the model, the text-embedding
caches, and the vocabulary embeddings (least recently used vocabularies out).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Sequence

import torch

from seem_ros.engine.api import SegmenterConfig
from seem_ros.engine.predictor import FrameRequest
from seem_ros.engine.prompts import check_text_fits
from seem_ros.engine.vocabulary_cache import Vocabulary
from seem_ros.remote.wire import (
    RemoteRequest,
    WireError,
    WireLimits,
    decode_request,
    encode_reply,
    refusal,
)

LOGGER = logging.getLogger("seem_ros.server")


def tokens_match(expected: str, header: str | None) -> bool:
    """Whether an ``Authorization: Bearer <token>`` header carries `expected` (constant-time compare);
    any header passes when no token is set."""
    if not expected:
        return True
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].encode(), expected.encode())


class ServerEngine:
    """A predictor built from a `SegmenterConfig` (torch or onnx backend), answering request bodies.

    limits: what a request may hold (checked before decoding). replica: a name put in every reply.
    """

    def __init__(self, config: SegmenterConfig, limits: WireLimits | None = None, replica: str = "") -> None:
        from seem_ros.engine.segmenter import build_predictor

        if config.backend == "remote":
            raise ValueError("a server replica runs the model itself: use backend torch or onnx")
        self.limits = limits or WireLimits(max_image_pixels=config.max_image_pixels)
        self.predictor, _ = build_predictor(config)
        self.replica = replica or f"pid {os.getpid()}"
        self._lock = threading.Lock()

    def handle(self, body: bytes) -> tuple[int, bytes]:
        """(HTTP status, reply body) for one request body; never raises."""
        return self.handle_batch([body])[0]

    def handle_batch(self, bodies: Sequence[bytes]) -> list[tuple[int, bytes]]:
        """(HTTP status, reply body) per request body, in order; never raises. The requests that decode
        are answered together (`SeemPredictor.predict_frames`: frames of one padded size share the image
        encoder, frames without targets the decoder); a request that fails, fails alone."""
        replies: dict[int, tuple[int, bytes]] = {}
        requests: dict[int, FrameRequest] = {}
        for index, body in enumerate(bodies):
            try:
                requests[index] = self._frame_request(decode_request(body, self.limits))
            except ValueError as error:  # WireError, or an InputError of the vocabulary
                replies[index] = _refusal(error if isinstance(error, WireError) else WireError(str(error)))
        with self._lock:
            answers = self.predictor.predict_frames(list(requests.values()))
        for (index, request), answer in zip(requests.items(), answers, strict=True):
            if isinstance(answer, ValueError):
                replies[index] = _refusal(WireError(str(answer)))
            elif isinstance(answer, Exception):  # one failed frame must not fail the others or the replica
                LOGGER.error("inference failed", exc_info=answer)
                replies[index] = _failure(answer)
            else:
                vocabulary = request.vocabulary or self.predictor.vocabulary
                replies[index] = (200, encode_reply(answer, vocabulary, self.replica, len(bodies)))
        return [replies[index] for index in range(len(bodies))]

    def _frame_request(self, request: RemoteRequest) -> FrameRequest:
        """What the predictor decodes for a request (its vocabulary None = the replica's own); InputError
        for a text longer than SEEM reads, as a session refuses it."""
        for target in request.targets:
            if target.text is not None:
                check_text_fits(target.text.text, self.predictor.tokenizer)
        return FrameRequest(
            image=request.rgb,
            targets=request.targets,
            previous_logits=[
                None if logits is None else torch.from_numpy(logits) for logits in request.previous_logits
            ],
            generic=request.generic,
            vocabulary=Vocabulary.from_names(*request.vocabulary) if request.vocabulary is not None else None,
        )


def _refusal(error: WireError) -> tuple[int, bytes]:
    return refusal(str(error), error.code)


def _failure(error: Exception) -> tuple[int, bytes]:
    return refusal(f"inference failed: {type(error).__name__}: {error}", "internal")
