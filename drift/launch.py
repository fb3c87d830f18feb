"""Job entrypoint for sweeps: one grid point = one ``RunJob`` call, locally or as a Slurm array task.

    python -m drift.launch --overrides '{"method": "drift", "seed": 0, ...}'   # what the local executor runs

The job is idempotent: every start finds its deterministic run directory and ``drift.train.train``
resumes from the newest committed checkpoint (or returns at once if the run is DONE). So requeue needs
no state in the pickle: ``RunJob.checkpoint`` (called by submitit inside the USR2 handler) does no I/O,
it only returns the same call; the loop has already written checkpoints at step boundaries.

Guards, all per run directory:
* ``LOCK``: an exclusive ``flock`` held while the job trains (released by the kernel when the process
  dies, so never stale); its text names the holder. A second launch of a running point waits
  ``lock_wait_s`` (a requeue may overlap its predecessor's exit) and then returns
  ``{"status": "locked"}`` without training.
* code check: the sweep records the code it submitted (``code_state``: git SHA + a hash of the
  ``drift/`` and ``baselines/`` sources and committed model assets). A job restarted after a requeue
  compares it with the code it now imports: ``code_policy='refuse'`` raises ``CodeChanged`` naming
  the changed files, ``'warn'`` prints them and goes on, ``'ignore'`` skips the check.
* MLflow status: a run that ends by an exception (a crash, submitit's "timed-out too many times") is
  marked FAILED, by Ctrl-C/SIGTERM KILLED, each with a ``termination_reason`` tag; submitit's requeue
  exit leaves it RUNNING for the restart, which reopens the same run.
* ``launch.jsonl``: one row per start/finish (time, job id, Slurm restart count, host, code, the
  checkpoint it resumes from).

Test hook: ``DRIFT_LAUNCH_HOLD="<iteration>[:<regex>]"`` pauses a run whose directory matches the
regex at the start of that iteration (after its checkpoint), writing ``HELD`` and waiting for a
``RELEASE`` file in the run directory (at most ``DRIFT_LAUNCH_HOLD_MAX_S`` = 300 s). Tests use it to
interrupt a run at a known point.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

from submitit.helpers import DelayedSubmission

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_DIRS = ("drift", "baselines")  # what a job imports; experiments/ only builds the submission
# Source and the committed assets it loads (the shapes world's base model and feature net: a model
# replaced under the same path would otherwise mix two base models in one resumed run).
CODE_PATTERNS = ("*.py", "*.json", "*.safetensors")
LOCK, LAUNCH_LOG, JOB_MARKER = "LOCK", "launch.jsonl", "JOB.json"


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock: the point is running elsewhere."""


class CodeChanged(RuntimeError):
    """The code a restarted job would run differs from the code that was submitted."""


# ------------------------------------------------------------------------------------------------
# Code identity
# ------------------------------------------------------------------------------------------------
def code_state(root: str = ROOT) -> dict:
    """{'git_sha', 'git_dirty', 'code_hash', 'files': {relpath: sha256}} of the job's source files."""
    files = {}
    for d in CODE_DIRS:
        paths = {p for pat in CODE_PATTERNS for p in glob.glob(os.path.join(root, d, "**", pat), recursive=True)}
        for p in sorted(paths):
            with open(p, "rb") as f:
                files[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    h = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    sha, dirty = "unknown", None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip() or "unknown"
        st = subprocess.run(["git", "status", "--porcelain", "--", *CODE_DIRS], cwd=root, capture_output=True,
                            text=True, timeout=10).stdout
        dirty = bool(st.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_sha": sha, "git_dirty": dirty, "code_hash": h, "files": files}


def check_code(recorded: dict | None, policy: str = "refuse", root: str = ROOT) -> list[str]:
    """Compare the submitted code with the code on disk now; returns the changed files.

    policy 'refuse' raises CodeChanged when they differ, 'warn' prints them, 'ignore' skips the check.
    """
    if policy not in ("refuse", "warn", "ignore"):
        raise ValueError(f"code_policy={policy!r}: must be 'refuse', 'warn' or 'ignore'")
    if not recorded or policy == "ignore":
        return []
    now = code_state(root)
    if now["code_hash"] == recorded["code_hash"]:
        return []
    old, new = recorded.get("files", {}), now["files"]
    changed = sorted(p for p in set(old) | set(new) if old.get(p) != new.get(p)) or ["<file list not recorded>"]
    msg = (f"code changed since submission (submitted {recorded['code_hash']} at git {recorded.get('git_sha')}, "
           f"now {now['code_hash']} at git {now['git_sha']}): {', '.join(changed[:20])}")
    if policy == "refuse":
        raise CodeChanged(msg + ". Re-run the sweep to resubmit with the current code, or pass --code-policy warn.")
    print(f"[launch] WARNING: {msg}; continuing (code_policy=warn)", flush=True)
    return changed


# ------------------------------------------------------------------------------------------------
# Run-directory state
# ------------------------------------------------------------------------------------------------
def is_done(run_dir: str) -> bool:
    return os.path.exists(os.path.join(run_dir, "DONE")) and os.path.exists(os.path.join(run_dir, "final_eval.json"))


def committed_step(run_dir: str) -> int | None:
    """Newest checkpoint step that has a manifest (committed), without loading it."""
    names = [os.path.basename(os.path.dirname(m))[5:]
             for m in glob.glob(os.path.join(run_dir, "checkpoints", "step_*", "manifest.json"))]
    steps = [int(n) for n in names if n.isascii() and n.isdigit()]  # a stray step_x folder is no checkpoint
    return max(steps) if steps else None


def job_id() -> str:
    """Slurm '<array>_<task>' or job id; 'local:<pid>' elsewhere."""
    e = os.environ
    if e.get("SLURM_ARRAY_JOB_ID"):
        return f"{e['SLURM_ARRAY_JOB_ID']}_{e.get('SLURM_ARRAY_TASK_ID', '')}"
    return e.get("SLURM_JOB_ID") or f"local:{os.getpid()}"


class RunLock:
    """Exclusive flock on <run_dir>/LOCK for the life of a job; ``holder()`` reads who has it."""

    def __init__(self, run_dir: str, wait_s: float = 0.0):
        self.path, self.wait_s, self.fd = os.path.join(run_dir, LOCK), wait_s, None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "RunLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.time() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() >= deadline:
                    os.close(fd)
                    raise RunLocked(f"{os.path.dirname(self.path)} is running elsewhere ({_read(self.path) or '?'})")
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"job_id": job_id(), "host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def holder(run_dir: str) -> str | None:
        """The holder's text if the lock is held now, else None (probes with a non-blocking flock)."""
        path = os.path.join(run_dir, LOCK)
        if not os.path.exists(path):
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:
            return _read(path) or "?"
        finally:
            os.close(fd)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _append_jsonl(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def mark_mlflow_run(run_dir: str, status: str, reason: str) -> None:
    """Mark the run's MLflow run (from <run_dir>/mlflow_run.json) terminated with a termination_reason tag.

    A later resume reopens it as RUNNING. Best effort: metrics.jsonl, not MLflow, is the record."""
    path = os.path.join(run_dir, "mlflow_run.json")
    if not os.path.exists(path):  # MLflow off, or it never started
        return
    try:
        with open(path) as f:
            st = json.load(f)
        if not st.get("run_id") or str(st.get("uri", "none")).lower() == "none":
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=st["uri"])
        client.set_tag(st["run_id"], "termination_reason", reason[:4000])
        client.set_terminated(st["run_id"], status=status)
        print(f"[launch] MLflow run {st['run_id']} marked {status}: {reason[:200]}", flush=True)
    except Exception as e:  # noqa: BLE001 -- never mask the original error
        print(f"[launch] could not mark the MLflow run {status}: {type(e).__name__}: {e}", flush=True)


def _hold_hook(run_dir: str):
    """DRIFT_LAUNCH_HOLD test hook (see the module docstring); None when unset or not matching."""
    spec = os.environ.get("DRIFT_LAUNCH_HOLD", "")
    if not spec:
        return None
    it_s, _, pattern = spec.partition(":")
    if pattern and not re.search(pattern, os.path.abspath(run_dir)):
        return None
    at, max_s = int(it_s), float(os.environ.get("DRIFT_LAUNCH_HOLD_MAX_S", "300"))
    release = os.path.join(run_dir, "RELEASE")

    def hook(phase: str, iteration: int) -> None:
        if phase != "sampling" or iteration != at or os.path.exists(release):
            return
        with open(os.path.join(run_dir, "HELD"), "w") as f:
            f.write(job_id())
        print(f"[launch] holding at iteration {iteration} until {release} exists", flush=True)
        t = time.time()
        while not os.path.exists(release) and time.time() - t < max_s:
            time.sleep(0.2)

    return hook


# ------------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------------
class RunJob:
    """One grid point: ``RunJob(overrides, code)()`` trains (or resumes, or skips) the run it names.

    Submitit-checkpointable: on the pre-timeout/preemption signal submitit calls ``checkpoint`` inside
    the signal handler, pickles what it returns, requeues the task and exits; the restarted task calls
    the same RunJob, which resumes from the last committed checkpoint.
    """

    def __init__(self, overrides: dict, code: dict | None = None, code_policy: str = "refuse",
                 lock_wait_s: float = 30.0):
        self.overrides = dict(overrides)  # typed values, exactly as the sweep validated them
        self.code = code  # code_state() at submission (files may be left out; then only the hash is shown)
        self.code_policy = code_policy
        self.lock_wait_s = lock_wait_s

    def __call__(self) -> dict:
        from . import distributed as dist
        from .config import make_config
        from .train import train

        # A run over several processes (Slurm profile tasks_per_node > 1, or torchrun): every task calls
        # this; rank 0 holds the lock and writes launch.jsonl, train() does the rest (docs/distributed.md).
        dist.export_slurm_env()
        dist.init()
        cfg = make_config(self.overrides)
        run_dir = cfg.run_dir()
        if is_done(run_dir):
            return {"status": "done", "run_dir": run_dir, "ran": False}
        check_code(self.code, self.code_policy)
        os.makedirs(run_dir, exist_ok=True)
        lock = RunLock(run_dir, self.lock_wait_s)

        def take_lock() -> str | None:
            try:
                lock.acquire()
            except RunLocked as e:
                return str(e)
            return None

        held_elsewhere = dist.on_main(take_lock, share=True)  # rank 0 holds it for all ranks
        if held_elsewhere:  # the point runs elsewhere: not an error of this job
            print(f"[launch] not started: {held_elsewhere}", flush=True)
            return {"status": "locked", "run_dir": run_dir, "ran": False, "detail": held_elsewhere}
        try:
            row = {"event": "start", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "job_id": job_id(),
                   "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)), "host": socket.gethostname(),
                   "pid": os.getpid(), "resume_from": committed_step(run_dir),
                   "code_hash": (self.code or {}).get("code_hash"), "git_sha": (self.code or {}).get("git_sha"),
                   "processes": dist.world_size()}
            dist.on_main(lambda: _append_jsonl(os.path.join(run_dir, LAUNCH_LOG), row))
            print(f"[launch] {row['job_id']} start (restart {row['restart_count']}, committed checkpoint: "
                  f"{row['resume_from']}) {run_dir}", flush=True)
            t = time.time()
            try:
                # code_policy warn/ignore accepts other code: also for the checkpoint's code check in train
                final = train(cfg, progress=False, allow_changes=self.code_policy != "refuse",
                              fault_hook=_hold_hook(run_dir))
            except SystemExit:  # submitit's requeue exit: the run continues when the task restarts
                raise
            except BaseException as e:  # a crash, "timed-out too many times", Ctrl-C: not left RUNNING
                if dist.is_main():  # (no collective here: the other ranks may be gone)
                    mark_mlflow_run(run_dir, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED",
                                    f"{type(e).__name__}: {e}")
                raise
            done = {"event": "done", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "job_id": job_id(),
                    "seconds": round(time.time() - t, 1)}
            dist.on_main(lambda: _append_jsonl(os.path.join(run_dir, LAUNCH_LOG), done))
        finally:
            lock.release()
        print(f"[launch] done in {time.time() - t:.0f} s: {run_dir}", flush=True)
        return {"status": "done", "run_dir": run_dir, "ran": True, "final": final.get("final", {})}

    def checkpoint(self, *args, **kwargs):
        """Called inside submitit's signal handler: no I/O; state is on disk (step-boundary checkpoints)."""
        return DelayedSubmission(self, *args, **kwargs)


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run one sweep point (what the sweep's local executor starts).")
    ap.add_argument("--overrides", required=True, help="JSON object {dotted key: value}")
    ap.add_argument("--code", default="", help="JSON code_state() recorded at submission, or a path to it")
    ap.add_argument("--code-policy", default="refuse", choices=("refuse", "warn", "ignore"))
    ap.add_argument("--lock-wait-s", type=float, default=30.0)
    a = ap.parse_args(argv)
    # SIGTERM (the local sweep stopping its points) becomes KeyboardInterrupt: the run is marked KILLED
    # in MLflow on the way out; its last checkpoint stays and a re-run resumes from it.
    signal.signal(signal.SIGTERM, _sigterm)
    code = None
    if a.code:
        code = json.loads(_read(a.code) if os.path.exists(a.code) else a.code)
    try:
        out = RunJob(json.loads(a.overrides), code, a.code_policy, a.lock_wait_s)()
    except CodeChanged as e:
        print(f"[launch] refused: {e}", flush=True)
        return 4
    except KeyboardInterrupt:
        print("[launch] stopped; the last checkpoint is kept", flush=True)
        return 130
    print(f"[launch] {out['status']}: {out['run_dir']}", flush=True)
    return 3 if out["status"] == "locked" else 0


if __name__ == "__main__":
    sys.exit(main())
