"""drift.bench: the breakdown adds up, the bare compute is measured, the JSON is written."""

import json

import pytest

from drift import bench

TINY = ["train.iterations=3", "sample.groups_per_iter=2", "sample.group_size=4", "sample.num_steps=4", "threads=1",
        "eval.num_prompts=2", "eval.seeds=2", "eval.num_steps=3", "tracking_uri=none"]


def test_breakdown_adds_up_and_json_is_written(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert bench.main(TINY + ["method=flow_grpo_kl", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    b = r["iteration_seconds"]
    parts = sum(b[k] for k in bench.PHASES + ("log", "other"))
    assert parts == pytest.approx(b["wall"], rel=1e-6)  # 'other' is what the phases do not cover
    assert all(b[k] >= 0 for k in bench.PHASES) and b["other"] > -1e-3
    assert b["sample"] > 0 and b["forward"] > 0 and b["backward"] > 0
    bare = r["bare_seconds"]
    assert bare["repetitions"] == 3 and bare["reference"] > 0  # the KL method needs the reference passes
    assert bare["shapes"]["sample_batch"] == 2 * 4 * 2 and bare["shapes"]["trained_steps"] == 3
    assert 0 < r["overhead_ratio"] < 10 and r["peak_rss_mib"] > 0
    assert r["machine"]["cpu_count"] >= 1
    text = capsys.readouterr().out
    assert "overhead ratio" in text and "backward" in text


def test_bad_override_is_refused_before_work(capsys):
    assert bench.main(["sample.group_size=1"]) == 2
    assert "sample.group_size=1" in capsys.readouterr().err
