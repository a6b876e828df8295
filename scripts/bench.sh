#!/usr/bin/env bash
# The benchmark: set up (idempotent), then run `python -m bench.run`, which prints the tables and, with
# --json PATH, writes them. Extra arguments go to bench.run (--quick, --presets, --device cuda, ...).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
exec .venv/bin/python -m bench.run "$@"
