"""The README's route on a ROS 2 install, end to end: `colcon build` of a source checkout in a fresh
workspace (this environment is the ROS prefix, as `source /opt/ros/<distro>/setup.bash` would make it), then
the installed `seem_node` from `install/`, with the environment `install/setup.sh` sets, comes up with the
tiny preset's random weights and publishes its results over DDS.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from node_client import CAMERA_TOPIC, cleanly_stopped_node, connected_client
from ros_helpers import (  # noqa: F401 (ros_context, ros_environment are fixtures)
    NodeProcess,
    ros_context,
    ros_environment,
)

from seem_ros.launch_logic import LaunchArguments, plan_nodes
from seem_ros.ros.conversions import array_to_image

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
BUILD_TIMEOUT = 1200.0
INSTALLED_START_TIMEOUT = 300.0
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 2 * INSTALLED_START_TIMEOUT)
NOT_SOURCES = ("build", "install", "log", ".venv", ".git", "__pycache__", "*.egg-info", "out", ".*cache")


def _ros_prefix_environment(environment: dict[str, str]) -> dict[str, str]:
    """`environment` with this virtual environment as the ROS prefix and the active Python environment."""
    path = f"{VENV / 'bin'}:{environment.get('PATH', '')}"
    prefix = str(VENV)
    return {
        **environment,
        "PATH": path,
        "VIRTUAL_ENV": prefix,
        "AMENT_PREFIX_PATH": prefix,
        "CMAKE_PREFIX_PATH": prefix,
    }


def _sourced(setup_script: Path, environment: dict[str, str]) -> dict[str, str]:
    """The environment after `. setup_script` in a POSIX shell started with `environment`."""
    completed = subprocess.run(
        ["sh", "-c", '. "$0" && env -0', str(setup_script)],
        env=environment,
        capture_output=True,
        check=True,
        timeout=60,
    )
    entries = completed.stdout.decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, ros_environment: dict[str, str]) -> Path:  # noqa: F811
    """A colcon workspace whose src/seem_ros is a copy of this checkout's sources, built and installed."""
    colcon = VENV / "bin" / "colcon"
    assert colcon.is_file(), f"no {colcon}: install colcon-common-extensions (scripts/requirements.txt)"
    root = tmp_path_factory.mktemp("colcon_ws")
    shutil.copytree(REPO_ROOT, root / "src" / "seem_ros", ignore=shutil.ignore_patterns(*NOT_SOURCES))
    log = root / "colcon_build.log"
    with open(log, "wb") as output:
        completed = subprocess.run(
            [str(colcon), "build", "--packages-select", "seem_ros", "--cmake-args", "-DBUILD_TESTING=OFF"],
            cwd=root,
            env=_ros_prefix_environment(ros_environment),
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT,
        )
    build_log = log.read_text(errors="replace")
    assert completed.returncode == 0, f"colcon build failed:\n{build_log[-6000:]}"
    return root


@pytest.fixture(scope="module")
def installed_environment(workspace: Path, ros_environment: dict[str, str]) -> dict[str, str]:  # noqa: F811
    return _sourced(workspace / "install" / "setup.sh", _ros_prefix_environment(ros_environment))


def test_installed_package_is_importable_from_install_only(
    workspace: Path, installed_environment: dict[str, str]
) -> None:
    """Every seem_ros module the node imports, the generated messages included, comes from install/."""
    probe = (
        "import sys, seem_ros.ros.seem_node, seem_ros.msg, seem_ros.srv\n"
        "print('\\n'.join(sorted({m.__file__ for n, m in sys.modules.items()"
        " if n.split('.')[0] == 'seem_ros' and getattr(m, '__file__', None)})))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        env=installed_environment,
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    site_packages = workspace / "install" / "seem_ros" / "lib"
    files = completed.stdout.split()
    assert files and all(Path(file).is_relative_to(site_packages) for file in files), files


@pytest.fixture
def installed_node(
    workspace: Path, installed_environment: dict[str, str], tmp_path: Path
) -> Iterator[NodeProcess]:
    """seem_node started from install/, as the launch file plans it from the installed share folder."""
    prefix = workspace / "install" / "seem_ros"
    arguments = LaunchArguments(camera_topic=CAMERA_TOPIC, preset="focalt_tiny", device="cpu")
    (spec,) = plan_nodes(arguments, prefix / "share" / "seem_ros")
    executable = prefix / "lib" / "seem_ros" / spec.executable
    assert executable.is_file(), f"colcon installed no {executable}"
    small_vocabulary = ["-p", "random_weights:=true", "-p", "vocabulary:=[cup, table]"]
    command = [str(executable), *spec.command()[1:], *small_vocabulary]
    environment = {**installed_environment, "SEEM_ROS_CACHE_DIR": str(tmp_path / "cache")}
    yield from cleanly_stopped_node(command, environment, tmp_path / "seem_node.log")


def test_installed_seem_node_publishes_over_dds(
    installed_node: NodeProcess,
    ros_context,  # noqa: F811
) -> None:
    with contextmanager(connected_client)(ros_context, installed_node, INSTALLED_START_TIMEOUT) as client:
        rgb = np.zeros((96, 128, 3), dtype=np.uint8)
        rgb[24:72, 32:96] = (200, 40, 40)
        result = client.assert_serves(array_to_image(rgb, "rgb8"))
        assert (result.width, result.height) == (128, 96)
        assert "random" in installed_node.output()
