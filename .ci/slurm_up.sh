#!/usr/bin/env bash
# Bring up a single-node Slurm 22.05 cluster with accounting (slurmdbd + MariaDB) on this machine.
#
#   .ci/slurm_up.sh            # idempotent: installs what is missing, starts what is not running
#   source "$DRIFT_SLURM_RUN/env.sh"    # exports SLURM_CONF for sbatch/squeue/sacct and submitit
#   .ci/slurm_down.sh          # stops every daemon this script started, by pid
#
# Debian 12 as root, no systemd (environment.md §7). Everything lives in one run folder,
# $DRIFT_SLURM_RUN (default /tmp/drift-slurm): slurm.conf, slurmdbd.conf, state, spool, logs, pid
# files and a private MariaDB data directory (its own port, so a system MariaDB is left alone).
# Accounting matters: without it submitit's sacct polling never sees a job that died without a
# result, and job.result() can wait forever (environment.md §7).
set -euo pipefail

RUN=${DRIFT_SLURM_RUN:-/tmp/drift-slurm}
DB_PORT=${DRIFT_SLURM_DB_PORT:-3307}
DBD_PORT=${DRIFT_SLURM_DBD_PORT:-6819}
CTLD_PORT=${DRIFT_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${DRIFT_SLURM_SLURMD_PORT:-6818}
DB_PASS=drift-ci
t0=$(date +%s%N)
log() { local ms=$(( ($(date +%s%N) - t0) / 1000000 )); printf '[slurm_up] %3d.%01d s  %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local n=$(( $1 * 10 )) what=$2; shift 2
  for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "[slurm_up] timed out waiting for $what; logs in $RUN" >&2
  tail -n 20 "$RUN"/*.log "$RUN"/*.out "$RUN"/mysql-run/*.log >&2 2>/dev/null || true
  return 1
}

[[ $(id -u) == 0 ]] || { echo "[slurm_up] must run as root" >&2; exit 1; }

# ---- packages (Debian 12 ships Slurm 22.05) --------------------------------------------------
need=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge slurmdbd:slurmdbd \
            mariadbd:mariadb-server; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
log "packages ready: $(slurmctld -V)"

mkdir -p "$RUN"/{state,spool,pids}
chmod 755 "$RUN"

# ---- munge -----------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [[ -f /etc/munge/munge.key ]] || mungekey --create --keyfile /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  wait_for 10 munged bash -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$RUN/pids/munged.pid"   # ours: slurm_down.sh stops it
  log "munged started"
fi

# ---- MariaDB (private data dir under $RUN, TCP on 127.0.0.1:$DB_PORT) ----------------------------
DATADIR=$RUN/mysql
DBRUN=$RUN/mysql-run          # socket, pid file and log: mariadbd runs as 'mysql' and writes them itself
SOCK=$DBRUN/mysqld.sock
mkdir -p "$DBRUN" && chown mysql:mysql "$DBRUN"
if ! alive "$DBRUN/mariadb.pid"; then
  if [[ ! -d $DATADIR/mysql ]]; then
    mkdir -p "$DATADIR" && chown mysql:mysql "$DATADIR"
    mariadb-install-db --user=mysql --datadir="$DATADIR" --auth-root-authentication-method=socket \
      --skip-test-db >"$RUN/mariadb-install.log" 2>&1
  fi
  nohup mariadbd --user=mysql --datadir="$DATADIR" --socket="$SOCK" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$DBRUN/mariadb.pid" --log-error="$DBRUN/mariadb.log" \
    --skip-log-bin >"$RUN/mariadb.out" 2>&1 &
  wait_for 30 mariadb mariadb-admin --socket="$SOCK" ping
  wait_for 10 "mariadb pid file" test -s "$DBRUN/mariadb.pid"
  cp "$DBRUN/mariadb.pid" "$RUN/pids/mariadb.pid"
  log "mariadbd started (port $DB_PORT)"
fi
mariadb --socket="$SOCK" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# ---- configs (slurm.conf does not expand variables, so the paths are written in) --------------
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
old_conf=$(cat "$RUN/slurm.conf" 2>/dev/null || true)
cat >"$RUN/slurm.conf" <<EOF
# Written by .ci/slurm_up.sh: single node, accounting through slurmdbd (environment.md §7).
ClusterName=ci
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$RUN/state
SlurmdSpoolDir=$RUN/spool
SlurmctldPidFile=$RUN/pids/slurmctld.pid
SlurmdPidFile=$RUN/pids/slurmd.pid
SlurmctldLogFile=$RUN/slurmctld.log
SlurmdLogFile=$RUN/slurmd.log
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
umask 077
cat >"$RUN/slurmdbd.conf" <<EOF
# Written by .ci/slurm_up.sh (mode 600, next to slurm.conf: slurmdbd looks in SLURM_CONF's folder).
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
PidFile=$RUN/pids/slurmdbd.pid
LogFile=$RUN/slurmdbd.log
EOF
umask 022
chmod 600 "$RUN/slurmdbd.conf"
export SLURM_CONF=$RUN/slurm.conf
echo "export SLURM_CONF=$RUN/slurm.conf" >"$RUN/env.sh"

# ---- daemons: slurmdbd before slurmctld (the cluster registers itself), then slurmd -----------
if ! alive "$RUN/pids/slurmdbd.pid"; then
  slurmdbd
  wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT"
  log "slurmdbd started"
fi
if alive "$RUN/pids/slurmctld.pid" && [[ $old_conf != "$(cat "$RUN/slurm.conf")" ]]; then
  scontrol reconfigure && log "slurm.conf changed: reconfigured"
fi
if ! alive "$RUN/pids/slurmctld.pid"; then
  slurmctld -i
  wait_for 30 slurmctld scontrol ping
  log "slurmctld started"
fi
if ! alive "$RUN/pids/slurmd.pid"; then
  slurmd -N localhost
  log "slurmd started"
fi
wait_for 60 "node idle" bash -c 'sinfo -h -N -o %t | grep -qE "^(idle|mix|alloc)"'
wait_for 30 "accounting" sacct -n -X -S now-1minutes
log "cluster up: $(sinfo -h -o '%P %D %t %c CPUs')  SLURM_CONF=$SLURM_CONF"
