"""The analysis of an imperfect sweep: a diverged run (NaN final evaluation), one still running (its LOCK
held), one whose metrics.jsonl ends in a torn line (once losing its final evaluation, once not), a
duplicated seed, a crashed run and a seed listed in sweep.json that never started. Each is excluded or
kept by the stated rule (analysis.io.EXCLUSION_RULES), listed in report.md and gains.json; every gain
whose front lost points is flagged (†) and the clean pair is not; ``--strict`` makes them an error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from analysis import io as aio  # noqa: E402
from analysis.frontier import main as frontier_main  # noqa: E402
from analysis.frontier import parse_args, run  # noqa: E402
from drift.launch import RunLock  # noqa: E402
from test_analysis import DRIFT_FULL, make_run  # noqa: E402

EXP = "imperfect"


def imperfect_sweep(root: str) -> dict[str, str]:
    sp = {}
    for s in (0, 1, 2):
        make_run(root, EXP, "flow_grpo", s, 0.36, 0.22)
        make_run(root, EXP, "flow_grpo_kl", s, 0.30, 0.16, {"beta": 0.04, "exact": False})
    sp["clean"] = make_run(root, EXP, "drift", 0, 0.33, 0.12, DRIFT_FULL)
    make_run(root, EXP, "drift", 1, 0.33, 0.12, DRIFT_FULL)
    sp["diverged"] = make_run(root, EXP, "drift", 2, 0.33, 0.12, DRIFT_FULL, nan_at=60)
    sp["running"] = make_run(root, EXP, "drift", 3, 0.33, 0.12, DRIFT_FULL, last_step=30, done=False, final_eval=False)
    sp["torn"] = make_run(root, EXP, "drift", 4, 0.33, 0.12, DRIFT_FULL)
    with open(os.path.join(sp["torn"], "metrics.jsonl"), "rb+") as f:  # the final row, cut mid-write
        f.seek(-25, os.SEEK_END)
        f.truncate()
    sp["torn_kept"] = make_run(root, EXP, "drift", 5, 0.33, 0.12, DRIFT_FULL)
    with open(os.path.join(sp["torn_kept"], "metrics.jsonl"), "a") as f:
        f.write('{"step": 61, "sys/iter_sec')
    sp["crashed"] = make_run(root, EXP, "drift", 6, 0.33, 0.12, DRIFT_FULL, last_step=20, done=False, final_eval=False)
    sp["dup"] = sp["clean"] + "_copy"
    shutil.copytree(sp["clean"], sp["dup"])
    sp["missing"] = sp["clean"].replace("seed0", "seed7")
    dirs = aio.find_run_dirs(os.path.join(root, EXP))
    with open(os.path.join(root, EXP, "sweep.json"), "w") as f:
        json.dump({"points": [{"run_dir": d, "method": json.load(open(os.path.join(d, "config.json")))["method"]}
                              for d in dirs] + [{"run_dir": sp["missing"], "method": "drift"}]}, f)
    return sp


def test_imperfect_sweep_excludes_by_rule_lists_and_flags(tmp_path, capsys):
    root = str(tmp_path / "runs")
    sp = imperfect_sweep(root)
    rel = lambda k: os.path.relpath(sp[k], root)  # noqa: E731
    args = ["--runs-dir", root, "--experiment", EXP, "--bootstrap", "0", "--no-mlflow", "--no-progress",
            "--baseline", "flow_grpo"]
    with RunLock(sp["running"]):  # a live process holds the running run's lock
        r = run(parse_args(args))
        strict = frontier_main(args + ["--strict"])
    err = capsys.readouterr().err
    doc = r["doc"]
    kinds = {e["run"]: e["kind"] for e in doc["exclusions"]["runs"]}
    assert kinds == {rel("diverged"): "diverged", rel("running"): "running", rel("torn"): "torn",
                     rel("crashed"): "crashed", rel("dup"): "duplicate", sp["missing"]: "missing"}, kinds
    assert set(doc["exclusions"]["rules"]) >= set(kinds.values())
    assert doc["meta"]["n_excluded"] == 6 and doc["meta"]["n_runs"] == 3 + 3 + 3  # drift 0, 1, 5 kept
    assert any(f"run {rel('torn_kept')}: dropped the torn last line" in w for w in doc["warnings"])
    kept = set(json.load(open(os.path.join(r["out"], "gains.json")))["methods"]["labels"]["drift"]["seeds"])
    assert kept == {0, 1, 5}

    # every gain of drift (whose front lost points) is flagged, with the reasons; the clean pair is not
    pairs = {(p["method"], p["baseline"]): p for p in doc["methods"]["pairs"]}
    assert pairs[("drift", "flow_grpo")]["flagged"] and not pairs[("flow_grpo_kl", "flow_grpo")]["flagged"]
    lost = pairs[("drift", "flow_grpo")]["front_lost_points"]["drift"]
    assert {x.split(":")[0] for x in lost} == {"diverged", "running", "torn", "crashed", "missing"}, lost
    md = open(os.path.join(r["out"], "gains.md")).read()
    assert "| DRIFT † | Flow-GRPO |" in md and "| Flow-GRPO+KL | Flow-GRPO |" in md and "Flow-GRPO+KL †" not in md
    report = open(os.path.join(r["out"], "report.md")).read()
    for kind in set(kinds.values()):
        assert f"**{kind}**: {aio.EXCLUSION_RULES[kind]}" in report
        assert f"* [{kind}] " in report
    assert "| DRIFT † | Flow-GRPO |" in report

    # --strict: any exclusion is an error naming each
    assert strict == 2
    for kind in set(kinds.values()):
        assert f"{kind}: " in err, err


def test_strict_passes_a_perfect_sweep(tmp_path):
    root = str(tmp_path / "runs")
    for s in (0, 1):
        make_run(root, EXP, "flow_grpo", s, 0.36, 0.22)
        make_run(root, EXP, "drift", s, 0.33, 0.12, DRIFT_FULL)
    args = ["--runs-dir", root, "--experiment", EXP, "--bootstrap", "0", "--no-mlflow", "--no-progress",
            "--baseline", "flow_grpo", "--strict"]
    assert frontier_main(args) == 0
    doc = json.load(open(os.path.join(root, EXP, "analysis", "gains.json")))
    assert doc["exclusions"]["runs"] == [] and not any(p["flagged"] for p in doc["methods"]["pairs"])
