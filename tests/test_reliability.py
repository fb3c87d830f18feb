"""The failure-test suite T1-T20 (docs/reliability.md, The tests), on CPU. docs/reliability.md maps
every T to its test; T7 (real Slurm) is tests/test_slurm.py, T12/T13 tests/test_mlflow_concurrency.py,
T15/T19 (grid validation)/T4 (no-I/O checkpoint hook) tests/test_sweep.py.

Run as a script, this file is the crash driver of the SIGKILL tests: ``python tests/test_reliability.py
'<json spec>'`` trains one run and SIGKILLs itself at the named point (see ``_driver``).
"""

from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

TINY = {"sample.groups_per_iter": 2, "sample.group_size": 4, "sample.num_steps": 4, "eval.num_prompts": 4,
        "eval.seeds": 2, "eval.num_steps": 4, "eval.grid_prompts": 2, "threads": 1, "experiment": "t"}
TRAIN_PHASES = ("sampling", "reward", "advantage", "backward", "optimizer", "checkpoint", "log")


def over(tmp, tracking="none", **extra) -> dict:
    """Overrides of a tiny run under ``tmp`` (threads=1: bitwise comparisons need one thread count)."""
    return {**TINY, "out": str(tmp), "tracking_uri": tracking, **{k.replace("__", "."): v for k, v in extra.items()}}


def cfg_of(o: dict):
    from drift.config import make_config

    return make_config(o)


def run(o: dict, **kw):
    """train() in-process, restoring the torch thread count it sets."""
    from drift.train import train

    n = torch.get_num_threads()
    try:
        return train(cfg_of(o), progress=False, **kw)
    finally:
        torch.set_num_threads(n)


def rows(run_dir: str) -> list[dict]:
    from drift.rundir import read_metrics

    return read_metrics(run_dir)


def det(rs: list[dict]) -> list[dict]:
    """Rows without wall-clock timings (sys/*_seconds): what must be bitwise equal after a resume."""
    return [{k: v for k, v in r.items() if not (k.startswith("sys/") and k.endswith("seconds"))} for r in rs]


def ckpt(run_dir: str, step: int) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(run_dir, "checkpoints", f"step_{step:06d}", "tensors.safetensors"))


def assert_same_tensors(a: dict, b: dict, prefixes=("model/", "ema/", "optim/", "rng/")):
    keys = [k for k in a if k.startswith(prefixes)]
    assert keys and keys == [k for k in b if k.startswith(prefixes)]
    for k in keys:
        assert torch.equal(a[k], b[k]), k


_REFS: dict[str, str] = {}
_DB: dict[str, str] = {}


def sqlite_uri(tmp_path) -> str:
    """A SQLite MLflow store under tmp_path: a copy of one initialised per session (creating the
    tables runs MLflow's migrations, seconds of CPU; T13 tests first-time creation itself)."""
    if "template" not in _DB:
        import tempfile

        from mlflow.tracking import MlflowClient

        path = os.path.join(tempfile.mkdtemp(prefix="drift_mlflow_template_"), "mlflow.db")
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        _DB["template"] = path
    os.makedirs(tmp_path, exist_ok=True)
    shutil.copy(_DB["template"], os.path.join(tmp_path, "mlflow.db"))
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """reference(**extra) -> run dir of an uninterrupted run of that config (cached per module)."""

    def get(**extra) -> str:
        key = json.dumps(extra, sort_keys=True)
        if key not in _REFS:
            o = over(tmp_path_factory.mktemp("ref"), **extra)
            run(o)
            _REFS[key] = cfg_of(o).run_dir()
        return _REFS[key]

    return get


def mlflow_run(uri: str, experiment: str = "t"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]  # one (active) run per run directory
    return client, runs[0]


def assert_mlflow_matches(uri: str, ref_rows: list[dict]):
    """Every (key, step) of the reference once in MLflow, deterministic values equal to the reference."""
    client, r = mlflow_run(uri)
    keys = sorted({k for row in ref_rows for k in row if k != "step"})
    for key in keys:
        hist = client.get_metric_history(r.info.run_id, key)
        steps = sorted(m.step for m in hist)
        ref_steps = sorted(row["step"] for row in ref_rows if key in row)
        if key.startswith("sys/") and key.endswith("seconds"):
            # timings: never twice; a step restored from its checkpoint lacks the checkpoint's own timing
            assert len(steps) == len(set(steps)) and set(steps) <= set(ref_steps), (key, steps)
        else:
            assert steps == ref_steps, (key, steps)
            want = {row["step"]: row[key] for row in ref_rows if key in row}
            for m in hist:
                assert m.value == want[m.step] or (m.value != m.value and want[m.step] != want[m.step]), (key, m.step)
    return client, r


# ================================================================================================
# T1 / T2: SIGKILL of a real process at every kind of point, then the same command again
# ================================================================================================
def _driver(spec: dict) -> None:
    """Train ``spec['overrides']``; SIGKILL this process at ``spec['kill'] = [point, step]``.

    Points: a train() fault phase (iteration index), or inside the checkpoint write of step N:
    'ckpt_before_manifest' (tensors and state written), 'ckpt_before_rename' (manifest written),
    'ckpt_after_rename' (committed, before the parent fsync and pruning), or 'mlflow_push' (MLflow
    accepted the metrics of step N, mlflow_run.json not yet updated)."""
    from drift.config import make_config
    from drift.train import train

    point, at = spec.get("kill") or (None, None)

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    hook = None
    if point in TRAIN_PHASES:
        def hook(phase, it):
            if (phase, it) == (point, at):
                die()
    elif point == "ckpt_before_manifest":
        import drift.checkpoint as C

        real_json = C._write_json

        def write_json(path, obj):
            if path.endswith("manifest.json") and f".tmp_step_{at:06d}_" in path:
                die()
            real_json(path, obj)

        C._write_json = write_json
    elif point in ("ckpt_before_rename", "ckpt_after_rename"):
        real_rename = os.rename

        def rename(src, dst, *a, **k):
            hit = os.path.basename(dst) == f"step_{at:06d}"
            if hit and point == "ckpt_before_rename":
                die()
            real_rename(src, dst, *a, **k)
            if hit:
                die()

        os.rename = rename
    elif point == "mlflow_push":
        from mlflow.tracking import MlflowClient

        real_batch = MlflowClient.log_batch

        def log_batch(self, run_id, *a, **k):
            out = real_batch(self, run_id, *a, **k)
            ms = k.get("metrics") or (a[0] if a else ())
            if ms and ms[0].step == at:
                die()
            return out

        MlflowClient.log_batch = log_batch
    elif point is not None:
        raise ValueError(f"unknown kill point {point!r}")
    train(make_config(spec["overrides"]), progress=False, on_phase=hook)


def _serve() -> None:
    """Fork server: imports what a run imports once, then for each spec read from stdin forks a fresh
    process that runs ``_driver(spec)`` with stdout/stderr to ``spec['log']``, waits for it and replies
    with its exit status (negative: killed by that signal). Saves ~3 s of imports per attempt; the
    killed process's memory is lost as with any SIGKILL, and nothing has run in the parent."""
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import mlflow.tracking  # noqa: F401
    from diffusers import SD3Transformer2DModel  # noqa: F401  (resolves diffusers' lazy modules)
    from peft import LoraConfig  # noqa: F401

    import drift.train  # noqa: F401
    import drift.worlds.shapes.backend  # noqa: F401

    for line in sys.stdin:
        spec = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            fd = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 0
            try:
                _driver(spec)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"rc": rc}), flush=True)


class Launcher:
    """Client of ``_serve``: ``launch(overrides, kill) -> (exit status, output)``."""

    def __init__(self, tmp):
        self.tmp, self.n = tmp, 0
        env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def launch(self, o: dict, kill=None) -> tuple[int, str]:
        self.n += 1
        log = os.path.join(self.tmp, f"attempt{self.n}.log")
        self.proc.stdin.write(json.dumps({"overrides": o, "kill": kill, "log": log}) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, f"the fork server died (exit {self.proc.poll()})"
        return json.loads(reply)["rc"], open(log).read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_at_every_point_then_rerun_is_bitwise_exact(tmp_path, reference):
    """T1/T2/T6/T14: SIGKILL inside the checkpoint write (before the manifest, before and after the
    rename), right after MLflow accepted a step, mid-iteration (reward phase), each time followed by
    the same command: per-step metrics, weights, EMA, optimiser and RNG state bitwise equal to an
    uninterrupted run; one row per (key, step) in metrics.jsonl and in MLflow; one MLflow run,
    reopened on each resume, FINISHED without a stale termination_reason."""
    extra = {"train__iterations": 4, "checkpoint_every": 2, "eval__every": 2}
    ref_dir = reference(**extra)
    uri = sqlite_uri(tmp_path)
    o = over(tmp_path, tracking=uri, **extra)
    run_dir = cfg_of(o).run_dir()
    ck = os.path.join(run_dir, "checkpoints")
    state = lambda: json.load(open(os.path.join(run_dir, "mlflow_run.json")))  # noqa: E731
    steps = lambda: [r["step"] for r in rows(run_dir)]  # noqa: E731
    committed = lambda: sorted(d for d in os.listdir(ck) if d.startswith("step_"))  # noqa: E731
    server = Launcher(str(tmp_path))

    def attempt(kill, resumed_from):
        rc, out = server.launch(o, kill)
        assert rc == (-signal.SIGKILL if kill else 0), (kill, rc, out[-3000:])
        m = re.findall(r"resumed from checkpoint at iteration (\d+)", out)
        assert m == ([str(resumed_from)] if resumed_from is not None else []), (kill, out[-2000:])

    try:
        # 1. killed while writing checkpoint 2, before its manifest: nothing committed
        attempt(["ckpt_before_manifest", 2], None)
        assert committed() == [] and steps() == [0, 1]
        assert any(d.startswith(".tmp_step_000002") for d in os.listdir(ck))
        # 2. a fresh start (the temp folder is removed, never loaded); killed right after the rename of 2
        attempt(["ckpt_after_rename", 2], None)
        assert committed() == ["step_000002"] and steps() == [0, 1]  # step 2 checkpointed, not yet logged
        run_id = state()["run_id"]
        # 3. resumes from 2 (its row restored from the checkpoint); killed after MLflow took step 3,
        #    before mlflow_run.json recorded it
        attempt(["mlflow_push", 3], 2)
        assert steps() == [0, 1, 2, 3] and state()["last_pushed_step"] == 2 and state()["inflight"]["step"] == 3
        # 4. resumes from 2 again; step 3 recomputed and its push completed with only the keys MLflow
        #    lacked; killed mid-iteration 3 (reward phase)
        attempt(["reward", 3], 2)
        assert steps() == [0, 1, 2, 3] and state()["last_pushed_step"] == 3
        # 5. killed with checkpoint 4 fully written but not renamed
        attempt(["ckpt_before_rename", 4], 2)
        assert committed() == ["step_000002"]
        # 6. the same command, no fault: finishes
        attempt(None, 2)
    finally:
        server.close()

    assert steps() == [0, 1, 2, 3, 4]  # one row per step in metrics.jsonl
    ref_rows = rows(ref_dir)
    assert det(rows(run_dir)) == det(ref_rows)  # every metric of every step, bitwise
    assert committed() == ["step_000002", "step_000004"] and not [d for d in os.listdir(ck) if d.startswith(".")]
    for s in (2, 4):
        assert_same_tensors(ckpt(run_dir, s), ckpt(ref_dir, s))  # weights, EMA, AdamW state, RNG streams
    client, r = assert_mlflow_matches(uri, ref_rows)
    assert r.info.run_id == run_id == state()["run_id"] and r.info.status == "FINISHED"
    assert "termination_reason" not in r.data.tags


# ================================================================================================
# T14: idempotent logging (unit level, real MLflow)
# ================================================================================================
def test_tracker_never_pushes_a_step_twice(tmp_path):
    """T14: a restart truncates metrics.jsonl to the checkpoint and pushes only what MLflow lacks: after
    a crash between logging steps 2-3 and checkpoint 3; after a push cut off before mlflow_run.json
    recorded it; with a torn last line in metrics.jsonl."""
    from mlflow.tracking import MlflowClient

    from drift.tracking import Tracker

    uri = sqlite_uri(tmp_path)
    rd = str(tmp_path / "run")
    os.makedirs(rd)
    mk = lambda resume: Tracker(rd, uri, "t", "r", {"a": 1}, str(tmp_path / "art"), resume_step=resume)  # noqa: E731
    row = lambda s, x=0.0: {"m/a": s + 0.5 + x, "m/b": -s + x}  # noqa: E731
    t = mk(None)
    for s in range(4):
        t.log(s, row(s))
    # crash; the last checkpoint was at step 1: steps 2, 3 are recomputed (other values: a changed timing)
    t = mk(1)
    assert [r["step"] for r in rows(rd)] == [0, 1]  # truncated before continuing
    t.log(2, row(2, 0.25))
    t.log(3, row(3, 0.25))
    # a push cut off after MLflow took step 4 but before mlflow_run.json recorded it
    real = MlflowClient.log_batch

    def cut(self, run_id, *a, **k):
        real(self, run_id, *a, **k)
        raise KeyboardInterrupt("killed")

    MlflowClient.log_batch = cut
    try:
        with pytest.raises(KeyboardInterrupt):
            t.log(4, row(4))
    finally:
        MlflowClient.log_batch = real
    with open(os.path.join(rd, "metrics.jsonl"), "a") as f:
        f.write('{"step": 5, "m/a": 1.')  # torn by a crash mid-write
    with pytest.warns(UserWarning, match="torn last line"):
        t = mk(3)  # resumed from a checkpoint at step 3
    t.log(4, row(4, 0.25))
    t.log(5, row(5))
    client = MlflowClient(tracking_uri=uri)
    for key in ("m/a", "m/b"):
        hist = client.get_metric_history(t.run_id, key)
        assert sorted(m.step for m in hist) == [0, 1, 2, 3, 4, 5], key
    assert {m.step: m.value for m in client.get_metric_history(t.run_id, "m/a")}[2] == 2.5  # first push kept
    assert [r["step"] for r in rows(rd)] == [0, 1, 2, 3, 4, 5]


def test_mlflow_client_errors_surface_verbatim_and_are_not_retried(tmp_path):
    """T14: identical params re-logged are accepted; a changed param surfaces MLflow's own error at once
    (no retries, no backoff); a transient error is retried and counted."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
    from mlflow.tracking import MlflowClient

    from drift import tracking

    uri = sqlite_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(tracking.init_mlflow_experiment(uri, "t", str(tmp_path)))
    rid = run.info.run_id
    tracking._retry(lambda: client.log_batch(rid, params=[Param("train.lr", "0.001")]), "p")
    tracking._retry(lambda: client.log_batch(rid, params=[Param("train.lr", "0.001")]), "p")  # identical: fine
    n0, t0 = tracking.RETRIES["count"], time.time()
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        tracking._retry(lambda: client.log_batch(rid, params=[Param("train.lr", "0.5")]), "p")
    assert tracking.RETRIES["count"] == n0 and time.time() - t0 < 0.4
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 2:
            raise MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE)
        return "ok"

    with pytest.warns(UserWarning, match="retrying"):
        assert tracking._retry(flaky, "flaky") == "ok"
    assert tracking.RETRIES["count"] == n0 + 1


# ================================================================================================
# T8: corrupt or partial checkpoints
# ================================================================================================
def _two_checkpoints(root: str) -> None:
    from drift.checkpoint import save_checkpoint

    for s in (1, 2):
        save_checkpoint(root, s, {"w": torch.arange(64, dtype=torch.float32) * s}, {"iteration": s})


def _flip(path: str, offset: int | None = None) -> None:
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        i = len(data) - 7 if offset is None else offset
        data[i] ^= 0x01
        f.seek(0)
        f.write(data)


CORRUPTIONS = {
    "truncated": (lambda d: open(os.path.join(d, "tensors.safetensors"), "r+b").truncate(100), "tensors.safetensors: size"),
    "manifest_missing": (lambda d: os.remove(os.path.join(d, "manifest.json")), "no manifest.json"),
    "payload_byte_flipped": (lambda d: _flip(os.path.join(d, "tensors.safetensors")), "tensors.safetensors: sha256"),
    "state_byte_flipped": (lambda d: _flip(os.path.join(d, "state.json"), 3), "state.json: sha256"),
    "manifest_garbled": (lambda d: open(os.path.join(d, "manifest.json"), "w").write("{\"step\": 2, "), "manifest"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_loudly(tmp_path, kind):
    """T8 (a)-(c): the newest checkpoint damaged -> a warning naming the file, the previous one loads;
    both damaged -> CheckpointError naming both."""
    from drift.checkpoint import CheckpointError, load_latest

    root = str(tmp_path)
    _two_checkpoints(root)
    damage, what = CORRUPTIONS[kind]
    damage(os.path.join(root, "checkpoints", "step_000002"))
    with pytest.warns(UserWarning, match="fell back to checkpoint .*step_000001") as w:
        step, tensors, state = load_latest(root)
    assert what in str(w[0].message) and "step_000002" in str(w[0].message)
    assert step == 1 and state == {"iteration": 1} and torch.equal(tensors["w"], torch.arange(64.0))
    damage(os.path.join(root, "checkpoints", "step_000001"))
    with pytest.raises(CheckpointError, match="no valid checkpoint") as e:
        load_latest(root)
    assert "step_000001" in str(e.value) and "step_000002" in str(e.value)


def test_sha256_is_what_catches_a_flipped_payload_byte(tmp_path):
    """T8 (c): safetensors itself loads a file with a flipped payload byte without complaint."""
    from drift.checkpoint import _verify

    _two_checkpoints(str(tmp_path))
    d = os.path.join(tmp_path, "checkpoints", "step_000002")
    _flip(os.path.join(d, "tensors.safetensors"))
    assert not torch.equal(load_file(os.path.join(d, "tensors.safetensors"))["w"], torch.arange(64.0) * 2)
    with pytest.raises(Exception, match="sha256"):
        _verify(d)


def test_leftover_temporary_checkpoint_is_removed_never_loaded(tmp_path):
    """T8 (d): a complete-looking temp folder (a crash just before the rename) is deleted, not loaded."""
    from drift.checkpoint import load_latest, save_checkpoint

    root = str(tmp_path)
    _two_checkpoints(root)
    save_checkpoint(str(tmp_path / "other"), 3, {"w": torch.full((64,), 9.0)}, {"iteration": 3})
    tmp = os.path.join(root, "checkpoints", ".tmp_step_000003_4242")
    shutil.copytree(os.path.join(tmp_path, "other", "checkpoints", "step_000003"), tmp)
    step, tensors, _ = load_latest(root)
    assert step == 2 and not os.path.exists(tmp)


def test_resume_over_a_corrupt_checkpoint_falls_back_and_stays_exact(tmp_path, reference):
    """T8 end to end: crash after checkpoint 2 (before its row is logged), flip a byte of it: the rerun
    warns, resumes from 1 and still ends bitwise equal to an uninterrupted run."""
    extra = {"train__iterations": 2, "checkpoint_every": 1, "eval__every": 10}
    ref_dir = reference(**extra)
    o = over(tmp_path, **extra)

    class Crash(Exception):
        pass

    def crash(phase, it):
        if (phase, it) == ("log", 1):
            raise Crash

    with pytest.raises(Crash):
        run(o, on_phase=crash)
    run_dir = cfg_of(o).run_dir()
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["step_000001", "step_000002"]
    _flip(os.path.join(run_dir, "checkpoints", "step_000002", "tensors.safetensors"))
    with pytest.warns(UserWarning, match=r"fell back to checkpoint .*step_000001.*sha256"):
        run(o)
    assert det(rows(run_dir)) == det(rows(ref_dir))
    assert_same_tensors(ckpt(run_dir, 2), ckpt(ref_dir, 2))


def test_retention_keeps_the_new_checkpoint_and_one_older(tmp_path):
    """T9 retention: the checkpoint just written is never pruned, newer leftovers do not count."""
    from drift.checkpoint import save_checkpoint

    root = str(tmp_path)
    for s in (1, 2, 3):
        save_checkpoint(root, s, {"w": torch.zeros(2)}, {})
    ck = os.path.join(root, "checkpoints")
    assert sorted(os.listdir(ck)) == ["step_000002", "step_000003"]
    # after a fallback from two damaged newer ones (5, 6) to 3, saving 4 keeps 3 and 4
    for s in (5, 6):
        os.makedirs(os.path.join(ck, f"step_{s:06d}"))
    save_checkpoint(root, 4, {"w": torch.zeros(2)}, {})
    assert sorted(os.listdir(ck)) == ["step_000003", "step_000004", "step_000005", "step_000006"]
    save_checkpoint(root, 7, {"w": torch.zeros(2)}, {}, keep=1)  # keep < 2 still keeps two
    assert sorted(os.listdir(ck)) == ["step_000006", "step_000007"]


# ================================================================================================
# T9: disk full during save
# ================================================================================================
@pytest.mark.parametrize("where", ["tensors", "state", "manifest", "mkdir"])
def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    import drift.checkpoint as C

    root = str(tmp_path)
    _two_checkpoints(root)
    before = {d: C.sha256_file(os.path.join(root, "checkpoints", d, "tensors.safetensors"))
              for d in ("step_000001", "step_000002")}

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "tensors":
        monkeypatch.setattr(C, "save_file", enospc)
    elif where == "mkdir":
        real_mk = os.makedirs
        monkeypatch.setattr(C.os, "makedirs", lambda p, *a, **k: enospc() if ".tmp_" in p else real_mk(p, *a, **k))
    else:
        real = C._write_json
        monkeypatch.setattr(C, "_write_json", lambda p, o: enospc() if p.endswith(f"{where}.json") else real(p, o))
    with pytest.raises(C.CheckpointError, match="disk full .*checkpoint step 3.*previous checkpoint is intact"):
        C.save_checkpoint(root, 3, {"w": torch.ones(64)}, {"iteration": 3})
    monkeypatch.undo()
    ck = os.path.join(root, "checkpoints")
    assert sorted(os.listdir(ck)) == ["step_000001", "step_000002"]  # no temp left, nothing pruned
    assert before == {d: C.sha256_file(os.path.join(ck, d, "tensors.safetensors")) for d in before}
    assert C.load_latest(root)[0] == 2


def test_disk_full_stops_the_run_with_a_clear_error(tmp_path, monkeypatch):
    """T9 end to end: ENOSPC at checkpoint 2 stops the run (no training on without checkpoints), the
    MLflow run is FAILED with the reason, checkpoint 1 is intact and the rerun resumes from it."""
    import drift.checkpoint as C

    uri = sqlite_uri(tmp_path)
    o = over(tmp_path, tracking=uri, train__iterations=3, checkpoint_every=1, eval__every=10)
    real = C.save_file

    def save_file(tensors, path, *a, **k):
        if ".tmp_step_000002" in path:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(C, "save_file", save_file)
    with pytest.raises(C.CheckpointError, match="disk full"):
        run(o)
    run_dir = cfg_of(o).run_dir()
    assert [r["step"] for r in rows(run_dir)] == [0, 1]
    assert os.listdir(os.path.join(run_dir, "checkpoints")) == ["step_000001"]
    assert C.load_latest(run_dir)[0] == 1
    _, r = mlflow_run(uri)
    assert r.info.status == "FAILED" and "disk full" in r.data.tags["termination_reason"]


# ================================================================================================
# T10: no unpickling
# ================================================================================================
class _Payload:
    """Unpickling this object calls os.makedirs(sentinel): proof that a pickle was executed."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.makedirs, (self.sentinel,))


PICKLE_NAMES = ("model.pt", "pytorch_model.bin", "optimizer.pt", "scheduler.bin", "random_states_0.pkl",
                "training_state.pt", "checkpoint.ckpt")


def test_crafted_pickle_in_a_checkpoint_is_never_executed(tmp_path):
    from drift.checkpoint import load_latest

    sentinel = str(tmp_path / "PWNED")
    payload = pickle.dumps(_Payload(sentinel))
    getattr(pickle, "loads")(payload)  # the payload is live: unpickling it does create the sentinel
    assert os.path.isdir(sentinel)
    os.rmdir(sentinel)

    root = str(tmp_path / "run")
    _two_checkpoints(root)
    d = os.path.join(root, "checkpoints", "step_000002")
    for name in ("tensors.safetensors",) + PICKLE_NAMES:
        with open(os.path.join(d, name), "wb") as f:
            f.write(payload)
        shutil.copy(os.path.join(d, name), os.path.join(root, name))
    # a manifest that vouches for the pickle: only the format can stop it
    man = json.load(open(os.path.join(d, "manifest.json")))
    from drift.checkpoint import sha256_file

    p = os.path.join(d, "tensors.safetensors")
    man["files"]["tensors.safetensors"] = {"bytes": os.path.getsize(p), "sha256": sha256_file(p)}
    json.dump(man, open(os.path.join(d, "manifest.json"), "w"))
    with pytest.warns(UserWarning, match="fell back to checkpoint"):
        assert load_latest(root)[0] == 1
    assert not os.path.exists(sentinel)


def test_pickles_beside_model_weights_are_never_executed(tmp_path, monkeypatch):
    """Pickle files under the names loaders look for, beside (and instead of) the model's safetensors:
    never executed; every torch.load on the way is weights_only=True."""
    from drift.config import SHAPES_ASSETS
    from drift.worlds import make_world
    from drift.worlds.shapes.model import load_pretrained

    sentinel = str(tmp_path / "PWNED")
    payload = pickle.dumps(_Payload(sentinel))
    base = str(tmp_path / "base")
    shutil.copytree(os.path.join(SHAPES_ASSETS, "base"), base)
    for sub in ("transformer", "text_encoder"):
        for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin", "model.pt", "model.ckpt"):
            with open(os.path.join(base, sub, name), "wb") as f:
                f.write(payload)
    calls = []
    real_load = torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    make_world(cfg_of(over(tmp_path, model__path=base)))  # loads the safetensors, ignores the pickles
    os.remove(os.path.join(base, "transformer", "diffusion_pytorch_model.safetensors"))
    with pytest.raises(Exception):  # only a pickle is left: a loud error, not an execution
        load_pretrained(base)
    assert not os.path.exists(sentinel)
    assert all(c is True for c in calls), calls


UNSAFE = "pickle.load / pickle.loads / Unpickler / torch.load without weights_only=True / np.load(allow_pickle=True)"


def unsafe_loads(source: str) -> list[str]:
    """Calls in Python source that could unpickle untrusted bytes (AST-based, so comments and strings
    do not count): pickle-family load(s)/Unpickler, torch.load without a literal weights_only=True,
    numpy load with allow_pickle=True, pandas read_pickle."""
    bad = []
    picklers = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib"}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in picklers:
            bad += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names
                    if a.name in ("load", "loads", "Unpickler")]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f, owner = node.func, getattr(node.func.value, "id", "")
        kw = {k.arg: k.value for k in node.keywords}
        if owner in picklers and f.attr in ("load", "loads", "Unpickler"):
            bad.append(f"line {node.lineno}: {owner}.{f.attr}")
        elif owner == "torch" and f.attr == "load":
            v = kw.get("weights_only")
            if not (isinstance(v, ast.Constant) and v.value is True):
                bad.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif owner in ("np", "numpy") and f.attr == "load":
            v = kw.get("allow_pickle")
            if isinstance(v, ast.Constant) and v.value is True or (v is not None and not isinstance(v, ast.Constant)):
                bad.append(f"line {node.lineno}: np.load(allow_pickle=...)")
        elif f.attr == "read_pickle":
            bad.append(f"line {node.lineno}: read_pickle")
    return bad


def test_unsafe_load_checker_flags_what_it_should():
    assert unsafe_loads("import torch\ntorch.load(p)") and unsafe_loads("torch.load(p, weights_only=False)")
    assert unsafe_loads("import pickle\npickle.loads(b)") and unsafe_loads("from pickle import load")
    assert unsafe_loads("np.load(p, allow_pickle=True)") and unsafe_loads("cloudpickle.load(f)")
    assert not unsafe_loads("torch.load(p, weights_only=True)\n# pickle.load(x)\ns = 'torch.load(p)'")


def test_no_code_path_unpickles():
    """T10 static half: no .py file outside tests/ can unpickle (tests/ holds deliberate payloads)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.py"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    files = [f for f in files if not f.startswith(("tests/", ".venv/")) and os.path.exists(os.path.join(ROOT, f))]
    assert len(files) > 20
    found = {f: b for f in files if (b := unsafe_loads(open(os.path.join(ROOT, f)).read()))}
    assert not found, f"unsafe loads ({UNSAFE}): {found}"


def test_torch_is_at_least_2_6():
    """T10: torch.load(weights_only=True) had an RCE bypass up to 2.5.1 (CVE-2025-32434)."""
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert (major, minor) >= (2, 6), torch.__version__
    assert re.search(r'"torch>=2\.(6|[7-9]|\d\d)', open(os.path.join(ROOT, "pyproject.toml")).read())


# ================================================================================================
# T11: resume with a changed config, method or code
# ================================================================================================
def _edit_state(folder: str, edit) -> None:
    """Rewrite a committed checkpoint's state.json through ``edit(state)`` and re-commit its manifest."""
    from drift.checkpoint import sha256_file

    path, mpath = os.path.join(folder, "state.json"), os.path.join(folder, "manifest.json")
    st = json.load(open(path))
    edit(st)
    json.dump(st, open(path, "w"))
    man = json.load(open(mpath))
    man["files"]["state.json"] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    json.dump(man, open(mpath, "w"))


def test_changed_config_method_or_code_is_refused_unless_allowed(tmp_path):
    from drift.config import ConfigError

    sd3_before = {m for m in sys.modules if m.startswith("drift.worlds.sd3")}
    uri = sqlite_uri(tmp_path)
    o = over(tmp_path, tracking=uri, train__iterations=2, checkpoint_every=1, eval__every=10)
    run_dir = cfg_of(o).run_dir()

    class Crash(Exception):
        pass

    def crash(phase, it):
        if (phase, it) == ("sampling", 1):
            raise Crash

    with pytest.raises(Crash):
        run(o, on_phase=crash)
    # the checkpoint records the sha256 of every drift/ source file the run imported
    folder = os.path.join(run_dir, "checkpoints", "step_000001")
    code = json.load(open(os.path.join(folder, "state.json")))["code"]
    assert {"drift/train.py", "drift/sde.py", "drift/worlds/shapes/backend.py"} <= set(code)
    # a shapes run imports no SD3 module (so edits there never block its resume); earlier tests in this
    # process may have imported some, and those are then recorded too
    assert {m for m in sys.modules if m.startswith("drift.worlds.sd3")} == sd3_before
    if not sd3_before:
        assert not any(f.startswith("drift/worlds/sd3/") for f in code)
    # as if drift/sde.py had been edited since checkpoint 1
    _edit_state(folder, lambda st: st["code"].update({"drift/sde.py": "0" * 64}))
    with pytest.raises(ConfigError, match=r"written by different code:\n  code: changed since the checkpoint: "
                                          r"drift/sde\.py\n"):
        run(o)
    # ... and the config too: lr in config.json, and the method
    path = os.path.join(run_dir, "config.json")
    d = json.load(open(path))
    json.dump({**d, "train": {**d["train"], "lr": 0.5}, "method": "drift"}, open(path, "w"))
    with pytest.raises(ConfigError) as e:
        run(o)
    assert "method: 'drift' -> 'flow_grpo'" in str(e.value) and "train.lr: 0.5 -> 0.001" in str(e.value)
    assert "--allow-resume-with-changes" in str(e.value)
    run(o, allow_changes=True)
    _, r = mlflow_run(uri)
    tag = r.data.tags["resumed_with_changes"]
    assert "train.lr: 0.5 -> 0.001" in tag and "method: 'drift' -> 'flow_grpo'" in tag and "drift/sde.py" in tag
    assert r.info.status == "FINISHED"


# ================================================================================================
# T16: non-finite rewards
# ================================================================================================
def test_nonfinite_rewards_are_excluded_counted_and_named(tmp_path, monkeypatch):
    """A whole group NaN and one Inf sample at iteration 1: advantage exactly 0 for them, finite
    advantages and loss elsewhere, reward/nonfinite_frac = 5/8, one warning naming each prompt."""
    from drift.worlds.shapes.backend import ShapesWorld

    o = over(tmp_path, train__iterations=2, eval__every=10)
    now = {"it": None}
    named = []
    real_reward = ShapesWorld.reward

    def reward(self, images, prompts):
        out = real_reward(self, images, prompts)
        if now["it"] == 1:
            r = out["reward"].clone()
            r[0:4] = float("nan")  # group 0 (K = 4 samples per prompt)
            r[5] = float("inf")  # one sample of group 1
            named.extend([self.prompt_text(prompts[0]), self.prompt_text(prompts[4])])
            out = {**out, "reward": r}
        return out

    advs = []
    import drift.ppo as ppo_module  # the PPO update (drift/ppo.py) is where the engine calls the loss

    real_loss = ppo_module.ppo_clip_loss

    def loss(adv, lp, old, clip):
        out = real_loss(adv, lp, old, clip)
        if now["it"] == 1:
            advs.append(adv.detach().clone())
            assert torch.isfinite(out[0]).all()
        return out

    monkeypatch.setattr(ShapesWorld, "reward", reward)
    monkeypatch.setattr(ppo_module, "ppo_clip_loss", loss)
    hook = lambda phase, it: now.update(it=it) if phase == "reward" else None  # noqa: E731
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        run(o, on_phase=hook)
    msgs = [str(x.message) for x in w if "non-finite reward" in str(x.message)]
    assert msgs == [f"iteration 1: 4 non-finite reward(s) for prompt {named[0]!r}",
                    f"iteration 1: 1 non-finite reward(s) for prompt {named[1]!r}"]
    assert advs and all(torch.isfinite(a).all() for a in advs)
    for a in advs:
        assert torch.equal(a[:4], torch.zeros(4)) and a[5] == 0 and (a[[4, 6, 7]] != 0).all()
    r = {x["step"]: x for x in rows(cfg_of(o).run_dir())}
    assert r[2]["reward/nonfinite_frac"] == 5 / 8 and r[1]["reward/nonfinite_frac"] == 0
    assert r[2]["loss/skipped_steps"] == 0 and all(v == v for k, v in r[2].items() if k.startswith("loss/"))


# ================================================================================================
# T17: non-finite gradients and weights
# ================================================================================================
def _capture_params(monkeypatch) -> dict:
    from drift.worlds.shapes.backend import ShapesWorld

    box = {}
    real = ShapesWorld.trainable_parameters

    def tp(self):
        box["params"] = real(self)
        return box["params"]

    monkeypatch.setattr(ShapesWorld, "trainable_parameters", tp)
    return box


def test_inf_gradient_skips_the_step_and_counts_it(tmp_path, monkeypatch):
    """Inf in a gradient at every optimiser step of iteration 1: no optimizer.step, no EMA update (the
    weights, EMA and AdamW state after iteration 1 equal those after iteration 0), counted (3 skips)."""
    box = _capture_params(monkeypatch)

    def hook(phase, it):
        if phase == "optimizer" and it == 1:
            p = next(iter(box["params"].values()))
            p.grad.view(-1)[0] = float("inf")

    o = over(tmp_path, train__iterations=2, checkpoint_every=1, eval__every=10, train__ema_every=1)
    run(o, on_phase=hook)
    run_dir = cfg_of(o).run_dir()
    r = {x["step"]: x for x in rows(run_dir)}
    assert r[1]["loss/skipped_steps"] == 0 and r[2]["loss/skipped_steps"] == 3  # n_train = 3 steps each
    assert r[1]["sys/opt_steps"] == r[2]["sys/opt_steps"] == 3
    assert_same_tensors(ckpt(run_dir, 1), ckpt(run_dir, 2), prefixes=("model/", "ema/", "optim/"))


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path, monkeypatch):
    box = _capture_params(monkeypatch)

    def hook(phase, it):
        if phase == "optimizer" and it >= 1:
            next(iter(box["params"].values())).grad.view(-1)[0] = float("nan")

    o = over(tmp_path, train__iterations=3, checkpoint_every=1, eval__every=10, train__max_nonfinite_skips=2)
    with pytest.raises(RuntimeError, match=r"2 consecutive optimiser steps had a non-finite loss or gradient "
                                           r"\(iteration 1\); stopping \(train.max_nonfinite_skips\)"):
        run(o, on_phase=hook)
    run_dir = cfg_of(o).run_dir()
    assert os.listdir(os.path.join(run_dir, "checkpoints")) == ["step_000001"]
    assert all(torch.isfinite(v).all() for v in ckpt(run_dir, 1).values() if v.is_floating_point())


def test_nonfinite_weights_are_never_checkpointed(tmp_path, monkeypatch):
    box = _capture_params(monkeypatch)

    def hook(phase, it):
        if (phase, it) == ("optimizer", 1):
            with torch.no_grad():
                next(iter(box["params"].values())).view(-1)[0] = float("nan")

    o = over(tmp_path, train__iterations=3, checkpoint_every=1, eval__every=10, train__max_nonfinite_skips=50)
    with pytest.raises(RuntimeError, match="refusing to checkpoint iteration 2: parameter .* is non-finite"):
        run(o, on_phase=hook)
    assert os.listdir(os.path.join(cfg_of(o).run_dir(), "checkpoints")) == ["step_000001"]
    from drift.checkpoint import CheckpointError, save_checkpoint

    with pytest.raises(CheckpointError, match="'ema/w' holds non-finite"):  # the writer's own guard
        save_checkpoint(str(tmp_path / "x"), 1, {"model/w": torch.zeros(2), "ema/w": torch.tensor([0.0, float("inf")])}, {})
    assert not os.path.exists(tmp_path / "x" / "checkpoints" / "step_000001")


# ================================================================================================
# T18: zero-variance groups
# ================================================================================================
@pytest.mark.parametrize("global_std", [False, True])
def test_all_groups_constant_give_exact_zero_advantages(global_std):
    """T18 where every group (and so the whole batch) is constant: the global std is 0 too."""
    from drift.advantages import group_advantages

    for r in (torch.full((3, 4), 0.3), torch.full((2, 4, 5), -1.0)):
        adv, stats = group_advantages(r, global_std=global_std)
        assert torch.equal(adv, torch.zeros_like(r)) and stats["reward/zero_std_frac"] == 1.0


# ================================================================================================
# T19: missing model weights (grid validation itself: tests/test_sweep.py)
# ================================================================================================
def test_missing_model_or_prompt_files_fail_before_anything_is_written(tmp_path):
    from drift.config import SHAPES_ASSETS, ConfigError

    base = str(tmp_path / "base")
    shutil.copytree(os.path.join(SHAPES_ASSETS, "base"), base)
    os.remove(os.path.join(base, "transformer", "diffusion_pytorch_model.safetensors"))
    feats = str(tmp_path / "features")
    shutil.copytree(os.path.join(SHAPES_ASSETS, "features"), feats)
    os.remove(os.path.join(feats, "model.safetensors"))
    os.mkdir(os.path.join(feats, "model.safetensors"))  # present but unreadable as a file
    out = tmp_path / "runs"
    cases = [({"model__path": base}, r"model\.path='.*base': cannot read .*transformer/diffusion_pytorch_model"),
             ({"model__path": str(tmp_path / "nope")}, r"model\.path='.*nope': cannot read .*No such file"),
             ({"model__features": feats}, r"model\.features='.*features': cannot read .*model\.safetensors \(Is a directory\)")]
    for extra, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            run(over(out, **extra))
        assert not out.exists()
    # the SD3 world's prompt files (its preflight runs before anything is written; no model needed)
    os.mkdir(tmp_path / "prompts_dir")
    for prompts, msg in ((str(tmp_path / "nope.txt"), "nope.txt.*cannot read it \\(No such file"),
                         (str(tmp_path / "prompts_dir"), "prompts_dir.*cannot read it \\(Is a directory")):
        with pytest.raises(ValueError, match=msg):
            run(over(out, model__world="sd3", sd3__prompts=prompts))
        assert not out.exists()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "sweep.py"), "--grid", "smoke", "--executor",
                        "local", "--out", str(out), "--tracking-uri", "none", "--set", f"model.path={base}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "point #0" in r.stderr and "diffusion_pytorch_model.safetensors" in r.stderr, r.stderr
    assert not out.exists()


# ================================================================================================
# T20: code drift between submit and requeue, with a real edited file
# ================================================================================================
def test_edited_source_file_after_submission_is_named(tmp_path):
    from drift.provenance import CODE_DIRS, CodeChanged, check_code, code_state

    root = str(tmp_path / "code")
    for d in CODE_DIRS:
        shutil.copytree(os.path.join(ROOT, d), os.path.join(root, d), ignore=shutil.ignore_patterns("__pycache__"))
    submitted = code_state(root)
    assert check_code(submitted, "refuse", root) == []
    with open(os.path.join(root, "drift", "advantages.py"), "a") as f:
        f.write("\n# edited after submission\n")
    with pytest.raises(CodeChanged, match=r"code changed since submission .*: drift/advantages\.py\."):
        check_code(submitted, "refuse", root)
    assert check_code(submitted, "warn", root) == ["drift/advantages.py"]


# ================================================================================================
# T3 / T5: submitit LocalExecutor timeouts: requeue and resume; timeouts exhausted
# ================================================================================================
def _wait(cond, timeout, what):
    t = time.time()
    while not cond():
        if time.time() - t > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.3)


@pytest.mark.slow
def test_submitit_timeout_requeues_and_resumes_then_exhausts(tmp_path, monkeypatch, reference):
    """Two RunJobs on submitit's LocalExecutor, both holding at iteration 1 (after checkpoint 1); the
    test sends each the USR2 that the executor's timer sends signal_delay_s before the time limit
    (sent by the test when the job is held, so that it lands there on a loaded machine too; with a
    limit under 10 min submitit classifies every such signal as a timeout).
    A (max_num_timeout=1): requeued "(0 remaining timeouts)", released, resumes from checkpoint 1 and
    finishes bitwise equal to an uninterrupted run (so exactly its optimiser steps), in the same
    MLflow run, FINISHED without a stale termination_reason.
    B (max_num_timeout=0): "timed-out too many times", its MLflow run FAILED with that
    termination_reason, checkpoint 1 intact."""
    import submitit

    from drift.checkpoint import load_latest
    from drift.launch import RunJob
    from drift.tracking import init_mlflow_experiment

    extra = {"train__iterations": 2, "checkpoint_every": 1, "eval__every": 10}
    ref_dir = reference(**extra)
    uri = sqlite_uri(tmp_path)
    init_mlflow_experiment(uri, "t", str(tmp_path / "art"))  # the launcher's pre-init
    oa, ob = over(tmp_path, tracking=uri, **extra), over(tmp_path, tracking=uri, seed=1, **extra)
    da, db = cfg_of(oa).run_dir(), cfg_of(ob).run_dir()
    monkeypatch.setenv("DRIFT_LAUNCH_HOLD", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    jobs = []
    for name, o, max_to in (("a", oa, 1), ("b", ob, 0)):
        ex = submitit.LocalExecutor(folder=str(tmp_path / f"submitit_{name}"), max_num_timeout=max_to)
        ex.update_parameters(timeout_min=5, signal_delay_s=30)
        jobs.append(ex.submit(RunJob(o, None, lock_wait_s=10)))  # (code checks: T11, T20)
    job_a, job_b = jobs

    def starts(d):
        path = os.path.join(d, "launch.jsonl")
        return [json.loads(ln) for ln in open(path) if '"start"' in ln] if os.path.exists(path) else []

    def usr2_when_held(d, n):
        held = os.path.join(d, "HELD")
        _wait(lambda: os.path.exists(held) and len(starts(d)) == n, 180, f"{d} held (start {n})")
        os.remove(held)
        os.kill(starts(d)[-1]["pid"], signal.SIGUSR2)

    usr2_when_held(da, 1)
    usr2_when_held(db, 1)
    _wait(lambda: len(starts(da)) == 2, 120, "A restarted after its requeue")
    open(os.path.join(da, "RELEASE"), "w").close()
    res = job_a.result()
    assert res["status"] == "done" and res["ran"]
    out_a = (job_a.stdout() or "") + (job_a.stderr() or "")
    assert "this job is timed-out" in out_a and "(0 remaining timeouts)" in out_a, out_a[-3000:]
    assert "resumed from checkpoint at iteration 1" in out_a, out_a[-3000:]
    assert [s["resume_from"] for s in starts(da)] == [None, 1]
    assert det(rows(da)) == det(rows(ref_dir))  # exactly the reference's steps, sys/opt_steps included
    assert_same_tensors(ckpt(da, 2), ckpt(ref_dir, 2))

    with pytest.raises(Exception, match="timed-out too many times"):
        job_b.result()
    assert "timed-out too many times" in (job_b.stdout() or "") + (job_b.stderr() or "")
    assert load_latest(db)[0] == 1 and [r["step"] for r in rows(db)] == [0, 1]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ra = client.get_run(json.load(open(os.path.join(da, "mlflow_run.json")))["run_id"])
    rb = client.get_run(json.load(open(os.path.join(db, "mlflow_run.json")))["run_id"])
    assert len(client.search_runs([ra.info.experiment_id])) == 2  # one run each, A's reopened on requeue
    assert ra.info.status == "FINISHED" and "termination_reason" not in ra.data.tags
    assert rb.info.status == "FAILED" and "timed-out too many times" in rb.data.tags["termination_reason"]


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    _serve() if sys.argv[1:] == ["--serve"] else _driver(json.loads(sys.argv[1]))
