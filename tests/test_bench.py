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
    lim = r["limit"]  # the limit figure: counted FLOPs, the matmul peak measured in the same run, their ratio
    f, ev, sh = lim["flops_per_iteration"], lim["flops_per_evaluation"], bare["shapes"]
    # the transformer's cost is linear in the rows: sampling = rows x steps x one row's call, as evaluation counts it
    assert f["sample"] == pytest.approx(ev["flops_per_row_call"] * sh["sample_batch"] * sh["denoise_steps"], rel=1e-6)
    assert f["train"] > f["reference"] > 0 and ev["total"] > ev["generator"] > 0
    assert lim["matmul_peak"]["flops_per_second"] > 0 and lim["matmul_peak"]["repetitions"] == 3
    assert 0 < lim["flop_ratio"] < 2 and 0 < lim["flop_ratio_wall"] <= lim["flop_ratio"] * 1.5
    text = capsys.readouterr().out
    assert "overhead ratio" in text and "backward" in text and "FLOP ratio" in text


def test_bad_override_is_refused_before_work(capsys):
    assert bench.main(["sample.group_size=1"]) == 2
    assert "sample.group_size=1" in capsys.readouterr().err
