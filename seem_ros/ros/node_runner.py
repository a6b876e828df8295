"""What every seem_ros node's console script does: init, build the node, spin, shut down cleanly."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TypeVar

import rclpy
from rclpy.executors import Executor, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions

from seem_ros.ros.parameters import ParameterError

SPIN_PERIOD_S = 0.1
"""How often the spinning main thread looks at the stop request (the longest wait after Ctrl-C)."""

Result = TypeVar("Result")


class OrderlyMultiThreadedExecutor(MultiThreadedExecutor):
    """A MultiThreadedExecutor that removes entities safely while it spins, and whose shutdown() first lets
    the callback its threads are running finish and cancels the ones still queued.

    Two races of rclpy's own executor are closed here:
    - A subscription or publisher destroyed from a callback thread (a lifecycle transition) while the
      spinning thread builds its wait set ends the process: rclpy gathers the node's event handlers, and one
      destroyed after that is still added ("cannot use Destroyable because destruction was requested").
      `call_between_waits` runs such work on the spinning thread, between two waits.
    - rclpy's shutdown destroys the executor's guard condition before it joins its threads, so a callback
      still queued or running fails the same way.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._between_waits: list[tuple[Callable[[], object], Future]] = []
        self._between_waits_lock = threading.Lock()
        self._spinning_thread: int | None = None

    def call_between_waits(self, work: Callable[[], Result]) -> Result:
        """Run `work` where it cannot race the wait set: at once when called from the spinning thread or
        while nothing spins, else on the spinning thread before its next wait (this thread waits for it)."""
        with self._between_waits_lock:
            spinning = self._spinning_thread
            if spinning is None or spinning == threading.get_ident():
                queued = None
            else:
                queued = Future()
                self._between_waits.append((work, queued))
        if queued is None:
            return work()
        self.create_task(_nothing)  # a ready task ends the spinning thread's wait and its spin_once
        return queued.result()

    def spin_once(self, timeout_sec: float | None = None) -> None:
        with self._between_waits_lock:
            self._spinning_thread = threading.get_ident()
        self._run_work_between_waits()
        super().spin_once(timeout_sec)

    def shutdown(self, timeout_sec: float | None = None, *, wait_for_threads: bool = True) -> bool:
        with self._between_waits_lock:
            self._spinning_thread = None  # from here on, work asked for runs in the thread that asks
        self._run_work_between_waits()  # a callback still waiting for its work can then finish
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._tasks_lock:
            never_started = [task for task, _, _ in self._tasks if not task.done()]
        for task in never_started:
            task.cancel()  # closes its coroutine, which would otherwise be reported as never awaited
        return super().shutdown(timeout_sec, wait_for_threads=wait_for_threads)

    def _run_work_between_waits(self) -> None:
        with self._between_waits_lock:
            waiting, self._between_waits = self._between_waits, []
        for work, done in waiting:
            try:
                done.set_result(work())
            except BaseException as error:  # the thread that asked for the work raises it
                done.set_exception(error)


def _nothing() -> None:
    """A task that only wakes the spinning thread."""


def call_between_waits(node: Node, work: Callable[[], Result]) -> Result:
    """Run `work` (destroying a subscription or publisher, say) where it cannot race the node's executor:
    through an OrderlyMultiThreadedExecutor's `call_between_waits`, else at once (a single-threaded executor
    runs callbacks on its spinning thread)."""
    executor = node.executor
    if isinstance(executor, OrderlyMultiThreadedExecutor):
        return executor.call_between_waits(work)
    return work()


@contextmanager
def destroyed_if_unfinished(node: Node) -> Iterator[None]:
    """Wraps the rest of a node's constructor: a node that fails to finish (a bad parameter, a model that
    cannot be built) destroys what its base class already made before the error leaves, so that its rcl
    handles go while rclpy still runs, not at the interpreter's exit after `rclpy.shutdown()`, where one such
    exit ended with a segmentation fault instead of its exit code."""
    try:
        yield
    except BaseException:
        node.destroy_node()
        raise


def sensor_qos(depth: int) -> QoSProfile:
    """REP-2003 sensor-data QoS (best effort, volatile) with the given history depth."""
    return QoSProfile(
        history=qos_profile_sensor_data.history,
        depth=depth,
        reliability=qos_profile_sensor_data.reliability,
        durability=qos_profile_sensor_data.durability,
    )


def run_node(
    name: str,
    build: Callable[[], Node],
    make_executor: Callable[[], Executor],
    what: str,
    args: list[str] | None = None,
) -> int:
    """Build and spin a node (the executor is made after rclpy.init). Returns 0 after a clean shutdown
    (SIGINT or SIGTERM), 2 for a bad parameter and 1 when `build` fails otherwise (one fatal log line each, no
    traceback). `what` names what failed to build, e.g. "the segmenter".

    A signal only sets a flag here; the main thread, which spins, then stops the executor, destroys the node
    and shuts rclpy down, in that order. rclpy's own handlers would shut the context down from their own
    thread while the main thread is already tearing the executor and node down, a race that can end the
    process with a segmentation fault instead of exit code 0."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    logger = rclpy.logging.get_logger(name)
    node: Node | None = None
    stop_requested = threading.Event()

    def request_stop(_signal_number: int, _frame: object) -> None:
        stop_requested.set()
        if node is None:
            raise KeyboardInterrupt  # abandons a start-up in progress (loading a model can take minutes)

    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, request_stop)
    try:
        node = build()
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    except ParameterError as error:
        logger.fatal(f"bad parameter, not starting: {error}")
        rclpy.try_shutdown()
        return 2
    except Exception as error:
        logger.fatal(f"could not build {what}: {type(error).__name__}: {error}")
        rclpy.try_shutdown()
        return 1
    executor = make_executor()
    executor.add_node(node)
    try:
        while not stop_requested.is_set():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
