#!/usr/bin/env bash
# The shapes world's judging science on one GPU machine, in one command, resumably (docs/benchmark.md, "On a GPU
# machine in one command"):
#
#   experiments/device_science.sh OUT_DIR [STAGES]      # STAGES: tune,pareto (default) or tune,pareto,ablation
#   DRY=1 experiments/device_science.sh OUT_DIR         # print what would run (each sweep's --dry-run); starts nothing
#
# Stages, always in this order (a stage left out is not run; STAGES may also come from the environment):
#   tune      sweep the tune grid, then experiments/freeze.py --grid tune (writes experiments/grids/tuned_defaults.json)
#   pareto    sweep the judging grid (it reads tuned_defaults.json), then analysis/frontier.py --grid pareto
#             (the fronts, the per-seed paired gains and the controls: analysis/judge.py runs inside it)
#   ablation  sweep the ablation grid, then analysis/frontier.py --grid ablation (its ablation table)
# Every sweep: experiments/sweep.py --executor local --device $DEVICE --jobs $JOBS --threads $THREADS
# --tracking-uri none --out $RUNS. Finished points are skipped, so a second call continues where the first
# stopped, as long as $RUNS is still there (the same lease) or was carried back (unpacked results; see below).
# A judging stage runs only on tuned defaults (status "tuned"); an analysis only after its sweep finished all points.
#
# Deadline: DEADLINE_S seconds after the start (default 540: a 600 s command limit keeps 60 s for stopping and
# packing) every sweep and analysis still running gets SIGTERM (the sweep stops its points, whose last checkpoints
# stay: a re-run resumes them; STOP_S later, SIGKILL). A sweep is not started with less than MIN_SWEEP_S left, an
# analysis not with less than MIN_ANALYSIS_S. SIGTERM/SIGINT to this script stop it the same way, then it packs.
#
# Out (at most 6 files in OUT_DIR, none deeper; written after every stage, so a hard kill keeps the last ones):
#   results.tar.gz  (<= MAX_MB MiB) the runs' small files, analysis folders, tuned_defaults.json, MANIFEST.json;
#                   no checkpoints, sample images, exports or MLflow stores (experiments/device_results.py)
#   samples.tar     (<= MAX_MB MiB) as many finished runs' final evaluation grids as fit (the last pack only)
#   summary.txt, summary.json   each step's status, rc and seconds; runs finished per experiment; archive size
#   tuned_defaults.json         the tuned defaults this call ended with
#   device_science.log          everything the sweeps and analyses printed
# Unpack on the dev machine: python experiments/device_results.py unpack OUT_DIR/results.tar.gz --runs-dir runs_device
#
# Environment: PY (python3), DEVICE (cuda), JOBS (16), THREADS (1), DEADLINE_S (540), STOP_S (30), MIN_SWEEP_S
# (120), MIN_ANALYSIS_S (60), RUNS (runs_device, relative to the repository), MAX_MB (16), POLL (30), SWEEP_ARGS
# (extra sweep.py arguments for every sweep, split on spaces), TUNE_ARGS / PARETO_ARGS / ABLATION_ARGS (for one
# stage's sweep), ANALYZE_PARTIAL (1: analyse a judging sweep that did not finish every point), DRY.
# JOBS x THREADS = 16 = the machine's cores: docs/sweeps.md ("keep N x threads near the CPU cores": the CPU still
# does the reward and the SDE bookkeeping); the best N for this machine is not measured (benchmarks/grid_gpu.sh).
# Wheels of packages the GPU image lacks may be put in .whl/ (installed to /tmp/site, no network; docs/gpu_check.md).
set -euo pipefail
usage="usage: experiments/device_science.sh OUT_DIR [STAGES]   (STAGES: any of tune,pareto,ablation; default tune,pareto)"
[ $# -ge 1 ] && [ -n "$1" ] || { echo "$usage" >&2; exit 2; }
[ $# -le 2 ] || { echo "error: too many arguments ($#)"$'\n'"$usage" >&2; exit 2; }
OUT=$1
case $OUT in /*) ;; *) OUT="$PWD/$OUT";; esac
cd "$(dirname "$0")/.."
STAGES_IN=${2:-${STAGES:-tune,pareto}}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-16}
THREADS=${THREADS:-1}
DEADLINE_S=${DEADLINE_S:-540}
STOP_S=${STOP_S:-30}
MIN_SWEEP_S=${MIN_SWEEP_S:-120}
MIN_ANALYSIS_S=${MIN_ANALYSIS_S:-60}
MAX_MB=${MAX_MB:-16}
POLL=${POLL:-30}
RUNS=${RUNS:-runs_device}
case $RUNS in /*) ;; *) RUNS="$PWD/$RUNS";; esac
TUNED=experiments/grids/tuned_defaults.json

# ---- bad input: refused before anything is written or started ---------------------------------------------
for v in JOBS THREADS DEADLINE_S MAX_MB POLL; do
  case ${!v} in ''|*[!0-9]*|0*) echo "error: $v=${!v}: must be a whole number >= 1" >&2; exit 2;; esac
done
for v in STOP_S MIN_SWEEP_S MIN_ANALYSIS_S; do
  case ${!v} in ''|*[!0-9]*) echo "error: $v=${!v}: must be a whole number >= 0" >&2; exit 2;; esac
done
ALL_STAGES=(tune pareto ablation)
declare -A WANT=()
IFS=', ' read -r -a parts <<< "$STAGES_IN"
for s in "${parts[@]}"; do
  case $s in tune|pareto|ablation) WANT[$s]=1;; *)
    echo "error: stage '$s' in '$STAGES_IN': unknown; the stages are ${ALL_STAGES[*]} (comma-separated)" >&2; exit 2;;
  esac
done
[ ${#WANT[@]} -gt 0 ] || { echo "error: STAGES='$STAGES_IN': no stage named; $usage" >&2; exit 2; }
STAGE_LIST=()
for s in "${ALL_STAGES[@]}"; do [ -n "${WANT[$s]:-}" ] && STAGE_LIST+=("$s"); done
read -r -a SW <<< "${SWEEP_ARGS:-}"
declare -A STAGE_ARGS=([tune]="${TUNE_ARGS:-}" [pareto]="${PARETO_ARGS:-}" [ablation]="${ABLATION_ARGS:-}")
command -v timeout >/dev/null || { echo "error: 'timeout' (coreutils) is not on PATH" >&2; exit 2; }
command -v "$PY" >/dev/null || { echo "error: PY=$PY: not found" >&2; exit 2; }

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

sweep_cmd() {  # sweep_cmd GRID: the sweep of one stage as an array in CMD
  local extra=()
  read -r -a extra <<< "${STAGE_ARGS[$1]}"
  CMD=("$PY" experiments/sweep.py --grid "$1" --executor local --device "$DEVICE" --jobs "$JOBS" --threads "$THREADS"
       --tracking-uri none --out "$RUNS" --poll "$POLL" "${SW[@]}" "${extra[@]}")
}
analysis_cmd() {  # analysis_cmd STAGE: its analysis as an array in CMD
  case $1 in
    tune) CMD=("$PY" experiments/freeze.py --grid tune --runs-dir "$RUNS");;
    *) CMD=("$PY" analysis/frontier.py --grid "$1" --runs-dir "$RUNS" --no-mlflow --no-progress);;
  esac
}
PREFLIGHT='
import importlib.util, sys
need = sys.argv[1].split(","); opt = sys.argv[2].split(",")
miss = [m for m in need if importlib.util.find_spec(m) is None]
omiss = [m for m in opt if importlib.util.find_spec(m) is None]
print("missing for the sweeps: " + (" ".join(miss) or "none") + "; missing for the analysis: " + (" ".join(omiss) or "none"))
sys.exit(1 if miss else 3 if omiss else 0)'
NEED=torch,numpy,diffusers,peft,safetensors,PIL,submitit,tqdm
OPTIONAL=pandas,scipy,matplotlib

if [ -n "${DRY:-}" ]; then
  echo "device_science (DRY: nothing is started or written): stages ${STAGE_LIST[*]}; device $DEVICE; $JOBS jobs x $THREADS thread(s)"
  echo "  runs root $RUNS; deadline ${DEADLINE_S} s (stop margin ${STOP_S} s; a sweep needs >= ${MIN_SWEEP_S} s left, an analysis >= ${MIN_ANALYSIS_S} s)"
  echo "  out: $OUT/{results.tar.gz,samples.tar,summary.txt,summary.json,tuned_defaults.json,device_science.log} (<= ${MAX_MB} MiB each)"
  echo "  packages: $($PY -c "$PREFLIGHT" "$NEED" "$OPTIONAL" || true)"
  for s in "${STAGE_LIST[@]}"; do
    sweep_cmd "$s"
    echo "[$s] ${CMD[*]}"
    rc=0; dry=$("${CMD[@]}" --dry-run 2>&1) || rc=$?
    echo "$dry" | grep -E '^(TUNED DEFAULTS|COMPUTE-FAIR|grid |[0-9]+ jobs|estimate|error)' | sed 's/^/    /' || true
    [ "$rc" = 0 ] || { echo "error: the $s sweep's dry run failed (exit $rc): $(echo "$dry" | tail -1)" >&2; exit 2; }
    analysis_cmd "$s"
    echo "[$s] then, once every point is done: ${CMD[*]}"
    [ "$s" = tune ] || echo "    (runs only when $TUNED says \"status\": \"tuned\"; the dry run above shows the file as it is now)"
  done
  echo "[pack] $PY experiments/device_results.py pack $RUNS $OUT --tuned $TUNED --max-mb $MAX_MB"
  exit 0
fi

# ---- the run ----------------------------------------------------------------------------------------------
mkdir -p "$OUT" "$RUNS"
LOG="$OUT/device_science.log"
STEPS="$RUNS/.device_science_steps.tsv"
: > "$STEPS"
: >> "$LOG"
STOPPING=""
CHILD=""
say() { local m="[device_science +${SECONDS}s] $*"; echo "$m"; echo "$m" >> "$LOG"; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$STEPS"; say "$1: $2 (rc $3, $4 s) $5"; }
on_signal() { STOPPING=$1; say "got SIG$1: stopping (the running step gets SIGTERM), then packing"
              [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null || true; }
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

run_until() {  # run_until LIMIT_S CMD...: in the background under timeout (so a trapped signal is handled at once)
  local limit=$1 rc; shift
  timeout -s TERM -k "$STOP_S" "$limit" "$@" >> "$LOG" 2>&1 &
  CHILD=$!
  while :; do
    rc=0; wait "$CHILD" || rc=$?
    if [ -n "$STOPPING" ] && kill -0 "$CHILD" 2>/dev/null; then continue; fi
    break
  done
  CHILD=""
  return "$rc"
}
machine=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1 || true)
settings="stages=${STAGE_LIST[*]} device=$DEVICE jobs=$JOBS threads=$THREADS deadline_s=$DEADLINE_S runs=$RUNS sweep_args=${SWEEP_ARGS:-} tune_args=${TUNE_ARGS:-} pareto_args=${PARETO_ARGS:-} ablation_args=${ABLATION_ARGS:-}"
pack() {  # pack [--no-samples]: the archive and the summary into OUT (never fatal)
  local note
  note=$($PY -c 'import json,sys; print(json.dumps({"machine": sys.argv[1], "settings": sys.argv[2]}))' "${machine:-no nvidia-smi}" "$settings")
  [ -f "$TUNED" ] && cp "$TUNED" "$OUT/tuned_defaults.json"
  $PY experiments/device_results.py pack "$RUNS" "$OUT" --tuned "$TUNED" --max-mb "$MAX_MB" --steps "$STEPS" \
      --note "$note" "$@" >> "$LOG" 2>&1 || say "pack: exit $? (see $LOG)"
  local cap=$(( MAX_MB * 1024 * 1024 - 65536 ))  # the log must come back too: keep its end
  if [ "$(stat -c %s "$LOG")" -gt "$cap" ]; then tail -c "$cap" "$LOG" > "$LOG.tail" && mv "$LOG.tail" "$LOG"; fi
}
tuned_status() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1])).get("status"))' "$TUNED" 2>/dev/null || echo unreadable; }

say "start: $settings; ${machine:-no nvidia-smi}"
# ---- preflight: packages (wheels from .whl/ if any), CUDA ---------------------------------------------------
if ls .whl/*.whl >/dev/null 2>&1; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >> "$LOG" 2>&1 \
     || $PY -c 'import glob, sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in glob.glob(".whl/*.whl")]' /tmp/site >> "$LOG" 2>&1; then
    export PYTHONPATH=/tmp/site:$PYTHONPATH; say "installed $(ls .whl/*.whl | wc -l) wheel(s) from .whl/ into /tmp/site"
  else
    say "installing the wheels of .whl/ failed (see the log); going on without them"
  fi
fi
pf_rc=0; pf=$($PY -c "$PREFLIGHT" "$NEED" "$OPTIONAL") || pf_rc=$?
ANALYSIS_OK=1
case $pf_rc in
  0) record preflight ok 0 "$SECONDS" "$pf";;
  3) ANALYSIS_OK=""; record preflight partial 3 "$SECONDS" "$pf: the analyses are skipped (run them after unpacking)";;
  *) record preflight failed "$pf_rc" "$SECONDS" "$pf: put their wheels in .whl/ (docs/gpu_check.md)"; pack; exit 2;;
esac
if [[ $DEVICE == cuda* ]]; then
  if ! cu=$($PY -c 'import torch; assert torch.cuda.is_available(), "torch.cuda.is_available() is False"; print(torch.__version__, torch.cuda.get_device_name(0))' 2>&1); then
    record cuda failed 1 "$SECONDS" "DEVICE=$DEVICE but CUDA is not usable: $(echo "$cu" | tail -1)"; pack; exit 2
  fi
  say "torch $cu"
fi

# ---- runs carried from another checkout path (unpacked results): to this checkout's config hashes ----------
rb=$($PY experiments/device_results.py rebase "$RUNS" 2>&1) || { echo "$rb" >> "$LOG"; record rebase failed 1 "$SECONDS" "$(echo "$rb" | tail -1)"; pack; exit 2; }
echo "$rb" >> "$LOG"
say "$(echo "$rb" | grep -m1 'rebase' | cut -c18-)"

# ---- every stage's sweep arguments, checked by its dry run before anything runs ----------------------------
for s in "${STAGE_LIST[@]}"; do
  sweep_cmd "$s"
  rc=0; "${CMD[@]}" --dry-run > "$RUNS/.device_science_dry.txt" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    cat "$RUNS/.device_science_dry.txt" >> "$LOG"
    record "$s/check" invalid "$rc" "$SECONDS" "its sweep's dry run failed: $(grep -m1 '^error' "$RUNS/.device_science_dry.txt" | cut -c1-300)"
    pack; exit 2
  fi
  say "$s: $(grep -E '^[0-9]+ jobs' "$RUNS/.device_science_dry.txt" | head -1)"
done
rm -f "$RUNS/.device_science_dry.txt"

# ---- stages -------------------------------------------------------------------------------------------------
INCOMPLETE=""; FAILED=""
sweep_stage() {  # sweep_stage STAGE: 0 = every point done
  local s=$1 left rc t0=$SECONDS mark
  left=$(( DEADLINE_S - SECONDS - STOP_S ))
  if [ -n "$STOPPING" ]; then record "$s/sweep" skipped - 0 "stopped by SIG$STOPPING"; return 90; fi
  if (( left < MIN_SWEEP_S )); then
    record "$s/sweep" skipped - 0 "not started: ${left} s left before the deadline < MIN_SWEEP_S=${MIN_SWEEP_S}"; return 90
  fi
  sweep_cmd "$s"
  mark=$(wc -l < "$LOG")
  say "$s: ${CMD[*]} (stopped in ${left} s at the latest)"
  rc=0; run_until "$left" "${CMD[@]}" || rc=$?
  local st detail
  case $rc in
    0) st=done; detail="every point finished";;
    124|137) if [ -n "$STOPPING" ]; then st=stopped; detail="stopped by SIG$STOPPING; re-run to resume"
             else st=deadline; detail="stopped at the deadline: finished points stay, interrupted ones resume from their last checkpoint on the next call"; fi;;
    1) st=failed; detail="some points failed (their stdout.log is packed)";;
    2) st=invalid; detail="the sweep refused its arguments or grid (see the log)";;
    3) st=incomplete; detail="not every point ran (--only, or points running elsewhere)";;
    130|143) st=stopped; detail="stopped by a signal; re-run to resume";;
    *) st=error; detail="unexpected exit (see the log)";;
  esac
  record "$s/sweep" "$st" "$rc" $(( SECONDS - t0 )) "$detail; $(tail -n +$(( mark + 1 )) "$LOG" | grep '^\[sweep\] [a-z_0-9]*: [0-9]* points in' | tail -1 | cut -c9-)"
  return "$rc"
}
analysis_stage() {  # analysis_stage STAGE
  local s=$1 left rc t0=$SECONDS need=$MIN_ANALYSIS_S step mark
  [ "$s" = tune ] && step=freeze || step=frontier
  [ "$s" = tune ] && need=$(( MIN_ANALYSIS_S < 15 ? MIN_ANALYSIS_S : 15 ))
  left=$(( DEADLINE_S - SECONDS ))
  if [ -n "$STOPPING" ]; then record "$s/$step" skipped - 0 "stopped by SIG$STOPPING"; return 90; fi
  if [ "$step" = frontier ] && [ -z "$ANALYSIS_OK" ]; then
    record "$s/$step" skipped - 0 "pandas/scipy/matplotlib missing here: run it after unpacking"; return 90
  fi
  if (( left < need )); then record "$s/$step" skipped - 0 "not started: ${left} s left < ${need} s"; return 90; fi
  analysis_cmd "$s"
  mark=$(wc -l < "$LOG")
  say "$s: ${CMD[*]}"
  rc=0; run_until "$left" "${CMD[@]}" || rc=$?
  if [ "$rc" = 0 ]; then
    record "$s/$step" done 0 $(( SECONDS - t0 )) "$([ "$s" = tune ] && echo "wrote $TUNED (status $(tuned_status))" || echo "wrote $RUNS/$s/analysis/")"
  else
    record "$s/$step" failed "$rc" $(( SECONDS - t0 )) "$( [ "$rc" = 124 ] && echo "stopped at the deadline" || tail -n +$(( mark + 1 )) "$LOG" | grep -E '^(error|\[frontier\] error)' | tail -1 | cut -c1-300)"
  fi
  return "$rc"
}

for s in "${STAGE_LIST[@]}"; do
  if [ "$s" != tune ] && [ "$(tuned_status)" != tuned ]; then
    record "$s" skipped - 0 "$TUNED is '$(tuned_status)', not 'tuned': the tune stage (sweep + freeze) must finish first, or commit a frozen file"
    INCOMPLETE=1; continue
  fi
  rc=0; sweep_stage "$s" || rc=$?
  case $rc in 0) ;; 1) FAILED=1;; *) INCOMPLETE=1;; esac
  if [ "$rc" = 0 ] || { [ "$s" != tune ] && [ -n "${ANALYZE_PARTIAL:-}" ] && [[ $rc =~ ^(1|3|124)$ ]] && [ -z "$STOPPING" ]; }; then
    arc=0; analysis_stage "$s" || arc=$?
    [ "$arc" = 0 ] || { [ "$arc" = 90 ] && INCOMPLETE=1 || FAILED=1; }
  elif [ "$rc" != 90 ]; then
    record "$s/$([ "$s" = tune ] && echo freeze || echo frontier)" skipped - 0 "its sweep did not finish every point (rc $rc)"
  fi
  pack --no-samples
  [ -z "$STOPPING" ] || break
done

pack
say "end: $( [ -n "$FAILED" ] && echo 'something failed' || { [ -n "$INCOMPLETE" ] && echo 'incomplete (re-run the same command to continue)' || echo 'every stage done'; })"
say "out: $(ls "$OUT" | tr '\n' ' ')"
cat "$OUT/summary.txt" 2>/dev/null || true
[ -n "$STOPPING" ] && exit 130
[ -n "$FAILED" ] && exit 1
[ -n "$INCOMPLETE" ] && exit 3
exit 0
