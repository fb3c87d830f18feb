"""Chaos sweep: the `chaos` grid (3 points) run by the real sweep driver (local executor, 2 at once)
while a seeded loop SIGKILLs random worker processes and the driver itself at random moments, and
restarts the same command after each kill of the driver, until the sweep completes. Compared with an
undisturbed sweep of the same grid: every run's metrics.jsonl (timings aside), final_eval.json and
final checkpoint (weights, EMA, AdamW, RNG) bitwise equal; sweep.json and the analysis's gains.json
equal (paths aside); in MLflow one run per run directory, FINISHED, one row per (run, key, step);
no LOCK left held, and the same command again skips every point.

The test prints how many kills it made and where they landed (driver / worker, and the worker's state:
start-up, before its first checkpoint, between checkpoints, inside a checkpoint write, finished).
"""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drift.launch import RunLock  # noqa: E402
from experiments.grids import expand, load  # noqa: E402

SWEEP = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py"), "--grid", "chaos", "--executor", "local",
         "--parallel", "2", "--poll", "2"]
SEED = int(os.environ.get("DRIFT_CHAOS_SEED", "20260112"))
KILLS = max(5, int(os.environ.get("DRIFT_CHAOS_KILLS", "5")))
ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def points(out: str):
    return expand(load("chaos"), common={"experiment": "chaos", "out": out, "threads": 1,
                                         "tracking_uri": f"sqlite:///{out}/mlflow.db"})


def holders(out: str) -> dict[str, int]:
    """run dir -> pid of the live worker holding its LOCK."""
    got = {}
    for p in points(out):
        h = RunLock.holder(p.run_dir)
        if h:
            try:
                got[p.run_dir] = int(json.loads(h)["pid"])
            except (ValueError, KeyError):
                pass
    return got


def _wait_free(out: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while holders(out) and time.time() < deadline:
        time.sleep(0.5)


def where(run_dir: str) -> str:
    """The state of a worker's run at the moment it is killed."""
    ck = os.path.join(run_dir, "checkpoints")
    names = os.listdir(ck) if os.path.isdir(ck) else []
    if any(n.startswith(".tmp_") for n in names):
        return "inside a checkpoint write"
    if os.path.exists(os.path.join(run_dir, "DONE")):
        return "after DONE"
    if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        return "start-up (no step logged)"
    if not any(n.startswith("step_") for n in names):
        return "before its first checkpoint"
    return "between checkpoints"


def det_rows(run_dir: str) -> list[dict]:
    from drift.rundir import read_metrics

    return [{k: v for k, v in r.items() if not (k.startswith("sys/") and k.endswith("seconds"))}
            for r in read_metrics(run_dir)]


def sweep_view(out: str) -> dict:
    d = json.load(open(os.path.join(out, "chaos", "sweep.json")))
    keep = ("index", "arm", "method", "seed", "knobs", "overrides", "rel_dir", "status")
    ov = lambda o: {k: v for k, v in o.items() if k != "tracking_uri"}  # noqa: E731
    return {"grid": d["grid"], "n_points": d["n_points"],
            "points": [{**{k: p[k] for k in keep if k != "overrides"}, "overrides": ov(p["overrides"])}
                       for p in d["points"]]}


def analyse(out: str) -> dict:
    r = subprocess.run([sys.executable, os.path.join(ROOT, "analysis", "frontier.py"), "--runs-dir", out,
                        "--experiment", "chaos", "--no-mlflow", "--no-progress", "--bootstrap", "50",
                        "--baseline", "flow_grpo"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    text = open(os.path.join(out, "chaos", "analysis", "gains.json")).read()
    return json.loads(text.replace(out, "<out>"))


@pytest.mark.slow
def test_chaos_sweep_ends_in_the_undisturbed_report(tmp_path):
    import torch
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    ref, out = str(tmp_path / "ref"), str(tmp_path / "chaos")
    t0 = time.time()
    # the undisturbed sweep: the same grid, in-process one point after another (the executor is not part
    # of a run's identity: its run directories are those of the local executor)
    r = subprocess.run(SWEEP + ["--out", ref, "--executor", "debug"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    t_ref = time.time() - t0

    rng = random.Random(SEED)
    # what each kill aims at: the driver twice, workers in each phase of a run at least once
    plan = ["driver", "driver", "start-up (no step logged)", "before its first checkpoint", "between checkpoints"]
    plan += [rng.choice(plan) for _ in range(KILLS - len(plan))]
    rng.shuffle(plan)
    kills: list[tuple[float, str, str]] = []
    starts, t1 = 0, time.time()
    log = open(tmp_path / "chaos.log", "w")
    driver = None
    try:
        while True:
            if driver is None or driver.poll() is not None:
                if driver is not None and driver.returncode == 0:
                    break  # complete (a kill whose target the sweep never reached again is not made)
                assert starts < 4 * KILLS + 6, f"the sweep did not complete after {starts} starts"
                if driver is not None and driver.returncode == 3:  # points still run in orphaned workers
                    _wait_free(out, 300)
                driver = subprocess.Popen(SWEEP + ["--out", out], cwd=ROOT, env=ENV, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
                starts += 1
            if len(kills) >= KILLS:  # the kills are made: let the last start run to the end
                driver.wait(timeout=1800)
                continue
            target = plan[len(kills)]
            if target == "driver":  # its workers live on, as after a login-node reboot
                deadline = time.time() + 600  # once work is under way, whatever the machine's speed
                while not holders(out) and driver.poll() is None and time.time() < deadline:
                    time.sleep(0.2)
                time.sleep(rng.uniform(0.0, 3.0))
                if driver.poll() is not None:
                    continue
                os.kill(driver.pid, signal.SIGKILL)
                driver.wait()
                kills.append((time.time() - t1, "driver", f"{len(holders(out))} worker(s) running"))
                continue
            # a worker in the planned state (polled every 50 ms), killed a random instant later
            deadline, hit = time.time() + 600, None
            while hit is None and driver.poll() is None and time.time() < deadline:
                cands = sorted(rd for rd in holders(out) if where(rd) == target)
                hit = rng.choice(cands) if cands else None
                time.sleep(0.05)
            if hit is None:  # the sweep ended (or its driver was gone) before any worker got there
                continue
            time.sleep(rng.uniform(0.0, 0.5))
            pid, state = holders(out).get(hit), where(hit)
            if pid is None:
                continue
            os.kill(pid, signal.SIGKILL)
            kills.append((time.time() - t1, f"worker {os.path.relpath(hit, out)}", state))
        _wait_free(out, 300)  # orphaned workers of a killed driver may still be finishing
        final = subprocess.run(SWEEP + ["--out", out], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for pid in holders(out).values():
            os.kill(pid, signal.SIGKILL)
        log.close()
    t_chaos = time.time() - t1
    print(f"\n[chaos] seed {SEED}: {len(kills)} kills in {starts} driver starts; undisturbed sweep {t_ref:.0f} s, "
          f"chaos sweep {t_chaos:.0f} s")
    for t, who, state in kills:
        print(f"[chaos]   {t:6.1f} s  SIGKILL {who}: {state}")
    assert final.returncode == 0 and "skipped (already done) 3" in final.stdout, final.stdout[-2000:]
    assert "submitted" not in final.stdout and " start (" not in final.stdout  # nothing ran again

    # every run equal to its undisturbed twin
    for pr, pc in zip(points(ref), points(out)):
        assert det_rows(pc.run_dir) == det_rows(pr.run_dir), pc.run_dir
        assert open(os.path.join(pc.run_dir, "final_eval.json")).read() == \
            open(os.path.join(pr.run_dir, "final_eval.json")).read()
        last = sorted(glob.glob(os.path.join(pr.run_dir, "checkpoints", "step_*")))[-1]
        a = load_file(os.path.join(last, "tensors.safetensors"))
        b = load_file(os.path.join(pc.run_dir, "checkpoints", os.path.basename(last), "tensors.safetensors"))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), pc.run_dir
        assert RunLock.holder(pc.run_dir) is None
    assert sweep_view(out) == sweep_view(ref)
    assert analyse(out) == analyse(ref)

    # MLflow: one run per run directory (deleted ones included), FINISHED, one row per (run, key, step)
    client = MlflowClient(tracking_uri=f"sqlite:///{out}/mlflow.db")
    exp = client.get_experiment_by_name("chaos")
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)
    by_dir = {}
    for run in runs:
        by_dir.setdefault(run.data.tags.get("run_dir"), []).append(run)
    assert sorted(by_dir) == sorted(os.path.abspath(p.run_dir) for p in points(out)), sorted(by_dir)
    for rd, rs in by_dir.items():
        assert len(rs) == 1 and rs[0].info.status == "FINISHED" and rs[0].info.lifecycle_stage == "active", rd
        want = {}
        for row in det_rows(rd):
            for k in row:
                if k != "step":
                    want.setdefault(k, []).append(row["step"])
        for k, steps in want.items():
            got = sorted(m.step for m in client.get_metric_history(rs[0].info.run_id, k))
            assert got == steps, (rd, k, got, steps)
        for k in rs[0].data.metrics:  # timings too: never a step twice
            got = [m.step for m in client.get_metric_history(rs[0].info.run_id, k)]
            assert len(got) == len(set(got)), (rd, k, got)
    assert len(kills) >= KILLS - 1 and {who.split()[0] for _, who, _ in kills} == {"driver", "worker"}, kills
