"""The judging statistics: per-seed paired gains (the primary statistic), a two-way bootstrap over seeds and
evaluation prompts, and the controls that say whether the budget can judge at all (docs/analysis.md §11).

Per-seed paired gain of method M over baseline B on one diversity measure: for every seed s that both ran,
M's front F_M(s) is built from the points of M's runs with seed s (all its knob values and evaluation steps),
likewise F_B(s); both point sets are first cut to the same size n_s = min(|P_M(s)|, |P_B(s)|)
(``paired.equal_points``); g_s = the mean gain of ``fronts.gain_at_equal`` over the fronts' overlap. The
statistic is mean_s g_s with a t-interval over seeds (``paired.t_interval``).

Controls (reported before any gain):
  (a) negative, A/A: one arm's seeds split in two halves (``paired.aa_split``), the per-seed gain of the first
      half's fronts over the second's; its interval must include 0.
  (b) positive: oracle_spread vs flow_grpo_kl (more diversity at equal alignment by construction); its
      interval must exclude 0 on the positive side.
  (c) power: the final-iteration diversity of the strongest KL (largest beta) minus Flow-GRPO's, paired by
      seed; its interval must exclude 0 on the positive side (KL keeps diversity).
  (d) the smallest resolvable gain: t_{.975, n-1} sd_AA / sqrt(n), with sd_AA the per-pair SD of the A/A
      statistic and n the seeds of a judging comparison (``paired.resolvable_gain``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import fronts as F
from . import io as aio
from . import paired as P

PRIMARY_DIVERSITY = "eval/diversity/heldout"
FALLBACK_DIVERSITY = "eval/diversity"
POSITIVE_CONTROL = ("oracle_spread", "flow_grpo_kl")
POWER_CHECK = ("flow_grpo_kl", "flow_grpo")
AA_PREFERENCE = ("flow_grpo_kl", "flow_grpo")
MATCHED = (("diversity_gain_at_equal_alignment", "alignment"), ("alignment_gain_at_equal_diversity", "diversity"))
SUBSET_DEFAULT = r"\bsquares?\b"
"""The default prompt subset of the sensitivity report (``prompt_subset``): the shapes world's square prompts. The
committed base model draws no square that the judge's fill-ratio rule accepts (docs/shapes_world.md), so these
prompts cannot reach full judge credit; the report shows every result with and without them. On a world whose
prompts never match, the section says so and nothing else changes."""


@dataclass
class JudgeSettings:
    interp: str = "staircase"
    n_levels: int = 21
    n_boot: int = 1000
    seed: int = 0
    ci: float = 0.95
    akey: str = "eval/alignment"
    dkey: str = FALLBACK_DIVERSITY  # the measure in the points' 'diversity' column (the primary one)


# ------------------------------------------------------------------------------------------------
# Measures
# ------------------------------------------------------------------------------------------------
def measures_present(points: pd.DataFrame, dkey: str) -> list[str]:
    """The diversity measures to report: ``dkey`` (primary, in the 'diversity' column) first, then every other
    'eval/diversity...' column with a finite value."""
    others = sorted(c for c in points.columns if isinstance(c, str) and c.startswith("eval/diversity") and c != dkey
                    and np.isfinite(pd.to_numeric(points[c], errors="coerce")).any())
    return [dkey] + others


def measure_column(points: pd.DataFrame, key: str, dkey: str) -> np.ndarray:
    """The values of diversity measure ``key`` for every row (NaN where a run did not log it)."""
    col = points["diversity"] if key == dkey else points[key] if key in points.columns else np.nan
    return pd.to_numeric(pd.Series(col, index=points.index), errors="coerce").to_numpy(float)


# ------------------------------------------------------------------------------------------------
# Per-seed fronts and gains
# ------------------------------------------------------------------------------------------------
def finite(p: np.ndarray) -> np.ndarray:
    """The rows of (k, 2) points with both coordinates finite (a prompt draw of a per-prompt NaN drops a point)."""
    return p[np.isfinite(p).all(axis=1)]


def cut_front(p: np.ndarray, n: int) -> np.ndarray:
    """The front of ``n`` of the finite points ``p``, chosen by ``paired.equal_points``."""
    p = p[P.equal_points(p, n)]
    return F.pareto_front(p[:, 0], p[:, 1])


def front_gain(fm: np.ndarray, fb: np.ndarray, matched: str, interp: str, n_levels: int) -> float:
    """The mean gain at equal ``matched`` of front ``fm`` over ``fb`` (``fronts.gain_at_equal``); NaN if undefined."""
    if len(fm) == 0 or len(fb) == 0:
        return float("nan")
    g = F.gain_at_equal(fm, fb, matched, interp, n_levels)
    return g.mean if g.defined else float("nan")


def seed_gain(pm: np.ndarray, pb: np.ndarray, matched: str, interp: str, n_levels: int) -> float:
    """g_s: the mean gain at equal ``matched`` of the front of points ``pm`` (k_M, 2) over that of ``pb``,
    both cut to n = min(k_M, k_B) points by ``paired.equal_points``; NaN when undefined (no overlap). Points with
    a non-finite coordinate are left out first."""
    pm, pb = finite(pm), finite(pb)
    n = min(len(pm), len(pb))
    return front_gain(cut_front(pm, n), cut_front(pb, n), matched, interp, n_levels) if n else float("nan")


class SeedPoints:
    """The points of each (label, seed) on the alignment axis and one diversity measure (finite ones only),
    with the row positions they came from (to look up their per-prompt values)."""

    def __init__(self, points: pd.DataFrame, label_col: str, dvals: np.ndarray):
        a = points["alignment"].to_numpy(float)
        ok = np.isfinite(a) & np.isfinite(dvals)
        self.xy = np.stack([a, dvals], axis=1)
        self.rows: dict[tuple[str, int], np.ndarray] = {}
        labs, seeds = points[label_col].to_numpy(), points["seed"].to_numpy(int)
        for i in np.flatnonzero(ok):
            self.rows.setdefault((str(labs[i]), int(seeds[i])), []).append(i)
        self.rows = {k: np.asarray(v) for k, v in self.rows.items()}

    def seeds(self, label: str) -> list[int]:
        return sorted(s for lab, s in self.rows if lab == label)

    def get(self, label: str, seed: int, xy: np.ndarray | None = None) -> np.ndarray:
        idx = self.rows.get((label, seed), np.zeros(0, dtype=int))
        return (self.xy if xy is None else xy)[idx]


def paired_gains(sp: SeedPoints, m: str, b: str, s: JudgeSettings) -> dict:
    """Per-seed paired gains of M over B on the seeds both ran: {seeds, points (n_s per seed), <gain>: {per_seed,
    t}} for both gains."""
    seeds = sorted(set(sp.seeds(m)) & set(sp.seeds(b)))
    out: dict = {"seeds": seeds, "points": [min(len(sp.get(m, x)), len(sp.get(b, x))) for x in seeds]}
    for name, matched in MATCHED:
        vals = [seed_gain(sp.get(m, x), sp.get(b, x), matched, s.interp, s.n_levels) for x in seeds]
        out[name] = {"per_seed": _nan_list(vals), "t": P.t_interval(vals, s.ci),
                     "undefined_seeds": [x for x, v in zip(seeds, vals) if not np.isfinite(v)]}
    return out


# ------------------------------------------------------------------------------------------------
# Bootstrap: seeds and prompts (two-way), or seeds only
# ------------------------------------------------------------------------------------------------
def prompt_matrices(points: pd.DataFrame, keys: list[str]) -> tuple[dict[str, np.ndarray] | None, list[str], str]:
    """Per-prompt values of every row: {key: (rows, prompts)} for ``keys``, the prompts, and '' -- or
    (None, [], why) when a row has no per-prompt file, a key is missing from one, or the prompt lists differ."""
    mats: dict[str, list] = {k: [] for k in keys}
    prompts: list[str] | None = None
    for rd, step, run in zip(points["run_dir"], points["step"], points["run"]):
        pp = aio.read_per_prompt(rd if isinstance(rd, str) else None, int(step))
        if pp is None:
            return None, [], (f"run {run} has no per-prompt evaluation file at step {int(step)} "
                              f"({aio.per_prompt_path(rd, int(step)) if isinstance(rd, str) else 'no run directory'})")
        if prompts is None:
            prompts = pp["prompts"]
        elif pp["prompts"] != prompts:
            return None, [], f"run {run} step {int(step)} was evaluated on other prompts than the first run"
        for k in keys:
            if k not in pp["metrics"]:
                return None, [], f"run {run} step {int(step)}: its per-prompt file has no {k!r}"
            mats[k].append(pp["metrics"][k])
    return {k: np.asarray(v, dtype=float) for k, v in mats.items()}, prompts or [], ""


def bootstrap_two_way(sp: SeedPoints, pairs: list[tuple[str, str, list[int]]], amat: np.ndarray, dmat: np.ndarray,
                      s: JudgeSettings, rng: np.random.Generator, progress: bool = False) -> list[dict[str, list[float]]]:
    """Resampled mean per-seed gains of every pair (method, baseline, its seeds), seeds AND prompts drawn with
    replacement, one draw of each per resample for every arm (paired): the seeds are drawn over the union of the
    pairs' seeds, each pair using the draws of its own; each point becomes its mean over the drawn prompts,
    a = A c / sum c, d = D c / sum c (``paired.weighted_mean``); the per-seed gains are recomputed and averaged
    over the drawn seeds (counted as often as drawn; undefined ones left out). One list of resampled values per
    gain and pair."""
    outs: list[dict[str, list[float]]] = [{name: [] for name, _ in MATCHED} for _ in pairs]
    union = sorted({x for _, _, seeds in pairs for x in seeds})
    for _ in tqdm(range(s.n_boot), desc="bootstrap (seeds x prompts)", delay=1.0, disable=not progress, leave=False):
        count = dict(zip(union, P.draw_counts(len(union), rng).tolist()))
        cp = P.draw_counts(amat.shape[1], rng)
        xy = np.stack([P.weighted_mean(amat, cp), P.weighted_mean(dmat, cp)], axis=1)
        pts: dict[tuple[str, int], np.ndarray] = {}
        fronts: dict[tuple[str, int, int], np.ndarray] = {}

        def front(lab: str, x: int, n: int) -> np.ndarray:
            if (lab, x, n) not in fronts:
                fronts[(lab, x, n)] = cut_front(pts[(lab, x)], n)
            return fronts[(lab, x, n)]
        for (m, b, seeds), out in zip(pairs, outs):
            drawn = [x for x in seeds if count[x]]
            for lab in (m, b):
                for x in drawn:
                    if (lab, x) not in pts:
                        pts[(lab, x)] = finite(sp.get(lab, x, xy))
            ns = {x: min(len(pts[(m, x)]), len(pts[(b, x)])) for x in drawn}
            for name, matched in MATCHED:
                tot = wsum = 0.0
                for x in drawn:
                    g = front_gain(front(m, x, ns[x]), front(b, x, ns[x]), matched, s.interp, s.n_levels) if ns[x] else np.nan
                    if np.isfinite(g):
                        tot, wsum = tot + count[x] * g, wsum + count[x]
                out[name].append(tot / wsum if wsum else np.nan)
    return outs


def bootstrap_seeds(values: list, n_boot: int, rng: np.random.Generator) -> list[float]:
    """Resampled means of per-seed values (seeds drawn with replacement; undefined values left out)."""
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return []
    return [float(v[rng.integers(0, len(v), len(v))].mean()) for _ in range(n_boot)]


# ------------------------------------------------------------------------------------------------
# Sensitivity to a prompt subset (the shapes world's square prompts by default)
# ------------------------------------------------------------------------------------------------
def subset_mask(prompts: list[str], pattern: str) -> np.ndarray:
    """True for every prompt in which the regular expression ``pattern`` is found (case-insensitive)."""
    rx = re.compile(pattern, re.IGNORECASE)
    return np.array([bool(rx.search(p)) for p in prompts], dtype=bool)


def subset_means(mat: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean over the prompts in the subset, mean over the rest) of every row of a (rows, prompts) matrix:
    a_in = sum_{j in S} A_rj / |S|, a_out = sum_{j not in S} A_rj / (P - |S|) (non-finite values left out)."""
    with np.errstate(invalid="ignore"):
        return np.nanmean(mat[:, mask], axis=1), np.nanmean(mat[:, ~mask], axis=1)


def per_seed_means(frame: pd.DataFrame, values: np.ndarray, by: str = "arm") -> dict[str, dict[int, float]]:
    """{arm: {seed: mean of ``values`` over that arm's rows of that seed}} (several configurations of an arm at
    one seed are averaged: one number per seed, so the t-interval is over seeds)."""
    f = frame.assign(_v=values)
    return {str(lab): {int(k): float(v) for k, v in g.groupby("seed")["_v"].mean().items()}
            for lab, g in f.groupby(by)}


def prompt_subset(points: pd.DataFrame, finals: pd.DataFrame, initial: pd.DataFrame | None,
                  pairs: list[tuple[str, str]], s: JudgeSettings, pattern: str, label_col: str = "label",
                  point_matrices: tuple | None = None) -> dict:
    """How much of the result rests on the prompts matching ``pattern``.

    Per arm: the final alignment on the subset and on the rest (per-seed means, t-interval over seeds) beside the
    base model's (step 0). Per pair: the per-seed paired gains on the primary measure recomputed with every
    point's alignment and diversity averaged over the prompts *outside* the subset (``subset_means``), beside the
    gains on all prompts. Needs every point's per-prompt file; otherwise {'status': 'unavailable', 'why'}.
    ``point_matrices``: ``prompt_matrices(points, [s.akey, s.dkey])`` where the caller already read them.
    """
    out: dict = {"pattern": pattern}
    mats, prompts, why = point_matrices or (prompt_matrices(points, [s.akey, s.dkey]) if len(points)
                                            else (None, [], "no points"))
    fmats, fprompts, fwhy = prompt_matrices(finals, [s.akey]) if len(finals) else (None, [], "no final evaluations")
    if mats is None or fmats is None:
        return {**out, "status": "unavailable", "why": why or fwhy}
    if fprompts != prompts:
        return {**out, "status": "unavailable", "why": "the final evaluations and the front points used other prompts"}
    mask = subset_mask(prompts, pattern)
    out.update(n_prompts=len(prompts), n_subset=int(mask.sum()), subset=[p for p, m in zip(prompts, mask) if m])
    if not mask.any() or mask.all():
        return {**out, "status": "no match" if not mask.any() else "all match"}
    out["status"] = "done"

    # final alignment per arm, on the subset and on the rest, with the base model's beside it
    a_in, a_out = subset_means(fmats[s.akey], mask)
    arms: dict = {}
    for part, vals in (("subset", a_in), ("rest", a_out)):
        for arm, per in per_seed_means(finals, vals).items():
            arms.setdefault(arm, {})[part] = {"per_seed": per, "t": P.t_interval(list(per.values()), s.ci)}
    if initial is not None and len(initial):
        imats, iprompts, _ = prompt_matrices(initial, [s.akey])
        if imats is not None and iprompts == prompts:
            b_in, b_out = subset_means(imats[s.akey], mask)
            out["base"] = {"subset": float(np.nanmean(b_in)), "rest": float(np.nanmean(b_out))}
    out["arms"] = arms

    # the per-seed paired gains with the subset's prompts left out of every point
    _, al = subset_means(mats[s.akey], mask)
    _, dv = subset_means(mats[s.dkey], mask)
    sp = SeedPoints(points.assign(alignment=al), label_col, dv)
    out["pairs"] = [{"method": m, "baseline": b, "without_subset": paired_gains(sp, m, b, s)} for m, b in pairs]
    return out


# ------------------------------------------------------------------------------------------------
# Controls
# ------------------------------------------------------------------------------------------------
def aa_control(sp: SeedPoints, arm: str, s: JudgeSettings) -> dict:
    """The A/A statistic of one arm: per pair (s_i, s_{i+h}) of ``paired.aa_split``, the gain of the front of
    seed s_i over that of s_{i+h}; mean and t-interval over the pairs."""
    pairs = P.aa_split(sp.seeds(arm))
    out: dict = {"arm": arm, "pairs": [list(p) for p in pairs]}
    for name, matched in MATCHED:
        vals = [seed_gain(sp.get(arm, x), sp.get(arm, y), matched, s.interp, s.n_levels) for x, y in pairs]
        out[name] = {"per_pair": _nan_list(vals), "t": P.t_interval(vals, s.ci)}
    return out


def strongest_kl_runs(runs: pd.DataFrame, arm: str = "flow_grpo_kl") -> tuple[list[str], str]:
    """The runs of the KL arm's strongest setting (the largest beta) and a description; ([], why) if none."""
    r = runs[runs["arm"] == arm]
    if r.empty:
        return [], f"no {arm} runs"
    beta = pd.Series([_knob(f, "beta") for f in r["flat"]], index=r.index)
    if beta.notna().any():
        top = beta.max()
        return list(r.loc[beta == top, "run"]), f"{arm} with beta = {top:g} (the largest)"
    if r["config"].nunique() == 1:
        return list(r["run"]), f"{arm} (its one configuration; beta not recorded)"
    return [], f"{arm} has several configurations and no recorded beta to pick the strongest"


def power_check(finals: pd.DataFrame, dvals: np.ndarray, kl_runs: list[str], fg: str, s: JudgeSettings) -> dict:
    """Final-iteration diversity of the strongest KL minus Flow-GRPO's, per seed both ran; t-interval; the
    difference relative to Flow-GRPO's mean final diversity beside it."""
    f = finals.assign(_d=dvals)
    kl = f[f["run"].isin(kl_runs)].groupby("seed")["_d"].mean()
    fgv = f[f["arm"] == fg].groupby("seed")["_d"].mean()
    seeds = sorted(set(kl.index) & set(fgv.index))
    diff = [float(kl[x] - fgv[x]) for x in seeds]
    t = P.t_interval(diff, s.ci)
    base = float(np.nanmean([fgv[x] for x in seeds])) if seeds else None
    rel = None
    if t["mean"] is not None and base:
        rel = {"mean": t["mean"] / base, "ci": [c / base for c in t["ci"]] if t["ci"] else None}
    return {"seeds": seeds, "per_seed": diff, "t": t, "relative_to_flow_grpo": rel, "flow_grpo_mean": base}


# ------------------------------------------------------------------------------------------------
# Everything
# ------------------------------------------------------------------------------------------------
def judge(points: pd.DataFrame, finals: pd.DataFrame, runs: pd.DataFrame, pairs: list[tuple[str, str]],
          s: JudgeSettings, label_col: str = "label", progress: bool = True, subset_pattern: str | None = None,
          initial: pd.DataFrame | None = None) -> dict:
    """Controls, per-seed paired gains on every diversity measure, and the bootstrap CIs of the primary measure.

    ``points``: the front-eligible points (columns label, run, seed, step, alignment, diversity, run_dir and the
    other eval metrics); ``finals``: every kept run's final evaluation row (column arm); ``runs``: the kept runs
    (arm, run, config, flat); ``subset_pattern``: a regular expression naming the prompts of the sensitivity
    report (``prompt_subset``; None or '' for none); ``initial``: the step-0 rows (the base model's). JSON-ready.
    """
    measures = measures_present(points, s.dkey)
    rng = np.random.default_rng(s.seed)
    sps = {k: SeedPoints(points, label_col, measure_column(points, k, s.dkey)) for k in measures}
    primary = sps[s.dkey]
    res: dict = {"primary_measure": s.dkey, "alignment_key": s.akey, "measures": measures, "ci": s.ci,
                 "n_boot": s.n_boot, "pairs": []}

    # gains on every measure
    for m, b in pairs:
        entry: dict = {"method": m, "baseline": b, "measures": {}}
        for k in measures:
            entry["measures"][k] = paired_gains(sps[k], m, b, s)
        res["pairs"].append(entry)

    # bootstrap of the primary measure: seeds x prompts where every point has its per-prompt file
    mats, prompts, why = prompt_matrices(points, [s.akey, s.dkey]) if len(points) else (None, [], "no points")
    res["bootstrap"] = ({"kind": "two-way", "detail": f"seeds and {len(prompts)} evaluation prompts resampled, paired "
                                                      "across arms"} if mats else
                        {"kind": "seeds", "detail": f"seeds only (per-prompt metrics unavailable: {why})"})
    todo = [e for e in res["pairs"] if len(e["measures"][s.dkey]["seeds"]) >= 2]
    if mats:
        all_samples = bootstrap_two_way(primary, [(e["method"], e["baseline"], e["measures"][s.dkey]["seeds"]) for e in todo],
                                        mats[s.akey], mats[s.dkey], s, rng, progress)
    else:
        all_samples = [{name: bootstrap_seeds(e["measures"][s.dkey][name]["per_seed"], s.n_boot, rng)
                        for name, _ in MATCHED} for e in todo]
    for e, samples in zip(todo, all_samples):
        pg = e["measures"][s.dkey]
        for name, _ in MATCHED:
            ci = F.percentile_ci(np.asarray(samples[name]), s.ci) if pg[name]["t"]["mean"] is not None else None
            pg[name]["bootstrap_ci"] = list(ci) if ci else None

    res["controls"] = controls(primary, points, finals, runs, s, label_col)
    if subset_pattern:
        res["subset"] = prompt_subset(points, finals, initial, pairs, s, subset_pattern, label_col,
                                      (mats, prompts, why))
    return res


def controls(sp: SeedPoints, points: pd.DataFrame, finals: pd.DataFrame, runs: pd.DataFrame, s: JudgeSettings,
             label_col: str) -> dict:
    labels = set(points[label_col])
    out: dict = {}
    # (a) A/A on every arm with >= 4 seeds; the verdict on the first of AA_PREFERENCE present, else the arm with most
    cands = [lab for lab in sorted(labels) if len(sp.seeds(lab)) >= 4]
    aa = {lab: aa_control(sp, lab, s) for lab in cands}
    pick = next((x for x in AA_PREFERENCE if x in aa), max(cands, key=lambda x: len(sp.seeds(x)), default=None))
    out["negative"] = {"arm": pick, "all_arms": aa}
    if pick is None:
        out["negative"]["status"] = "not run"
        out["negative"]["why"] = "no arm has the 4 seeds an A/A split into two halves of 2 needs"
    else:
        t = aa[pick]["diversity_gain_at_equal_alignment"]["t"]
        out["negative"]["status"] = ("undefined" if t["ci"] is None else
                                     "pass" if not P.excludes_zero(t["ci"]) else "fail")
        # (d) smallest resolvable gain, from the A/A per-pair SD at the arm's seed count
        n = len(sp.seeds(pick))
        out["resolvable"] = {"arm": pick, "n_seeds": n, "sd_aa": t["sd"], "aa_half_width": t["half_width"],
                             "gain": P.resolvable_gain(t["sd"], n, s.ci),
                             "gain_80_power": (None if t["sd"] is None else
                                               P.detectable_gain(t["sd"], n))}
    # (b) positive control
    m, b = POSITIVE_CONTROL
    if m in labels and b in labels:
        pg = paired_gains(sp, m, b, s)
        t = pg["diversity_gain_at_equal_alignment"]["t"]
        out["positive"] = {"method": m, "baseline": b, **pg,
                           "status": "undefined" if t["ci"] is None else "pass" if t["ci"][0] > 0 else "fail"}
    else:
        out["positive"] = {"method": m, "baseline": b, "status": "not run",
                           "why": f"no {' and no '.join(x for x in (m, b) if x not in labels)} runs"}
    # (c) power check
    kl_runs, what = strongest_kl_runs(runs, POWER_CHECK[0])
    if kl_runs and (finals["arm"] == POWER_CHECK[1]).any():
        pc = power_check(finals, measure_column(finals, s.dkey, s.dkey), kl_runs, POWER_CHECK[1], s)
        ci = pc["t"]["ci"]
        out["power"] = {"kl": what, **pc, "status": "undefined" if ci is None else "pass" if ci[0] > 0 else "fail"}
    else:
        out["power"] = {"kl": what, "status": "not run",
                        "why": what if not kl_runs else f"no {POWER_CHECK[1]} runs"}
    return out


def verdict(c: dict) -> list[str]:
    """The words above the gains table: which controls failed (then the budget is too small to judge), which
    were not run, or that all behaved."""
    fails, missing, undefined = [], [], []
    for key, what in (("negative", "the negative control (A/A)"), ("positive", "the positive control"),
                      ("power", "the power check")):
        st = c[key]["status"]
        (fails if st == "fail" else missing if st == "not run" else undefined if st == "undefined" else []).append(what)
    lines = []
    if fails:
        lines.append("**The budget is too small to judge:** " + " and ".join(fails) + " failed (see below); the gains "
                     "below cannot separate methods at this budget.")
    if missing:
        lines.append("Not run: " + ", ".join(missing) + "; the benchmark's power is unverified without them.")
    if undefined:
        lines.append("Undefined (too few seeds or no overlapping fronts): " + ", ".join(undefined) + ".")
    if not fails and not missing and not undefined:
        lines.append("All controls behaved: the A/A interval includes 0, the positive control and the power check "
                     "exclude it.")
    return lines


def _knob(flat: dict, name: str):
    for k, v in (flat or {}).items():
        if k == name or k.endswith("." + name):
            try:
                return float(v)
            except (TypeError, ValueError):
                return None
    return None


def _nan_list(v) -> list:
    return [None if v_ is None or not np.isfinite(v_) else float(v_) for v_ in v]
