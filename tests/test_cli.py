"""The training command line: unknown flags refused, --help anywhere, a dry run that writes nothing and
says whether the run would start, resume or be skipped, and the heartbeat lines with the progress bar off."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drift.cli import main, parse_argv, UsageError  # noqa: E402
from drift.heartbeat import Heartbeat  # noqa: E402
from experiments.grids import load  # noqa: E402

TINY = [f"{k}={v}" for k, v in load("smoke").budget.items()]


def args(tmp_path, *more):
    return ["method=drift", f"out={tmp_path}", "tracking_uri=none", *TINY, *more]


def files_under(path):
    return sorted(os.path.relpath(os.path.join(r, n), path) for r, _, ns in os.walk(path) for n in ns)


@pytest.mark.parametrize("bad", ["--dryrun", "--dry_run", "-n", "--iterations=3"])
def test_unknown_flag_is_refused_with_the_known_ones(tmp_path, capsys, bad):
    assert main(args(tmp_path, bad)) == 2
    err = capsys.readouterr().err
    assert repr(bad) in err and "--dry-run" in err and "--quiet" in err and "--allow-resume-with-changes" in err
    assert files_under(tmp_path) == []


def test_bare_word_is_refused():
    with pytest.raises(UsageError, match="neither key=value nor a flag"):
        parse_argv(["method=drift", "drift"])


@pytest.mark.parametrize("where", [0, 1, -1])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_anywhere_prints_and_starts_nothing(tmp_path, capsys, where, flag):
    argv = args(tmp_path, "train.iterations=not_a_number")  # not even validated
    argv.insert(where if where >= 0 else len(argv), flag)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "--dry-run" in out and "train.iterations=" in out and "drift.lam=" in out
    assert files_under(tmp_path) == []


def test_dry_run_writes_nothing_and_says_start_resume_skip_refuse(tmp_path, capsys):
    assert main(args(tmp_path, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert files_under(tmp_path) == []
    assert "would: start" in out and "nothing was written" in out
    resolved = json.loads(out.split("resolved config:\n", 1)[1].split("\n[drift] batch", 1)[0])
    from drift.drift_method import Options

    assert resolved["method"] == "drift" and resolved["drift"]["lam"] == Options().lam and "options" not in resolved
    run_dir = [ln.split(": ", 1)[1] for ln in out.splitlines() if ln.startswith("run directory: ")][0]
    assert run_dir.startswith(str(tmp_path)) and run_dir.endswith("seed0")

    # a committed checkpoint: resume
    os.makedirs(os.path.join(run_dir, "checkpoints", "step_000002"))
    open(os.path.join(run_dir, "checkpoints", "step_000002", "manifest.json"), "w").write("{}")
    before = files_under(tmp_path)
    assert main(args(tmp_path, "--dry-run")) == 0
    assert "would: resume from iteration 2 of 3" in capsys.readouterr().out
    # a different config.json: refused unless --allow-resume-with-changes
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({"seed": 0, "train": {"lr": 123.0}}, f)
    assert main(args(tmp_path, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "would: refuse: resume from iteration 2" in out and "train.lr" in out
    assert main(args(tmp_path, "--dry-run", "--allow-resume-with-changes")) == 0
    assert "would resume anyway" in capsys.readouterr().out
    # finished: skipped
    for n in ("DONE", "final_eval.json"):
        open(os.path.join(run_dir, n), "w").write("{}")
    assert main(args(tmp_path, "--dry-run")) == 0
    assert "would: skip: finished" in capsys.readouterr().out
    rel = os.path.relpath(run_dir, tmp_path)
    assert files_under(tmp_path) == sorted(before + [os.path.join(rel, n) for n in ("DONE", "config.json", "final_eval.json")])


def test_dry_run_refuses_a_bad_config_before_anything(tmp_path, capsys):
    assert main(args(tmp_path, "train.iterations=0", "--dry-run")) == 2
    assert "train.iterations" in capsys.readouterr().err
    assert files_under(tmp_path) == []


def test_module_form_dry_run_exits_without_a_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "drift.train", "method=drift", "--dry-run", f"out={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "would: start" in r.stdout and files_under(tmp_path) == []


def test_heartbeat_cadence():
    lines = []
    hb = Heartbeat(total=25, start=0, every=10, minutes=0, write=lines.append)
    for step in range(1, 26):
        hb.beat(step, {"reward/mean": 0.5, "diversity/train_pairwise": 0.25})
    assert [ln.split("iteration ")[1].split("/")[0] for ln in lines] == ["10", "20", "25"]
    assert all("reward 0.5" in ln and "diversity 0.25" in ln and "s/iter" in ln and "ETA" in ln and "peak mem" in ln
               for ln in lines)
    silent = []
    Heartbeat(total=5, start=0, enabled=False, write=silent.append).beat(5, {})
    assert silent == []


def test_a_sweep_point_logs_cli_names_tags_every_grid_and_heartbeats(tmp_path, capsys, monkeypatch):
    """One real (tiny) sweep point, in-process with the progress bar off: heartbeat lines in its stdout;
    MLflow params named as on the command line, the sweep's tags, every eval grid; then the dry run
    says the run would be skipped."""
    from mlflow.tracking import MlflowClient

    from experiments import sweep

    monkeypatch.setenv("DRIFT_HEARTBEAT_EVERY", "1")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    small = ["train.iterations=2", "eval.every=1", "eval.num_prompts=2", "checkpoint_every=2"]
    rc = sweep.main(["--grid", "smoke", "--executor", "debug", "--only", "3", "--out", str(tmp_path),
                     "--tracking-uri", uri, *[a for s in small for a in ("--set", s)]])
    assert rc == 3  # 'incomplete': the other points were left out with --only
    out = capsys.readouterr().out
    assert "done 1/4" in out, out
    beats = [ln for ln in out.splitlines() if ln.startswith("[drift] heartbeat: ")]
    assert [b.split("iteration ")[1].split(" ")[0] for b in beats] == ["1/2", "2/2"], out
    assert all("reward " in b and "diversity " in b and "s/iter" in b and "ETA" in b and "peak mem" in b for b in beats)

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    params, tags = run.data.params, run.data.tags
    assert params["drift.lam"] == "1.0" and params["drift.subset"] == "outlier"
    assert not any(k.startswith("options.") for k in params), sorted(params)
    assert params["train.iterations"] == "2"
    assert tags["grid"] == "smoke" and tags["arm"] == "drift" and tags["knob.drift.lam"] == "1.0"
    assert tags["seed"] == "0" and tags["method"] == "drift" and tags["world"] == "shapes"
    from drift.provenance import code_state

    assert tags["code_hash"] == code_state()["code_hash"] == tags["submitted_code_hash"]
    assert tags["git_sha"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"final_eval.json", "config.json", "samples"} <= arts
    grids = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert {"samples/eval_000000.png", "samples/eval_000001.png", "samples/eval_000002.png"} <= grids

    overrides = [f"{k}={v}" for k, v in sweep.expand(sweep.load("smoke"), extra=dict(s.split("=") for s in small),
                                                     common={"experiment": "smoke", "out": str(tmp_path), "threads": 1,
                                                             "tracking_uri": uri})[3].overrides.items()]
    assert main([*overrides, "--dry-run"]) == 0
    assert "would: skip: finished" in capsys.readouterr().out
