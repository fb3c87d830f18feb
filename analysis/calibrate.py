"""Calibration: the seed noise of a budget, and the seeds per arm it takes to resolve an effect.

    python analysis/calibrate.py --grid calibrate                  # runs/calibrate/... (Flow-GRPO and KL beta=1)
    python analysis/calibrate.py --grid calibrate --seeds 20-23    # only some of the seeds
    python analysis/calibrate.py --csv points.csv --arms flow_grpo flow_grpo_kl

For each arm, over its seeds: the mean and per-seed SD of the final alignment and of every final diversity
measure; for the two arms paired by seed (the first minus the second, default Flow-GRPO - KL): the per-seed
difference of each metric and the per-seed paired front gains (analysis/judge.py), each with its mean, SD and
t-interval; and for every row the seeds per arm n = ceil((z_.975 + z_.8)^2 sigma^2 / delta^2) (80% power,
two-sided 5%; analysis/paired.seeds_needed) for effects delta of 3%, 5% and 10% of the mean (of the second arm's
mean for a paired difference; 3, 5 and 10 points for a front gain, which is already relative).
Writes calibration.md and calibration.json to --out (default <runs>/<grid>/analysis/). Definitions:
docs/analysis.md §12.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run as a script: analysis/ itself must not shadow top-level modules (io, ...)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import frontier  # noqa: E402
from analysis import io as aio  # noqa: E402
from analysis import judge as J  # noqa: E402
from analysis import paired as P  # noqa: E402
from analysis.report import DASH, Table, name  # noqa: E402

DELTAS = (0.03, 0.05, 0.10)
DEFAULT_ARMS = ("flow_grpo", "flow_grpo_kl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    frontier.add_input_args(ap)
    ap.add_argument("--arms", nargs=2, default=list(DEFAULT_ARMS), metavar=("A", "B"),
                    help="the two arms compared paired by seed, A - B (default: %(default)s)")
    ap.add_argument("--ci", type=float, default=0.95, help="t-interval level (default: %(default)s)")
    ap.add_argument("--interp", choices=("staircase", "linear"), default="staircase",
                    help="front functions of the per-seed gains (default: %(default)s)")
    ap.add_argument("--levels", type=int, default=21, help="levels on each front pair's overlap (default: %(default)s)")
    ap.add_argument("--out", default=None, help="output folder (default: <runs-dir>/<grid>/analysis)")
    a = ap.parse_args(argv)
    frontier.check_input_args(ap, a)
    if not 0 < a.ci < 1:
        ap.error(f"--ci={a.ci}: must be in (0, 1)")
    if a.levels < 1:
        ap.error(f"--levels={a.levels}: must be >= 1")
    return a


def sizing(sd: float | None, scale: float | None) -> list[int | None]:
    """Seeds per arm for delta = each of DELTAS times ``scale`` (``paired.seeds_needed``)."""
    if scale is None or not np.isfinite(scale):
        return [None] * len(DELTAS)
    return [P.seeds_needed(sd, d * abs(scale)) for d in DELTAS]


def metric_keys(points: pd.DataFrame, akey: str, dkey: str) -> list[str]:
    return [akey] + J.measures_present(points, dkey)


def metric_values(points: pd.DataFrame, key: str, akey: str, dkey: str) -> np.ndarray:
    return points["alignment"].to_numpy(float) if key == akey else J.measure_column(points, key, dkey)


def calibrate(ds: aio.Dataset, arms: tuple[str, str], akey: str, dkey: str, ci: float = 0.95,
              interp: str = "staircase", n_levels: int = 21) -> dict:
    """The calibration numbers (JSON-ready): per arm and metric the per-seed final values' mean/SD and sizing; per
    metric the paired (A - B) differences; the per-seed paired front gains of A over B."""
    present = sorted(set(ds.runs["arm"]))
    missing = [x for x in arms if x not in present]
    if missing:
        raise aio.AnalysisInputError(f"arm(s) {missing} not in {ds.source}; arms there: {present}")
    fin = ds.points[ds.points["final"] & ds.points["arm"].isin(arms)]
    keys = metric_keys(fin, akey, dkey)
    out: dict = {"arms": list(arms), "deltas": list(DELTAS), "ci": ci, "primary_diversity": dkey, "per_arm": {},
                 "paired": {}, "gains": {}}
    per_seed: dict[tuple[str, str], pd.Series] = {}
    for arm in arms:
        f = fin[fin["arm"] == arm]
        if f["config"].nunique() > 1:
            raise aio.AnalysisInputError(f"arm {arm!r} has {f['config'].nunique()} configurations; calibration measures "
                                         "the seed noise of one configuration per arm")
        out["per_arm"][arm] = {}
        for k in keys:
            v = pd.Series(metric_values(f, k, akey, dkey), index=f["seed"].to_numpy(int))
            per_seed[(arm, k)] = v[np.isfinite(v.to_numpy())]
            t = P.t_interval(v.to_numpy(), ci)
            out["per_arm"][arm][k] = {"seeds": sorted(int(x) for x in per_seed[(arm, k)].index), **t,
                                      "seeds_needed": sizing(t["sd"], t["mean"])}
    a, b = arms
    for k in keys:
        va, vb = per_seed[(a, k)], per_seed[(b, k)]
        seeds = sorted(set(va.index) & set(vb.index))
        diff = [float(va[x] - vb[x]) for x in seeds]
        t = P.t_interval(diff, ci)
        out["paired"][k] = {"seeds": seeds, "per_seed": diff, **t,
                            "seeds_needed": sizing(t["sd"], out["per_arm"][b][k]["mean"])}
    pts = ds.points[(ds.points["step"] > 0) & ds.points["arm"].isin(arms)]
    s = J.JudgeSettings(interp=interp, n_levels=n_levels, ci=ci, akey=akey, dkey=dkey)
    for k in J.measures_present(pts, dkey):
        sp = J.SeedPoints(pts, "arm", J.measure_column(pts, k, dkey))
        pg = J.paired_gains(sp, a, b, s)
        out["gains"][k] = {"seeds": pg["seeds"], "points": pg["points"]}
        for gname, _ in J.MATCHED:
            t = pg[gname]["t"]
            out["gains"][k][gname] = {"per_seed": pg[gname]["per_seed"], **t, "seeds_needed": sizing(t["sd"], 1.0)}
    return out


def _n(v) -> str:
    return DASH if v is None else f"{v:.4g}"


def tables(c: dict) -> list[Table]:
    a, b = c["arms"]
    dl = [f"n for δ={int(round(100 * d))}%" for d in c["deltas"]]
    lvl = int(round(100 * c["ci"]))
    rows = []
    for arm in (a, b):
        for k, r in c["per_arm"][arm].items():
            rows.append([name(arm), f"`{k}`", str(r["n"]), _n(r["mean"]), _n(r["sd"]),
                         *(DASH if x is None else str(x) for x in r["seeds_needed"])])
    t1 = Table("Per arm: final values over seeds", ["Arm", "Metric", "Seeds", "Mean", "Per-seed SD", *dl], rows,
               ["n = ceil((z_.975 + z_.8)² σ² / δ²) seeds per arm for an effect δ = the percentage of the arm's mean "
                "(80% power, two-sided 5%)."])
    rows = []
    for k, r in c["paired"].items():
        ci = DASH if not r["ci"] else f"[{_n(r['ci'][0])}, {_n(r['ci'][1])}]"
        rows.append([f"`{k}`", str(r["n"]), _n(r["mean"]), ci, _n(r["sd"]),
                     *(DASH if x is None else str(x) for x in r["seeds_needed"])])
    t2 = Table(f"Paired by seed: final {name(a)} − {name(b)}",
               ["Metric", "Seeds", "Mean difference", f"{lvl}% t-CI", "Per-seed SD of the difference", *dl], rows,
               [f"δ = the percentage of {name(b)}'s mean; σ = the per-seed SD of the paired difference."])
    rows = []
    for k, g in c["gains"].items():
        for gname, label in (("diversity_gain_at_equal_alignment", "div. gain @ eq. alignment"),
                             ("alignment_gain_at_equal_diversity", "align. gain @ eq. diversity")):
            r = g[gname]
            ci = DASH if not r["ci"] else f"[{100 * r['ci'][0]:+.1f}, {100 * r['ci'][1]:+.1f}]"
            rows.append([f"`{k}`", label, str(r["n"]), DASH if r["mean"] is None else f"{100 * r['mean']:+.1f}%", ci,
                         DASH if r["sd"] is None else f"{100 * r['sd']:.1f}%",
                         *(DASH if x is None else str(x) for x in r["seeds_needed"])])
    t3 = Table(f"Per-seed paired front gains of {name(a)} over {name(b)}",
               ["Diversity measure", "Gain", "Seeds", "Mean", f"{lvl}% t-CI (points)", "Per-seed SD",
                *[f"n for δ={int(round(100 * d))} points" for d in c["deltas"]]], rows,
               ["Each seed's fronts from its evaluation steps after step 0 (docs/analysis.md §11); δ in percentage points "
                "of the gain, σ its per-seed SD."])
    return [t1, t2, t3]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        ds, exp, default_out = frontier.load(a)
        c = calibrate(ds, tuple(a.arms), a.alignment_key, a.diversity_key, a.ci, a.interp, a.levels)
    except aio.AnalysisInputError as e:
        print(f"[calibrate] error: {e}", file=sys.stderr)
        return 2
    out = os.path.abspath(a.out or default_out)
    os.makedirs(out, exist_ok=True)
    c["source"], c["warnings"] = ds.source, ds.warnings
    md = (f"# Calibration: seed noise and seeds per arm\n\nInput: {ds.source}. Primary diversity: `{a.diversity_key}`. "
          f"Seeds: {sorted({int(x) for x in ds.runs['seed']})}.\n\n" + "\n".join(t.md() for t in tables(c)))
    if ds.warnings:
        md += "\n### Warnings\n\n" + "\n".join(f"* {w}" for w in ds.warnings) + "\n"
    with open(os.path.join(out, "calibration.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "calibration.json"), "w") as f:
        json.dump(c, f, indent=1, allow_nan=False, default=frontier._json_default)
    for w in ds.warnings:
        print(f"[calibrate] warning: {w}", file=sys.stderr)
    print(md)
    print(f"[calibrate] wrote {out}/calibration.md and calibration.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
