#!/usr/bin/env bash
# Stop the daemons that .ci/slurm_up.sh started, by pid, in reverse order; keeps the run folder
# (state + accounting DB, so job ids keep increasing) unless --purge is given.
set -uo pipefail

RUN=${DRIFT_SLURM_RUN:-/tmp/drift-slurm}
stop() {  # stop NAME: SIGTERM the pid in $RUN/pids/NAME.pid, wait up to 15 s, then SIGKILL
  local f=$RUN/pids/$1.pid pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "[slurm_down] $1 (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
    echo "[slurm_down] stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}
for d in slurmd slurmctld slurmdbd mariadb munged; do stop "$d"; done
if [[ ${1:-} == --purge ]]; then
  rm -rf "$RUN" && echo "[slurm_down] removed $RUN"
fi
exit 0
