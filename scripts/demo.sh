#!/usr/bin/env bash
# The main job: set up (idempotent), then run seem_node on a real street video with a text and a click
# prompt, writing overlays to out/demo/. Extra arguments go to `python -m demo.run` (--checkpoint PATH).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
exec .venv/bin/python -m demo.run "$@"
