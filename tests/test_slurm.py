"""A real Slurm cluster (.ci/slurm_up.sh): the smoke grid as one submitit array, two tasks forced to
requeue mid-run, both resume from their last committed checkpoint and finish bitwise-identical to an
uninterrupted run, with one MLflow run each and no step lost or logged twice (T3/T6/T7 on CPU).

* task A gets submitit's preemption signal (``job._interrupt()``: SIGTERM then USR2): submitit calls
  ``RunJob.checkpoint`` (no I/O), requeues ``<array>_<task>`` and exits;
* task B is requeued by the admin path (``scontrol requeue``): killed without a checkpoint hook and
  restarted from its original pickle; the idempotent entrypoint still resumes from disk.

Skipped, with the reason, where ``sbatch`` is absent or no cluster answers (unless
DRIFT_REQUIRE_SLURM=1, as in .ci/run, which turns the skip into a failure).
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drift.launch import RunLock  # noqa: E402
from experiments.grids import expand, load  # noqa: E402

SWEEP = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py")]


def _cluster() -> str | None:
    """None if a cluster answers, else why not."""
    if not shutil.which("sbatch"):
        return "sbatch is not on PATH (no Slurm here; .ci/slurm_up.sh brings up a local one)"
    r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        err = "; ".join(ln.strip() for ln in r.stderr.splitlines() if ln.strip())[:300]
        return f"sbatch found but no cluster answers (sinfo: {err}); is SLURM_CONF set? (.ci/slurm_up.sh)"
    if not any(s.startswith(("idle", "mix", "alloc")) for s in r.stdout.split()):
        return f"no usable node (sinfo states: {r.stdout.split()})"
    return None


WHY = _cluster()
if WHY and os.environ.get("DRIFT_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"DRIFT_REQUIRE_SLURM=1 but {WHY}")
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(WHY is not None, reason=WHY or "")]


def _wait(cond, timeout, what, proc=None):
    t = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) while waiting for {what}")
        if time.time() - t > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.3)


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(ln).items() if not k.startswith("sys/")} for ln in f if ln.strip()]


def _read(path):
    with open(path) as f:
        return f.read()


def test_smoke_array_requeue_resumes_bitwise(tmp_path):
    out = tmp_path / "runs"
    uri = f"sqlite:///{out}/mlflow.db"
    args = ["--grid", "smoke", "--executor", "slurm", "--profile", "local_ci", "--out", str(out), "--poll", "2",
            "--tracking-uri", uri]
    pts = expand(load("smoke"), common={"experiment": "smoke", "out": str(out), "threads": 1, "tracking_uri": uri})
    a = next(p for p in pts if p.cfg.method == "drift")  # gets USR2 (submitit's checkpoint-and-requeue)
    b = next(p for p in pts if p.cfg.method == "diverse_grpo")  # gets `scontrol requeue` (killed, no hook)
    job = lambda p: json.load(open(os.path.join(p.run_dir, "JOB.json")))  # noqa: E731
    held = lambda p: os.path.exists(os.path.join(p.run_dir, "HELD"))  # noqa: E731

    # Submit the whole grid as one array; A and B pause at iteration 1, after their checkpoint 1.
    log = open(tmp_path / "sweep.log", "w")
    sweep = subprocess.Popen(SWEEP + args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "DRIFT_LAUNCH_HOLD": "1:/smoke/(drift|diverse_grpo)/"})
    try:
        _wait(lambda: held(a) and held(b), 240, "tasks A and B to hold at iteration 1", sweep)
        ja, jb = job(a)["job_id"], job(b)["job_id"]
        array = ja.split("_")[0]
        assert "_" in ja and jb.split("_")[0] == array, (ja, jb)  # one array for the grid

        import submitit

        submitit.SlurmJob(os.path.join(out, "smoke", ".submitit"), ja)._interrupt(timeout=False)
        subprocess.run(["scontrol", "requeue", jb], check=True, timeout=30)
        # once the first attempts have exited (their locks are free), let the restarts run through
        _wait(lambda: RunLock.holder(a.run_dir) is None and RunLock.holder(b.run_dir) is None, 60,
              "the interrupted attempts to exit", sweep)
        for p in (a, b):
            open(os.path.join(p.run_dir, "RELEASE"), "w").close()
        assert sweep.wait(timeout=240) == 0, _read(tmp_path / "sweep.log")
    finally:
        if sweep.poll() is None:
            sweep.kill()
            subprocess.run(["scancel", array], timeout=30)
    text = _read(tmp_path / "sweep.log")
    assert f"submitted 4 task(s) as Slurm array {array}" in text
    assert "done 4, skipped (already done) 0, failed 0" in text, text

    # A: submitit's handler checkpointed (no I/O) and requeued exactly this array task
    log_a = _read(job(a)["log"]) + _read(job(a)["log"].replace("_log.out", "_log.err"))
    assert "Caught signal SIGUSR2" in log_a and "Calling checkpoint method" in log_a, log_a
    assert f"Requeued job {ja}" in log_a, log_a
    for p in (a, b):
        log_p = _read(job(p)["log"])
        assert "[drift] resumed from checkpoint at iteration 1" in log_p, log_p
        starts = [json.loads(ln) for ln in open(os.path.join(p.run_dir, "launch.jsonl")) if '"start"' in ln]
        assert [(s["restart_count"], s["resume_from"]) for s in starts] == [(0, None), (1, 1)], starts
        assert [r["step"] for r in _rows(p.run_dir)] == [0, 1, 2, 3]
    sacct = lambda: subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-o", "JobID,State", "-j", ja],  # noqa: E731
                                   capture_output=True, text=True, timeout=30).stdout.split()
    _wait(lambda: f"{ja}|COMPLETED" in sacct(), 60, f"sacct to record {ja} COMPLETED")  # the step may still be ending
    assert f"{ja}|REQUEUED" in sacct(), sacct()

    # One MLflow experiment, one run per point (the requeued ones reused theirs), each step once
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    for p in (a, b):
        run_id = json.load(open(os.path.join(p.run_dir, "DONE")))["mlflow_run_id"]
        assert sorted(m.step for m in client.get_metric_history(run_id, "reward/mean")) == [1, 2, 3]

    # Bitwise equal to uninterrupted runs of the same points (same CPU, 1 thread)
    import torch

    from drift.config import make_config
    from drift.train import train

    threads = torch.get_num_threads()
    try:
        for p in (a, b):
            ref = make_config({**p.overrides, "out": str(tmp_path / "ref"), "tracking_uri": "none"})
            train(ref, progress=False)
            assert _rows(ref.run_dir()) == _rows(p.run_dir), p.cfg.method
            assert _read(os.path.join(ref.run_dir(), "final_eval.json")) == _read(os.path.join(p.run_dir, "final_eval.json"))
    finally:
        torch.set_num_threads(threads)

    # The same command again submits nothing: every point is done
    again = subprocess.run(SWEEP + args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "skipped (already done) 4" in again.stdout, again.stdout + again.stderr
    assert "submitted" not in again.stdout and job(a)["job_id"] == ja
