"""The benchmark's protocol: the validation split (disjoint, deterministic, never trained on), eval.split and its
noise seed, the sweep's --seeds, the tune / pareto / fast / ablation grids, tuned_defaults.json and the freeze
tool (its selection rule on hand-made numbers, and end to end on run directories written as drift.train does)."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drift.config import ConfigError, make_config  # noqa: E402
from drift.evaluate import EVAL_NOISE_SEED, eval_noise  # noqa: E402
from drift.prompts import VALIDATION_FRACTION, carve_validation, is_validation, load_prompt_splits  # noqa: E402
from drift.rundir import RunDir  # noqa: E402
from drift.worlds.shapes import world as shapes  # noqa: E402
from experiments import freeze, sweep  # noqa: E402
from experiments.grids import GridError, expand, load  # noqa: E402
from experiments.grids.presets import SHAPES_FAST, SHAPES_JUDGE  # noqa: E402
from experiments.grids.protocol import (CALIBRATION_SEEDS, JUDGING_SEEDS, TUNED_DEFAULTS, TUNED_METHODS,  # noqa: E402
                                        TUNING_SEEDS, load_tuned)

SWEEP = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py")]
FREEZE = [sys.executable, os.path.join(ROOT, "experiments", "freeze.py")]


def run(cmd, *args):
    return subprocess.run(cmd + list(args), cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})


# ------------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------------
def test_shapes_splits_are_disjoint_cover_every_prompt_and_kind_and_are_fixed():
    tr, val, ev = (shapes.prompt_split(s) for s in ("train", "validation", "eval"))
    assert not (set(tr) & set(val)) and not (set(tr) & set(ev)) and not (set(val) & set(ev))
    assert len(tr) + len(val) + len(ev) == len(shapes.all_prompts())
    assert {p.kind for p in val} == {"full", "free_fg", "free_shape", "free_bg"}
    assert all(is_validation(str(p)) for p in val) and not any(is_validation(str(p)) for p in tr)
    # about 1 in 5 of the training prompts (here 21 of 116); the legacy pool is train + validation in the old order
    assert 0.1 < len(val) / (len(tr) + len(val)) < 0.3
    assert shapes.prompt_split("train", "validation") == [p for p in shapes.all_prompts() if p not in set(ev)]
    with pytest.raises(ValueError, match="must be one of"):
        shapes.prompt_split("test")


def test_prompt_file_validation_carve_out_is_disjoint_deterministic_and_order_free(tmp_path):
    texts = [f"a photo of object number {i}" for i in range(200)]
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(texts))
    b.write_text("\n".join(reversed(texts)))
    (tr_a, ev_a), (tr_b, ev_b) = load_prompt_splits(str(a)), load_prompt_splits(str(b))
    (fit_a, val_a), (fit_b, val_b) = carve_validation(tr_a), carve_validation(tr_b)
    assert set(val_a) == set(val_b) and set(fit_a) == set(fit_b)  # the file's order does not matter
    assert not (set(fit_a) & set(val_a)) and not (set(val_a) & set(ev_a)) and set(fit_a) | set(val_a) == set(tr_a)
    assert abs(len(val_a) / len(tr_a) - VALIDATION_FRACTION) < 0.1
    assert carve_validation(tr_a) == (fit_a, val_a)  # the same again


def test_eval_split_field_and_its_noise_seed():
    assert make_config([]).eval.split == "test" and make_config([]).train.holdout_validation is True
    with pytest.raises(ConfigError, match=r"eval\.split.*'valid'.*must be one of"):
        make_config(["eval.split=valid"])
    with pytest.raises(ConfigError, match=r"eval\.split.*needs train\.holdout_validation=true"):
        make_config(["eval.split=validation", "train.holdout_validation=false"])

    class W:
        latent_shape = (3, 4, 4)
    assert EVAL_NOISE_SEED == 2026
    test, val = eval_noise(W, 2, 3), eval_noise(W, 2, 3, "validation")
    assert torch.equal(test, torch.randn(2, 3, 3, 4, 4, generator=torch.Generator().manual_seed(2026)))
    assert torch.equal(val, torch.randn(2, 3, 3, 4, 4, generator=torch.Generator().manual_seed(4242)))


# ------------------------------------------------------------------------------------------------
# --seeds
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expect", [
    ("1,1", r"seed\(s\) \[1\] repeated"), ("1,,2", "no empty item"), ("", "no empty item"),
    ("a", "'a' is not a seed"), ("-1", "'-1' is not a seed"), ("1.5", "'1.5' is not a seed"), ("٣", "is not a seed"),
])
def test_seeds_flag_is_validated_before_any_work(tmp_path, capsys, text, expect):
    with pytest.raises(GridError, match=expect):
        sweep.parse_seeds(text)
    out = tmp_path / "runs"
    assert sweep.main(["--grid", "smoke", "--seeds", text, "--executor", "local", "--out", str(out),
                       "--tracking-uri", "none"]) == 2
    assert "--seeds" in capsys.readouterr().err and not out.exists()


def test_seeds_flag_overrides_the_grid_seeds_in_dry_run_only_and_slurm(tmp_path, capsys):
    assert sweep.parse_seeds(" 10, 11,12") == (10, 11, 12)
    out = tmp_path / "runs"
    assert sweep.main(["--grid", "smoke", "--seeds", "10,11", "--dry-run", "--executor", "local", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    pts = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert len(pts) == 8 and {ln.rsplit("seed=", 1)[1] for ln in pts} == {"10", "11"}
    assert "2 seeds (10, 11) (--seeds)" in text and not out.exists()
    assert sweep.main(["--grid", "smoke", "--seeds", "10,11", "--only", "9", "--dry-run", "--executor", "local"]) == 2
    assert "#0..#7" in capsys.readouterr().err  # --only indexes the points of these seeds
    assert sweep.main(["--grid", "smoke", "--seeds", "7", "--dry-run", "--executor", "slurm", "--profile", "local_ci",
                       "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "one array of 4 task(s)" in text and all(ln.endswith("seed=7") for ln in text.splitlines() if ln.startswith("#"))
    r = run(SWEEP, "--grid", "smoke", "--seeds", "1,1", "--dry-run")  # the command line itself
    assert r.returncode == 2 and "--seeds '1,1'" in r.stderr


# ------------------------------------------------------------------------------------------------
# Grids and tuned_defaults.json
# ------------------------------------------------------------------------------------------------
def common(tmp_path):
    return {"experiment": "t", "out": str(tmp_path), "tracking_uri": "none", "threads": 1}


def test_seed_sets_are_disjoint_by_purpose():
    assert not (set(TUNING_SEEDS) & set(JUDGING_SEEDS)) and not (set(CALIBRATION_SEEDS) & set(JUDGING_SEEDS))
    assert not (set(TUNING_SEEDS) & set(CALIBRATION_SEEDS)) and load("calibrate").seeds == CALIBRATION_SEEDS


def test_tune_grid_gives_every_method_the_same_budget_on_validation_prompts(tmp_path):
    grid = load("tune")
    pts = expand(grid, common=common(tmp_path))
    assert grid.seeds == TUNING_SEEDS and {p.cfg.seed for p in pts} == set(TUNING_SEEDS)
    assert all(p.cfg.eval.split == "validation" and p.cfg.train.holdout_validation for p in pts)
    assert {p.cfg.eval.num_prompts for p in pts} == {len(shapes.prompt_split("validation"))}
    assert all(p.cfg.train.iterations == SHAPES_JUDGE["train.iterations"] for p in pts)
    per = {m: len({json.dumps(p.knobs, sort_keys=True) for p in pts if p.arm == m}) for m in TUNED_METHODS}
    assert set(per.values()) == {6}, per
    assert "Selection rule" in grid.doc and "A_ref" in grid.doc


def test_pareto_is_the_judging_grid_and_reads_the_tuned_defaults(tmp_path, capsys):
    grid, doc = load("pareto"), load_tuned()
    pts = expand(grid, common=common(tmp_path))
    assert grid.seeds == JUDGING_SEEDS and all(p.cfg.eval.split == "test" for p in pts)
    assert all(p.cfg.train.iterations == 30 and p.cfg.eval.num_prompts == 29 and p.cfg.eval.seeds == 8 for p in pts)
    arms = {p.arm for p in pts}
    from experiments.grids.pareto import G, K

    fair = {f"flow_grpo_k{K}", f"flow_grpo_kl_k{K}"}  # compute-fair arms, only when DRIFT draws more than it trains on
    assert {"flow_grpo", "flow_grpo_kl", "diverse_grpo", "drift"} <= arms and (fair <= arms) == (K > G)
    assert not (arms & fair) or K > G
    for m in TUNED_METHODS:
        (key, vals), = doc["methods"][m]["axis"].items()
        assert sorted({p.knobs[key] for p in pts if p.arm == m}) == sorted(vals)
    if K > G:
        assert {p.cfg.sample.group_size for p in pts if p.arm == f"flow_grpo_k{K}"} == {K}
    else:
        assert any("COMPUTE-FAIR" in n for n in grid.notes)
    # arms whose method/option this code lacks are left out and named, never silently
    for arm in ("drift_kl", "oracle_spread"):
        assert (arm in arms) != any(f"ARM LEFT OUT: {arm!r}" in n for n in grid.notes)
    assert grid.notes[0].startswith("TUNED DEFAULTS: " + doc["status"])
    for words in ("Primary statistic", "Decision rule", "A/A", "oracle_spread vs the KL front", "power check",
                  "(z_0.975 + z_0.8)^2", "calibrate", "PRIOR"):
        assert words in grid.doc, words
    assert sweep.main(["--grid", "pareto", "--dry-run", "--executor", "local", "--out", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.startswith("TUNED DEFAULTS: untuned")


def test_fast_is_the_old_make_main_grid_labelled_not_discriminative(tmp_path):
    grid = load("fast")
    pts = expand(grid, common=common(tmp_path))
    assert len(pts) == 14 and grid.budget == SHAPES_FAST and "NOT DISCRIMINATIVE" in grid.doc
    assert any("NOT DISCRIMINATIVE" in n for n in grid.notes)
    abl = expand(load("ablation"), common=common(tmp_path))
    assert {p.cfg.seed for p in abl} == set(JUDGING_SEEDS) and {p.cfg.train.iterations for p in abl} == {30}


def test_committed_tuned_defaults_say_honestly_that_nothing_was_tuned():
    doc = load_tuned()
    assert doc["status"] == "untuned" and doc["evidence"] == [] and "no tuning has been run" in doc["statement"]


@pytest.mark.parametrize("edit, expect", [
    (lambda d: d.update(status="final"), r"status='final': must be one of"),
    (lambda d: d["methods"].pop("drift"), r"lacks \['drift'\]"),
    (lambda d: d["methods"]["drift"]["axis"].update({"drift.lam": [1.0, 1.0, 2.0]}), "3 distinct finite numbers"),
    (lambda d: d["methods"]["drift"]["fixed"].update({"lam": 1}), "must be named 'drift.<field>'"),
    (lambda d: d.update(drift_kl={"drift.kl_beta": 0}), "drift_kl"),
    (lambda d: d.update(status="tuned"), "must list the tuning runs"),
])
def test_malformed_tuned_defaults_are_refused(tmp_path, edit, expect):
    with open(TUNED_DEFAULTS) as f:
        doc = json.load(f)
    edit(doc)
    p = tmp_path / "tuned.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(GridError, match=expect):
        load_tuned(str(p))
    p.write_text("{not json")
    with pytest.raises(GridError, match="not valid JSON"):
        load_tuned(str(p))


# ------------------------------------------------------------------------------------------------
# Freeze
# ------------------------------------------------------------------------------------------------
def test_selection_rule_on_hand_made_numbers():
    assert freeze.reference_alignment(1.0, 2.0) == 1.5
    cs = [{"A": 1.6, "D": 0.10}, {"A": 1.5, "D": 0.20}, {"A": 1.4, "D": 0.30}]
    assert freeze.select_config(cs, 1.5) == (cs[1], True)  # most diverse among those at or above A_ref
    assert freeze.select_config(cs, 1.7) == (cs[0], False)  # none reaches it: the best aligned
    assert freeze.front_values([0.1, 0.5, 0.2, 1.0], 0.2) == [0.1, 0.2, 0.5]
    assert freeze.front_values([0.1, 0.2, 0.5, 1.0], 0.1) == [0.1, 0.2, 0.5]  # at an end: the two nearest
    assert freeze.front_values([0.1, 0.2, 0.5, 1.0], 1.0) == [0.2, 0.5, 1.0]


def fake_run(p, a_final: float, d_final: float, split: str | None = None, seed: int | None = None) -> str:
    """A finished run directory of point p as drift.train writes one (config.json, metrics.jsonl, final_eval.json,
    DONE), with base alignment 1.0 and the given final values."""
    cfg = p.cfg.to_dict()
    rd = p.run_dir
    if split or seed is not None:
        cfg["eval"]["split"] = split or cfg["eval"]["split"]
        cfg["seed"] = cfg["seed"] if seed is None else seed
        rd = os.path.join(os.path.dirname(rd), f"seed{cfg['seed']}x")
    os.makedirs(rd)
    rows = [{"step": 0, "eval/alignment": 1.0, "eval/diversity": 0.3, "eval/diversity/heldout": 0.3},
            {"step": 30, "eval/alignment": a_final, "eval/diversity": 0.0, "eval/diversity/heldout": d_final}]
    for name, obj in ((RunDir.CONFIG, cfg), (RunDir.FINAL_EVAL, {"first": rows[0], "last": rows[-1]})):
        with open(os.path.join(rd, name), "w") as f:
            json.dump(obj, f)
    with open(os.path.join(rd, RunDir.METRICS), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    open(os.path.join(rd, RunDir.DONE), "w").close()
    return rd


def test_freeze_end_to_end_selects_by_the_rule_and_refuses_judging_evidence(tmp_path, capsys):
    runs = tmp_path / "runs"
    out = tmp_path / "tuned_defaults.json"
    grid = load("tune")
    pts = expand(grid, common={"experiment": "tune", "out": str(runs), "tracking_uri": "none", "threads": 1})
    second = next(k for k in pts[-1].knobs if k != "drift.lam")
    for p in pts:  # alignment falls and diversity rises with each method's strength; Flow-GRPO reaches 2.0
        k = p.knobs
        s = {"flow_grpo_kl": k.get("flow_grpo_kl.beta"), "diverse_grpo": k.get("diverse_grpo.beta", 0) / 4,
             "drift": k.get("drift.lam", 0) / 2}.get(p.arm) or 0.0
        bump = 0.01 * (k.get(second) == max(grid.arms[-1].axes[second])) if p.arm == "drift" else 0.0
        fake_run(p, 2.0 - 0.9 * s + 0.001 * (p.cfg.seed - 102), 0.1 + 0.2 * s + bump)
    r = run(FREEZE, "--grid", "tune", "--runs-dir", str(runs), "--out", str(out))  # the command itself, once
    assert r.returncode == 0, r.stderr
    doc = load_tuned(str(out))
    # A_ref = 1.0 + 0.5 * (2.0 - 1.0) = 1.5, so strength s <= 0.555: KL beta 0.5, DiverseGRPO 2.0, DRIFT lam 1.0
    assert doc["status"] == "tuned" and doc["selection"]["A_ref"] == pytest.approx(1.5)
    assert doc["methods"]["flow_grpo_kl"]["axis"] == {"flow_grpo_kl.beta": [0.2, 0.5, 1.0]}
    assert doc["methods"]["diverse_grpo"]["axis"] == {"diverse_grpo.beta": [1.0, 2.0, 4.0]}
    assert doc["methods"]["drift"] == {"fixed": {second: max(grid.arms[-1].axes[second])},
                                       "axis": {"drift.lam": [0.5, 1.0, 2.0]}}
    assert doc["drift_kl"] == {"drift.kl_beta": 0.5} and len(doc["evidence"]) == len(pts) == 95
    e = doc["evidence"][0]
    assert {"run_dir", "config_hash", "seed", "alignment_final", "diversity_final"} <= set(e) and doc["commit"]
    assert doc["diversity_key"] == "eval/diversity/heldout" and doc["date"].endswith("Z")
    before = out.read_text()
    # a judging-seed run or a test-split run among the tuning runs: refused, the file left as it was
    args = ["--grid", "tune", "--runs-dir", str(runs), "--out", str(out)]
    bad = fake_run(pts[0], 2.0, 0.1, seed=3)
    assert freeze.main(args) == 2 and "judging seed" in capsys.readouterr().err and out.read_text() == before
    os.rename(bad, bad + "_moved_away")  # still under runs/tune: still refused
    assert freeze.main(args) == 2 and "judging seed" in capsys.readouterr().err
    import shutil

    shutil.rmtree(bad + "_moved_away")
    fake_run(pts[1], 2.0, 0.1, split="test")
    assert freeze.main(args) == 2 and "eval.split='test'" in capsys.readouterr().err and out.read_text() == before
    assert freeze.main(["--grid", "pareto", "--runs-dir", str(runs), "--out", str(out), "--dry-run"]) == 2
    assert "not a tuning grid" in capsys.readouterr().err
