"""The judging statistics (analysis/paired.py, analysis/judge.py, analysis/calibrate.py): the pure formulas against
scipy and hand-computed values; per-seed paired gains on synthetic run directories built so the answer is known
(a method with exactly 1.2x the baseline's diversity at every alignment gains +20% on every seed); the controls
behaving and failing in words above the gains table; the two-way bootstrap over per-prompt evaluation files and
its seed-only fallback; --seeds; grid arms from sweep.json; the calibration table.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from analysis import calibrate as C  # noqa: E402
from analysis import io as aio  # noqa: E402
from analysis import judge as J  # noqa: E402
from analysis import paired as P  # noqa: E402
from analysis.frontier import parse_args, parse_seeds, run  # noqa: E402

STEPS = (0, 10, 20, 30)
PROMPTS = [f"prompt {i}" for i in range(6)]
OFFSETS = np.array([-0.05, -0.03, -0.01, 0.01, 0.03, 0.05])  # per-prompt offsets around a point's mean (sum 0)


# ================================================================================================
# Pure formulas
# ================================================================================================
def test_t_interval_matches_scipy():
    x = [0.12, -0.03, 0.08, 0.15, 0.02, 0.07]
    t = P.t_interval(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert t["n"] == 6 and t["mean"] == pytest.approx(np.mean(x)) and t["sd"] == pytest.approx(np.std(x, ddof=1))
    assert t["ci"] == pytest.approx([lo, hi]) and t["half_width"] == pytest.approx((hi - lo) / 2)
    # known value: 1..5 -> mean 3, s = sqrt(2.5), t_{.975,4} = 2.776445
    assert P.t_interval([1, 2, 3, 4, 5])["half_width"] == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert P.t_interval([1.0, np.nan])["ci"] is None and P.t_interval([])["mean"] is None
    assert P.excludes_zero([0.1, 0.3]) and P.excludes_zero([-0.3, -0.1]) and not P.excludes_zero([-0.1, 0.2])
    assert P.excludes_zero(None) is None


def test_sizing_formula():
    # (z_.975 + z_.8)^2 = (1.959964 + 0.841621)^2 = 7.848868
    assert P.seeds_needed(1.0, 1.0) == 8
    assert P.seeds_needed(0.057, 0.05) == math.ceil(7.848868 * 0.057**2 / 0.05**2)  # 10.2 -> 11
    assert P.seeds_needed(0.057, 0.10) == 3 and P.seeds_needed(0.057, 0.03) == 29
    assert P.seeds_needed(0.0, 0.05) == 1 and P.seeds_needed(None, 0.05) is None and P.seeds_needed(1.0, 0.0) is None
    # the inverse: the effect found with 80% power by n seeds, and the half-width at which a CI excludes 0
    assert P.detectable_gain(1.0, 8) == pytest.approx(math.sqrt(7.848868 / 8), rel=1e-6)
    assert P.resolvable_gain(1.0, 4) == pytest.approx(stats.t.ppf(0.975, 3) / 2)
    assert P.resolvable_gain(1.0, 1) is None


def test_aa_split_and_equal_points():
    assert P.aa_split([3, 1, 2, 0, 5]) == [(0, 2), (1, 3)]  # sorted; odd count: the last seed left out
    assert P.aa_split([7]) == []
    pts = np.array([[0.5, 0.1], [0.1, 0.2], [0.3, 0.3], [0.2, 0.1], [0.4, 0.4]])
    # alignment ranks: 1 (0.1), 3 (0.2), 2 (0.3), 4 (0.4), 0 (0.5); three points -> ranks 0, 2, 4
    assert P.equal_points(pts, 3).tolist() == [1, 2, 0]
    assert sorted(P.equal_points(pts, 9).tolist()) == [0, 1, 2, 3, 4]
    c = P.draw_counts(5, np.random.default_rng(0))
    assert c.sum() == 5 and len(c) == 5
    np.testing.assert_allclose(P.weighted_mean(np.array([[1.0, 3.0]]), np.array([3, 1])), [1.5])


def test_seed_gain_of_a_scaled_front_is_exact():
    base = np.array([[0.5, 0.30], [0.6, 0.25], [0.7, 0.20]])
    scaled = base * [1.0, 1.2]
    assert J.seed_gain(scaled, base, "alignment", "staircase", 21) == pytest.approx(0.2)
    assert J.seed_gain(base, base, "alignment", "staircase", 21) == 0.0  # A/A on identical points
    # unequal counts: the larger set is cut to the smaller's size (its extreme alignments kept)
    more = np.concatenate([base, [[0.55, 0.1], [0.65, 0.1]]])
    assert J.seed_gain(base, more, "alignment", "staircase", 21) == pytest.approx(0.0)
    assert np.isnan(J.seed_gain(base, base + [1.0, 0.0], "alignment", "staircase", 21))  # no overlap
    # a point made non-finite by a per-prompt NaN is left out, not an error
    assert J.seed_gain(np.vstack([scaled, [np.nan, 0.5]]), base, "alignment", "staircase", 21) == pytest.approx(0.2)


def test_per_prompt_reader_and_images(tmp_path):
    rd = str(tmp_path)
    os.makedirs(os.path.join(rd, "evals"))
    path = aio.per_prompt_path(rd, 30)
    assert path == os.path.join(rd, "evals", "per_prompt_000030.json")
    json.dump({"step": 30, "prompts": ["a", "b"], "metrics": {"eval/alignment": [1.0, 2.0]}}, open(path, "w"))
    pp = aio.read_per_prompt(rd, 30)
    assert pp["prompts"] == ["a", "b"] and pp["metrics"]["eval/alignment"].tolist() == [1.0, 2.0]
    json.dump({"step": 30, "prompts": ["a", "b"], "metrics": {"eval/alignment": [1.0]}}, open(path, "w"))
    assert aio.read_per_prompt(rd, 30) is None  # a list that does not match the prompts
    assert aio.read_per_prompt(rd, 20) is None and aio.read_per_prompt(None, 30) is None
    assert aio.images_per_iteration(8, 4, 2) == 64
    n, why = aio.run_images_per_iteration({"sample.group_size": 8, "sample.groups_per_iter": 4, "options.subset": "none",
                                           "options.oversample": 2}, "drift")
    assert (n, why) == (32, None)  # DRIFT without a subset rule samples no extra candidates
    n, why = aio.run_images_per_iteration({}, "no_such_method")
    assert n is None and "oversampling is unknown" in why


# ================================================================================================
# Synthetic run directories with per-prompt evaluation files
# ================================================================================================
def make_run(root, exp, method, seed, r, q, options=None, scale=1.0, noise=(0.01, 0.005), per_prompt=True,
             heldout=True, group_size=8, groups=4):
    """A finished run: alignment 0.4 + r x, diversity (0.3 - q x) * scale at x = step / 30, plus seeded noise;
    eval/diversity/heldout = 0.9 x diversity; per-prompt files whose means are the scalars."""
    cfg = {"method": method, "seed": seed, "experiment": exp, "out": root, "tracking_uri": "none", "threads": 1,
           "model": {"world": "shapes"}, "sample": {"group_size": group_size, "groups_per_iter": groups},
           "train": {"iterations": 30}, "eval": {"every": 10}, "options": options or {}}
    rd = os.path.join(root, exp, method, aio.science_hash(cfg), f"seed{seed}")
    os.makedirs(os.path.join(rd, "evals"))
    json.dump(cfg, open(os.path.join(rd, "config.json"), "w"))
    rng = np.random.default_rng([seed, len(method), int(1000 * r), int(1000 * q), int(100 * scale)])
    rows = []
    for step in STEPS:
        x = step / 30
        na, nd = (rng.normal(0, noise[0]), rng.normal(0, noise[1])) if step else (0.0, 0.0)
        a, d = 0.4 + r * x + na, (0.3 - q * x) * (scale if step else 1.0) + nd
        m = {"eval/alignment": a, "eval/diversity": d, "eval/diversity/vendi": 1 + 5 * d}
        if heldout:
            m["eval/diversity/heldout"] = 0.9 * d
        rows.append({"step": step, **m})
        if per_prompt:
            perm = rng.permutation(len(PROMPTS))
            doc = {"step": step, "prompts": PROMPTS,
                   "metrics": {k: (v + OFFSETS[perm] * (0.2 if "diversity" in k else 1.0)).tolist() for k, v in m.items()}}
            json.dump(doc, open(os.path.join(rd, "evals", f"per_prompt_{step:06d}.json"), "w"))
    with open(os.path.join(rd, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in rows)
    json.dump({"final": rows[-1], "initial": rows[0]}, open(os.path.join(rd, "final_eval.json"), "w"))
    open(os.path.join(rd, "DONE"), "w").write("{}")
    return rd


SEEDS = tuple(range(8))


def make_judging_world(root, exp="judge", oracle_scale=1.3, per_prompt=True, kl_betas=(0.5, 1.0), flow_grpo=True):
    """Flow-GRPO, KL at two betas, the oracle_spread positive control (scaled KL-0.5 curve), 8 seeds."""
    for s in SEEDS:
        if flow_grpo:
            make_run(root, exp, "flow_grpo", s, 0.36, 0.20, per_prompt=per_prompt)
        for beta, (r, q) in zip(kl_betas, ((0.30, 0.10), (0.25, 0.06))):
            make_run(root, exp, "flow_grpo_kl", s, r, q, {"beta": beta, "exact": False}, per_prompt=per_prompt)
        make_run(root, exp, "oracle_spread", s, 0.30, 0.10, {"alpha": 1.0}, scale=oracle_scale, per_prompt=per_prompt)
    return os.path.join(root, exp)


def analyse(root, exp="judge", *extra):
    a = parse_args(["--runs-dir", root, "--experiment", exp, "--bootstrap", "40", "--no-mlflow", "--no-progress", *extra])
    return run(a)


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runs"))
    make_judging_world(root)
    return root, analyse(root)


def test_controls_behave_and_come_first(judged):
    root, r = judged
    j = r["doc"]["judge"]
    assert j["primary_measure"] == "eval/diversity/heldout" and r["doc"]["meta"]["settings"]["diversity_key"] == j["primary_measure"]
    assert set(j["measures"]) == {"eval/diversity/heldout", "eval/diversity", "eval/diversity/vendi"}
    c = j["controls"]
    assert c["negative"]["arm"] == "flow_grpo_kl" and c["negative"]["status"] == "pass"
    assert c["negative"]["all_arms"]["flow_grpo_kl"]["pairs"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert c["positive"]["status"] == "pass" and c["positive"]["diversity_gain_at_equal_alignment"]["t"]["ci"][0] > 0
    assert c["power"]["status"] == "pass" and "beta = 1" in c["power"]["kl"]
    # power: KL beta=1 ends at 0.9 * (0.3 - 0.06), Flow-GRPO at 0.9 * (0.3 - 0.20): +0.126 up to the noise
    assert c["power"]["t"]["mean"] == pytest.approx(0.9 * 0.14, abs=0.01)
    res = c["resolvable"]
    assert res["n_seeds"] == 8 and res["gain"] == pytest.approx(stats.t.ppf(0.975, 7) * res["sd_aa"] / math.sqrt(8))
    md = open(os.path.join(r["out"], "gains.md")).read()
    assert "All controls behaved" in md and "too small to judge" not in md
    assert md.index("### Controls") < md.index("### Per-seed paired gains") < md.index("### Methods")
    report = open(os.path.join(r["out"], "report.md")).read()
    assert report.index("### Controls") < report.index("## Fronts")


def test_per_seed_gains_two_way_bootstrap_and_every_measure(judged):
    root, r = judged
    j = r["doc"]["judge"]
    assert j["bootstrap"]["kind"] == "two-way" and "6 evaluation prompts" in j["bootstrap"]["detail"]
    e = next(e for e in j["pairs"] if e["method"] == "oracle_spread" and e["baseline"] == "flow_grpo_kl")
    pg = e["measures"]["eval/diversity/heldout"]
    assert pg["seeds"] == list(SEEDS) and set(pg["points"]) == {3}  # KL's 6 points per seed cut to the oracle's 3
    g = pg["diversity_gain_at_equal_alignment"]
    lo, hi = g["bootstrap_ci"]
    assert lo < g["t"]["mean"] < hi and lo > 0
    # the per-seed values are the seed_gain of that seed's points, and the table reports every measure
    md = open(os.path.join(r["out"], "gains.md")).read()
    for k in j["measures"]:
        assert f"diversity = `{k}`" in md
    # heldout is 0.9 x diversity: a relative gain does not see the factor
    assert e["measures"]["eval/diversity"]["diversity_gain_at_equal_alignment"]["per_seed"] == pytest.approx(g["per_seed"])
    # images per iteration in the methods table (4 groups x 8, no oversampling; oracle_spread unknown here)
    assert r["doc"]["methods"]["labels"]["flow_grpo"]["images_per_iter"] == [32]
    assert "Images / iteration" in md


def test_failed_control_is_said_in_words_above_the_gains(tmp_path):
    root = str(tmp_path)
    make_judging_world(root, oracle_scale=0.9, per_prompt=False, kl_betas=(0.5,), flow_grpo=False)  # less diversity
    r = analyse(root)
    j = r["doc"]["judge"]
    assert j["controls"]["positive"]["status"] == "fail"
    assert j["bootstrap"]["kind"] == "seeds" and "per_prompt_000010.json" in j["bootstrap"]["detail"]
    md = open(os.path.join(r["out"], "gains.md")).read()
    assert md.index("**The budget is too small to judge:** the positive control failed") < md.index("### Per-seed")
    assert "seeds only (per-prompt metrics unavailable" in md
    assert "Not run: the power check" in md and j["controls"]["power"]["why"] == "no flow_grpo runs"


def test_absent_controls_are_not_run_and_seeds_select(tmp_path):
    root = str(tmp_path)
    for s in (10, 11, 12):
        make_run(root, "few", "flow_grpo", s, 0.36, 0.20, heldout=False)
        make_run(root, "few", "drift", s, 0.33, 0.12, {"subset": "densest", "oversample": 2}, heldout=False)
    r = analyse(root, "few", "--seeds", "10,11,99")
    j = r["doc"]["judge"]
    assert j["primary_measure"] == "eval/diversity"  # no heldout: fallback, with a warning
    assert any("falls back to 'eval/diversity'" in w for w in r["doc"]["warnings"])
    assert any("seed(s) [99] have no kept run" in w for w in r["doc"]["warnings"])
    assert r["doc"]["methods"]["labels"]["drift"]["seeds"] == [10, 11]
    c = j["controls"]
    assert c["negative"]["status"] == "not run" and c["positive"]["status"] == "not run"
    assert c["power"]["status"] == "not run"
    md = open(os.path.join(r["out"], "gains.md")).read()
    assert "Not run: the negative control (A/A), the positive control, the power check" in md
    assert r["doc"]["methods"]["labels"]["drift"]["images_per_iter"] == [64]  # 4 x 8 x oversample 2
    with pytest.raises(aio.AnalysisInputError, match=r"none of them ran.*seeds there: \[10, 11, 12\]"):
        analyse(root, "few", "--seeds", "5")
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    with pytest.raises(SystemExit):
        parse_args(["--seeds", "3-1"])


def test_arms_from_sweep_json(tmp_path):
    root = str(tmp_path)
    pts = []
    for s in (0, 1):
        for method, arm, opts in (("drift", "drift", {"kl_beta": 0.0}), ("drift", "drift_kl", {"kl_beta": 0.5}),
                                  ("flow_grpo", "flow_grpo", {})):
            rd = make_run(root, "arms", method, s, 0.33, 0.12, opts, heldout=False)
            pts.append({"arm": arm, "method": method, "seed": s, "run_dir": rd})
    json.dump({"grid": "arms", "points": pts}, open(os.path.join(root, "arms", "sweep.json"), "w"))
    ds = aio.load_run_dirs(aio.find_run_dirs(os.path.join(root, "arms")), root=root)
    arms = dict(zip(ds.runs["run_dir"], ds.runs["arm"]))
    assert [arms[p["run_dir"]] for p in pts] == [p["arm"] for p in pts]
    assert set(ds.points["arm"]) == {"drift", "drift_kl", "flow_grpo"}  # the label of the analysis's fronts


def test_calibration_table(tmp_path, capsys):
    root = str(tmp_path)
    for s in range(20, 24):
        make_run(root, "calibrate", "flow_grpo", s, 0.36, 0.20, noise=(0.03, 0.02))
        make_run(root, "calibrate", "flow_grpo_kl", s, 0.25, 0.06, {"beta": 1.0, "exact": False}, noise=(0.03, 0.02))
    out = tmp_path / "cal"
    assert C.main(["--runs-dir", root, "--grid", "calibrate", "--out", str(out)]) == 0
    c = json.load(open(out / "calibration.json"))
    ds = aio.load_run_dirs(aio.find_run_dirs(os.path.join(root, "calibrate")), root=root)
    fin = ds.points[ds.points["final"]]
    fg = fin[fin["method"] == "flow_grpo"].sort_values("seed")
    kl = fin[fin["method"] == "flow_grpo_kl"].sort_values("seed")
    sd = float(np.std(fg["alignment"], ddof=1))
    row = c["per_arm"]["flow_grpo"]["eval/alignment"]
    assert row["sd"] == pytest.approx(sd) and row["n"] == 4
    assert row["seeds_needed"] == [P.seeds_needed(sd, d * fg["alignment"].mean()) for d in (0.03, 0.05, 0.10)]
    diff = fg["eval/diversity/heldout"].to_numpy() - kl["eval/diversity/heldout"].to_numpy()
    pd_ = c["paired"]["eval/diversity/heldout"]
    assert pd_["mean"] == pytest.approx(diff.mean()) and pd_["sd"] == pytest.approx(np.std(diff, ddof=1))
    assert c["gains"]["eval/diversity/heldout"]["diversity_gain_at_equal_alignment"]["n"] == 4
    md = (out / "calibration.md").read_text()
    assert "Paired by seed: final Flow-GRPO − Flow-GRPO+KL" in md and "n for δ=5%" in md
    assert C.main(["--runs-dir", root, "--grid", "calibrate", "--seeds", "20-22", "--out", str(out)]) == 0
    assert json.load(open(out / "calibration.json"))["paired"]["eval/alignment"]["seeds"] == [20, 21, 22]
    assert C.main(["--runs-dir", root, "--grid", "calibrate", "--arms", "flow_grpo", "drift", "--out", str(out)]) == 2
    assert "arm(s) ['drift'] not in" in capsys.readouterr().err


# ================================================================================================
# Sensitivity to a prompt subset (the square prompts of the shapes world)
# ================================================================================================
SQUARE_PROMPTS = ["a red square", "a blue circle", "two green triangles", "a small Square on the left",
                  "a yellow circle", "a big triangle"]
IN_SUBSET = np.array([True, False, False, True, False, False])
SUBSET_VALUE = 0.123  # every metric's value on the subset's prompts, for every arm, seed and step


def rewrite_per_prompt(rd):
    """Per-prompt files whose subset prompts all hold SUBSET_VALUE and whose other prompts average to the run's
    scalar metric: leaving the subset out must give back exactly the scalar points."""
    rest_offsets = np.array([0.02, -0.01, -0.01, 0.0])  # over the 4 prompts outside the subset: mean 0
    for line in open(os.path.join(rd, "metrics.jsonl")):
        row = json.loads(line)
        step = row.pop("step")
        metrics = {}
        for k, v in row.items():
            vals = np.empty(len(SQUARE_PROMPTS))
            vals[IN_SUBSET] = SUBSET_VALUE
            vals[~IN_SUBSET] = v + rest_offsets
            metrics[k] = vals.tolist()
        json.dump({"step": step, "prompts": SQUARE_PROMPTS, "metrics": metrics},
                  open(os.path.join(rd, "evals", f"per_prompt_{step:06d}.json"), "w"))


def test_prompt_subset_sensitivity_leaves_the_subset_out_exactly(tmp_path):
    root = str(tmp_path)
    world = make_judging_world(root, kl_betas=(0.5,))
    for dirpath, _, files in os.walk(world):
        if "metrics.jsonl" in files:
            rewrite_per_prompt(dirpath)
    r = analyse(root, "judge", "--subset-prompts", r"\bsquares?\b")
    j = r["doc"]["judge"]
    sub = j["subset"]
    assert sub["status"] == "done" and (sub["n_subset"], sub["n_prompts"]) == (2, 6)
    assert sub["subset"] == ["a red square", "a small Square on the left"]  # case-insensitive
    # without the subset every point is its scalar again: the per-seed gains equal the all-prompt ones
    key = j["primary_measure"]
    for e, w in zip(j["pairs"], sub["pairs"]):
        assert (e["method"], e["baseline"]) == (w["method"], w["baseline"])
        for g in ("diversity_gain_at_equal_alignment", "alignment_gain_at_equal_diversity"):
            assert w["without_subset"][g]["per_seed"] == pytest.approx(e["measures"][key][g]["per_seed"], abs=1e-12)
    # final alignment: SUBSET_VALUE on the subset for every arm; on the rest the mean of the final scalars
    finals = r["doc"]["methods"]["labels"]
    assert set(sub["arms"]) == set(finals)
    fg = sub["arms"]["flow_grpo"]
    assert fg["subset"]["t"]["mean"] == pytest.approx(SUBSET_VALUE) and fg["subset"]["t"]["n"] == len(SEEDS)
    want = np.mean([json.load(open(os.path.join(d, "final_eval.json")))["final"]["eval/alignment"]
                    for d, _, f in os.walk(os.path.join(world, "flow_grpo")) if "final_eval.json" in f])
    assert fg["rest"]["t"]["mean"] == pytest.approx(want, abs=1e-9)
    assert sub["base"] == pytest.approx({"subset": SUBSET_VALUE, "rest": 0.4})
    md = open(os.path.join(r["out"], "gains.md")).read()
    assert "### Sensitivity: without the prompts matching `\\bsquares?\\b`" in md
    assert "2 of the 6 evaluation prompts match (a red square; a small Square on the left)" in md
    assert md.index("### Per-seed paired gains") < md.index("### Sensitivity") < md.index("### Methods")
    # '' turns the section off; a pattern matching nothing says so
    assert "subset" not in analyse(root, "judge", "--subset-prompts", "", "--out", str(tmp_path / "a"))["doc"]["judge"]
    r = analyse(root, "judge", "--subset-prompts", "hexagon", "--out", str(tmp_path / "b"))
    assert r["doc"]["judge"]["subset"]["status"] == "no match"
    assert "None of the 6 evaluation prompts match" in r["gains_md"]


def test_prompt_subset_bad_pattern_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--subset-prompts", "(square"])
    assert "--subset-prompts='(square': not a regular expression" in capsys.readouterr().err


def test_prompt_subset_pure_means():
    m = np.array([[1.0, 2.0, 3.0, np.nan], [0.0, 0.0, 4.0, 8.0]])
    a_in, a_out = J.subset_means(m, np.array([True, False, False, True]))
    np.testing.assert_allclose(a_in, [1.0, 4.0])  # the NaN left out
    np.testing.assert_allclose(a_out, [2.5, 2.0])
    assert J.subset_mask(["A Square", "squares", "squared", "circle"], J.SUBSET_DEFAULT).tolist() == [True, True, False, False]
