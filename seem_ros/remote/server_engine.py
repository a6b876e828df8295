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

import torch

from seem_ros.engine.api import SegmenterConfig
from seem_ros.engine.predictor import Prediction
from seem_ros.engine.vocabulary_cache import Vocabulary
from seem_ros.remote.wire import (
    ERROR_CODES,
    FrameRequest,
    WireError,
    WireLimits,
    decode_request,
    encode_error,
    encode_reply,
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

    def handle(self, body: bytes, batch_size: int = 1) -> tuple[int, bytes]:
        """(HTTP status, reply body) for one request body; never raises."""
        try:
            request = decode_request(body, self.limits)
            with self._lock:
                prediction, names = self._predict(request)
            return 200, encode_reply(prediction, names, self.replica, batch_size)
        except WireError as error:
            return _status(error.code), encode_error(str(error), error.code)
        except ValueError as error:
            return _status("bad_request"), encode_error(str(error), "bad_request")
        except Exception as error:  # a failed frame must not take the replica down
            LOGGER.exception("inference failed")
            return _status("internal"), encode_error(
                f"inference failed: {type(error).__name__}: {error}", "internal"
            )

    def _predict(self, request: FrameRequest) -> tuple[Prediction, Vocabulary]:
        vocabulary = self.default_vocabulary
        if request.vocabulary is not None:
            vocabulary = Vocabulary.from_names(*request.vocabulary)
        if vocabulary != self.predictor.vocabulary:
            self.predictor.set_vocabulary(vocabulary)
        self.predictor.set_image(request.rgb)
        previous = [
            None if logits is None else torch.from_numpy(logits) for logits in request.previous_logits
        ]
        prediction = self.predictor.predict(
            request.targets, previous_logits=previous, generic=request.generic
        )
        self.predictor.reset_image()
        return prediction, vocabulary


def _status(code: str) -> int:
    return ERROR_CODES.get(code, 500)
