"""The client side: a predictor whose model runs on a seem_ros server (`seem-ros serve`). No ROS imports.

`RemotePredictor` offers what a `SeemEngine` needs of a predictor (`predict_frames`, vocabulary,
tokenizer), so sessions, tracking, prompts, commands and results work exactly as with a local model.
Tracking state lives here, in the client: every request carries the targets and their memory prompts (the
previous frame's mask logits), and the server keeps nothing per client, so any replica can answer any
frame and a restarted replica loses nothing.

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
from pathlib import Path

from seem_ros.engine.predictor import FrameRequest, Prediction
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


class RemotePredictor:
    """A predictor answered by a server (what `SeemEngine` calls; see `seem_ros.engine.engine`).

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

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Ask for this vocabulary when a frame's request names none."""
        self._requested = vocabulary
        self.vocabulary = vocabulary

    def prepare_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Nothing to prepare here: the server embeds a vocabulary when a request first names it."""

    def describe(self) -> dict[str, str]:
        return {"device": self.device, "replica": self.last_replica}

    def predict_frames(self, requests: Sequence[FrameRequest]) -> list[Prediction | Exception]:
        """One request to the server per frame (the server batches across clients); a frame that fails
        gets its exception (`ServerUnavailable`, `WireError`)."""
        answers: list[Prediction | Exception] = []
        for request in requests:
            try:
                answers.append(self._predict(request))
            except Exception as error:
                answers.append(error)
        return answers

    def _predict(self, request: FrameRequest) -> Prediction:
        """The frame, the targets with their memory prompts, the vocabulary; the server's answer."""
        vocabulary = request.vocabulary or self._requested
        names = None
        if vocabulary is not None:
            things = tuple(n for n, thing in zip(vocabulary.names, vocabulary.is_thing, strict=True) if thing)
            names = (vocabulary.names, things)
        body = encode_request(
            request.image,
            list(request.targets),
            [None if logits is None else logits.detach().cpu().numpy() for logits in request.previous_logits],
            request.generic,
            vocabulary=names,
            session=self.session,
            stamp=time.time(),
            image_format=self.image_format,
        )
        reply = decode_reply(self.client.post(body))
        if len(reply.prediction.targets) != len(request.targets):
            raise WireError(
                f"the server answered {len(reply.prediction.targets)} targets for {len(request.targets)}"
            )
        if vocabulary is None:
            self.vocabulary = reply.vocabulary
        self.last_replica, self.last_batch_size = reply.replica, reply.batch_size
        return reply.prediction
