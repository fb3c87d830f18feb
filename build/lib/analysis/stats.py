"""Every statistic of one analysis (fronts, gains, dominance, hypervolume, final values) and its bootstrap CI.

Bootstrap: the runs of each label are grouped into strata (one stratum = one configuration, i.e. one
knob setting with its seeds); a resample draws, within every stratum, as many runs as it holds,
uniformly with replacement, pools their points, rebuilds every front and recomputes every statistic.
The CI is the percentile interval of the resampled values (``fronts.percentile_ci``). The base point a0
and the hypervolume reference point stay fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import fronts as F

GAINS = (("diversity_gain_at_equal_alignment", "alignment", False),
         ("alignment_gain_at_equal_diversity", "diversity", False),
         ("alignment_gain_at_equal_diversity_vs_base", "diversity", True))


@dataclass
class Settings:
    interp: str = "staircase"
    n_levels: int = 21
    n_boot: int = 1000
    seed: int = 0
    ci: float = 0.95
    ref: tuple[float, float] = (0.0, 0.0)  # hypervolume reference point (alignment, diversity)
    a0: float | None = None  # the base model's alignment (None: base-relative gains undefined)
    band_points: int = 50


def _scalars(fronts: dict[str, np.ndarray], finals: dict[str, np.ndarray], pairs: list[tuple[str, str]],
             s: Settings, fixed_levels: dict | None = None) -> tuple[dict[str, float], dict]:
    """All scalar statistics as a flat dict key -> value (NaN = undefined), plus the Gain objects."""
    out: dict[str, float] = {}
    gains: dict = {}
    for lab, fr in fronts.items():
        out[f"hypervolume/{lab}"] = F.hypervolume(fr, s.ref)
        fa = finals[lab]
        out[f"final_alignment/{lab}"] = float(np.nanmean(fa[:, 0])) if np.isfinite(fa[:, 0]).any() else np.nan
        out[f"final_diversity/{lab}"] = float(np.nanmean(fa[:, 1])) if np.isfinite(fa[:, 1]).any() else np.nan
    for m, b in pairs:
        for name, matched, vs_base in GAINS:
            if vs_base and s.a0 is None:
                continue
            g = F.gain_at_equal(fronts[m], fronts[b], matched, s.interp, s.n_levels, zero=s.a0 if vs_base else 0.0)
            gains[(m, b, name)] = g
            for stat in ("min", "max", "mean"):
                v = getattr(g, stat)
                out[f"{name}/{m}/{b}/{stat}"] = np.nan if v is None else v
            if fixed_levels is not None and (m, b, name) in fixed_levels:
                lv = fixed_levels[(m, b, name)]
                fm = F.diversity_at if matched == "alignment" else F.alignment_at
                vals = F.relative_gain(fm(fronts[m], lv, s.interp), fm(fronts[b], lv, s.interp),
                                       s.a0 if vs_base else 0.0)
                for i, v in enumerate(vals):
                    out[f"{name}/{m}/{b}/level{i}"] = v
        out[f"dominance/{m}/{b}"] = F.dominance_share(fronts[m], fronts[b])
        out[f"dominance/{b}/{m}"] = F.dominance_share(fronts[b], fronts[m])
    return out, gains


def _stat(value: float, samples: list[float] | None, s: Settings, note: str | None = None) -> dict:
    """{'value', 'ci', 'n_boot_defined', 'note'}: value None if undefined; ci None if not estimable."""
    v = None if value is None or not np.isfinite(value) else float(value)
    d: dict = {"value": v, "ci": None, "n_boot_defined": 0}
    if samples is not None:
        arr = np.asarray(samples, dtype=float)
        d["n_boot_defined"] = int(np.isfinite(arr).sum())
        if v is not None and note is None:
            ci = F.percentile_ci(arr, s.ci)
            d["ci"] = list(ci) if ci else None
    if note:
        d["note"] = note
    return d


def analyse(points: pd.DataFrame, label_col: str, pairs: list[tuple[str, str]], s: Settings,
            progress: bool = True, desc: str = "bootstrap") -> dict:
    """Fronts and statistics of each label in ``points[label_col]`` with bootstrap CIs.

    ``points`` holds the front-eligible points (columns run, config, alignment, diversity, final);
    ``pairs`` lists (method label, baseline label). Returns a JSON-ready dict (see docs/analysis.md).
    """
    labels = sorted(points[label_col].unique())
    run_pts: dict[str, np.ndarray] = {}
    run_final: dict[str, np.ndarray] = {}
    strata: dict[str, list[list[str]]] = {}
    for lab in labels:
        g = points[points[label_col] == lab]
        strata[lab] = [sorted(gg["run"].unique()) for _, gg in g.groupby("config", sort=True)]
        for run, gr in g.groupby("run", sort=True):
            run_pts[run] = gr[["alignment", "diversity"]].to_numpy(float)
            fin = gr[gr["final"]]
            run_final[run] = fin[["alignment", "diversity"]].to_numpy(float)[:1] if len(fin) else np.full((1, 2), np.nan)

    def build(runs_of: dict[str, list[str]]) -> tuple[dict, dict]:
        fr, fi = {}, {}
        for lab in labels:
            rs = runs_of[lab]
            pts = np.concatenate([run_pts[r] for r in rs]) if rs else np.zeros((0, 2))
            fr[lab] = F.pareto_front(pts[:, 0], pts[:, 1])
            fi[lab] = np.concatenate([run_final[r] for r in rs])
        return fr, fi

    all_runs = {lab: [r for st in strata[lab] for r in st] for lab in labels}
    fronts, finals = build(all_runs)
    _, gains = _scalars(fronts, finals, pairs, s)
    fixed = {k: g.levels for k, g in gains.items() if len(g.levels)}
    point, gains = _scalars(fronts, finals, pairs, s, fixed)
    bands = {lab: np.linspace(fr[0, 0], fr[-1, 0], s.band_points) if len(fr) > 1 else fr[:, 0]
             for lab, fr in fronts.items()}

    single = {lab: all(len(st) == 1 for st in strata[lab]) for lab in labels}
    samples: dict[str, list[float]] = {k: [] for k in point}
    band_samples: dict[str, list[np.ndarray]] = {lab: [] for lab in labels}
    rng = np.random.default_rng(s.seed)
    index = {lab: [r for st in strata[lab] for r in st] for lab in labels}
    pos = {lab: [[index[lab].index(r) for r in st] for st in strata[lab]] for lab in labels}
    for _ in tqdm(range(s.n_boot), desc=desc, delay=1.0, disable=not progress, leave=False):
        drawn = {lab: [index[lab][i] for i in F.resample_runs(pos[lab], rng)] for lab in labels}
        fr_b, fi_b = build(drawn)
        vals, _ = _scalars(fr_b, fi_b, pairs, s, fixed)
        for k in samples:
            samples[k].append(vals.get(k, np.nan))
        for lab in labels:
            band_samples[lab].append(F.diversity_at(fr_b[lab], bands[lab], s.interp))

    def note_for(*labs: str) -> str | None:
        one = [lab for lab in labs if single[lab]]
        if len(one) == len(labs):
            return f"one seed per configuration for {', '.join(one)}: no bootstrap CI"
        return None

    def partial_note(*labs: str) -> str | None:
        one = [lab for lab in labs if single[lab]]
        return (f"{', '.join(one)} has one seed per configuration: the CI ignores its seed variability"
                if one else None)

    res_labels = {}
    for lab in labels:
        fr = fronts[lab]
        b = np.asarray(band_samples[lab]) if s.n_boot else np.zeros((0, len(bands[lab])))
        ok = np.isfinite(b).mean(axis=0) >= 0.5 if len(b) else np.zeros(len(bands[lab]), bool)
        lo = np.full(len(bands[lab]), np.nan)
        hi = np.full(len(bands[lab]), np.nan)
        if len(b) and not single[lab]:
            q = (1 - s.ci) / 2 * 100
            with np.errstate(all="ignore"):
                for j in np.where(ok)[0]:
                    col = b[:, j][np.isfinite(b[:, j])]
                    lo[j], hi[j] = np.percentile(col, [q, 100 - q])
        n = note_for(lab)
        res_labels[lab] = {
            "runs": len(index[lab]), "configs": len(strata[lab]), "seeds": sorted({int(x) for x in
                                                                                   points[points[label_col] == lab]["seed"]}),
            "points": int((points[label_col] == lab).sum()), "front": fr.tolist(),
            "hypervolume": _stat(point[f"hypervolume/{lab}"], samples[f"hypervolume/{lab}"], s, n),
            "final_alignment": _stat(point[f"final_alignment/{lab}"], samples[f"final_alignment/{lab}"], s, n),
            "final_diversity": _stat(point[f"final_diversity/{lab}"], samples[f"final_diversity/{lab}"], s, n),
            "front_band": {"alignment": bands[lab].tolist(), "diversity_lo": _nan_list(lo), "diversity_hi": _nan_list(hi)},
        }
        if len(fr) == 1:
            res_labels[lab]["note"] = "the front is a single point"

    res_pairs = []
    for m, b in pairs:
        n = note_for(m, b)
        pn = None if n else partial_note(m, b)
        entry: dict = {"method": m, "baseline": b}
        for name, matched, vs_base in GAINS:
            if vs_base and s.a0 is None:
                entry[name] = {"value": None, "messages": ["the base model's alignment a0 is unknown (no step-0 "
                                                           "evaluation): base-relative gains are undefined"]}
                continue
            g = gains[(m, b, name)]
            key = f"{name}/{m}/{b}"
            per_level = []
            for i, lv in enumerate(g.levels):
                st = _stat(point[f"{key}/level{i}"], samples.get(f"{key}/level{i}"), s, n)
                per_level.append({"level": float(lv), **st})
            entry[name] = {
                "matched": matched, "zero": s.a0 if vs_base else 0.0,
                "interval": list(g.interval) if g.interval else None,
                "min": _stat(point[f"{key}/min"], samples[f"{key}/min"], s, n),
                "max": _stat(point[f"{key}/max"], samples[f"{key}/max"], s, n),
                "mean": _stat(point[f"{key}/mean"], samples[f"{key}/mean"], s, n),
                "levels": per_level,
                "messages": g.messages + ([n] if n and g.defined else []) + ([pn] if pn and g.defined else []),
            }
        entry["dominance"] = {
            "method_over_baseline": _stat(point[f"dominance/{m}/{b}"], samples[f"dominance/{m}/{b}"], s, n),
            "baseline_over_method": _stat(point[f"dominance/{b}/{m}"], samples[f"dominance/{b}/{m}"], s, n),
        }
        res_pairs.append(entry)
    return {"labels": res_labels, "pairs": res_pairs}


def _nan_list(x: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in x]
