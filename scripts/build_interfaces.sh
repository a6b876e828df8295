#!/usr/bin/env bash
# Generate seem_ros's messages and services (msg/, srv/) and install them into a Python virtual environment
# that holds ROS 2 from PyPI wheels (the venv is the ROS prefix). Run again after editing msg/ or srv/;
# when nothing changed it only checks and returns in a second or two.
#
#   scripts/build_interfaces.sh [VENV]     VENV defaults to $VIRTUAL_ENV, else <repo>/.venv
#
# Needs cmake >= 3.21, a C/C++ compiler and the build-time wheels listed in scripts/requirements.txt.
# The Python sources are not copied: install them with `pip install -e .` (either order works).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(cd "${1:-${VIRTUAL_ENV:-$repo/.venv}}" && pwd)"
python="$venv/bin/python"
build_dir="$repo/build/interfaces"

if [[ ! -x "$python" ]]; then
  echo "build_interfaces: no Python at $python; pass the virtual environment as the first argument" >&2
  exit 2
fi

# The wheels' CMake packages are found through the ament index in the venv, at configure time and whenever
# the build re-runs configure because CMakeLists.txt, msg/ or srv/ changed.
export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"

mkdir -p "$build_dir"
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  generator=()
  if command -v ninja > /dev/null; then
    generator=(-G Ninja)
  fi
  cmake -S "$repo" -B "$build_dir" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$venv" \
    -DCMAKE_PREFIX_PATH="$venv" \
    -DPython3_EXECUTABLE="$python" \
    -DBUILD_TESTING=OFF \
    -DSEEM_ROS_INSTALL_PYTHON_SOURCES=OFF \
    > "$build_dir.configure.log" 2>&1 || { cat "$build_dir.configure.log" >&2; exit 1; }
fi
cmake --build "$build_dir" --parallel
cmake --install "$build_dir" > "$build_dir.install.log"
echo "build_interfaces: seem_ros messages installed into $venv"
