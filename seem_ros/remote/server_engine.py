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
from seem_ros.engine.predictor import EncodedImage, Prediction
from seem_ros.engine.vocabulary_cache import Vocabulary
from seem_ros.remote.wire import (
    FrameRequest,
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
        from seem_ros.engine.segmenter import build_segmenter

        if config.backend == "remote":
            raise ValueError("a server replica runs the model itself: use backend torch or onnx")
        self.limits = limits or WireLimits(max_image_pixels=config.max_image_pixels)
        self.predictor = build_segmenter(config).predictor
        self.default_vocabulary = self.predictor.vocabulary
        self.replica = replica or f"pid {os.getpid()}"
        self._lock = threading.Lock()

    def handle(self, body: bytes) -> tuple[int, bytes]:
        """(HTTP status, reply body) for one request body; never raises."""
        return self.handle_batch([body])[0]

    def handle_batch(self, bodies: Sequence[bytes]) -> list[tuple[int, bytes]]:
        """(HTTP status, reply body) per request body, in order; never raises. The frames of the requests
        that decode are encoded together (`SeemPredictor.encode_batch`: one image-encoder pass per padded
        size), then each request's targets are decoded on its own frame."""
        replies: dict[int, tuple[int, bytes]] = {}
        requests: dict[int, FrameRequest] = {}
        for index, body in enumerate(bodies):
            try:
                requests[index] = decode_request(body, self.limits)
            except WireError as error:
                replies[index] = _refusal(error)
        with self._lock:
            try:
                encoded = self.predictor.encode_batch([request.rgb for request in requests.values()])
            except Exception as error:  # a failed pass must not take the replica down
                LOGGER.exception("image encoder failed")
                encoded = []
                replies |= {index: _failure(error) for index in requests}
            for (index, request), (image, timings) in zip(requests.items(), encoded, strict=False):
                try:
                    prediction, vocabulary = self._predict(request, image, timings)
                    replies[index] = (200, encode_reply(prediction, vocabulary, self.replica, len(bodies)))
                except ValueError as error:
                    replies[index] = _refusal(WireError(str(error)))
                except Exception as error:  # one failed frame must not fail the others or the replica
                    LOGGER.exception("inference failed")
                    replies[index] = _failure(error)
        return [replies[index] for index in range(len(bodies))]

    def _predict(
        self, request: FrameRequest, image: EncodedImage, timings: dict[str, float]
    ) -> tuple[Prediction, Vocabulary]:
        vocabulary = self.default_vocabulary
        if request.vocabulary is not None:
            vocabulary = Vocabulary.from_names(*request.vocabulary)
        if vocabulary != self.predictor.vocabulary:
            self.predictor.set_vocabulary(vocabulary)
        self.predictor.set_encoded(image, timings)
        previous = [
            None if logits is None else torch.from_numpy(logits) for logits in request.previous_logits
        ]
        try:
            prediction = self.predictor.predict(
                request.targets, previous_logits=previous, generic=request.generic
            )
        finally:
            self.predictor.reset_image()
        return prediction, vocabulary


def _refusal(error: WireError) -> tuple[int, bytes]:
    return refusal(str(error), error.code)


def _failure(error: Exception) -> tuple[int, bytes]:
    return refusal(f"inference failed: {type(error).__name__}: {error}", "internal")
