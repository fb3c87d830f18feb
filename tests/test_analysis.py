"""analysis/: the front definitions on hand-computed fronts, the loaders' edge cases, golden tables, MLflow.

Golden files live in tests/golden/. After an intended change of the tables, regenerate them with

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_analysis.py -k golden

and review the diff before committing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from analysis import fronts as F  # noqa: E402
from analysis import io as aio  # noqa: E402
from analysis.frontier import main as frontier_main  # noqa: E402
from analysis.frontier import parse_args, run  # noqa: E402
from analysis.stats import Settings, analyse  # noqa: E402

GOLDEN = os.path.join(ROOT, "tests", "golden")
A0, D0 = 0.40, 0.30
STEPS = (0, 20, 40, 60)


# ================================================================================================
# Pure definitions on hand-computed fronts
# ================================================================================================
def test_pareto_front_hand_computed():
    a = [0.1, 0.3, 0.2, 0.5, 0.5, 0.4, 0.3, 0.5]
    d = [0.9, 0.6, 0.5, 0.2, 0.2, 0.1, 0.6, 0.1]
    # (0.2, 0.5) < (0.3, 0.6); (0.4, 0.1) < (0.5, 0.2); (0.5, 0.1) < (0.5, 0.2) (tie on a); duplicates kept once
    np.testing.assert_array_equal(F.pareto_indices(a, d), [0, 1, 3])
    np.testing.assert_allclose(F.pareto_front(a, d), [[0.1, 0.9], [0.3, 0.6], [0.5, 0.2]])
    assert F.pareto_front([], []).shape == (0, 2)
    np.testing.assert_allclose(F.pareto_front([0.5], [0.5]), [[0.5, 0.5]])


def test_pareto_front_refuses_nan():
    with pytest.raises(ValueError, match="1 of 3 points have a non-finite"):
        F.pareto_front([0.1, np.nan, 0.3], [0.1, 0.2, 0.3])


FRONT = np.array([[0.1, 0.9], [0.3, 0.6], [0.5, 0.2]])


def test_front_functions_staircase_vs_linear():
    lv = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    np.testing.assert_allclose(F.diversity_at(FRONT, lv), [0.9, 0.9, 0.6, 0.6, 0.2, 0.2, np.nan])
    np.testing.assert_allclose(F.diversity_at(FRONT, lv, "linear"), [0.9, 0.9, 0.75, 0.6, 0.4, 0.2, np.nan])
    dl = [0.0, 0.2, 0.4, 0.6, 0.75, 0.9, 1.0]
    np.testing.assert_allclose(F.alignment_at(FRONT, dl), [0.5, 0.5, 0.3, 0.3, 0.1, 0.1, np.nan])
    np.testing.assert_allclose(F.alignment_at(FRONT, dl, "linear"), [0.5, 0.5, 0.4, 0.3, 0.2, 0.1, np.nan])
    with pytest.raises(ValueError, match="interp='cubic'"):
        F.diversity_at(FRONT, [0.2], "cubic")


M = np.array([[0.2, 0.6], [0.6, 0.3]])
B = np.array([[0.4, 0.2], [0.8, 0.1]])


def test_gain_partial_overlap_staircase():
    g = F.gain_at_equal(M, B, "alignment", "staircase", n_levels=3)
    assert g.interval == (0.4, 0.6)
    np.testing.assert_allclose(g.levels, [0.4, 0.5, 0.6])
    # D_M = 0.3, 0.3, 0.3; D_B = 0.2, 0.1, 0.1
    np.testing.assert_allclose(g.values, [0.5, 2.0, 2.0])
    assert (g.min, g.max) == pytest.approx((0.5, 2.0)) and g.mean == pytest.approx(1.5)


def test_gain_partial_overlap_linear():
    g = F.gain_at_equal(M, B, "alignment", "linear", n_levels=3)
    # D_M = 0.45, 0.375, 0.3; D_B = 0.2, 0.175, 0.15
    np.testing.assert_allclose(g.values, [0.45 / 0.2 - 1, 0.375 / 0.175 - 1, 1.0])
    assert g.mean == pytest.approx(np.mean([1.25, 0.375 / 0.175 - 1, 1.0]))


def test_alignment_gain_plain_and_vs_base():
    # diversity overlap: M covers [0.3, 0.6], B [0.1, 0.2] -> none
    g = F.gain_at_equal(M, B, "diversity")
    assert not g.defined and g.interval is None and "no overlap in diversity" in g.messages[0]
    m2 = np.array([[0.5, 0.4], [0.7, 0.2]])
    b2 = np.array([[0.45, 0.3], [0.6, 0.2]])
    # diversity overlap [0.2, 0.3]; staircase A_M: d=0.2 -> 0.7, 0.25 -> 0.5, 0.3 -> 0.5; A_B: 0.6, 0.45, 0.45
    g = F.gain_at_equal(m2, b2, "diversity", n_levels=3)
    np.testing.assert_allclose(g.values, [0.7 / 0.6 - 1, 0.5 / 0.45 - 1, 0.5 / 0.45 - 1])
    gb = F.gain_at_equal(m2, b2, "diversity", n_levels=3, zero=0.4)
    np.testing.assert_allclose(gb.values, [0.3 / 0.2 - 1, 0.1 / 0.05 - 1, 0.1 / 0.05 - 1])
    # a baseline at or below the base model: the base-relative gain is undefined there, not infinite
    gz = F.gain_at_equal(m2, b2, "diversity", n_levels=3, zero=0.45)
    assert np.isnan(gz.values[1:]).all() and gz.values[0] == pytest.approx(0.25 / 0.15 - 1)
    assert "undefined at 2 of 3 levels" in gz.messages[0]


def test_relative_gain_undefined_where_baseline_not_positive():
    np.testing.assert_allclose(F.relative_gain([1.0, 1.0, 1.0], [0.5, 0.0, -1.0]), [1.0, np.nan, np.nan])


def test_single_point_front():
    one = np.array([[0.5, 0.25]])
    g = F.gain_at_equal(one, B, "alignment", n_levels=21)
    assert len(g.levels) == 1 and g.values[0] == pytest.approx(0.25 / 0.1 - 1)
    assert "single alignment value" in g.messages[0]
    assert F.hypervolume(one, (0.0, 0.0)) == pytest.approx(0.125)
    g = F.gain_at_equal(one, np.array([[0.9, 0.1]]), "alignment")
    assert not g.defined and "no overlap" in g.messages[0]


def test_dominance_share():
    fm = np.array([[0.3, 0.7], [0.6, 0.4]])
    fb = np.array([[0.2, 0.6], [0.5, 0.5], [0.6, 0.4], [0.7, 0.1]])
    # (0.2,0.6) by (0.3,0.7); (0.5,0.5) by none; (0.6,0.4) equal -> not dominated; (0.7,0.1) none
    assert F.dominance_share(fm, fb) == pytest.approx(0.25)
    assert F.dominance_share(fb, fm) == pytest.approx(0.0)
    assert np.isnan(F.dominance_share(fm, np.zeros((0, 2))))


def test_hypervolume():
    assert F.hypervolume(FRONT, (0.0, 0.0)) == pytest.approx(0.1 * 0.9 + 0.2 * 0.6 + 0.2 * 0.2)
    # reference inside: (0.1, 0.9) is left of r_a, (0.5, 0.2) below r_d; only (0.3, 0.6) counts
    assert F.hypervolume(FRONT, (0.2, 0.3)) == pytest.approx(0.1 * 0.3)
    assert F.hypervolume(FRONT, (1.0, 1.0)) == 0.0
    assert F.hypervolume(np.zeros((0, 2)), (0.0, 0.0)) == 0.0


def test_docs_worked_example():
    """docs/analysis.md §7, number by number."""
    pm = np.array([[0.2, 0.6], [0.5, 0.4], [0.7, 0.2], [0.4, 0.3]])
    pb = np.array([[0.3, 0.5], [0.45, 0.35], [0.6, 0.25], [0.8, 0.15], [0.5, 0.2]])
    fm, fb = F.pareto_front(pm[:, 0], pm[:, 1]), F.pareto_front(pb[:, 0], pb[:, 1])
    np.testing.assert_allclose(fm, pm[:3])
    np.testing.assert_allclose(fb, pb[:4])
    cases = {  # (matched, interp, zero): (per-level gains, min, max, mean)
        ("alignment", "staircase", 0.0): ([-0.2, 0.6, 1 / 3], -0.2, 0.6, 0.2444),
        ("alignment", "linear", 0.0): ([0.0667, 0.2632, 0.0], 0.0, 0.2632, 0.1099),
        ("diversity", "staircase", 0.0): ([1 / 6, 1 / 9, -1 / 3], -1 / 3, 1 / 6, -0.0185),
        ("diversity", "staircase", 0.1): ([0.2, 0.1429, -0.5], -0.5, 0.2, -0.0524),
        ("diversity", "linear", 0.0): ([0.0, 0.2222, 0.1667], 0.0, 0.2222, 0.1296),
        ("diversity", "linear", 0.1): ([0.0, 0.2857, 0.25], 0.0, 0.2857, 0.1786),
    }
    for (matched, interp, zero), (vals, lo, hi, mean) in cases.items():
        g = F.gain_at_equal(fm, fb, matched, interp, n_levels=3, zero=zero)
        assert g.interval == pytest.approx((0.3, 0.7) if matched == "alignment" else (0.2, 0.5))
        np.testing.assert_allclose(g.values, vals, atol=1e-4, err_msg=str((matched, interp, zero)))
        assert (g.min, g.max, g.mean) == pytest.approx((lo, hi, mean), abs=1e-4)
    assert F.dominance_share(fm, fb) == 0.25 and F.dominance_share(fb, fm) == 0.0
    assert F.hypervolume(fm, (0.2, 0.15)) == pytest.approx(0.085)
    assert F.hypervolume(fb, (0.2, 0.15)) == pytest.approx(0.080)


def test_percentile_ci_and_resample():
    assert F.percentile_ci(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert F.percentile_ci([1.0, np.nan]) is None
    rng = np.random.default_rng(0)
    draw = F.resample_runs([[0, 1, 2], [3]], rng)
    assert len(draw) == 4 and set(draw[:3]) <= {0, 1, 2} and draw[3] == 3
    assert draw == F.resample_runs([[0, 1, 2], [3]], np.random.default_rng(0))


# ================================================================================================
# Synthetic run directories
# ================================================================================================
def _config(method: str, seed: int, options: dict, exp: str, out: str) -> dict:
    return {"method": method, "seed": seed, "experiment": exp, "out": out, "tracking_uri": "none",
            "checkpoint_every": 10, "threads": 1, "model": {"world": "shapes"}, "reward": {"judge": "partial"},
            "sample": {"group_size": 8}, "train": {"iterations": 60, "lr": 0.001}, "eval": {"every": 20},
            "options": options}


def _tiny_png(path: str, colour: tuple) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def make_run(root: str, exp: str, method: str, seed: int, r: float, q: float, options: dict | None = None,
             last_step: int = 60, done: bool = True, final_eval: bool = True, nan_at: int | None = None) -> str:
    """A run directory as drift/train.py writes it, with alignment a0 + r x and diversity d0 - q x at
    x = step / 60 (plus a small seed-dependent wobble)."""
    cfg = _config(method, seed, options or {}, exp, root)
    rd = os.path.join(root, exp, method, aio.science_hash(cfg), f"seed{seed}")
    os.makedirs(rd)
    with open(os.path.join(rd, "config.json"), "w") as f:
        json.dump(cfg, f)
    rows = []
    for step in range(0, last_step + 1, 10):
        row: dict = {"step": step}
        if step:
            row["reward/mean"] = 0.5
        if step in STEPS:
            x = step / 60
            a = A0 + r * x + 0.01 * (seed - 1) * x
            d = D0 - q * x + 0.006 * ((seed * 7) % 3 - 1) * x
            row.update({"eval/alignment": round(a, 6), "eval/diversity": round(d, 6),
                        "eval/diversity/vendi": round(1 + 5 * d, 6)})
            if step == nan_at:
                row["eval/diversity"] = "nan"
            _tiny_png(os.path.join(rd, "samples", f"eval_{step:06d}.png"), (int(255 * d), 100, 50))
        rows.append(row)
    with open(os.path.join(rd, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in rows)
    evals = [x for x in rows if "eval/alignment" in x]
    if final_eval:
        with open(os.path.join(rd, "final_eval.json"), "w") as f:
            json.dump({"final": evals[-1], "initial": evals[0]}, f)
    if done:
        with open(os.path.join(rd, "DONE"), "w") as f:
            f.write("{}")
    return rd


DRIFT_FULL = {"subset": "densest", "prompt": "embed", "shaping": "terminal", "lam": 1.0, "beta": 0.0}


def drift_opts(**kw) -> dict:
    return {**DRIFT_FULL, **kw}


def make_world(root: str, exp: str = "pareto") -> dict[str, str]:
    """Every method, knob settings, an ablation grid and the edge cases; returns the special run dirs."""
    special = {}
    for s in (0, 1, 2):
        rd = make_run(root, exp, "flow_grpo", s, 0.36, 0.22)
        if s == 0:
            special["dup_of"] = rd
        make_run(root, exp, "drift", s, 0.33, 0.12, DRIFT_FULL, nan_at=40 if s == 1 else None)
    for beta, (r, q) in ((0.01, (0.30, 0.16)), (0.04, (0.20, 0.08))):
        for s in (0, 1):
            make_run(root, exp, "flow_grpo_kl", s, r, q, {"beta": beta, "exact": False},
                     last_step=50 if (beta == 0.04 and s == 1) else 60)  # ends before its final eval
    make_run(root, exp, "diverse_grpo", 0, 0.25, 0.10, {"beta": 0.5})  # a single seed
    for opts, (r, q) in ((drift_opts(subset="none"), (0.32, 0.15)), (drift_opts(shaping="none"), (0.34, 0.19)),
                         (drift_opts(prompt="none", shaping="none"), (0.35, 0.20))):
        for s in (0, 1):
            make_run(root, exp, "drift", s, r, q, opts)
    special["crashed"] = make_run(root, exp, "drift", 3, 0.33, 0.12, DRIFT_FULL, last_step=20, done=False,
                                  final_eval=False)
    special["no_final"] = make_run(root, exp, "flow_grpo", 3, 0.36, 0.22, final_eval=False)
    special["dup"] = special["dup_of"] + "_copy"
    shutil.copytree(special["dup_of"], special["dup"])
    return special


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runs"))
    special = make_world(root)
    return root, special


def test_load_run_dirs_edge_cases(world):
    root, sp = world
    dirs = aio.find_run_dirs(os.path.join(root, "pareto"))
    ds = aio.load_run_dirs(dirs, root=root)
    w = "\n".join(ds.warnings)
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    assert f"excluded run {rel(sp['crashed'])}: it did not finish" in w
    assert f"excluded run {rel(sp['no_final'])}: no final_eval.json" in w
    assert "lacks its final evaluation ('eval/alignment' and 'eval/diversity' at step 60" in w
    assert f"excluded duplicated run {rel(sp['dup'])}" in w and rel(sp["dup_of"]) in w
    assert "dropped a non-finite point" in w and "step 40" in w
    assert len(ds.runs) == 3 + 3 + 3 + 1 + 6  # flow_grpo, drift full, kl (one dropped), diverse, ablation
    assert ds.points["alignment"].notna().all() and ds.points["diversity"].notna().all()
    assert ds.points["samples"].notna().all()
    assert aio.base_point(ds) == pytest.approx((A0, D0))


def test_unknown_metric_key_is_named(world):
    root, _ = world
    with pytest.raises(aio.AnalysisInputError, match=r"\['eval/nope'\] logged by no run.*'eval/diversity/vendi'"):
        aio.load_run_dirs(aio.find_run_dirs(os.path.join(root, "pareto")), dkey="eval/nope", root=root)


def test_labels():
    assert aio.ablation_label(DRIFT_FULL) == "DRIFT (full)"
    assert aio.ablation_label(drift_opts(subset="none")) == "− sampling"
    assert aio.ablation_label(drift_opts(prompt="none", shaping="none")) == "sampling only"
    assert aio.ablation_label(drift_opts(subset="none", prompt="none", shaping="none")) == "DRIFT (no components)"
    import pandas as pd

    runs = pd.DataFrame({"run": ["a", "b", "c"], "method": ["drift"] * 3,
                         "ablation": [drift_opts(subset="trim"), drift_opts(), drift_opts(prompt="none")],
                         "flat": [{"options.subset": "trim"}, {"options.subset": "densest"}, {"options.subset": "densest"}]})
    assert aio.ablation_labels(runs) == {"a": "DRIFT (full) (subset=trim)", "b": "DRIFT (full) (subset=densest)",
                                         "c": "− prompting"}
    assert aio.variant_labels(runs)["a"] == "drift (subset=trim)"


def test_single_seed_gets_no_ci_and_nonoverlap_is_reported():
    import pandas as pd

    rows = []
    for run, lab, seed, pts in (("m0", "M", 0, [(0.2, 0.6), (0.3, 0.5)]), ("m1", "M", 1, [(0.25, 0.55)]),
                                ("b0", "B", 0, [(0.5, 0.55), (0.6, 0.1)])):
        rows += [{"run": run, "label": lab, "seed": seed, "config": "c", "alignment": a, "diversity": d,
                  "final": i == len(pts) - 1} for i, (a, d) in enumerate(pts)]
    res = analyse(pd.DataFrame(rows), "label", [("M", "B")], Settings(n_boot=50, a0=0.1), progress=False)
    p = res["pairs"][0]
    g = p["diversity_gain_at_equal_alignment"]
    assert g["mean"]["value"] is None and any("no overlap in alignment" in m for m in g["messages"])
    assert res["labels"]["B"]["hypervolume"]["ci"] is None
    assert "one seed" in res["labels"]["B"]["hypervolume"]["note"]
    assert res["labels"]["M"]["hypervolume"]["ci"] is not None
    assert p["dominance"]["method_over_baseline"]["value"] == 0.0
    assert any("B has one seed" in m for m in p["alignment_gain_at_equal_diversity"]["messages"])


def test_csv_loader(tmp_path):
    p = tmp_path / "points.csv"
    lines = ["method,seed,step,alignment,diversity"]
    for m, s, r, q in (("flow_grpo", 0, 0.3, 0.2), ("flow_grpo", 1, 0.3, 0.2), ("drift", 0, 0.3, 0.1)):
        lines += [f"{m},{s},{st},{A0 + r * st / 60:.4f},{D0 - q * st / 60:.4f}" for st in STEPS]
    lines += ["drift,0,60,0.7,0.2", "drift,1,0,0.4,0.3", "drift,1,20,0.5,nan"]  # a duplicate row; a truncated run
    p.write_text("\n".join(lines) + "\n")
    ds = aio.load_csv(str(p))
    w = "\n".join(ds.warnings)
    assert "dropped 1 duplicated row(s) of run drift/-/seed0" in w
    assert "excluded run drift/-/seed1: it lacks its final evaluation (last step 20" in w
    assert sorted(ds.runs["run"]) == ["drift/-/seed0", "flow_grpo/-/seed0", "flow_grpo/-/seed1"]
    (tmp_path / "bad.csv").write_text("method,step,alignment\nx,0,1\n")
    with pytest.raises(aio.AnalysisInputError, match=r"missing column\(s\) \['seed', 'eval/diversity"):
        aio.load_csv(str(tmp_path / "bad.csv"))


def test_default_input_is_latest_sweep(tmp_path):
    root = str(tmp_path)
    a = make_run(root, "smoke", "flow_grpo", 0, 0.3, 0.2)
    b = make_run(root, "pareto", "flow_grpo", 0, 0.3, 0.2)
    for exp, rd, t in (("smoke", a, 1000), ("pareto", b, 2000)):
        sj = os.path.join(root, exp, "sweep.json")
        with open(sj, "w") as f:
            json.dump({"grid": exp, "points": [{"run_dir": rd, "status": "done"},  # as experiments/sweep.py writes
                                               {"run_dir": os.path.join(root, exp, "never_started"), "status": "todo"}]}, f)
        os.utime(sj, (t, t))
    dirs, folder, exp, warns = aio.default_input(root, None)
    assert exp == "pareto" and dirs == [b] and "never_started" in warns[0]


# ================================================================================================
# End to end: CLI, golden tables, MLflow
# ================================================================================================
def _normalise(text: str, root: str) -> str:
    return text.replace(root, "<runs>")


def _check_golden(name: str, text: str) -> None:
    path = os.path.join(GOLDEN, name)
    if os.environ.get("UPDATE_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    assert os.path.exists(path), f"golden file {path} missing: run with UPDATE_GOLDEN=1 to create it"
    with open(path) as f:
        expected = f.read()
    assert text == expected, f"{name} differs from {path}; if intended, regenerate with UPDATE_GOLDEN=1"


@pytest.fixture(scope="module")
def analysed(world):
    root, _ = world
    out = os.path.join(root, "pareto", "analysis")
    a = parse_args(["--runs-dir", root, "--experiment", "pareto", "--bootstrap", "200", "--no-mlflow",
                    "--no-progress"])
    return root, out, run(a)


def test_cli_outputs(analysed):
    root, out, r = analysed
    assert r["out"] == out
    for f in ("pareto.png", "pareto.pdf", "curves.png", "samples_matched.png", "gains.json", "gains.md", "gains.tex",
              "ablation.md", "ablation.tex", "ablation_pareto.png", "report.md"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    doc = json.load(open(os.path.join(out, "gains.json")))
    assert sorted(doc["methods"]["labels"]) == ["diverse_grpo", "drift", "flow_grpo", "flow_grpo_kl"]
    assert doc["methods"]["labels"]["drift"]["runs"] == 3  # full DRIFT only; ablated runs are in the ablation
    assert len(doc["excluded_runs"]) == 4
    pair = next(p for p in doc["methods"]["pairs"] if p["method"] == "drift" and p["baseline"] == "flow_grpo")
    g = pair["diversity_gain_at_equal_alignment"]
    assert g["mean"]["value"] > 0 and g["mean"]["ci"][0] <= g["mean"]["value"] <= g["mean"]["ci"][1]
    assert len(g["levels"]) == 21
    assert set(doc["ablation"]["labels"]) == {"DRIFT (full)", "− sampling", "− shaping", "sampling only", "flow_grpo"}
    report = open(os.path.join(out, "report.md")).read()
    assert "![pareto](pareto.png)" in report and "did not finish" in report


def test_golden_gains_md(analysed):
    root, out, _ = analysed
    _check_golden("gains.md", _normalise(open(os.path.join(out, "gains.md")).read(), root))
    _check_golden("gains.tex", _normalise(open(os.path.join(out, "gains.tex")).read(), root))


def test_golden_ablation_md(analysed):
    root, out, _ = analysed
    _check_golden("ablation.md", _normalise(open(os.path.join(out, "ablation.md")).read(), root))
    _check_golden("ablation.tex", _normalise(open(os.path.join(out, "ablation.tex")).read(), root))


def test_deterministic(analysed, tmp_path):
    root, out, r = analysed
    a = parse_args(["--runs-dir", root, "--experiment", "pareto", "--bootstrap", "200", "--no-mlflow",
                    "--no-progress", "--out", str(tmp_path)])
    r2 = run(a)
    assert r2["doc"]["methods"] == r["doc"]["methods"] and r2["doc"]["ablation"] == r["doc"]["ablation"]


def test_cli_errors_and_help(tmp_path, capsys):
    assert frontier_main(["--runs-dir", str(tmp_path / "nothing"), "--no-mlflow"]) == 2
    assert "does not exist" in capsys.readouterr().err
    out = subprocess.run([sys.executable, os.path.join(ROOT, "analysis", "frontier.py"), "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "--alignment-key" in out.stdout and "--interp" in out.stdout


def test_mlflow_source_and_analysis_run(tmp_path):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = "sqlite:///" + str(tmp_path / "mlflow.db")
    from drift.tracking import init_mlflow_experiment

    exp_id = init_mlflow_experiment(uri, "pareto", str(tmp_path / "mlartifacts"))
    client = MlflowClient(tracking_uri=uri)
    for method, seed, r, q, status in (("flow_grpo", 0, 0.36, 0.22, "FINISHED"), ("flow_grpo", 1, 0.35, 0.21, "FINISHED"),
                                       ("drift", 0, 0.33, 0.12, "FINISHED"), ("drift", 1, 0.32, 0.12, "FINISHED"),
                                       ("drift", 2, 0.30, 0.10, "FAILED")):
        run_ = client.create_run(exp_id, run_name=f"{method}/h/seed{seed}", tags={"method": method, "seed": str(seed)})
        ms = []
        for st in STEPS:
            ms += [Metric("eval/alignment", A0 + r * st / 60, 0, st), Metric("eval/diversity", D0 - q * st / 60, 0, st)]
        client.log_batch(run_.info.run_id, metrics=ms, params=[Param("method", method), Param("seed", str(seed)),
                                                               Param("train.iterations", "60")])
        client.set_terminated(run_.info.run_id, status)
    out = tmp_path / "out"
    rc = frontier_main(["--source", "mlflow", "--mlflow-uri", uri, "--experiment", "pareto", "--runs-dir",
                        str(tmp_path), "--out", str(out), "--bootstrap", "50", "--no-progress"])
    assert rc == 0
    doc = json.load(open(out / "gains.json"))
    assert any("excluded run drift/h/seed2" in w and "FAILED" in w for w in doc["excluded_runs"])
    (ana,) = [r for r in client.search_runs([exp_id]) if r.data.tags.get("kind") == "analysis"]
    arts = {a.path for a in client.list_artifacts(ana.info.run_id)}
    assert {"pareto.png", "pareto.pdf", "curves.png", "gains.json", "gains.md", "gains.tex", "report.md"} <= arts
    assert "diversity_gain_at_equal_alignment/drift_vs_flow_grpo/mean" in ana.data.metrics
    # the analysis run links the runs it read (the FAILED one was not read)
    read = {r.info.run_id for r in client.search_runs([exp_id]) if r.data.tags.get("kind") != "analysis"
            and r.info.status == "FINISHED"}
    assert set(ana.data.tags["input_run_ids"].split(",")) == read and ana.data.tags["input_runs"] == "4"
    assert "inputs.json" in arts and {r["mlflow_run_id"] for r in json.load(open(out / "inputs.json"))} == read
    # a second analysis ignores the first analysis run when reading the experiment
    ds = aio.load_mlflow(uri, "pareto")
    assert len(ds.runs) == 4 and not any("analysis" in w for w in ds.warnings)


def test_science_hash_matches_the_engine_even_with_a_model_fingerprint():
    from analysis.io import science_hash
    from drift.config import make_config

    cfg = make_config({"seed": "3", "train.lr": "3e-4"})
    d = cfg.to_dict()
    d["model_fingerprint"] = {"path": "x" * 64, "features": "y" * 64}  # written by the engine into config.json
    assert science_hash(d) == cfg.science_hash()


def test_figures_speak_for_themselves(analysed):
    """Fixed colour and name per method across figures; bands, markers and dots explained on the pareto
    figure; knob values marked; human axis names with the key in small print; curves one panel per method
    with a standard-error band and 'iteration' on the x-axis; the hypervolume CI's one-sidedness stated."""
    import matplotlib.pyplot as plt

    from analysis import report as rep
    from analysis import style

    root, out, r = analysed
    res = r["doc"]["methods"]
    ds = aio.load_run_dirs(aio.find_run_dirs(os.path.join(root, "pareto")), root=root)
    variants = aio.variant_labels(ds.runs)
    pts = ds.points.assign(label=ds.points["method"])
    fig = rep.pareto_axes(res, pts, "label", aio.base_point(ds), "staircase", ("eval/alignment", "eval/diversity"),
                          variants=variants, n_boot=200)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("95% bootstrap band" in t and "200 resamples" in t for t in legend), legend
    assert any("dots: every evaluation" in t for t in legend) and any("knob value" in t for t in legend)
    assert any(t.strip().startswith("β=") for t in legend), legend  # front points marked by knob value
    front_colours = {h.get_label(): h.get_color() for h in ax.get_legend().legend_handles if h.get_label().endswith("front")}
    assert front_colours["DRIFT front"] == style.METHOD_COLOURS["drift"]
    assert front_colours["Flow-GRPO+KL front"] == style.METHOD_COLOURS["flow_grpo_kl"]
    assert ax.get_xlabel() == style.AXIS_NAMES["eval/alignment"]
    assert {"eval/alignment", "eval/diversity"} <= {t.get_text() for t in fig.texts}  # the keys in small print
    plt.close(fig)

    fig = rep.curves_axes(ds.points, variants, ("eval/alignment", "eval/diversity"))
    top = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in top] == ["Flow-GRPO", "Flow-GRPO+KL", "DiverseGRPO", "DRIFT"]  # one panel per method
    for a, m in zip(top, style.METHOD_ORDER):
        assert a.title.get_color() == style.METHOD_COLOURS[m]  # the same colour as in the pareto figure
    assert {a.get_xlabel() for a in fig.axes if a.get_xlabel()} == {"iteration"}
    assert "standard error" in fig._suptitle.get_text()
    plt.close(fig)
    assert rep.HV_ONE_SIDED in open(os.path.join(out, "gains.md")).read()
    for f in ("pareto.png", "curves.png", "ablation_pareto.png"):
        if os.environ.get("DRIFT_KEEP_FIGURES"):  # to look at them: DRIFT_KEEP_FIGURES=/tmp/figs
            os.makedirs(os.environ["DRIFT_KEEP_FIGURES"], exist_ok=True)
            shutil.copy(os.path.join(out, f), os.environ["DRIFT_KEEP_FIGURES"])
