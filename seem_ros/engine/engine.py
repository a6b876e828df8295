"""`SeemEngine`: one model serving several streams (cameras), each a `Session`.

    engine = build_engine(config)
    front, wrist = engine.open_session("front"), engine.open_session("wrist")
    front.set_text_prompt("the red cup")
    results = engine.step([(front, front_rgb), (wrist, wrist_rgb)])   # one FrameResult (or error) each

A step plans every stream's frame (its session checks the image and says what to decode), hands all
requests to the predictor at once (which batches what it can: see `SeemPredictor.predict_frames`), and
gives each session its answer. The model runs one step (or one `segment_once`) at a time, always on the
engine's own model thread, whichever thread calls; prompts may arrive on other threads meanwhile.

One thread for all model work because PyTorch's intra-op pool (OpenMP) keeps a team of threads per calling
thread: once two threads have run the model, libgomp has more threads than cores, throttles its
spin-waiting, and every parallel region pays a sleep and a wake-up (Focal-T frames 15 to 20% slower on a
2-core CPU, as a node whose executor threads take turns would run them).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import numpy as np

from seem_ros.engine.errors import InputError
from seem_ros.engine.predictor import FrameRequest, Prediction
from seem_ros.engine.results import FrameResult
from seem_ros.engine.session import FramePlan, Session, SessionSettings
from seem_ros.engine.vocabulary_cache import Vocabulary
from seem_ros.model.tokenizer import ClipTokenizer

Result = TypeVar("Result")


class FramePredictor(Protocol):
    """What the engine needs of a predictor: a local `SeemPredictor` or a server's `RemotePredictor`."""

    tokenizer: ClipTokenizer
    vocabulary: Vocabulary

    def predict_frames(self, requests: Sequence[FrameRequest]) -> list[Prediction | Exception]:
        """One answer per request, in order: a prediction, or the exception that frame failed with."""
        ...

    def prepare_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Make a vocabulary ready for the next frames (e.g. embed its names now)."""
        ...

    def describe(self) -> dict[str, str]:
        """Facts for logs: at least "device"."""
        ...


class SeemEngine:
    """Sessions over one shared predictor.

    predictor: decodes the frames. settings: each new session's settings. description: facts for logs
    and diagnostics (model, weights, backend, start-up phases).
    """

    def __init__(
        self, predictor: FramePredictor, settings: SessionSettings, description: dict[str, str] | None = None
    ) -> None:
        self.predictor = predictor
        self.settings = settings
        self._description = dict(description or {})
        self._sessions: dict[str, Session] = {}
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seem_model")
        weakref.finalize(self, self._model_thread.shutdown, wait=False)

    def _on_model_thread(self, work: Callable[[], Result]) -> Result:
        """`work()` run on the model thread (one call at a time); its result, or what it raised."""
        return self._model_thread.submit(work).result()

    @property
    def tokenizer(self) -> ClipTokenizer:
        return self.predictor.tokenizer

    @property
    def vocabulary(self) -> Vocabulary:
        """The vocabulary of sessions that have not chosen their own."""
        return self.predictor.vocabulary

    @property
    def sessions(self) -> dict[str, Session]:
        """The open sessions by name, in opening order."""
        return dict(self._sessions)

    def open_session(self, name: str = "") -> Session:
        """A new stream's session; raises InputError if one of that name is open."""
        if name in self._sessions:
            raise InputError(f"a session named {name!r} is already open")
        session = Session(self, name, self.settings)
        self._sessions[name] = session
        return session

    def close_session(self, name: str) -> None:
        """Forget a stream: its prompts, tracks and vocabulary choice."""
        self._sessions.pop(name, None)

    def prepare_vocabulary(self, vocabulary: Vocabulary) -> None:
        self._on_model_thread(lambda: self.predictor.prepare_vocabulary(vocabulary))

    def step(self, frames: Sequence[tuple[Session, np.ndarray]]) -> list[FrameResult | Exception]:
        """Segment one frame of each given session, together. Returns, per frame in order, its result or
        the exception it failed with (`InputError` for a bad image); one bad frame fails alone."""
        outcomes: list[FrameResult | Exception | None] = [None] * len(frames)
        plans: list[tuple[int, FramePlan]] = []
        for index, (session, rgb) in enumerate(frames):
            try:
                plans.append((index, session.plan_frame(rgb)))
            except InputError as error:
                outcomes[index] = error
        if plans:
            requests = [plan.request for _, plan in plans]
            try:
                answers = self._on_model_thread(lambda: self.predictor.predict_frames(requests))
            except Exception as error:  # a predictor that fails a whole step fails each of its frames
                answers = [error] * len(plans)
            for (index, plan), answer in zip(plans, answers, strict=True):
                session = frames[index][0]
                outcomes[index] = (
                    answer if isinstance(answer, Exception) else session.finish_frame(plan, answer)
                )
        return [outcome for outcome in outcomes if outcome is not None]

    def predict(self, request: FrameRequest) -> Prediction:
        """One frame outside any stream (e.g. `Session.segment_once`); raises what it failed with."""
        answer = self._on_model_thread(lambda: self.predictor.predict_frames([request]))[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def describe(self) -> dict[str, str]:
        return {**self._description, **self.predictor.describe(), "sessions": str(len(self._sessions))}
