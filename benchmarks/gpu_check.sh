#!/usr/bin/env bash
# The GPU check (issue 6 item 8, issue 8 item 5), in one go on a CUDA machine, <= 10 minutes:
#   1. the SD3-path tests on CUDA (DRIFT_TEST_DEVICE=cuda) plus the engine's math tests;
#   2. benchmarks/gpu_check.py: drift.bench on the tiny and mid random SD3 in bf16, and MFU of the mid model.
# Usage: benchmarks/gpu_check.sh OUT_DIR      (output format: docs/gpu_check.md)
# Packages missing on the GPU image may be put as wheels in .whl/ (installed to /tmp/site, no network).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
{
  echo "== $(date -u +%FT%TZ) gpu_check"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
  t=$(date +%s)
  [ -n "${SKIP_TESTS:-}" ] || DRIFT_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider --junitxml="$OUT/tests_junit.xml" \
    ${GPU_TESTS:-tests/test_sde.py tests/test_advantages.py tests/test_sd3.py tests/test_sd3_rewards.py} 2>&1 | tail -25
  echo "== tests took $(( $(date +%s) - t )) s"
  t=$(date +%s)
  $PY benchmarks/gpu_check.py "$OUT" 2>&1 | grep -v -E "Warning|warn\(|INFO mlflow|Writing model shards"
  echo "== benchmarks took $(( $(date +%s) - t )) s"
} 2>&1 | tee "$OUT/gpu_check.log"
