#!/usr/bin/env bash
# One MLflow tracking server for a sweep's many jobs, with authentication (docs/sweeps.md, MLflow for
# many jobs; docs/reliability.md, Concurrency).
#
#   slurm/mlflow_server.sh start              # on a login/service node; prints the URI to pass to the sweep
#   slurm/mlflow_server.sh status
#   slurm/mlflow_server.sh uri                # prints the URI of the running server (for --tracking-uri)
#   slurm/mlflow_server.sh stop               # SIGTERM to the server's pid (stops its workers too)
#   slurm/mlflow_server.sh rotate             # a new random admin password (server + ~/.mlflow/credentials)
#   slurm/mlflow_server.sh add-user NAME      # a colleague's user (read-only by default); credentials in a 0600 file
#
#   python experiments/sweep.py --grid pareto --executor slurm --tracking-uri "$(slurm/mlflow_server.sh uri)"
#
# Why: SQLite locking is unreliable on NFS/Lustre and first-time schema migration races between
# nodes, so array tasks must not share a SQLite file on the shared filesystem. The server keeps its
# SQLite DB on this node's LOCAL disk; tasks log over HTTP (with retries); artifacts go to a shared
# folder through the server (--serve-artifacts). Each run's metrics.jsonl stays the source of truth.
#
# Authentication (MLflow's basic-auth app) is on: an anonymous request gets 401. The first start
# creates the user 'admin' with a random password in ~/.mlflow/credentials (mode 0600; never printed),
# which MLflow clients (the sweep, every job) read; MLFLOW_TRACKING_USERNAME/PASSWORD override it.
# The users' database (basic_auth.db) sits beside mlflow.db in DRIFT_MLFLOW_DIR (mode 0700).
#
# Settings (environment):
#   DRIFT_MLFLOW_DIR        local-disk folder for the DBs, pid, log and uri files (default /tmp/$USER-drift-mlflow)
#   DRIFT_MLFLOW_ARTIFACTS  artifact store, shared (default <repo>/runs/mlartifacts-server)
#   DRIFT_MLFLOW_HOST       bind address (default 0.0.0.0: reachable from compute nodes; 127.0.0.1 without auth)
#   DRIFT_MLFLOW_PORT       port (default 5000; the next free port is used if taken)
#   DRIFT_MLFLOW_ALLOWED_HOSTS  Host headers accepted (MLflow 3 refuses others as DNS rebinding; default:
#                           this host's names, localhost and private IP ranges, any port)
#   DRIFT_MLFLOW_DEFAULT_PERMISSION  what a user may do on experiments nobody granted them: READ (default),
#                           EDIT, MANAGE or NO_PERMISSIONS (the admin, and an experiment's creator, may do all)
#   DRIFT_MLFLOW_INSECURE_NO_AUTH=1  NO authentication, for a single-user machine: anyone who reaches the
#                           port may read, change and delete everything; binds 127.0.0.1 unless DRIFT_MLFLOW_HOST
#   MLFLOW                  the mlflow executable (default: the repo's .venv/bin/mlflow, else mlflow on PATH)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${DRIFT_MLFLOW_DIR:-/tmp/${USER:-$(id -un)}-drift-mlflow}
ART=${DRIFT_MLFLOW_ARTIFACTS:-$ROOT/runs/mlartifacts-server}
NO_AUTH=${DRIFT_MLFLOW_INSECURE_NO_AUTH:-0}
[[ $NO_AUTH == 1 ]] && HOST=${DRIFT_MLFLOW_HOST:-127.0.0.1} || HOST=${DRIFT_MLFLOW_HOST:-0.0.0.0}
PORT=${DRIFT_MLFLOW_PORT:-5000}
MLFLOW=${MLFLOW:-$([[ -x $ROOT/.venv/bin/mlflow ]] && echo "$ROOT/.venv/bin/mlflow" || echo mlflow)}
PY=$(dirname "$(command -v "$MLFLOW")")/python
[[ -x $PY ]] || PY=python3
AUTH=("$PY" "$ROOT/slurm/mlflow_auth.py")

H=$(hostname); HF=$(hostname -f 2>/dev/null || hostname)
ALLOWED=${DRIFT_MLFLOW_ALLOWED_HOSTS:-$H:*,$HF:*,localhost:*,127.0.0.1:*,10.*,192.168.*,172.*}

running() { [[ -f $DIR/mlflow.pid ]] && kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null; }
local_url() { echo "http://127.0.0.1:$(sed 's/.*://' "$DIR/uri")"; }
need_running() { running || { echo "[mlflow] not running (slurm/mlflow_server.sh start)" >&2; exit 1; }; }
stop() {
  if running; then
    pid=$(cat "$DIR/mlflow.pid"); kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "[mlflow] stopped (pid $pid)"
  else
    echo "[mlflow] not running"
  fi
  rm -f "$DIR/mlflow.pid" "$DIR/uri"
}

case ${1:-} in
start)
  if running; then echo "[mlflow] already running (pid $(cat "$DIR/mlflow.pid")): $(cat "$DIR/uri")"; exit 0; fi
  # The folder holds the users' database and the server's secret key: this user's only.
  (umask 077 && mkdir -p "$DIR")
  [[ -O $DIR ]] || { echo "[mlflow] $DIR belongs to someone else: refusing to use it (set DRIFT_MLFLOW_DIR)" >&2; exit 1; }
  chmod 700 "$DIR"
  mkdir -p "$ART"
  while "$PY" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $PORT)) != 0)"; do
    PORT=$((PORT + 1))
  done
  # Initialise the schema now, once, before any job touches the DB (first-time migration is racy).
  "$MLFLOW" db upgrade "sqlite:///$DIR/mlflow.db" >"$DIR/db-upgrade.log" 2>&1
  if [[ $NO_AUTH == 1 ]]; then
    echo "[mlflow] WARNING: DRIFT_MLFLOW_INSECURE_NO_AUTH=1: NO AUTHENTICATION. Anyone who can reach" \
         "$HOST:$PORT can read, change and delete every experiment. Only for a single-user machine." >&2
    LAUNCH=(env) APP=()
  else
    ADMIN=$("${AUTH[@]}" admin)  # creates ~/.mlflow/credentials (0600) on first use; prints the name only
    LAUNCH=("${AUTH[@]}" exec "$DIR" --) APP=(--app-name basic-auth)
  fi
  # No job-execution consumers (they add ~1 GB RSS); one worker is plenty for metric logging.
  # MLflow's default DB pool (5 + 10 overflow) is smaller than the server's 40 request threads: with 32
  # concurrent writers requests stalled in 30 s bursts and failed "400 QueuePool limit ... reached"
  # (tests/test_mlflow_concurrency.py); with 40 + 40 the same load ran without an error.
  MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=${MLFLOW_SQLALCHEMYSTORE_POOL_SIZE:-40} \
  MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW=${MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW:-40} \
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup "${LAUNCH[@]}" "$MLFLOW" server "${APP[@]}" \
    --backend-store-uri "sqlite:///$DIR/mlflow.db" --artifacts-destination "$ART" --serve-artifacts \
    --host "$HOST" --port "$PORT" --workers 1 --allowed-hosts "$ALLOWED" >"$DIR/server.log" 2>&1 &
  echo $! >"$DIR/mlflow.pid"
  [[ $HOST == 127.0.0.1 || $HOST == localhost ]] && URI="http://127.0.0.1:$PORT" || URI="http://$HF:$PORT"
  for ((i = 0; i < 240; i++)); do
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; then
      echo "$URI" >"$DIR/uri"
      if [[ $NO_AUTH != 1 ]] && ! "${AUTH[@]}" check "http://127.0.0.1:$PORT"; then
        stop >/dev/null; exit 1
      fi
      echo "[mlflow] up after ${i}x0.5 s: pid $(cat "$DIR/mlflow.pid"), DB $DIR/mlflow.db, artifacts $ART"
      if [[ $NO_AUTH == 1 ]]; then
        echo "[mlflow] authentication: OFF (DRIFT_MLFLOW_INSECURE_NO_AUTH=1)"
      else
        echo "[mlflow] authentication: on (anonymous requests get 401); admin '$ADMIN', credentials as MLflow" \
             "clients read them: MLFLOW_TRACKING_USERNAME/PASSWORD if set, else ~/.mlflow/credentials;" \
             "users' DB $DIR/basic_auth.db"
      fi
      echo "[mlflow] export MLFLOW_TRACKING_URI=$URI     # or: --tracking-uri $URI"
      exit 0
    fi
    running || { echo "[mlflow] server exited; see $DIR/server.log" >&2; tail -n 20 "$DIR/server.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "[mlflow] no /health after 120 s; see $DIR/server.log" >&2; exit 1
  ;;
stop)
  stop
  ;;
status)
  if running; then echo "[mlflow] running (pid $(cat "$DIR/mlflow.pid")): $(cat "$DIR/uri" 2>/dev/null)"; else echo "[mlflow] not running"; exit 1; fi
  ;;
uri)
  need_running
  cat "$DIR/uri"
  ;;
rotate)
  need_running
  "${AUTH[@]}" rotate "$(local_url)"
  ;;
add-user)
  [[ -n ${2:-} ]] || { echo "usage: slurm/mlflow_server.sh add-user NAME [FILE]" >&2; exit 2; }
  need_running
  "${AUTH[@]}" add-user "$(local_url)" "$2" "${3:-$DIR/users/$2.credentials}"
  ;;
*)
  sed -n '2,34p' "$0"; exit 2
  ;;
esac
