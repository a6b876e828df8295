"""The node runner's executor: entities removed from callback threads while the main thread spins.

rclpy's MultiThreadedExecutor gathers a node's event handlers before it builds its wait set; a subscription
destroyed by a callback thread in between (a lifecycle deactivate) ended seem_node with "cannot use
Destroyable because destruction was requested". The churn below hits that window within a second when the
destruction runs in the callback thread (measured: 3 of 3 runs died), so it is run in a child process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from ros_helpers import initialised_context, ros_environment  # noqa: F401 (ros_environment is a fixture)

from seem_ros.ros.node_runner import OrderlyMultiThreadedExecutor

CHURN = textwrap.dedent(
    """
    import sys
    import time

    import rclpy
    from rclpy.node import Node
    from std_msgs.msg import String

    from seem_ros.ros.node_runner import OrderlyMultiThreadedExecutor, call_between_waits

    sys.setswitchinterval(1e-6)  # threads interleave at every few bytecodes: the race's window is hit
    rclpy.init()
    node = Node("churn")
    executor = OrderlyMultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    subscriptions = []
    cycles = 0

    def replace_subscriptions():
        for subscription in subscriptions:
            node.destroy_subscription(subscription)
        subscriptions.clear()
        for index in range(20):
            subscriptions.append(node.create_subscription(String, f"topic_{index}", lambda _: None, 10))

    def churn():
        global cycles
        call_between_waits(node, replace_subscriptions)
        cycles += 1

    node.create_timer(0.002, churn)
    end = time.monotonic() + float(sys.argv[1])
    try:
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()  # while a churn callback may be waiting for the spinning thread
        node.destroy_node()
        rclpy.try_shutdown()
    print("cycles", cycles)
    """
)


def test_subscriptions_destroyed_from_callback_threads_do_not_end_the_spin(
    ros_environment: dict[str, str],  # noqa: F811
) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHURN, "3"], env=ros_environment, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-3000:]
    cycles = int(child.stdout.split()[-1])
    assert cycles > 100  # the work asked for ran promptly (a wait-set timeout per call would give about 30)


def test_work_runs_at_once_while_nothing_spins_and_its_error_reaches_the_caller(
    ros_environment: dict[str, str],  # noqa: F811
) -> None:
    with initialised_context() as context:
        executor = OrderlyMultiThreadedExecutor(num_threads=2, context=context)
        try:
            assert executor.call_between_waits(lambda: 42) == 42
            with pytest.raises(ZeroDivisionError):
                executor.call_between_waits(lambda: 1 / 0)
        finally:
            executor.shutdown()
