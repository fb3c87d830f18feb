#!/usr/bin/env bash
# Many runs on one GPU (issue 18 item 3): the wall time of a grid's points with N = 1, 8, 32 runs sharing one GPU,
# each a `python -m drift.launch` child of the sweep's local executor with device=cuda and THREADS CPU threads.
#
#   benchmarks/grid_gpu.sh OUT_DIR [GRID]        # default grid: pareto
#   DRY=1 benchmarks/grid_gpu.sh OUT_DIR         # print what would run (the sweep's --dry-run); starts nothing
#
# Each N runs its own first POINTS_<N> points of the grid (defaults: 4, 8, 32: enough to fill the N slots and
# short enough for a 10-minute device session) into OUT_DIR/jobs<N>/ with MLflow off, so every N starts cold
# (a fresh output root: no shared base-model evaluation between the Ns). Writes OUT_DIR/grid_gpu.json:
# per N the points, wall seconds, points per minute, peak GPU memory (nvidia-smi, sampled every 2 s) and the
# projected wall time of the whole grid at that N (grid points / measured rate).
# Environment: JOBS ("1 8 32"), POINTS_1 / POINTS_8 / POINTS_32, THREADS (1), PY (python3), DEVICE (cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: benchmarks/grid_gpu.sh OUT_DIR [GRID]}
GRID=${2:-pareto}
PY=${PY:-python3}
JOBS=${JOBS:-"1 8 32"}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cuda}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
for n in $JOBS; do
  case $n in ''|*[!0-9]*|0) echo "error: JOBS=$JOBS: each entry must be a whole number >= 1" >&2; exit 2;; esac
done
case $THREADS in ''|*[!0-9]*|0) echo "error: THREADS=$THREADS: must be a whole number >= 1" >&2; exit 2;; esac
TOTAL=$($PY experiments/sweep.py --grid "$GRID" --dry-run --executor local --out "$OUT/count" 2>/dev/null | grep -c '^#[0-9]') \
  || { echo "error: grid $GRID: its dry run failed (python experiments/sweep.py --grid $GRID --dry-run)" >&2; exit 2; }
mkdir -p "$OUT"
echo "grid $GRID: $TOTAL points; N in: $JOBS; $THREADS thread(s) per run; device $DEVICE"
rows=()
for n in $JOBS; do
  var=POINTS_$n
  pts=${!var:-$n}
  [ "$n" = 1 ] && pts=${POINTS_1:-4}
  (( pts > TOTAL )) && pts=$TOTAL
  only=$(seq -s, 0 $((pts - 1)))
  cmd=($PY experiments/sweep.py --grid "$GRID" --executor local --device "$DEVICE" --jobs "$n" --threads "$THREADS"
       --out "$OUT/jobs$n" --tracking-uri none --only "$only" --poll 30)
  if [ -n "${DRY:-}" ]; then
    echo "N=$n: ${cmd[*]} --dry-run"
    "${cmd[@]}" --dry-run | tail -3
    continue
  fi
  mem="$OUT/jobs$n.gpu_mem"
  : > "$mem"
  ( while sleep 2; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$mem" 2>/dev/null || true; done ) &
  sampler=$!
  t0=$(date +%s.%N)
  "${cmd[@]}" > "$OUT/jobs$n.log" 2>&1 || echo "N=$n: the sweep failed (see $OUT/jobs$n.log)"
  t1=$(date +%s.%N)
  kill "$sampler" 2>/dev/null || true
  peak=$(sort -n "$mem" | tail -1)
  rows+=("{\"jobs\": $n, \"points\": $pts, \"wall_s\": $(echo "$t1 - $t0" | bc), \"peak_gpu_mib\": ${peak:-null}}")
  echo "N=$n: $pts points in $(echo "$t1 - $t0" | bc) s (peak GPU memory ${peak:-?} MiB)"
done
[ -n "${DRY:-}" ] && exit 0
printf '%s\n' "${rows[@]}" | $PY -c "
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
for r in rows:
    r['points_per_min'] = 60 * r['points'] / r['wall_s']
    r['projected_grid_min'] = $TOTAL / r['points_per_min']
out = {'grid': '$GRID', 'grid_points': $TOTAL, 'threads_per_run': $THREADS, 'device': '$DEVICE', 'runs': rows}
json.dump(out, open('$OUT/grid_gpu.json', 'w'), indent=1)
for r in rows:
    print(f\"N={r['jobs']:>3}: {r['points_per_min']:.2f} points/min -> the {out['grid_points']}-point grid in {r['projected_grid_min']:.1f} min\")
"
