"""T12/T13 (docs/reliability.md, The tests): many processes logging to one MLflow store at once.

T12: 32 processes (2 "array tasks" x 16) each log STEPS steps x KEYS keys through ``drift.tracking.
Tracker`` (one ``log_batch`` per step, the engine's pattern) (a) to a local MLflow tracking server
started by ``slurm/mlflow_server.sh`` (the topology the project recommends for sweeps, with its
authentication on), (b) to one
shared SQLite file. Server: every (run, key, step) present exactly once with its value, no
exception. SQLite: the same, or failures that are LOUD (an exception in the writer, naming the
error), never a silent loss; which of the two happened is printed (``-s``) and written to
``<tmp>/outcome.json``.

T13: first-time database creation by many processes at once, each with its own temp dir (so
MLflow's node-local migration lock does not serialise them, as on several nodes): raw MLflow
clients may race (documented, not asserted); ``drift.tracking.init_mlflow_experiment`` (a lock next
to the database file) makes it safe; after the launcher's pre-init it is a no-op.

Writers are forked from this process after MLflow is imported (saves 32 imports); each opens its own
client and database connections.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import traceback

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TASKS, PER_TASK, STEPS, KEYS = 2, 16, 20, 10
EXPERIMENT = "concurrency"


def _value(task: int, rank: int, step: int, key: int) -> float:
    return task * 1e6 + rank * 1e4 + step * 10 + key + 0.25


def _writer(uri: str, task: int, rank: int, root: str, go) -> None:
    """One array task's process: a Tracker (its own MLflow run) logging STEPS steps of KEYS keys."""
    from drift import tracking

    out = os.path.join(root, f"result_{task}_{rank}.json")
    res: dict = {"task": task, "rank": rank}
    tracking.RETRIES["count"] = 0  # this process's own (a fork inherits the parent's count)
    try:
        go.wait(60)  # start together
        run_dir = os.path.join(root, "runs", f"task{task}", f"rank{rank}")
        os.makedirs(run_dir)
        t = tracking.Tracker(run_dir, uri, EXPERIMENT, f"task{task}/rank{rank}", {"task": task, "rank": rank},
                             os.path.join(root, "art"))
        res["run_id"] = t.run_id
        for s in range(STEPS):
            t.log(s, {f"k{j}": _value(task, rank, s, j) for j in range(KEYS)})
        t.finish()
        res["ok"] = True
    except BaseException as e:  # noqa: BLE001 -- recorded: a loud failure
        res.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000], tb=traceback.format_exc()[-3000:])
    res["retries"] = tracking.RETRIES["count"]
    with open(out, "w") as f:
        json.dump(res, f)


def _run_writers(uri: str, root: str, timeout: float = 240) -> list[dict]:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(uri, t, r, root, go)) for t in range(TASKS) for r in range(PER_TASK)]
    for p in procs:
        p.start()
    go.set()
    deadline = time.time() + timeout
    for p in procs:
        p.join(max(1.0, deadline - time.time()))
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join()
    assert not hung, f"writers still running after {timeout} s: {hung}"
    out = []
    for t in range(TASKS):
        for r in range(PER_TASK):
            path = os.path.join(root, f"result_{t}_{r}.json")
            out.append(json.load(open(path)) if os.path.exists(path) else
                       {"task": t, "rank": r, "ok": False, "error": "no result (the writer died)"})
    return out


def _check_rows(uri: str, results: list[dict]) -> None:
    """Every (run, key, step) of every writer that reported success: present exactly once, right value."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for res in results:
        if not res["ok"]:
            continue
        run = client.get_run(res["run_id"])
        assert run.info.status == "FINISHED", res
        for j in range(KEYS):
            hist = client.get_metric_history(res["run_id"], f"k{j}")
            got = sorted((m.step, m.value) for m in hist)
            want = [(s, _value(res["task"], res["rank"], s, j)) for s in range(STEPS)]
            assert got == want, (res["task"], res["rank"], f"k{j}", got[:5], len(got))


def _forked(fn, *args):
    """fn(*args) in a forked process (the launcher's pre-init runs in its own process too): this
    process must not open a client for a URI before forking writers, or they would inherit its
    cached database engine / HTTP connection pool."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def target():
        try:
            q.put(("ok", fn(*args)))
        except BaseException as e:  # noqa: BLE001
            q.put(("error", f"{type(e).__name__}: {e}"))

    p = ctx.Process(target=target)
    p.start()
    status, value = q.get(timeout=120)
    p.join(30)
    assert status == "ok", value
    return value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _template_db(path: str) -> None:
    """An initialised (migrated) MLflow SQLite database at ``path``."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()


@pytest.mark.slow
def test_32_writers_through_a_tracking_server_lose_nothing(tmp_path, monkeypatch):
    """T12 (a): the recommended topology: one server (SQLite on its local disk, authentication on),
    tasks over HTTP with the admin's credentials (which the script wrote to <HOME>/.mlflow/credentials)."""
    import configparser

    from drift.tracking import init_mlflow_experiment

    sdir, home = tmp_path / "server", tmp_path / "home"
    sdir.mkdir(mode=0o700)
    home.mkdir()
    _template_db(str(sdir / "mlflow.db"))  # `db upgrade` in the script is then a quick no-op
    env = {**os.environ, "HOME": str(home), "DRIFT_MLFLOW_DIR": str(sdir), "DRIFT_MLFLOW_ARTIFACTS": str(tmp_path / "art"),
           "DRIFT_MLFLOW_HOST": "127.0.0.1", "DRIFT_MLFLOW_PORT": str(_free_port()),
           "MLFLOW": os.path.join(os.path.dirname(sys.executable), "mlflow")}
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(k, None)
    script = os.path.join(ROOT, "slurm", "mlflow_server.sh")
    up = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=150)
    pid = int((sdir / "mlflow.pid").read_text()) if (sdir / "mlflow.pid").exists() else None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        cred = configparser.ConfigParser()
        cred.read(home / ".mlflow" / "credentials")
        for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # inherited by the forked writers
            monkeypatch.setenv(k, cred["mlflow"][k.lower()])
        port = int((sdir / "uri").read_text().strip().rsplit(":", 1)[1])
        uri = f"http://127.0.0.1:{port}"
        _forked(init_mlflow_experiment, uri, EXPERIMENT, None)  # the launcher's pre-init
        results = _run_writers(uri, str(tmp_path))
        failed = [r for r in results if not r["ok"]]
        assert not failed, failed[:3]
        _check_rows(uri, results)
        print(f"\n[T12 server] {len(results)} writers x {STEPS} steps x {KEYS} keys: all present once; "
              f"retries {sum(r['retries'] for r in results)}")
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, text=True, timeout=60)
        if pid is not None:
            try:
                os.kill(pid, 0)
                os.kill(pid, signal.SIGKILL)  # still there after the script's SIGTERM
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_32_writers_on_one_sqlite_file_pass_or_fail_loudly(tmp_path):
    """T12 (b): a shared SQLite file (what not to use on a cluster): complete, or loud failures only."""
    from drift.tracking import init_mlflow_experiment

    db = tmp_path / "mlflow.db"
    _template_db(str(db))
    uri = f"sqlite:///{db}"
    _forked(init_mlflow_experiment, uri, EXPERIMENT, str(tmp_path / "art"))  # the launcher's pre-init
    results = _run_writers(uri, str(tmp_path))
    failed = [r for r in results if not r["ok"]]
    for r in failed:  # loud: an exception with a message, raised in the writer
        assert r.get("error"), r
    _check_rows(uri, results)  # nothing silently lost or duplicated for the writers that succeeded
    outcome = {"writers": len(results), "failed": len(failed), "retries": sum(r["retries"] for r in results),
               "errors": sorted({r["error"][:120] for r in failed})}
    (tmp_path / "outcome.json").write_text(json.dumps(outcome, indent=1))
    print(f"\n[T12 sqlite] {outcome}")


def _init_raw(uri: str, tmp: str, out: str, go) -> None:
    os.environ["TMPDIR"] = tmp  # MLflow's migration lock lives in the temp dir: one per "node"
    import tempfile

    tempfile.tempdir = None
    res = {"ok": True}
    try:
        go.wait(60)
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments()
    except BaseException as e:  # noqa: BLE001
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
    json.dump(res, open(out, "w"))


def _init_ours(uri: str, tmp: str, out: str, go) -> None:
    os.environ["TMPDIR"] = tmp
    import tempfile

    tempfile.tempdir = None
    res = {"ok": True}
    try:
        go.wait(60)
        from drift.tracking import init_mlflow_experiment

        res["exp"] = init_mlflow_experiment(uri, EXPERIMENT, os.path.dirname(out))
    except BaseException as e:  # noqa: BLE001
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
    json.dump(res, open(out, "w"))


def _race(target, uri: str, root: str, n: int) -> list[dict]:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    procs = []
    for i in range(n):
        tmp = os.path.join(root, f"tmp{i}")
        os.makedirs(tmp, exist_ok=True)
        procs.append(ctx.Process(target=target, args=(uri, tmp, os.path.join(root, f"init_{i}.json"), go)))
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(180)
        assert not p.is_alive(), "an initialising process hung"
    return [json.load(open(os.path.join(root, f"init_{i}.json"))) for i in range(n)]


@pytest.mark.slow
def test_first_time_db_creation_under_concurrency(tmp_path):
    """T13: several processes, one fresh database each time, separate temp dirs (as on several nodes).
    Raw MLflow: 4 processes (each runs the schema migrations: seconds of CPU); drift's init: 8."""
    n, n_raw = 8, 4
    raw_dir, ours_dir, pre_dir = (tmp_path / d for d in ("raw", "ours", "pre"))
    for d in (raw_dir, ours_dir, pre_dir):
        d.mkdir()
    # raw MLflow clients on a fresh DB: the race MLflow leaves open (documented, not asserted)
    raw = _race(_init_raw, f"sqlite:///{raw_dir}/mlflow.db", str(raw_dir), n_raw)
    # drift's init (a lock next to the DB file): all succeed and agree on one experiment
    ours = _race(_init_ours, f"sqlite:///{ours_dir}/mlflow.db", str(ours_dir), n)
    assert all(r["ok"] for r in ours), ours
    assert len({r["exp"] for r in ours}) == 1
    # after the launcher's pre-init, first use by many is a no-op
    from drift.tracking import init_mlflow_experiment

    exp = _forked(init_mlflow_experiment, f"sqlite:///{pre_dir}/mlflow.db", EXPERIMENT, str(pre_dir))
    pre = _race(_init_ours, f"sqlite:///{pre_dir}/mlflow.db", str(pre_dir), n)
    assert all(r["ok"] and r["exp"] == exp for r in pre), pre
    outcome = {"raw_failed": sum(not r["ok"] for r in raw), "raw_errors": sorted({r.get("error", "")[:150] for r in raw
                                                                                   if not r["ok"]})}
    (tmp_path / "outcome.json").write_text(json.dumps(outcome, indent=1))
    print(f"\n[T13] raw MLflow first use by {n_raw} processes: {outcome}; drift init by {n}: all ok")
