"""Run a named grid of training runs: locally in parallel, in-process, or as one Slurm array.

    python experiments/sweep.py --grid pareto --dry-run    # validate every point, print them; submit nothing
    python experiments/sweep.py --grid smoke               # run what is missing (Slurm if there is one, else local)
    python experiments/sweep.py --grid pareto_sd3 --executor slurm --profile sd3_1gpu
    python experiments/sweep.py --grid pareto --seeds 10,11,12   # the grid on seeds of your own (re-judging)
    python experiments/sweep.py --list                     # the grids (experiments/grids/<name>.py)

Every point is one run (drift.launch.RunJob) in a deterministic directory
<out>/<grid>/<method>/<config hash>/seed<k>. Finished points (DONE) are skipped; a point running
elsewhere (its LOCK is held, or its Slurm task is still queued) is not launched twice; an interrupted
point resumes from its last checkpoint. So re-running the same command completes only what is missing.
<out>/<grid>/sweep.json lists every point of the latest invocation (index, overrides, run_dir, status; with
--seeds, those seeds' points) for analysis/; the run directories of other seeds stay where they are.

Exit status: 0 all points done; 1 some failed; 2 invalid grid or arguments (nothing submitted);
3 incomplete (points running elsewhere, or submitted with --no-wait); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import typing
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from drift.config import ConfigError, parse_overrides  # noqa: E402
from drift.launch import RunJob, RunLock  # noqa: E402
from drift.provenance import code_state  # noqa: E402
from drift.rundir import NON_SCIENCE_KEYS, SWEEP_INDEX, RunDir, is_done  # noqa: E402
from drift.rundir import write_json_atomic as _write_json  # noqa: E402
from drift.tracking import (CREDENTIAL_VARS, TrackingAccessError, check_tracking_access,  # noqa: E402
                            check_tracking_uri, credentials_file, mlflow_credentials)
from experiments.grids import GridError, Point, expand, load, names  # noqa: E402

CHECKOUT = os.path.exists(os.path.join(ROOT, "pyproject.toml"))
"""True when running from the repository (editable install or script); False from an installed wheel."""
SLURM_DIR = os.path.join(ROOT if CHECKOUT else os.getcwd(), "slurm")
"""Where ``--profile NAME`` looks for NAME.toml: the checkout's slurm/ (installed: ./slurm/)."""
ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")


def say(msg: str) -> None:
    print(f"[sweep] {msg}", flush=True)


# ================================================================================================
# Slurm cluster profile (slurm/<name>.toml), overridable from the command line
# ================================================================================================
PROFILE_RULES = {"gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 0, "timeout_min": 1,
                 "signal_delay_s": 0, "max_num_timeout": 0, "array_parallelism": 1}
"""Lowest allowed value of each numeric [slurm] key (mem_gb: strictly above)."""


def _profile_type_error(tp, v) -> str | None:
    """None if ``v`` is exactly of the annotated type ``tp`` of a SlurmProfile field, else the rule."""
    if tp is int:
        return None if type(v) is int else "must be an integer"
    if tp is float:
        return None if type(v) in (int, float) and math.isfinite(v) else "must be a finite number"
    if tp is dict:
        return None if isinstance(v, dict) else "must be a table"
    if typing.get_origin(tp) is list:
        return None if isinstance(v, list) and all(isinstance(i, str) for i in v) else "must be a list of strings"
    return None if v is None or isinstance(v, str) else "must be a string"  # str | None


@dataclass
class SlurmProfile:
    partition: str | None = None
    """Slurm partition (sbatch --partition)."""
    gpus_per_node: int = 0
    """GPUs per array task (0 = none)."""
    tasks_per_node: int = 1
    """Processes (ranks) per run, on one node: 1 = a run is one process; n > 1 = each run is data-parallel
    over n processes (set gpus_per_node = n: one GPU per rank; cpus_per_task is per rank, mem_gb per node).
    Every point's sample.groups_per_iter must be divisible by n (checked before submitting); results equal
    a 1-process run up to float reduction order (docs/distributed.md)."""
    cpus_per_task: int = 1
    """CPUs per array task; also the run's torch threads."""
    mem_gb: float = 4.0
    """Memory per array task, GB."""
    timeout_min: int = 60
    """Time limit per task; submitit's pre-timeout signal (USR2) comes signal_delay_s before it."""
    signal_delay_s: int = 90
    """Seconds before the time limit at which USR2 is sent: > worst step + checkpoint save + 60 s."""
    max_num_timeout: int = 3
    """Requeues allowed after a time-out (preemptions requeue without limit)."""
    array_parallelism: int = 64
    """Array tasks running at once."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the job (module loads, venv activation, exports)."""
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    additional: dict = field(default_factory=dict)
    """Extra sbatch options passed verbatim, e.g. {"exclude": "node7"}."""

    @classmethod
    def load(cls, name_or_path: str) -> tuple["SlurmProfile", str]:
        """The profile in slurm/<name>.toml (or a path); GridError naming the file, the line (bad TOML)
        or the key, value and rule (unknown key, wrong type, out of range). Values are taken as written:
        an int field needs a TOML integer (not 2.0, "2" or true)."""
        path = name_or_path if os.path.exists(name_or_path) else os.path.join(SLURM_DIR, f"{name_or_path}.toml")
        if not os.path.exists(path):
            raise GridError(f"--profile {name_or_path!r}: no such file or profile; profiles in {SLURM_DIR}: {profiles()}")
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise GridError(f"{path}: not a valid TOML file ({e})") from None
        except OSError as e:
            raise GridError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
        if set(doc) != {"slurm"} or not isinstance(doc["slurm"], dict):
            raise GridError(f"{path}: must hold exactly one [slurm] table (found top-level "
                            f"{sorted(doc) or 'nothing'}); e.g.\n[slurm]\npartition = \"gpu\"")
        d = doc["slurm"]
        names_ = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names_)
        if bad:
            raise GridError(f"{path}: unknown [slurm] key(s) {bad}; known: {sorted(names_)}")
        prof = cls(**d)
        prof.validate(path)
        return prof, path

    def validate(self, where: str = "the Slurm profile") -> None:
        """Types exactly as annotated and the ranges of PROFILE_RULES; GridError naming ``where``, the key,
        the value and the rule."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            rule = _profile_type_error(hints[f.name], v)
            if rule:
                raise GridError(f"{where}: [slurm] {f.name}={v!r}: {rule}")
            lo = PROFILE_RULES.get(f.name)
            if lo is not None and not v >= lo or (f.name == "mem_gb" and v <= 0):
                raise GridError(f"{where}: [slurm] {f.name}={v!r}: must be "
                                + ("> 0" if f.name == "mem_gb" else f">= {lo}"))

    def describe(self, n_tasks: int) -> str:
        """The sbatch settings an array of ``n_tasks`` tasks would get, one per line (for --dry-run)."""
        gpus = f"{self.gpus_per_node} per task" if self.gpus_per_node else "none"
        lines = [f"sbatch settings (one array of {n_tasks} task(s), at most {self.array_parallelism} at once):",
                 f"  partition {self.partition or '(cluster default)'}; GPUs {gpus}; {self.tasks_per_node} process(es) "
                 f"per run; {self.cpus_per_task} CPU(s) per process; {self.mem_gb:g} GB memory per task",
                 f"  time limit {self.timeout_min} min per task; USR2 {self.signal_delay_s} s before it (checkpoint and "
                 f"requeue, at most {self.max_num_timeout} requeue(s) after a time-out)"]
        for k in ("account", "qos", "constraint"):
            if getattr(self, k):
                lines.append(f"  {k} {getattr(self, k)}")
        if self.additional:
            lines.append(f"  extra sbatch options: {self.additional}")
        lines.append("  setup lines:" + ("".join(f"\n    {s}" for s in self.setup) if self.setup else " (none)"))
        return "\n".join(lines)

    def executor_params(self, job_name: str) -> dict:
        p = {"name": job_name, "timeout_min": int(self.timeout_min), "cpus_per_task": int(self.cpus_per_task),
             "mem_gb": float(self.mem_gb), "tasks_per_node": int(self.tasks_per_node), "nodes": 1,
             "slurm_signal_delay_s": int(self.signal_delay_s), "slurm_array_parallelism": int(self.array_parallelism),
             "slurm_setup": list(self.setup)}
        if self.gpus_per_node:
            p["gpus_per_node"] = int(self.gpus_per_node)
        for k in ("partition", "account", "qos", "constraint"):
            if getattr(self, k):
                p[f"slurm_{k}"] = getattr(self, k)
        if self.additional:
            p["slurm_additional_parameters"] = dict(self.additional)
        return p


def profiles() -> list[str]:
    """The profile names in slurm/."""
    return sorted(f[:-5] for f in os.listdir(SLURM_DIR) if f.endswith(".toml")) if os.path.isdir(SLURM_DIR) else []


def require_profile(profile: str | None, why: str) -> str:
    """The --profile to use when the executor is Slurm; GridError if none was given (no silent default: the
    CI profile would submit CPU-only 3 GB tasks to a 'debug' partition)."""
    if profile:
        return profile
    raise GridError(f"the executor is Slurm ({why}) but no --profile was given; pass --profile NAME "
                    f"(slurm/NAME.toml; here: {profiles()}; local_ci is the CI's one-node cluster, no GPUs) or a "
                    "path to your own, or --executor local to run here")


SLURM_WITHHELD = (CREDENTIAL_VARS[1],)
"""Not handed to sbatch: Slurm keeps a batch job's environment in files (slurmctld's state directory);
the jobs read the password from ~/.mlflow/credentials on the compute node instead."""


@contextlib.contextmanager
def slurm_job_env():
    """This process's environment as a Slurm job will see it: SLURM_WITHHELD variables removed
    (for the access check, and around the sbatch call), restored afterwards."""
    saved = {k: os.environ.pop(k) for k in SLURM_WITHHELD if k in os.environ}
    try:
        yield saved
    finally:
        os.environ.update(saved)


def check_slurm_secrets(prof: "SlurmProfile") -> None:
    """GridError if the profile's setup lines or extra sbatch options hold the MLflow password
    (they are written verbatim into the sbatch script under runs/<grid>/.submitit)."""
    password = mlflow_credentials()[1]
    texts = [*prof.setup, *(f"{k}={v}" for k, v in prof.additional.items())]
    if password and any(password in t for t in texts):
        raise GridError(f"a setup line or sbatch option of the Slurm profile holds the MLflow password: it would "
                        f"be written to the job's sbatch script; remove it (jobs read {credentials_file()})")


def slurm_available() -> tuple[bool, str]:
    if not shutil.which("sbatch"):
        return False, "sbatch is not on PATH"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"sinfo failed: {e}"
    if r.returncode != 0:
        return False, f"sinfo failed: {r.stderr.strip()[:200]}"
    return True, f"partitions {r.stdout.split()}"


def active_slurm_jobs() -> set[str] | None:
    """Ids ('<array>_<task>' or '<job>') of queued/running jobs, or None if squeue is unavailable."""
    if not shutil.which("squeue"):
        return None
    try:
        r = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return {ln.split()[0] for ln in r.stdout.splitlines() if ln.strip() and ln.split()[-1] in ACTIVE}


# ================================================================================================
# Point state, sweep.json, progress
# ================================================================================================
def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def progress_step(run_dir: str) -> int:
    """Last logged step in metrics.jsonl (0 if none, or if the file is unreadable: the display must not stop
    the sweep): the progress of a running point."""
    try:
        return max(0, RunDir(run_dir).last_step())
    except (OSError, ValueError, KeyError):
        return 0


def initial_state(p: Point, active: set[str] | None) -> dict:
    """done | running (LOCK held) | queued (its Slurm job is still active) | todo."""
    rd = p.run_dir
    marker = _read_json(RunDir(rd).job_marker) or {}
    if is_done(rd):
        return {"status": "done", "skipped": True, "job_id": marker.get("job_id"), "log": marker.get("log")}
    holder = RunLock.holder(rd)
    if holder:
        return {"status": "running", "detail": f"running elsewhere: {holder}"}
    if marker.get("executor") == "slurm" and marker.get("job_id"):
        if active is None:
            say(f"#{p.index}: was submitted as Slurm job {marker['job_id']} but squeue is unavailable; "
                "treating it as not running (the job's LOCK still prevents a double run)")
        elif marker["job_id"] in active:
            return {"status": "queued", "job_id": marker["job_id"], "log": marker.get("log"),
                    "detail": f"Slurm job {marker['job_id']} still queued/running"}
    return {"status": "todo"}


class Sweep:
    """The points, their state, sweep.json and the progress display."""

    def __init__(self, grid, world, experiment, exp_dir, points, executor, uri, code, poll):
        self.grid, self.world, self.experiment, self.exp_dir = grid, world, experiment, exp_dir
        self.points, self.executor, self.uri, self.code, self.poll = points, executor, uri, code, poll
        self.state: dict[int, dict] = {}
        self.t0 = time.time()
        self._last_line, self._last_print = "", 0.0
        self.iters = {p.index: p.cfg.train.iterations for p in points}
        self.selected = {p.index for p in points}  # --only narrows it

    def set(self, p: Point, **kw) -> None:
        self.state.setdefault(p.index, {}).update(kw)

    def count(self, status: str) -> int:
        return sum(1 for s in self.state.values() if s.get("status") == status)

    def write(self) -> None:
        rows = []
        for p in self.points:
            s = self.state.get(p.index, {})
            rows.append({"index": p.index, "arm": p.arm, "method": p.cfg.method, "seed": p.cfg.seed, "knobs": p.knobs,
                         "overrides": {k: v for k, v in p.overrides.items() if k not in NON_SCIENCE_KEYS},
                         "run_dir": os.path.abspath(p.run_dir), "rel_dir": os.path.relpath(p.run_dir, self.exp_dir),
                         "status": s.get("status", "todo"), "skipped": bool(s.get("skipped")),
                         "job_id": s.get("job_id"), "log": s.get("log"), "error": s.get("error")})
        _write_json(os.path.join(self.exp_dir, SWEEP_INDEX),
                    {"grid": self.grid.name, "world": self.world, "experiment": self.experiment,
                     "out": os.path.dirname(self.exp_dir), "tracking_uri": self.uri, "executor": self.executor,
                     "code": {k: v for k, v in self.code.items() if k != "files"},
                     "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "seeds": list(self.grid.seeds),
                     "n_points": len(self.points), "points": rows})

    def progress(self, force: bool = False) -> None:
        done = sum(self.iters[i] for i, s in self.state.items() if s.get("status") == "done")
        part = sum(min(progress_step(p.run_dir), self.iters[p.index]) for p in self.points
                   if self.state.get(p.index, {}).get("status") in ("running", "started", "queued"))
        total = sum(self.iters.values())
        queued = sum(1 for i, s in self.state.items()
                     if s.get("status") in ("submitted", "queued") or (s.get("status") == "todo" and i in self.selected))
        el = time.time() - self.t0
        line = (f"done {self.count('done')}/{len(self.points)} | running {self.count('started')} | queued {queued} | "
                f"failed {self.count('failed')} | iterations {done + part}/{total}")
        if force or (line != self._last_line and time.time() - self._last_print >= self.poll) \
                or time.time() - self._last_print >= 6 * self.poll:
            say(f"{int(el) // 60:02d}:{int(el) % 60:02d}  {line}")
            self._last_line, self._last_print = line, time.time()

    def summary(self, interrupted: bool = False) -> int:
        st = self.state
        skipped = sum(1 for s in st.values() if s.get("status") == "done" and s.get("skipped"))
        ran = self.count("done") - skipped
        failed = [p for p in self.points if st[p.index]["status"] == "failed"]
        elsewhere = [p for p in self.points if st[p.index]["status"] in ("running", "queued", "submitted")]
        notrun = [p for p in self.points if st[p.index]["status"] in ("todo", "interrupted", "started")]
        say(f"{self.grid.name}: {len(self.points)} points in {time.time() - self.t0:.0f} s: done {ran}, skipped "
            f"(already done) {skipped}, failed {len(failed)}, running/queued elsewhere {len(elsewhere)}, "
            f"not finished {len(notrun)}")
        say(f"runs: {self.exp_dir}/<method>/<hash>/seed<k>   index: {os.path.join(self.exp_dir, SWEEP_INDEX)}")
        say("logs: " + ("<run_dir>/stdout.log" if self.executor == "local" else
                        os.path.join(self.exp_dir, ".submitit", "<job id>_0_log.{out,err}") if self.executor == "slurm"
                        else "this terminal") + (f"   MLflow: {self.uri} (experiment {self.experiment!r})"
                                                 if self.uri.lower() != "none" else ""))
        for p in failed:
            s = st[p.index]
            say(f"FAILED #{p.index} ({p.arm}: {p.label()}): {s.get('error') or '?'}\n         log: {s.get('log')}")
        for p in elsewhere:
            s = st[p.index]
            say(f"#{p.index} ({p.arm}: {p.label()}) {s['status']}: {s.get('detail') or s.get('job_id')}")
        if interrupted or notrun or elsewhere:
            say("re-run the same command to finish what is missing (finished points are skipped, "
                "interrupted ones resume from their last checkpoint)")
        elif not failed:
            runs = os.path.dirname(self.exp_dir)
            say(f"next: python analysis/frontier.py --grid {self.experiment}"
                + ("" if runs == os.path.join(ROOT, "runs") else f" --runs-dir {runs}"))
        if interrupted:
            return 130
        if failed:
            return 1
        return 3 if (elsewhere or notrun) else 0


def point_tags(sw: Sweep, p: Point) -> dict[str, str]:
    """MLflow tags of a point: the grid, its arm and world, each swept knob as ``knob.<key>``, and the
    submitted code's hash (ablation variants of one method are then told apart in the MLflow UI)."""
    return {"grid": sw.grid.name, "arm": p.arm, "world": sw.world, "submitted_code_hash": sw.code["code_hash"],
            **{f"knob.{k}": str(v) for k, v in p.knobs.items()}}


def _tail(path: str | None, n: int = 3) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 4000))
        lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


# ================================================================================================
# Executors
# ================================================================================================
def run_debug(sw: Sweep, todo: list[Point], code: dict, policy: str) -> None:
    """In-process, one after another (breakpoints work)."""
    for p in todo:
        sw.set(p, status="started")
        sw.write()
        say(f"#{p.index} start ({p.arm}: {p.label()})")
        try:
            out = RunJob(p.overrides, code, policy, lock_wait_s=0, tags=point_tags(sw, p))()
            if out["status"] == "locked":
                sw.set(p, status="running", detail=out["detail"])
            else:
                sw.set(p, status="done" if is_done(p.run_dir) else "failed")
        except Exception as e:  # noqa: BLE001 -- one failed point must not stop the sweep
            import traceback

            traceback.print_exc()
            sw.set(p, status="failed", error=f"{type(e).__name__}: {e}"[:500])
        sw.write()
        sw.progress(force=True)


def run_local(sw: Sweep, todo: list[Point], code_path: str, policy: str, parallel: int, threads: int) -> None:
    """Subprocesses (python -m drift.launch), up to `parallel` at once; logs in <run_dir>/stdout.log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    pending, running = list(todo), {}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                p = pending.pop(0)
                rd = p.run_dir
                if is_done(rd):  # finished by someone else meanwhile
                    sw.set(p, status="done", skipped=True)
                    continue
                holder = RunLock.holder(rd)
                if holder:
                    sw.set(p, status="running", detail=f"running elsewhere: {holder}")
                    continue
                os.makedirs(rd, exist_ok=True)
                log = RunDir(rd).stdout_log
                logf = open(log, "a")
                logf.write(f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%S')} sweep {sw.grid.name} point #{p.index}\n")
                logf.flush()
                cmd = [sys.executable, "-m", "drift.launch", "--overrides", json.dumps(p.overrides),
                       "--code", code_path, "--code-policy", policy, "--tags", json.dumps(point_tags(sw, p))]
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT)
                _write_json(RunDir(rd).job_marker, {"executor": "local", "job_id": f"local:{proc.pid}",
                                                           "log": log, "submitted": time.time()})
                running[p.index] = (p, proc, logf, time.time())
                sw.set(p, status="started", job_id=f"local:{proc.pid}", log=log)
                sw.write()
                say(f"#{p.index} start ({p.arm}: {p.label()}) pid {proc.pid}")
            time.sleep(0.5)
            for i, (p, proc, logf, t) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                logf.close()
                del running[i]
                if rc == 0 and is_done(p.run_dir):
                    sw.set(p, status="done")
                    say(f"#{p.index} done in {time.time() - t:.0f} s ({p.arm}: {p.label()})")
                elif rc == 3:
                    sw.set(p, status="running", detail="running elsewhere (its LOCK was taken after launch)")
                else:
                    sw.set(p, status="failed", error=f"exit {rc}: {_tail(sw.state[i].get('log'))}"[:800])
                    say(f"#{p.index} FAILED (exit {rc}) ({p.arm}: {p.label()}); log: {sw.state[i].get('log')}")
                sw.write()
            sw.progress()
    except KeyboardInterrupt:
        say(f"interrupted: stopping {len(running)} running point(s); their last checkpoints are kept")
        for p, proc, logf, t in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for p, proc, logf, t in running.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logf.close()
            sw.set(p, status="done" if is_done(p.run_dir) else "interrupted")
        for p in pending:
            sw.set(p, status="todo")
        raise


def _result(job) -> dict:
    """A finished submitit job's returned dict ({} if it failed or returned nothing readable)."""
    try:
        out = job.result()
        return out if isinstance(out, dict) else {}
    except Exception:  # noqa: BLE001 -- failures are reported from job.exception()
        return {}


def run_slurm(sw: Sweep, todo: list[Point], code: dict, policy: str, prof: SlurmProfile, wait: bool) -> None:
    """One submitit array for all points to run; then wait, showing progress."""
    import submitit

    for p in todo:
        os.makedirs(p.run_dir, exist_ok=True)
    folder = os.path.join(sw.exp_dir, ".submitit")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=prof.max_num_timeout)
    ex.update_parameters(**prof.executor_params(f"drift-{sw.experiment}"))
    jobs = []
    with slurm_job_env(), ex.batch():  # sbatch gets no password (see SLURM_WITHHELD)
        for p in todo:
            jobs.append(ex.submit(RunJob(p.overrides, code, policy, tags=point_tags(sw, p))))
    array = jobs[0].job_id.split("_")[0] if jobs else "?"
    say(f"submitted {len(jobs)} task(s) as Slurm array {array} (at most {prof.array_parallelism} at once); "
        f"logs in {folder}")
    live = {}
    for p, j in zip(todo, jobs):
        log = str(j.paths.stdout)
        _write_json(RunDir(p.run_dir).job_marker, {"executor": "slurm", "job_id": j.job_id, "log": log,
                                                           "submitted": time.time(), "folder": folder})
        sw.set(p, status="submitted", job_id=j.job_id, log=log)
        live[p.index] = (p, j)
    sw.write()
    if not wait:
        say("--no-wait: not waiting; re-run the same command to see progress and the summary")
        return
    try:
        while live:
            time.sleep(2)
            for i, (p, j) in list(live.items()):
                if sw.state[i]["status"] == "submitted" and RunLock.holder(p.run_dir):
                    sw.set(p, status="started")
                if not j.done():
                    continue
                del live[i]
                res = _result(j)
                if is_done(p.run_dir):
                    sw.set(p, status="done")
                    say(f"#{p.index} done ({p.arm}: {p.label()}) [{j.job_id}]")
                elif res.get("status") == "locked":
                    sw.set(p, status="running", detail=res.get("detail"))
                    say(f"#{p.index} not started [{j.job_id}]: {res.get('detail')}")
                else:
                    err = ""
                    try:
                        exc = j.exception()
                        err = str(exc).strip().splitlines()[-1] if exc else f"state {j.state}"
                    except Exception as e:  # noqa: BLE001 -- submitit raises on unreadable results
                        err = f"{type(e).__name__}: {e}"
                    sw.set(p, status="failed", error=f"[{j.job_id}] {err}"[:800])
                    say(f"#{p.index} FAILED [{j.job_id}] ({p.arm}: {p.label()}): {err[:300]}")
                sw.write()
            sw.progress()
    except KeyboardInterrupt:
        say(f"stopped waiting; the array keeps running in Slurm (scancel {array} to stop it). "
            "Re-run the same command to wait again: nothing is submitted twice.")
        raise


# ================================================================================================
# CLI
# ================================================================================================
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", help=f"grid name: one of {names()}")
    ap.add_argument("--list", action="store_true", help="list the grids and exit")
    ap.add_argument("--dry-run", action="store_true", help="validate every point, print '#i: overrides', the job "
                    "count, the sbatch settings (Slurm) and the GPU-hour estimate (SD3 grids); submit and write nothing")
    ap.add_argument("--check", action="store_true", help="--dry-run plus the preflight a real submission runs "
                    "(model weights and files readable for every point); submit and write nothing")
    ap.add_argument("--executor", default="auto", choices=("auto", "local", "slurm", "debug"),
                    help="auto (default) = slurm where sbatch/sinfo work, else local; debug = in-process, sequential")
    ap.add_argument("--world", default=None, help="world preset of the grid (default: the grid's first, 'shapes')")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field for every point (changes the run hash), e.g. --set train.lr=3e-4")
    ap.add_argument("--out", default=os.path.join(ROOT if CHECKOUT else os.getcwd(), "runs"), help="output root (runs go to <out>/<experiment>/)")
    ap.add_argument("--experiment", default=None, help="experiment name (default: the grid's name; "
                    "<grid>_<world> for a non-default world)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow URI for every run (default: $MLFLOW_TRACKING_URI, "
                    "else sqlite:///<out>/mlflow.db; 'none' = off). On a cluster use slurm/mlflow_server.sh")
    ap.add_argument("--code-policy", default="refuse", choices=("refuse", "warn", "ignore"),
                    help="a restarted job whose code differs from the submitted code: refuse (default), warn, ignore")
    ap.add_argument("--seeds", default=None, metavar="S,T,...", help="run the grid on these seeds instead of its own "
                    "(e.g. 10,11,12: re-judge on seeds of your own); distinct non-negative integers")
    ap.add_argument("--only", default="", metavar="I,J,...", help="run only these point indices (as printed by "
                    "--dry-run); the others are left as they are")
    ap.add_argument("--poll", type=float, default=10.0, help="seconds between progress lines")
    g = ap.add_argument_group("local executor")
    g.add_argument("--parallel", "--jobs", type=int, default=len(os.sched_getaffinity(0)),
                   help="points at once (default: the cores available, %(default)s here); with --device cuda they share "
                   "the GPU (e.g. --jobs 8 --device cuda puts 8 runs on one GPU, each with --threads CPU threads)")
    g.add_argument("--device", default=None, help="the shapes world's device for every point ('cpu', 'cuda', "
                   "'cuda:<i>', 'auto'; default: the config's, cpu); not part of a run's config hash")
    g.add_argument("--threads", type=int, default=1, help="torch threads per point (default 1: more threads than "
                   "free cores makes every op wait for the slowest thread; on Slurm it is the profile's cpus_per_task)")
    g = ap.add_argument_group("slurm executor (defaults from the profile)")
    g.add_argument("--profile", default=None, help="slurm/<name>.toml or a path; required whenever the executor is "
                   "Slurm (chosen, or detected by --executor auto): there is no default cluster profile")
    g.add_argument("--partition")
    g.add_argument("--gpus", type=int, dest="gpus_per_node", help="GPUs per task")
    g.add_argument("--tasks-per-node", type=int, dest="tasks_per_node",
                   help="processes (one per GPU) per run; > 1 trains each run data-parallel (docs/distributed.md)")
    g.add_argument("--cpus", type=int, dest="cpus_per_task", help="CPUs per task (= torch threads)")
    g.add_argument("--mem-gb", type=float, dest="mem_gb")
    g.add_argument("--time-min", type=int, dest="timeout_min", help="time limit per task, minutes")
    g.add_argument("--signal-delay-s", type=int, dest="signal_delay_s")
    g.add_argument("--max-num-timeout", type=int, dest="max_num_timeout")
    g.add_argument("--array-parallelism", type=int, dest="array_parallelism")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--setup", action="append", default=[], help="extra shell line before the job (repeatable)")
    g.add_argument("--no-wait", action="store_true", help="submit and return (re-run later for the summary)")
    return ap


def parse_seeds(text: str) -> tuple[int, ...]:
    """'10,11,12' -> (10, 11, 12); GridError naming --seeds, the value and the rule (distinct non-negative
    integers, at least one)."""
    parts = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in parts):
        raise GridError(f"--seeds {text!r}: must be a comma-separated list of seeds like 10,11,12 (no empty item)")
    bad = [t for t in parts if not (t.isascii() and t.isdigit())]  # int() would take '٣', '1_0' or '+1'
    if bad:
        raise GridError(f"--seeds {text!r}: {bad[0]!r} is not a seed; seeds are non-negative integers like 10,11,12")
    seeds = tuple(int(t) for t in parts)
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise GridError(f"--seeds {text!r}: seed(s) {dup} repeated; each seed may appear once")
    return seeds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for n in names():
            g = load(n)
            print(f"{n:10s} {(g.doc or '').strip().splitlines()[0]}")
        return 0
    if not args.grid:
        build_parser().error("--grid is required (or --list)")
    # ---- validate everything before anything is written or submitted -------------------------
    try:
        grid = load(args.grid)
        if args.seeds is not None:
            grid = dataclasses.replace(grid, seeds=parse_seeds(args.seeds))
        world = args.world or grid.default_world()
        experiment = args.experiment or (grid.name if world == grid.default_world() else f"{grid.name}_{world}")
        executor, why = args.executor, "--executor slurm"
        if executor == "auto":
            ok, why = slurm_available()
            executor = "slurm" if ok else "local"
            why = f"detected: {why}" if ok else why
            if not args.dry_run:
                say(f"executor: {executor} ({why})")
        if executor != "slurm" and args.profile:
            raise GridError(f"--profile {args.profile!r} is for the Slurm executor, but the executor is {executor}")
        prof = None
        if executor == "slurm":
            prof, prof_path = SlurmProfile.load(require_profile(args.profile, why))
            for k in ("partition", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "signal_delay_s",
                      "max_num_timeout", "array_parallelism", "account", "qos"):
                if getattr(args, k) is not None:
                    setattr(prof, k, getattr(args, k))
            prof.setup = [*prof.setup, *args.setup]
            prof.validate(f"{prof_path} with the command-line options")
            check_slurm_secrets(prof)
        if args.parallel < 1:
            raise GridError(f"--parallel={args.parallel}: must be >= 1")
        threads = prof.cpus_per_task if prof else args.threads
        out = os.path.abspath(args.out)
        extra = parse_overrides(args.extra)
        common = {"experiment": experiment, "out": out, "threads": threads}
        if args.device is not None:
            common["device"] = args.device
        if args.tracking_uri is not None:
            if not args.tracking_uri.strip():  # e.g. "$(slurm/mlflow_server.sh uri)" with no server running
                raise GridError("--tracking-uri '': empty (a failed $(...)?); it would silently log to the default "
                                "local store. Pass the server's URI, 'none', or leave the option out for the default")
            common["tracking_uri"] = args.tracking_uri
        points = expand(grid, world, extra, common)
        if prof is not None and prof.tasks_per_node != 1:  # whole groups per rank, before anything is submitted
            if prof.tasks_per_node < 1:
                raise GridError(f"tasks_per_node={prof.tasks_per_node}: must be >= 1")
            from drift.train import batch_plan

            for p in points:
                try:
                    batch_plan(p.cfg, prof.tasks_per_node)
                except ConfigError as e:
                    raise GridError(f"point #{p.index} ({p.label()}) with tasks_per_node={prof.tasks_per_node}: "
                                    f"{e}") from None
        parts = [i.strip() for i in args.only.split(",") if i.strip()]
        if not all(i.isascii() and i.isdigit() for i in parts):  # int() would take '٣' or '1_0'
            raise GridError(f"--only {args.only!r}: must be point indices like 0,3,7")
        only = {int(i) for i in parts}
        if only - {p.index for p in points}:
            raise GridError(f"--only: no point(s) {sorted(only - {p.index for p in points})}; the grid has "
                            f"#0..#{len(points) - 1}")
        uri = points[0].cfg.resolved_tracking_uri()
        for p in points:  # pin the resolved URI so array tasks do not depend on their environment
            p.overrides["tracking_uri"] = uri
        check_tracking_uri(uri)  # no user:password@ in a URI that every run records
        if args.check:
            args.dry_run = True
        if not args.dry_run or args.check:  # a world without a backend, missing model files: before anything is written
            from drift.worlds import check_available

            for p in points:
                try:
                    check_available(p.cfg)
                except (ConfigError, NotImplementedError) as e:
                    raise GridError(f"grid {grid.name!r} point #{p.index} ({p.label()}): {e}") from None
            if args.check:
                say(f"check: the preflight passed for all {len(points)} points (model files and weights readable)")
    except (GridError, ConfigError, TrackingAccessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    exp_dir = os.path.join(out, experiment)
    if (not args.dry_run or args.check) and uri.lower() != "none":  # no, wrong or refused credentials: before anything is written
        with slurm_job_env() if executor == "slurm" else contextlib.nullcontext({}) as withheld:
            try:
                check_tracking_access(uri)  # with the credentials the jobs will have
            except Exception as e:  # noqa: BLE001 -- a refusal (TrackingAccessError) or an unreachable server
                why = str(e) if isinstance(e, TrackingAccessError) else \
                    f"MLflow at {uri} is not usable ({type(e).__name__}: {str(e)[:300]})"
                if withheld and isinstance(e, TrackingAccessError):
                    why = (f"Slurm jobs do not get {', '.join(withheld)} (sbatch would hand it to Slurm, which keeps "
                           f"a batch job's environment in its state files); they read {credentials_file()}: {why}")
                print(f"error: {why}; nothing was submitted", file=sys.stderr)
                return 2

    if args.dry_run:
        return dry_run(grid, world, experiment, exp_dir, points, extra, common, uri, executor, prof, args)

    # ---- state of every point ----------------------------------------------------------------
    os.makedirs(exp_dir, exist_ok=True)
    code = code_state()
    code_path = os.path.join(exp_dir, ".sweep", f"code-{code['code_hash']}.json")
    os.makedirs(os.path.dirname(code_path), exist_ok=True)
    _write_json(code_path, code)
    sw = Sweep(grid, world, experiment, exp_dir, points, executor, uri, code, args.poll)
    for note in grid.notes:
        say(note)
    active = active_slurm_jobs() if any(os.path.exists(RunDir(p.run_dir).job_marker) for p in points) else set()
    for p in points:
        sw.set(p, **initial_state(p, active))
    todo = [p for p in points if sw.state[p.index]["status"] == "todo" and (not only or p.index in only)]
    say(f"grid {grid.name} (world {world}) -> {exp_dir}: {len(points)} points, {sw.count('done')} already done, "
        f"{sw.count('running') + sw.count('queued')} running/queued elsewhere, {len(todo)} to run on {executor}"
        + (f" ({args.parallel} at once)" if executor == "local" else ""))
    say(f"code: git {code['git_sha'][:12]}{' (dirty)' if code['git_dirty'] else ''}, source hash {code['code_hash']}")
    sw.selected = {p.index for p in todo}
    sw.write()
    if todo and uri.lower() != "none":  # first-time DB set-up is racy: do it once, before any job starts
        from drift.tracking import init_mlflow_experiment

        if executor == "slurm" and uri.startswith("sqlite"):
            say("note: SQLite MLflow DB on a shared filesystem is unreliable with many jobs; "
                "on a cluster start slurm/mlflow_server.sh and pass --tracking-uri http://HOST:PORT")
        try:
            init_mlflow_experiment(uri, experiment, os.path.join(out, "mlartifacts"))
        except Exception as e:  # noqa: BLE001 -- any client/server error: say so before submitting anything
            print(f"error: MLflow at {uri} is not usable ({type(e).__name__}: {str(e)[:300]}); nothing was "
                  "submitted. Start the server (slurm/mlflow_server.sh start) or pass --tracking-uri none",
                  file=sys.stderr)
            return 2

    # ---- run ------------------------------------------------------------------------------------
    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        if todo:
            if executor == "debug":
                run_debug(sw, todo, code, args.code_policy)
            elif executor == "local":
                # longest expected points first (LPT): the last few points then overlap less with idle cores
                todo = sorted(todo, key=lambda p: -grid.point_seconds.get(p.cfg.method, 0))
                run_local(sw, todo, code_path, args.code_policy, args.parallel, threads)
            else:
                run_slurm(sw, todo, code, args.code_policy, prof, wait=not args.no_wait)
    except KeyboardInterrupt:
        sw.write()
        return sw.summary(interrupted=True)
    sw.write()
    sw.progress(force=True)
    return sw.summary()


def dry_run(grid, world, experiment, exp_dir, points, extra, common, uri, executor, prof, args) -> int:
    for note in grid.notes:
        print(note)
    print(f"grid {grid.name!r}, world {world!r}: {len(grid.arms)} arms x {len(grid.seeds)} seeds "
          f"{tuple(grid.seeds)}{' (--seeds)' if args.seeds is not None else ''} -> runs in {exp_dir}")
    print(f"  base:   {' '.join(f'{k}={v}' for k, v in grid.base.items()) or '-'}")
    print(f"  budget: {' '.join(f'{k}={v}' for k, v in grid.budget.items()) or '-'}")
    if grid.worlds[world]:
        print(f"  world:  {' '.join(f'{k}={v}' for k, v in grid.worlds[world].items())}")
    if extra:
        print(f"  --set:  {' '.join(f'{k}={v}' for k, v in extra.items())}")
    print(f"  every point also: {' '.join(f'{k}={v}' for k, v in {**common, 'tracking_uri': uri}.items())}")
    n_todo, secs = 0, 0.0
    for p in points:
        done = is_done(p.run_dir)
        n_todo += not done
        secs += 0 if done else grid.point_seconds.get(p.cfg.method, 0)
        print(f"#{p.index}: {p.label()}" + (f"   # {p.arm}" if p.arm != p.cfg.method else "")
              + ("   [done]" if done else ""))
    print(f"{len(points)} jobs ({n_todo} to run, {len(points) - n_todo} already done); executor {executor}"
          + (f", one Slurm array, profile {args.profile}" if executor == "slurm" else ""))
    if prof is not None:
        print(prof.describe(n_todo))
    todo = [p for p in points if not is_done(p.run_dir)]
    if any(p.cfg.model.world == "sd3" for p in todo):
        print(gpu_hours_text(todo, prof.tasks_per_node if prof else 1))
    if secs and world == grid.default_world() and not extra:
        par = args.parallel if executor == "local" else (prof.array_parallelism if prof else 1)
        print(f"estimate: {secs / 60:.0f} CPU-minutes -> about {secs / 60 / max(1, par):.0f} min with {par} at once "
              f"(measured per point on the 2-core dev machine)")
    return 0


def gpu_hours_text(points: list[Point], gpus_per_run: int = 1) -> str:
    """The GPU-hour estimate of the points still to run (SD3 world), from ``point_gpu_hours``."""
    from experiments.grids.presets import SD3_MINUTES

    per = {}
    for p in points:
        per.setdefault(p.arm, []).append(point_gpu_hours(p.cfg))
    total = sum(sum(v) for v in per.values())
    arms = ", ".join(f"{a} {v[0]:.1f} h x {len(v)}" for a, v in per.items())
    return (f"GPU-hour estimate: about {total:.0f} GPU-h for {len(points)} point(s) to run ({arms}); "
            f"extrapolated from the GPU check on an H200 ({SD3_MINUTES['source']}), not measured on SD3.5-M"
            + (f"; with {gpus_per_run} GPUs per run about the same GPU-hours in 1/{gpus_per_run} of the wall time, "
               "plus communication" if gpus_per_run > 1 else ""))


def point_gpu_hours(cfg) -> float:
    """GPU-hours of one SD3 run: iterations x minutes per iteration + evaluations x minutes per evaluation.

    Minutes per iteration from ``SD3_MINUTES``: a plain iteration, one with reference-policy passes (KL,
    DiverseGRPO) or one with 2x oversampling (DRIFT's subset selection), whichever is largest; scaled by
    the sampled images relative to the SD3 preset. Evaluations at iteration 0, every eval.every, and the last."""
    from drift.contract import method_spec
    from experiments.grids.presets import SD3, SD3_MINUTES

    hooks = method_spec(cfg.method).build(cfg.options)
    per_iter = max(SD3_MINUTES["iteration"], SD3_MINUTES["iteration_reference"] if hooks.needs_reference else 0,
                   SD3_MINUTES["iteration_oversample2"] if hooks.oversample >= 2 else 0)
    scale = (cfg.sample.group_size * cfg.sample.groups_per_iter) / (SD3["sample.group_size"] * SD3["sample.groups_per_iter"])
    it, every = cfg.train.iterations, cfg.eval.every
    evals = 1 + it // every + (it % every != 0)
    return (it * per_iter * scale + evals * SD3_MINUTES["evaluation"]) / 60


if __name__ == "__main__":
    sys.exit(main())
