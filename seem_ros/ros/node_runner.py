"""What every seem_ros node's console script does: init, build the node, spin, shut down cleanly."""

from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data

from seem_ros.ros.parameters import ParameterError


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
    (Ctrl-C included), 2 for a bad parameter and 1 when `build` fails otherwise (one fatal log line each, no
    traceback). `what` names what failed to build, e.g. "the segmenter"."""
    rclpy.init(args=args)
    logger = rclpy.logging.get_logger(name)
    try:
        node = build()
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
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
