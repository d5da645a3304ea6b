#!/usr/bin/env bash
# The GPU evidence in one call: runs every GPU row on a machine with a CUDA GPU. It needs
# torch, numpy, scikit-learn and pytest, not Optuna or MLflow, so it runs the parts that
# need only `tunetrack.models`, from the repository root:
#   - the CUDA path of the tests (the fused tape against autograd on CUDA, the device
#     error messages) and the CPU equivalence tests, with that machine's torch;
#   - `bench.fused_trials throughput` (the CNN row's target: >= 8x on a GPU) and
#     `bench.trainer_throughput` (>= 10x the textbook loop on a GPU).
# ~5 minutes on an H200. Usage, from the repository root:
#   bash bench/gpu_check.sh
# Everything printed also lands in $OUT/gpu_check.log when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
# the package is laid out as tunetrack.{models,search,tracking} by pyproject's package-dir;
# without an install, a folder of links gives the same import names
pkg=$(mktemp -d)
mkdir -p "$pkg/tunetrack"
for d in models search tracking; do ln -s "$PWD/$d" "$pkg/tunetrack/$d"; done
export PYTHONPATH="$pkg:$PWD" PYTHONUNBUFFERED=1
log=${OUT:+$OUT/gpu_check.log}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  "$PY" -m pytest -q -p no:cacheprovider tests/test_fused_tape.py \
    tests/test_fused_equivalence.py tests/test_models_errors.py
  "$PY" -m bench.fused_trials throughput
  "$PY" -m bench.trainer_throughput
} 2>&1 | tee ${log:-/dev/null}
