"""The client side: a predictor whose model runs on a seem_ros server (`seem-ros serve`). No ROS imports.

`RemotePredictor` offers what `SeemSegmenter` and its `Tracker` use of a `SeemPredictor` (set_image,
predict, vocabulary, tokenizer), so tracking, prompts, commands and results work exactly as with a local
model. Tracking state lives here, in the client: every request carries the targets and their memory
prompts (the previous frame's mask logits), and the server keeps nothing per client, so any replica can
answer any frame and a restarted replica loses nothing.

Faults: an unreachable server or a timed-out request raises `ServerUnavailable`; after such a failure no
request is sent until a back-off delay has passed (0.5 s, doubling to 8 s, reset by the next answer), so a
node keeps serving its other work and never queues frames for a dead server. A refused frame (bad input,
too large, wrong token) raises `WireError` with the server's message.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from seem_ros.engine.predictor import Prediction
from seem_ros.engine.prompts import Target
from seem_ros.engine.vocabulary_cache import COCO_PANOPTIC, Vocabulary
from seem_ros.model.tokenizer import ClipTokenizer
from seem_ros.remote.wire import CONTENT_TYPE, WireError, decode_reply, encode_request

TOKEN_ENVIRONMENT_VARIABLE = "SEEM_ROS_SERVER_TOKEN"
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0


class ServerUnavailable(ConnectionError):
    """The server could not be reached or did not answer in time."""


def read_token(token_file: str = "") -> str:
    """The shared token: the first line of `token_file` if given, else $SEEM_ROS_SERVER_TOKEN, else ""."""
    if token_file:
        path = Path(token_file).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ValueError(f"server token file {path} cannot be read: {error.strerror}") from error
    return os.environ.get(TOKEN_ENVIRONMENT_VARIABLE, "").strip()


class ServerClient:
    """POSTs request bodies to a server URL with a timeout, a bearer token and back-off after failures."""

    def __init__(self, url: str, timeout: float = 5.0, token: str = "") -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server_url must start with http:// or https://, got {url!r}")
        if timeout <= 0:
            raise ValueError(f"request_timeout must be positive, got {timeout}")
        self.url = url
        self.timeout = timeout
        self.token = token
        self.failures = 0
        self._retry_at = 0.0

    def post(self, body: bytes) -> bytes:
        """The reply body (any HTTP status: the body says what happened); ServerUnavailable when the server
        cannot be reached, times out, or is in back-off after an earlier failure."""
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise ServerUnavailable(f"server {self.url} unavailable; next try in {wait:.1f} s")
        headers = {"Content-Type": CONTENT_TYPE}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = response.read()
        except urllib.error.HTTPError as error:
            reply = error.read()
            if error.headers.get("Content-Type", "") != CONTENT_TYPE:
                self._failed()
                raise ServerUnavailable(
                    f"server {self.url} answered HTTP {error.code}: {reply[:200]!r}"
                ) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            self._failed()
            reason = getattr(error, "reason", error)
            raise ServerUnavailable(f"server {self.url} did not answer: {reason}") from error
        self.failures = 0
        self._retry_at = 0.0
        return reply

    def _failed(self) -> None:
        self.failures += 1
        delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (self.failures - 1))
        self._retry_at = time.monotonic() + delay


@dataclass
class RemoteImage:
    """What `Tracker` reads of the current image: its size (H, W)."""

    original_size: tuple[int, int]


class RemotePredictor:
    """The `SeemPredictor` interface of a segmenter, answered by a server.

    client: the server connection. tokenizer: for checking text length here (the server embeds).
    vocabulary: the vocabulary to ask for; None = the server's own (its names come back with each reply).
    image_format: how frames travel: jpeg (smallest, lossy), png or raw.
    session: names this stream in requests (the server's logs).
    """

    def __init__(
        self,
        client: ServerClient,
        tokenizer: ClipTokenizer,
        vocabulary: Vocabulary | None = None,
        image_format: str = "jpeg",
        session: str = "",
    ) -> None:
        self.client = client
        self.tokenizer = tokenizer
        self.image_format = image_format
        self.session = session
        self.device = f"remote {client.url}"
        self._requested = vocabulary
        self.vocabulary = vocabulary or COCO_PANOPTIC
        self.last_replica = ""
        self.last_batch_size = 0
        self._rgb: np.ndarray | None = None
        self._stamp = 0.0

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        self._requested = vocabulary
        self.vocabulary = vocabulary

    def set_image(self, rgb: np.ndarray) -> None:
        self._rgb = rgb
        self._stamp = time.time()

    def reset_image(self) -> None:
        self._rgb = None

    @property
    def encoded(self) -> RemoteImage:
        if self._rgb is None:
            raise RuntimeError("no image is set: call set_image(rgb) before predict()")
        return RemoteImage(self._rgb.shape[:2])

    def predict(
        self,
        targets: Sequence[Target] = (),
        previous_logits: Sequence[Tensor | None] | None = None,
        generic: bool = False,
    ) -> Prediction:
        """One request to the server: the current frame, the targets with their memory prompts."""
        if self._rgb is None:
            raise RuntimeError("no image is set: call set_image(rgb) before predict()")
        previous = list(previous_logits) if previous_logits is not None else [None] * len(targets)
        vocabulary = None
        if self._requested is not None:
            things = tuple(
                n for n, thing in zip(self._requested.names, self._requested.is_thing, strict=True) if thing
            )
            vocabulary = (self._requested.names, things)
        body = encode_request(
            self._rgb,
            list(targets),
            [None if logits is None else logits.detach().cpu().numpy() for logits in previous],
            generic,
            vocabulary=vocabulary,
            session=self.session,
            stamp=self._stamp,
            image_format=self.image_format,
        )
        reply = decode_reply(self.client.post(body))
        if len(reply.prediction.targets) != len(targets):
            raise WireError(f"the server answered {len(reply.prediction.targets)} targets for {len(targets)}")
        if self._requested is None:
            self.vocabulary = reply.vocabulary
        self.last_replica, self.last_batch_size = reply.replica, reply.batch_size
        return reply.prediction
