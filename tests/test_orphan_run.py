"""A run SIGKILLed before its first checkpoint, restarted with the same command: the tracking store
ends with one MLflow run for the run directory (the first attempt's, reopened), FINISHED, every
(key, step) once with the reference's value, and nothing left RUNNING (deleted runs included).

Before the fix a fresh start deleted the earlier attempt's MLflow run (which stayed RUNNING, with its
steps 0-1) and opened a second run of the same name, overwriting mlflow_run.json.
"""

from __future__ import annotations

import json
import os
import signal

from test_reliability import (Launcher, assert_mlflow_matches, cfg_of, det, over, reference,  # noqa: F401
                              rows, sqlite_uri)


def all_runs(uri: str, experiment: str = "t"):
    """Every run of the experiment, deleted ones included (a zombie hides among them)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)


def test_sigkill_before_the_first_checkpoint_keeps_one_mlflow_run(tmp_path, reference):
    extra = {"train__iterations": 4, "checkpoint_every": 2, "eval__every": 2}
    ref_dir = reference(**extra)
    uri = sqlite_uri(tmp_path)
    o = over(tmp_path, tracking=uri, **extra)
    run_dir = cfg_of(o).run_dir()
    state = lambda: json.load(open(os.path.join(run_dir, "mlflow_run.json")))  # noqa: E731
    server = Launcher(str(tmp_path))
    try:
        # 1. killed right after MLflow took step 1 (mlflow_run.json still says step 0), no checkpoint yet
        rc, out = server.launch(o, ["mlflow_push", 1])
        assert rc == -signal.SIGKILL, out[-2000:]
        assert not os.path.exists(os.path.join(run_dir, "checkpoints", "step_000002"))
        first = state()["run_id"]
        assert [r.info.status for r in all_runs(uri)] == ["RUNNING"]
        # 2. a fresh start (no checkpoint) reopens that run; killed again mid-iteration 1
        rc, out = server.launch(o, ["reward", 1])
        assert rc == -signal.SIGKILL and "resumed from checkpoint" not in out, out[-2000:]
        assert state()["run_id"] == first and state()["last_pushed_step"] == 1
        # 3. the same command again: finishes
        rc, out = server.launch(o, None)
        assert rc == 0, out[-3000:]
    finally:
        server.close()
    runs = all_runs(uri)
    assert [(r.info.run_id, r.info.status, r.info.lifecycle_stage) for r in runs] == [(first, "FINISHED", "active")]
    assert state()["run_id"] == first
    assert json.load(open(os.path.join(run_dir, "DONE")))["mlflow_run_id"] == first
    ref_rows = rows(ref_dir)
    assert det(rows(run_dir)) == det(ref_rows)
    client, r = assert_mlflow_matches(uri, ref_rows)  # one row per (key, step), the reference's values
    assert "termination_reason" not in r.data.tags


def test_fresh_start_with_changed_params_closes_the_old_run(tmp_path):
    """The one case that opens a second run: a config change allowed before any checkpoint (MLflow
    params are write-once). The old run is closed KILLED with a reason and deleted, never left RUNNING."""
    from drift.tracking import Tracker

    uri = sqlite_uri(tmp_path)
    rd = str(tmp_path / "run")
    os.makedirs(rd)
    a = Tracker(rd, uri, "t", "r", {"train": {"lr": 0.1}, "threads": 1}, str(tmp_path / "art"))
    a.log(0, {"x": 1.0})  # then "killed": never finished
    b = Tracker(rd, uri, "t", "r", {"train": {"lr": 0.1}, "threads": 2}, str(tmp_path / "art"))
    assert b.run_id == a.run_id  # threads may differ between attempts
    b.log(0, {"x": 1.0})  # already in MLflow: not pushed again
    c = Tracker(rd, uri, "t", "r", {"train": {"lr": 0.2}, "threads": 2}, str(tmp_path / "art"))
    assert c.run_id != a.run_id
    c.finish()
    st = {r.info.run_id: (r.info.status, r.info.lifecycle_stage, r.data.tags.get("termination_reason", ""))
          for r in all_runs(uri)}
    assert st[c.run_id][:2] == ("FINISHED", "active")
    assert st[a.run_id][:2] == ("KILLED", "deleted") and "train.lr" in st[a.run_id][2]
    from mlflow.tracking import MlflowClient

    assert [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(a.run_id, "x")] == [0]
