#!/usr/bin/env bash
# The CPU figures of BENCHMARKS.md: drift.bench for every method on the shapes world, one thread
# (as each point of the embedded grid runs), at the default config and at the pareto grid's budget.
# Writes benchmarks/results/iteration_shapes_<method>[_fast].json. ~6 minutes on a free 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
for m in flow_grpo flow_grpo_kl diverse_grpo drift; do
  $PY -m drift.bench method=$m threads=1 train.iterations=8 --json benchmarks/results/iteration_shapes_$m.json
  $PY -m drift.bench method=$m threads=1 train.iterations=8 sample.groups_per_iter=2 --json benchmarks/results/iteration_shapes_${m}_fast.json
done 2>&1 | grep -v -E "Warning|warn\(|INFO mlflow"
