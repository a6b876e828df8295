"""seem_node's bookkeeping: per-camera frame counters, rate-limited bad-input log lines, and the
`/diagnostics` status each camera reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.impl.rcutils_logger import RcutilsLogger


@dataclass
class FrameCounters:
    """One camera's totals since start, reported in diagnostics."""

    received: int = 0
    processed: int = 0
    dropped_replaced: int = 0
    dropped_stale: int = 0
    input_errors: int = 0
    inference_errors: int = 0
    with_depth: int = 0
    last_inference_s: float = 0.0
    last_stage_s: dict[str, float] = field(default_factory=dict)
    last_inference_error: str = ""


def camera_prefix(camera: str) -> str:
    """The start of a log line about a named camera ("camera 'front': "); nothing for an unnamed one."""
    return f"camera '{camera}': " if camera else ""


class ErrorLog:
    """Counts bad input of one camera and logs it, at most once per `period` seconds for each input."""

    def __init__(
        self, logger: RcutilsLogger, counters: FrameCounters, period: float, camera: str = ""
    ) -> None:
        self._logger = logger
        self._counters = counters
        self._period = period
        self._prefix = camera_prefix(camera)
        self._last: dict[str, float] = {}

    def input_error(self, what: str, reason: str) -> None:
        self._counters.input_errors += 1
        now = time.monotonic()
        last = self._last.get(what)
        if last is None or now - last >= self._period:
            self._last[what] = now
            self._logger.warning(f"{self._prefix}ignored {what}: {reason}")

    def inference_error(self, error: Exception) -> None:
        self._counters.inference_errors += 1
        self._counters.last_inference_error = f"{type(error).__name__}: {error}"
        self._logger.error(
            f"{self._prefix}inference failed: {self._counters.last_inference_error}",
            throttle_duration_sec=self._period or None,
        )


def camera_status(
    name: str,
    hardware_id: str,
    now: FrameCounters,
    last: FrameCounters,
    period: float,
    facts: dict[str, str],
    image_topic: str,
    with_depth: bool,
) -> DiagnosticStatus:
    """The diagnostics status of one camera: ERROR after a failed inference in the period, WARN when no
    image arrived in it (or the node is not active), the counters and the last frame's stage times."""
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, level=DiagnosticStatus.OK, message="ok")
    if now.inference_errors > last.inference_errors:
        status.level = DiagnosticStatus.ERROR
        status.message = f"inference failed: {now.last_inference_error}"
    elif now.received == last.received:
        status.level = DiagnosticStatus.WARN
        status.message = f"no images on {image_topic}"
    values = {
        **facts,
        "frames_received": now.received,
        "frames_processed": now.processed,
        "frames_dropped_replaced": now.dropped_replaced,
        "frames_dropped_stale": now.dropped_stale,
        "input_errors": now.input_errors,
        "inference_errors": now.inference_errors,
        "processed_per_second": f"{(now.processed - last.processed) / period:.2f}",
        "last_inference_ms": f"{now.last_inference_s * 1e3:.1f}",
        **{f"last_{stage}_ms": f"{seconds * 1e3:.1f}" for stage, seconds in now.last_stage_s.items()},
    }
    if with_depth:
        values["frames_with_depth"] = now.with_depth
    status.values = [KeyValue(key=key, value=str(value)) for key, value in values.items()]
    return status
