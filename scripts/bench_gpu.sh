#!/usr/bin/env bash
# The GPU path's benchmark as one command: eager fp32, bf16 autocast, torch.compile and CUDA graphs for
# Focal-T and SAM-ViT-B at batch 1 and 8, per-stage times, frames per second, peak GPU memory and
# agreement with fp32 (see bench/gpu.py for the options).
#   scripts/bench_gpu.sh --json out/bench_gpu.json --profile 3   # on a CUDA machine, under 6 minutes
#   scripts/bench_gpu.sh --device cpu --quick                    # the same code on the CPU, about a minute
# It runs with the project's .venv where there is one (after scripts/setup.sh), else with python3, whose
# environment must hold torch, numpy, opencv, safetensors, transformers and scikit-image. Without the
# open_clip_torch package, point SEEM_ROS_CACHE_DIR at a cache folder that holds the built tokenizer.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python_bin=python3
if [[ -x .venv/bin/python ]]; then
  python_bin=.venv/bin/python
fi
export PYTHONUNBUFFERED=1
exec "$python_bin" -m bench.gpu "$@"
