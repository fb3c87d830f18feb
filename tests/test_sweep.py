"""Sweeps: grid validation (T19), dry run, locks and double launch (T15), code-change policy (T20),
the no-I/O checkpoint hook (T4), Slurm profiles, and the local executor end to end: run, skip, hold,
interrupt, re-run only the rest with bitwise-identical results."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drift.launch import RunJob, RunLock, RunLocked  # noqa: E402
from drift.provenance import CodeChanged, check_code, code_state  # noqa: E402
from experiments import sweep  # noqa: E402
from experiments.grids import Arm, Grid, GridError, expand, load, names  # noqa: E402

SWEEP = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py")]
TINY = load("smoke").budget


def grid(*arms, seeds=(0,), budget=TINY, **kw):
    return Grid(name="t", doc="test grid", arms=tuple(arms), seeds=seeds, budget=budget, **kw)


def common(tmp_path):
    return {"experiment": "t", "out": str(tmp_path), "tracking_uri": "none", "threads": 1}


def sh(args, env=None, timeout=120):
    return subprocess.run(SWEEP + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def non_sys_rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(ln).items() if not k.startswith("sys/")} for ln in f if ln.strip()]


# ------------------------------------------------------------------------------------------------
# Grids and the dry run
# ------------------------------------------------------------------------------------------------
def test_named_grids_expand_and_are_valid(tmp_path):
    assert {"fast", "pareto", "ablation", "smoke"} <= set(names())
    pts = {n: expand(load(n), common=common(tmp_path)) for n in ("fast", "ablation", "smoke")}
    pareto = pts["fast"]
    assert len(pareto) == 14 and len({p.cfg.seed for p in pareto}) >= 2
    assert {p.cfg.method for p in pareto} == {"flow_grpo", "flow_grpo_kl", "diverse_grpo", "drift"}
    assert sorted({p.cfg.options.lam for p in pareto if p.cfg.method == "drift"}) == [1.0, 2.0]
    abl = pts["ablation"]
    assert len(abl) == 64 and len({p.arm for p in abl}) == 8
    off = {(p.cfg.options.subset, p.cfg.options.prompt, p.cfg.options.shaping) for p in abl if p.cfg.method == "drift"}
    assert ("none", "none", "none") not in off and len(off) == 7
    assert len(pts["smoke"]) == 4
    # deterministic: the same grid gives the same run directories, under <out>/<grid>/<method>/<hash>/seed<k>
    again = expand(load("fast"), common=common(tmp_path))
    assert [p.run_dir for p in pareto] == [p.run_dir for p in again]
    assert pareto[0].run_dir.startswith(os.path.join(str(tmp_path), "t", "flow_grpo", ""))
    # another world is a choice of the grid (the SD3 weights need not exist to validate its points)
    sd3 = expand(load("smoke"), world="sd3", common=common(tmp_path))
    assert {p.cfg.model.world for p in sd3} == {"sd3"}
    assert {p.cfg.model.world for p in expand(load("pareto_sd3"), common=common(tmp_path))} == {"sd3"}


def test_dry_run_prints_points_and_count_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    r = sh(["--grid", "fast", "--dry-run", "--executor", "local", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    points = [ln for ln in lines if ln.startswith("#")]
    assert len(points) == 14
    assert points[0].startswith("#0: method=flow_grpo seed=0")
    assert "#1: method=flow_grpo_kl flow_grpo_kl.beta=0.2 seed=0" in points
    assert any(ln.startswith("14 jobs (14 to run") for ln in lines)
    assert "estimate:" in r.stdout
    assert not out.exists()  # nothing written, nothing submitted


def test_help_lists_the_options():
    r = sh(["--help"])
    assert r.returncode == 0
    for opt in ("--grid", "--dry-run", "--executor", "--parallel", "--profile", "--partition", "--gpus",
                "--time-min", "--array-parallelism", "--setup", "--world", "--code-policy", "--seeds"):
        assert opt in r.stdout, opt


@pytest.mark.parametrize("arm, budget, expect", [
    (Arm("kl", {"method": "flow_grpo_kl"}, {"flow_grpo_kl.beta": (0.04, -1.0)}), TINY,
     ["point #1", "arm 'kl'", "flow_grpo_kl.beta=-1.0", "must be > 0"]),
    (Arm("grpo", {"method": "flow_grpo", "drift.lam": 1.0}), TINY,
     ["point #0", "drift.lam=1.0", "option of method 'drift', but method is 'flow_grpo'"]),
    (Arm("grpo", {"method": "flow_grpo"}), {**TINY, "sample.group_size": 1},
     ["point #0", "sample.group_size=1", "must be >= 2"]),
    (Arm("grpo", {"method": "flow_grpo"}, {"train.lr": ("fast",)}), TINY,
     ["point #0", "train.lr='fast'", "must be of type float"]),
    (Arm("grpo", {"method": "flow_grpo", "train.nope": 1}), TINY, ["point #0", "train.nope", "unknown field"]),
])
def test_invalid_point_names_index_field_value_rule(tmp_path, arm, budget, expect):
    with pytest.raises(GridError) as e:
        expand(grid(arm, budget=budget), common=common(tmp_path))
    for s in expect:
        assert s in str(e.value), (s, str(e.value))


@pytest.mark.parametrize("g, expect", [
    (grid(Arm("kl", {"method": "flow_grpo_kl"}, {"flow_grpo_kl.beta": ()})), "axis 'flow_grpo_kl.beta' is empty"),
    (grid(Arm("a", {"method": "flow_grpo"}), seeds=()), "seeds is empty"),
    (grid(), "arms is empty"),
    (grid(Arm("kl", {"method": "flow_grpo_kl"}, {"flow_grpo_kl.beta": (0.1, 0.1)})), "repeats a value"),
    (grid(Arm("a", {"method": "flow_grpo"}), Arm("a", {"method": "flow_grpo_kl"})), "used twice"),
    (grid(Arm("a", {"method": "flow_grpo", "seed": 3})), "the sweep sets these itself"),
    (grid(Arm("a", {"method": "flow_grpo"}), seeds=(0, 0)), "repeats a seed"),
    # two arms that resolve to the same config (train.lr=1e-3 is the default) and seed
    (grid(Arm("a", {"method": "flow_grpo"}), Arm("b", {"method": "flow_grpo", "train.lr": 1e-3})),
     "point #1 (b: method=flow_grpo train.lr=0.001 seed=0) duplicates point #0"),
])
def test_bad_grid_structure_is_refused(tmp_path, g, expect):
    with pytest.raises(GridError, match=None) as e:
        expand(g, common=common(tmp_path))
    assert expect in str(e.value), str(e.value)


def test_invalid_grid_fails_before_any_sbatch_call(tmp_path):
    """A fake sbatch on PATH records calls: an invalid point must stop the sweep before it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "sbatch_called"
    for tool in ("sbatch", "sinfo", "squeue", "sacct"):
        (bindir / tool).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {record}\nexit 1\n")
        (bindir / tool).chmod(0o755)
    out = tmp_path / "runs"
    r = sh(["--grid", "smoke", "--executor", "slurm", "--profile", "local_ci", "--out", str(out),
            "--set", "sample.group_size=1"], env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    assert r.returncode == 2
    assert "point #0" in r.stderr and "sample.group_size=1" in r.stderr and "must be >= 2" in r.stderr
    assert not record.exists() and not out.exists()
    r = sh(["--grid", "nope", "--dry-run"])
    assert r.returncode == 2 and "unknown grid" in r.stderr and "pareto" in r.stderr


# ------------------------------------------------------------------------------------------------
# Slurm profiles (no cluster needed)
# ------------------------------------------------------------------------------------------------
def test_slurm_profiles_and_sbatch_text(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    gpu, _ = sweep.SlurmProfile.load("example_gpu")
    assert gpu.gpus_per_node == 1 and gpu.signal_delay_s >= 300
    prof, _ = sweep.SlurmProfile.load("local_ci")
    p = prof.executor_params("drift-smoke")
    p = {k.removeprefix("slurm_"): v for k, v in p.items()}
    p["time"], p["mem"] = p.pop("timeout_min"), f"{int(p.pop('mem_gb'))}GB"
    p["ntasks_per_node"] = p.pop("tasks_per_node")
    p["job_name"] = p.pop("name")
    text = _make_sbatch_string(command="python -m x", folder=str(tmp_path), map_count=4, **p)
    for s in ("--signal=USR2@30", "--open-mode=append", "--array=0-3%2", "--partition=debug",
              "--cpus-per-task=1", "export OMP_NUM_THREADS=1"):
        assert s in text, s
    bad = tmp_path / "bad.toml"
    bad.write_text('[slurm]\npartitoin = "gpu"\n')
    with pytest.raises(GridError, match=r"unknown \[slurm\] key\(s\) \['partitoin'\]"):
        sweep.SlurmProfile.load(str(bad))


def fake_slurm(tmp_path, sinfo_ok=True):
    """sbatch/sinfo/squeue stand-ins on PATH, only for the 'is there a Slurm here' detection: sinfo answers,
    any sbatch call is recorded (and fails), so a test can assert that nothing was submitted."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    record = tmp_path / "sbatch_called"
    (bindir / "sinfo").write_text("#!/bin/sh\necho debug\n" if sinfo_ok else "#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "squeue", "sacct"):
        (bindir / tool).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {record}\nexit 1\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, record


def test_slurm_needs_an_explicit_profile_chosen_or_detected(tmp_path):
    out = tmp_path / "runs"
    env, record = fake_slurm(tmp_path)
    for executor in ("slurm", "auto"):  # chosen, or detected because sinfo answers
        r = sh(["--grid", "smoke", "--executor", executor, "--out", str(out)], env=env)
        assert r.returncode == 2, (executor, r.stdout, r.stderr)
        assert "no --profile was given" in r.stderr and "local_ci" in r.stderr and "--executor local" in r.stderr
        assert ("detected" in r.stderr) == (executor == "auto")
    assert not record.exists() and not out.exists()
    # a profile for a non-Slurm executor is a mistake, not silently ignored
    r = sh(["--grid", "smoke", "--executor", "local", "--profile", "sd3_1gpu", "--dry-run"])
    assert r.returncode == 2 and "is for the Slurm executor" in r.stderr
    # with a profile, the dry run shows the sbatch settings and submits nothing
    r = sh(["--grid", "smoke", "--executor", "auto", "--profile", "local_ci", "--dry-run", "--out", str(out)], env=env)
    assert r.returncode == 0, r.stderr
    assert "executor slurm" in r.stdout and "sbatch settings (one array of 4 task(s)" in r.stdout
    assert "partition debug; GPUs none" in r.stdout and "3 GB memory" in r.stdout and "setup lines:" in r.stdout
    assert not record.exists() and not out.exists()


def test_sd3_dry_run_prints_sbatch_settings_and_gpu_hours(tmp_path):
    from experiments.grids.presets import SD3_MINUTES  # noqa: F401 -- the estimate's constants live there

    r = sh(["--grid", "pareto_sd3", "--executor", "slurm", "--profile", "sd3_1gpu", "--dry-run", "--out", str(tmp_path / "r")])
    assert r.returncode == 0, r.stderr
    assert "partition gpu; GPUs 1 per task" in r.stdout and "time limit 720 min" in r.stdout
    assert "source $HOME/drift-bench/.venv/bin/activate" in r.stdout  # the profile's setup lines
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("GPU-hour estimate"))
    pts = expand(load("pareto_sd3"), common=common(tmp_path))
    hours = {p.arm: sweep.point_gpu_hours(p.cfg) for p in pts}
    assert f"about {sum(sweep.point_gpu_hours(p.cfg) for p in pts):.0f} GPU-h for 30 point(s)" in line
    # the per-run figures of the README's GPU-hours table (300 iterations, 7 evaluations)
    assert round(hours["flow_grpo"], 1) == 8.6 and round(hours["flow_grpo_kl"], 1) == 11.0
    # DRIFT v2's defaults draw what they train on (outlier mask, no oversampling) and need no reference policy
    assert round(hours["drift"], 1) == 8.6
    # a smaller batch costs proportionally less sampling and training time
    small = expand(load("pareto_sd3"), extra={"sample.groups_per_iter": 4}, common=common(tmp_path))[0]
    assert sweep.point_gpu_hours(small.cfg) < hours["flow_grpo"]
    r = sh(["--grid", "smoke", "--dry-run", "--executor", "local"])
    assert r.returncode == 0 and "GPU-hour" not in r.stdout  # shapes world: CPU minutes only


def test_check_runs_the_weights_preflight_and_submits_nothing(tmp_path):
    out = tmp_path / "runs"
    r = sh(["--grid", "smoke", "--check", "--executor", "local", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert "preflight passed for all 4 points" in r.stdout and not out.exists()
    r = sh(["--grid", "smoke", "--world", "sd3", "--check", "--executor", "local", "--out", str(out),
            "--set", "model.path=/nonexistent/sd35"])
    assert r.returncode == 2 and "point #0" in r.stderr and "/nonexistent/sd35" in r.stderr, r.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# Locks, code policy, checkpoint hook
# ------------------------------------------------------------------------------------------------
def test_lock_prevents_double_launch_and_dies_with_its_holder(tmp_path):
    run_dir = str(tmp_path / "run")
    assert RunLock.holder(run_dir) is None
    with RunLock(run_dir):
        assert json.loads(RunLock.holder(run_dir))["pid"] == os.getpid()
        with pytest.raises(RunLocked, match="running elsewhere"):
            RunLock(run_dir, wait_s=0).acquire()
    assert RunLock.holder(run_dir) is None
    # a holder that is killed (SIGKILL) leaves no stale lock: flock dies with the process
    code = f"from drift.launch import RunLock; import time; RunLock({run_dir!r}).acquire(); print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert RunLock.holder(run_dir) is not None
    # a job for a point that is running elsewhere does not start (and does not train)
    cfg_over = {**TINY, "method": "flow_grpo", "seed": 0, **common(tmp_path)}
    from drift.config import make_config

    locked_dir = make_config(cfg_over).run_dir()
    with RunLock(locked_dir):
        out = RunJob(cfg_over, lock_wait_s=0)()
    assert out["status"] == "locked" and not os.path.exists(os.path.join(locked_dir, "metrics.jsonl"))
    proc.kill()
    proc.wait()
    assert RunLock.holder(run_dir) is None


def test_queued_slurm_job_is_not_submitted_twice(tmp_path):
    (p,) = expand(grid(Arm("a", {"method": "flow_grpo"})), common=common(tmp_path))
    os.makedirs(p.run_dir)
    with open(os.path.join(p.run_dir, "JOB.json"), "w") as f:
        json.dump({"executor": "slurm", "job_id": "41_3"}, f)
    assert sweep.initial_state(p, active={"41_3"})["status"] == "queued"
    assert sweep.initial_state(p, active={"41_2"})["status"] == "todo"  # stale marker: the job is gone


def test_code_change_policy(tmp_path):
    recorded = code_state()
    assert check_code(recorded, "refuse") == []  # unchanged code passes
    edited = {**recorded, "code_hash": "0" * 16, "files": {**recorded["files"], "drift/train.py": "f" * 64}}
    with pytest.raises(CodeChanged, match=r"code changed since submission .*drift/train\.py"):
        check_code(edited, "refuse")
    assert check_code(edited, "warn") == ["drift/train.py"]
    assert check_code(edited, "ignore") == []
    # a restarted job under the default policy refuses before touching its run directory
    over = {**TINY, "method": "flow_grpo", "seed": 0, **common(tmp_path)}
    with pytest.raises(CodeChanged):
        RunJob(over, edited)()
    assert not os.path.exists(tmp_path / "t")


def test_failed_run_is_not_left_running_in_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from drift.launch import mark_mlflow_run
    from drift.tracking import init_mlflow_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(init_mlflow_experiment(uri, "t", str(tmp_path / "art")))
    (tmp_path / "mlflow_run.json").write_text(json.dumps({"uri": uri, "run_id": run.info.run_id, "last_pushed_step": 3}))
    mark_mlflow_run(str(tmp_path), "FAILED", "UncompletedJobError: Job not requeued because: timed-out too many times.")
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FAILED" and "timed-out too many times" in got.data.tags["termination_reason"]


def test_checkpoint_hook_does_no_io(monkeypatch):
    import builtins

    import cloudpickle
    import submitit

    job = RunJob({"method": "flow_grpo"}, None)

    def boom(*a, **k):
        raise AssertionError("I/O inside the signal handler")

    for mod, name in ((builtins, "open"), (os, "open"), (os, "replace"), (os, "makedirs"), (os, "write")):
        monkeypatch.setattr(mod, name, boom)
    delayed = job.checkpoint()
    monkeypatch.undo()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.function is job
    assert cloudpickle.loads(cloudpickle.dumps(delayed)).function.overrides == job.overrides


# ------------------------------------------------------------------------------------------------
# The local executor end to end
# ------------------------------------------------------------------------------------------------
def _wait(cond, timeout, what):
    t = time.time()
    while not cond():
        if time.time() - t > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.3)


@pytest.mark.slow
def test_local_smoke_run_skip_lock_interrupt_and_rerun(tmp_path):
    out = tmp_path / "runs"
    args = ["--grid", "smoke", "--executor", "local", "--parallel", "2", "--out", str(out), "--tracking-uri", "none",
            "--poll", "1"]
    pts = expand(load("smoke"), common={"experiment": "smoke", "out": str(out), "threads": 1, "tracking_uri": "none"})
    drift_pt = next(p for p in pts if p.cfg.method == "drift")
    others = [p for p in pts if p is not drift_pt]
    done = lambda p: os.path.exists(os.path.join(p.run_dir, "DONE"))  # noqa: E731

    # 1. run the grid; the drift point holds at iteration 1 (after its checkpoint 1) until released
    log_a = open(tmp_path / "a.log", "w")
    a = subprocess.Popen(SWEEP + args, cwd=ROOT, stdout=log_a, stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, "DRIFT_LAUNCH_HOLD": "1:/smoke/drift/"})
    try:
        _wait(lambda: os.path.exists(os.path.join(drift_pt.run_dir, "HELD")) and all(map(done, others)), 240,
              "3 points done and the drift point held")
        # 2. the same command meanwhile: finished points skipped, the running one not launched twice
        b = sh(args)
        assert b.returncode == 3, b.stdout + b.stderr
        assert "skipped (already done) 3" in b.stdout and "running elsewhere" in b.stdout, b.stdout
        # 3. interrupt the first sweep: it stops its running point, which keeps its checkpoint
        os.kill(a.pid, signal.SIGINT)
        assert a.wait(timeout=60) == 130
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    text_a = (tmp_path / "a.log").read_text()
    assert "interrupted" in text_a
    idx = json.load(open(out / "smoke" / "sweep.json"))
    status = {p["index"]: p["status"] for p in idx["points"]}
    assert status[drift_pt.index] == "interrupted" and [status[p.index] for p in others] == ["done"] * 3
    assert not done(drift_pt) and os.path.exists(os.path.join(drift_pt.run_dir, "checkpoints", "step_000001"))

    # 4. re-run: only the drift point runs, resuming from its checkpoint
    c = sh(args, timeout=240)
    assert c.returncode == 0, c.stdout + c.stderr
    assert "done 1, skipped (already done) 3, failed 0" in c.stdout, c.stdout
    assert "[drift] resumed from checkpoint at iteration 1" in open(os.path.join(drift_pt.run_dir, "stdout.log")).read()
    starts = lambda p: [json.loads(ln) for ln in open(os.path.join(p.run_dir, "launch.jsonl")) if '"start"' in ln]  # noqa: E731
    assert [s["resume_from"] for s in starts(drift_pt)] == [None, 1]
    assert all(len(starts(p)) == 1 for p in others)  # finished points never ran again
    assert [r["step"] for r in non_sys_rows(drift_pt.run_dir)] == [0, 1, 2, 3]  # no step lost or logged twice
    idx = json.load(open(out / "smoke" / "sweep.json"))
    assert [p["status"] for p in idx["points"]] == ["done"] * 4
    assert all(os.path.isdir(p["run_dir"]) and p["rel_dir"].endswith("seed0") for p in idx["points"])
    # the wall-time benchmark's breakdown reads the finished sweep (job seconds and phase seconds per method)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from pareto_walltime import analyze

    wall = analyze(str(out / "smoke"))
    assert wall["unfinished_points"] == 0 and sum(m["points"] for m in wall["by_method"].values()) == 4
    assert all(m["point"] > 0 and m["sample"] > 0 and m["evaluation"] > 0 for m in wall["by_method"].values())

    # 5. identical to an uninterrupted run of the same point (bitwise on CPU)
    import torch

    from drift.config import make_config
    from drift.train import train

    threads = torch.get_num_threads()
    try:
        ref = make_config({**drift_pt.overrides, "out": str(tmp_path / "ref")})
        train(ref, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert non_sys_rows(ref.run_dir()) == non_sys_rows(drift_pt.run_dir)
    assert open(os.path.join(ref.run_dir(), "final_eval.json")).read() == \
        open(os.path.join(drift_pt.run_dir, "final_eval.json")).read()
