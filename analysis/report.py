"""Tables (Markdown + LaTeX from the same rows) and figures (matplotlib, Agg) of an analysis."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import style  # noqa: E402
from .io import COMPONENTS, METHOD_NAMES, ablation_label  # noqa: E402

DASH = "—"


# ------------------------------------------------------------------------------------------------
# Formatting
# ------------------------------------------------------------------------------------------------
def name(label: str) -> str:
    return METHOD_NAMES.get(label, label)


def fmt_pct(v: float | None) -> str:
    return DASH if v is None else f"{100 * v:+.1f}%"


def fmt_share(v: float | None) -> str:
    return DASH if v is None else f"{100 * v:.1f}%"


def fmt_num(v: float | None) -> str:
    return DASH if v is None else f"{v:.4g}"


def cell(stat: dict | None, pct: bool = False, share: bool = False) -> str:
    """'+9.1% [+5.0, +12.3]' (gain) / '33.3% [16.7, 50.0]' (share) / '0.412 [0.40, 0.42]'; '—' when
    undefined; no bracket without a CI."""
    if not stat or stat.get("value") is None:
        return DASH
    f = fmt_share if share else fmt_pct if pct else fmt_num
    s = f(stat["value"])
    ci = stat.get("ci")
    if ci:
        s += f" [{f(ci[0]).rstrip('%')}, {f(ci[1]).rstrip('%')}]"
    return s


def fmt_interval(iv) -> str:
    return DASH if not iv else f"{iv[0]:.4g} – {iv[1]:.4g}"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def md(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
               "|" + "|".join("---" for _ in self.header) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            out += [""] + [f"* {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def tex(self) -> str:
        def esc(s: str) -> str:
            s = (s.replace("\\", r"\textbackslash{}").replace("%", r"\%").replace("_", r"\_").replace("&", r"\&")
                 .replace("#", r"\#"))
            return (s.replace("—", "---").replace("–", "--").replace("−", "$-$").replace("✓", r"\checkmark")
                    .replace("₀", "$_0$").replace("†", r"$^\dagger$"))
        out = [f"% {self.title}", r"\begin{tabular}{" + "l" * len(self.header) + "}", r"\toprule",
               " & ".join(esc(h) for h in self.header) + r" \\", r"\midrule"]
        out += [" & ".join(esc(c) for c in r) + r" \\" for r in self.rows]
        out += [r"\bottomrule", r"\end{tabular}"]
        out += [f"% {esc(n)}" for n in self.notes]
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
GAIN_TITLES = {
    "diversity_gain_at_equal_alignment": ("Diversity gain at equivalent alignment, D_M(a) / D_B(a) − 1", "Alignment overlap"),
    "alignment_gain_at_equal_diversity": ("Alignment gain at equivalent diversity, A_M(d) / A_B(d) − 1", "Diversity overlap"),
    "alignment_gain_at_equal_diversity_vs_base": (
        "Alignment gain at equivalent diversity relative to the base model, (A_M(d) − a₀) / (A_B(d) − a₀) − 1",
        "Diversity overlap"),
}


HV_ONE_SIDED = ("Hypervolume CI: a bootstrap resample can only drop runs from a pooled front (repeats add nothing), "
                "so a resampled hypervolume never exceeds the estimate; the interval is one-sided (its upper end is at "
                "most the estimate) and says how much the number depends on which seeds ran, not a symmetric error bar.")


def images_cell(r: dict) -> str:
    """Images sampled per training iteration of a label's runs: '32', '32–64' when its runs differ, '?' unknown."""
    v = r.get("images_per_iter")
    if v is None:
        return DASH
    s = "/".join(str(x) for x in v)
    return (s + " + ?" if s else "?") if r.get("images_per_iter_note") else s


def methods_table(res: dict, title: str = "Methods") -> Table:
    rows = []
    with_images = any("images_per_iter" in r for r in res["labels"].values())
    for lab, r in res["labels"].items():
        rows.append([name(lab), f"{r['runs']} ({r['configs']})", str(len(r["seeds"])), str(len(r["front"])),
                     cell(r["final_alignment"]), cell(r["final_diversity"]), cell(r["hypervolume"])]
                    + ([images_cell(r)] if with_images else []))
    notes = [f"{name(lab)}: {r['hypervolume']['note']}" for lab, r in res["labels"].items() if r["hypervolume"].get("note")]
    notes.append(HV_ONE_SIDED)
    if with_images:
        notes.append("Images per iteration = groups_per_iter × group_size × the method's oversampling factor (from each "
                     "run's config): the compute each arm spends on sampling.")
        notes += [f"{name(lab)}: images per iteration unknown for some runs: {r['images_per_iter_note']}"
                  for lab, r in res["labels"].items() if r.get("images_per_iter_note")]
    return Table(title, ["Method", "Runs (configs)", "Seeds", "Front points", "Final alignment", "Final diversity",
                         "Hypervolume (CI one-sided, see note)"] + (["Images / iteration"] if with_images else []),
                 rows, notes)


LOST_MARK = " †"
"""Marks a pair whose fronts lost points to excluded runs or missing seeds (the table note says which)."""


def lost_note(p: dict) -> str:
    """'fronts built without ...' for a flagged pair: each label's excluded runs and missing seeds."""
    parts = [f"{name(lab)} lost {len(why)} ({'; '.join(why[:4])}{'; ...' if len(why) > 4 else ''})"
             for lab, why in p.get("front_lost_points", {}).items()]
    return "fronts built without excluded runs or points: " + ", ".join(parts)


def gain_tables(res: dict) -> list[Table]:
    tables = []
    for key, (title, ov) in GAIN_TITLES.items():
        rows, notes = [], []
        for p in res["pairs"]:
            g = p.get(key)
            if g is None:
                continue
            pair = f"{name(p['method'])} vs {name(p['baseline'])}"
            flag = LOST_MARK if p.get("flagged") else ""
            if flag:
                notes.append(f"{LOST_MARK.strip()} {pair}: " + lost_note(p))
            if "min" not in g:
                rows.append([name(p["method"]) + flag, name(p["baseline"]), DASH, DASH, DASH, DASH, DASH])
            else:
                rng = (f"{fmt_pct(g['min']['value'])} – {fmt_pct(g['max']['value'])}"
                       if g["min"]["value"] is not None else DASH)
                rows.append([name(p["method"]) + flag, name(p["baseline"]), fmt_interval(g["interval"]), rng,
                             cell(g["min"], True), cell(g["max"], True), cell(g["mean"], True)])
            notes += [f"{pair}: {m}" for m in g.get("messages", [])]
        tables.append(Table(title, ["Method", "Baseline", ov, "Range (min – max)", "Min [95% CI]", "Max [95% CI]",
                                    "Mean [95% CI]"], rows, notes))
    rows = [[name(p["method"]) + (LOST_MARK if p.get("flagged") else ""), name(p["baseline"]),
             cell(p["dominance"]["method_over_baseline"], share=True),
             cell(p["dominance"]["baseline_over_method"], share=True)] for p in res["pairs"]]
    tables.append(Table("Dominance: share of one front's points dominated by the other front",
                        ["Method", "Baseline", "Baseline's front dominated by method", "Method's front dominated by baseline"],
                        rows))
    return tables


def settings_text(meta: dict) -> str:
    s = meta["settings"]
    base = meta.get("base")
    lines = [
        f"Input: {meta['source']} ({meta['n_runs']} runs kept, {meta['n_excluded']} excluded; see warnings in report.md).",
        f"Axes: alignment = `{s['alignment_key']}`, diversity = `{s['diversity_key']}` (both higher is better).",
        f"Front functions: {s['interp']} interpolation; gains on {s['n_levels']} equally spaced levels over each "
        "pair's overlap; min, max and mean over the levels where the gain is defined.",
        f"Bootstrap: {s['n_boot']} resamples of runs (seeds) within each method configuration, seed {s['seed']}, "
        f"{int(100 * s['ci'])}% percentile intervals in brackets.",
        (f"Base model (step 0): a₀ = {base[0]:.4g}, d₀ = {base[1]:.4g}." if base
         else "Base model: unknown (no step-0 evaluation)."),
        f"Hypervolume reference point (alignment, diversity) = ({s['ref'][0]:.4g}, {s['ref'][1]:.4g}): {s['ref_rule']}.",
        f"Steps on the fronts: {s['steps']}.",
    ]
    return "\n".join(f"* {ln}" for ln in lines) + "\n"


def gains_docs(res: dict, meta: dict, judged: dict | None = None) -> tuple[str, str]:
    """(gains.md, gains.tex): the controls and per-seed paired gains first (with ``judged``), then the pooled
    fronts' tables."""
    tabs = [methods_table(res)] + gain_tables(res)
    md = "# Gains at equivalent alignment and at equivalent diversity\n\n" + settings_text(meta) + "\n"
    tex = "% Generated by analysis/frontier.py; needs \\usepackage{booktabs,amssymb}\n"
    if judged is not None:
        md += judge_md(judged) + "\n**Pooled fronts** (all seeds of an arm on one front; bootstrap over runs):\n\n"
        tex += "\n".join(t.tex() for t in paired_tables(judged)) + "\n"
    md += "\n".join(t.md() for t in tabs)
    tex += "\n".join(t.tex() for t in tabs)
    return md, tex


def ablation_table(res: dict, order: list[str], reference: str | None, components: dict[str, tuple]) -> Table:
    """One row per ablation variant (components on/off, final values, hypervolume, gains vs reference)."""
    by_pair = {p["method"]: p for p in res["pairs"]}
    labels = [lab for lab in order if lab in res["labels"]] + sorted(set(res["labels"]) - set(order) - {reference})
    if reference in res["labels"]:
        labels.append(reference)
    rows, notes = [], []
    ref_name = name(reference) if reference else "Flow-GRPO"

    def gain(p: dict | None, key: str) -> str:
        if p is None:
            return "(reference)" if reference is not None and lab == reference else f"n/a (no {ref_name} runs)"
        g = p[key]
        if "mean" not in g or g["mean"]["value"] is None:
            return DASH
        return f"{cell(g['mean'], True)}; {fmt_pct(g['min']['value'])} – {fmt_pct(g['max']['value'])}"

    for lab in labels:
        r = res["labels"][lab]
        comp = components.get(lab, (False, False, False))
        p = by_pair.get(lab)
        rows.append([name(lab), *("✓" if c else "–" for c in comp), f"{r['runs']}", cell(r["final_alignment"]),
                     cell(r["final_diversity"]), cell(r["hypervolume"]),
                     gain(p, "diversity_gain_at_equal_alignment"), gain(p, "alignment_gain_at_equal_diversity")])
        if p:
            for key in ("diversity_gain_at_equal_alignment", "alignment_gain_at_equal_diversity"):
                notes += [f"{name(lab)}: {m}" for m in p[key].get("messages", [])]
    hdr = ["Variant", "Sampling", "Prompting", "Shaping", "Runs", "Final alignment", "Final diversity", "Hypervolume",
           f"Div. gain @ eq. alignment vs {ref_name}: mean [CI]; min – max",
           f"Align. gain @ eq. diversity vs {ref_name}: mean [CI]; min – max"]
    return Table("Ablation: DRIFT components removed / alone", hdr, rows, notes)


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def knob_text(variant: str) -> str:
    """'drift (lam=0.5)' -> 'λ=0.5'; the method's own name when nothing is swept."""
    inner = variant.partition(" (")[2].rstrip(")")
    if not inner:
        return ""
    greek = {"lam": "λ", "beta": "β", "gamma": "γ", "sigma": "σ"}
    kv = dict(x.partition("=")[::2] for x in inner.split(", "))
    kv = {k.rsplit(".", 1)[-1]: v for k, v in kv.items()}
    parts = []
    comps = [f for f, _ in COMPONENTS]
    if any(f in kv for f in comps):  # DRIFT's components: the ablation's name ('− shaping'), not three fields
        parts.append(ablation_label({f: kv.pop(f, "on") for f in comps}))
    parts += [f"{greek.get(k, k)}={v}" for k, v in kv.items()]
    return ", ".join(parts)


def pareto_figure(res: dict, points: pd.DataFrame, label_col: str, base: tuple | None, interp: str, stem: str,
                  keys: tuple[str, str], title: str = "Alignment–diversity fronts", variants: dict | None = None,
                  ci: float = 0.95, n_boot: int | None = None) -> list[str]:
    """Writes <stem>.png and <stem>.pdf of ``pareto_axes``."""
    fig = pareto_axes(res, points, label_col, base, interp, keys, title, variants, ci, n_boot)
    paths = [stem + ".png", stem + ".pdf"]
    for pth in paths:
        fig.savefig(pth, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def pareto_axes(res: dict, points: pd.DataFrame, label_col: str, base: tuple | None, interp: str,
                keys: tuple[str, str], title: str = "Alignment–diversity fronts", variants: dict | None = None,
                ci: float = 0.95, n_boot: int | None = None):
    """Every evaluation point faint; each label's front (bold staircase) in its fixed colour, with its
    bootstrap band (light fill, dashed edges); each front point's marker shape names the knob value of
    the run that gave it (``variants``: run -> 'method (knob=v)'); the base model a black star. The
    legend explains lines, markers, bands and dots."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    labels = style.order(res["labels"])
    fig, ax = plt.subplots(figsize=(7.8, 4.9))
    handles: list = []
    for lab in labels:
        c = style.colour(lab)
        p = points[points[label_col] == lab]
        ax.scatter(p["alignment"], p["diversity"], s=9, color=c, alpha=0.25, linewidths=0, zorder=1)
        fr = np.asarray(res["labels"][lab]["front"])
        band = res["labels"][lab]["front_band"]
        lo = np.array([np.nan if v is None else v for v in band["diversity_lo"]])
        hi = np.array([np.nan if v is None else v for v in band["diversity_hi"]])
        stepkw = {"step": "pre"} if interp == "staircase" else {}
        if np.isfinite(lo).any():
            ax.fill_between(band["alignment"], lo, hi, color=c, alpha=0.10, linewidth=0, zorder=2, **stepkw)
            for edge in (lo, hi):
                (ax.step(band["alignment"], edge, where="pre", color=c, lw=0.7, ls="--", alpha=0.8, zorder=2)
                 if interp == "staircase" else ax.plot(band["alignment"], edge, color=c, lw=0.7, ls="--", alpha=0.8))
        if not len(fr):
            continue
        if interp == "staircase":
            ax.step(fr[:, 0], fr[:, 1], where="pre", color=c, lw=2, zorder=3)
        else:
            ax.plot(fr[:, 0], fr[:, 1], color=c, lw=2, zorder=3)
        handles.append(Line2D([], [], color=c, lw=2, label=f"{style.display(lab)} front"))
        knobs = _front_knobs(fr, p, variants)
        values = sorted({k for k in knobs if k}, key=_natural)
        for kv in values or [""]:
            m = style.MARKERS[(values.index(kv) if kv in values else 0) % len(style.MARKERS)]
            sel = [i for i, k in enumerate(knobs) if k == kv]
            ax.scatter(fr[sel, 0], fr[sel, 1], marker=m, s=34, color=c, edgecolors="white", linewidths=0.6, zorder=4)
            if kv:
                handles.append(Line2D([], [], marker=m, ls="", color=c, markeredgecolor="white", ms=6,
                                      label=f"    {kv}"))
    if base:
        ax.plot([base[0]], [base[1]], "*", color="black", ms=12, zorder=5)
        handles.append(Line2D([], [], marker="*", ls="", color="black", ms=10, label="base model (iteration 0)"))
    n_seeds = sorted({len(r["seeds"]) for r in res["labels"].values()})
    seeds = "/".join(map(str, n_seeds))
    handles.append(Patch(facecolor="0.6", alpha=0.3, edgecolor="0.3", ls="--",
                         label=f"shaded: {ci:.0%} bootstrap band of the front\n(runs resampled within each config, "
                               f"{seeds} seed{'s' if n_seeds != [1] else ''}{f', {n_boot} resamples' if n_boot else ''})"))
    handles.append(Line2D([], [], marker="o", ls="", color="0.5", alpha=0.35, ms=4,
                          label="dots: every evaluation of every run"))
    if any(h.get_label().startswith("    ") for h in handles):
        handles.append(Line2D([], [], ls="", label="markers: the knob value of the run\nthat gave each front point"))
    style.axis_label(ax, keys[0], "x")
    style.axis_label(ax, keys[1], "y")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    style.metric_keys(fig)
    return fig


def _natural(s: str):
    """Sort 'λ=0.5' < 'λ=2.0' numerically where the value is a number."""
    v = s.partition("=")[2]
    try:
        return (0, float(v), s)
    except ValueError:
        return (1, 0.0, s)


def _front_knobs(fr: np.ndarray, p: pd.DataFrame, variants: dict | None) -> list[str]:
    """The knob text of the run behind each front point ('' where unknown or nothing is swept)."""
    out = []
    for a, d in fr:
        rows = p[(p["alignment"] == a) & (p["diversity"] == d)]
        run = rows["run"].iloc[0] if len(rows) else None
        out.append(knob_text(variants.get(run, "")) if variants and run is not None else "")
    return out


def _mean_se(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and mean ± one standard error over seeds (NaN band with a single seed)."""
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return np.nan, np.nan, np.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, np.nan, np.nan
    se = float(x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - se, m + se


def curves_figure(points: pd.DataFrame, variants: dict[str, str], path: str, keys: tuple[str, str]) -> str:
    """Writes ``curves_axes`` to ``path``."""
    fig = curves_axes(points, variants, keys)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def curves_axes(points: pd.DataFrame, variants: dict[str, str], keys: tuple[str, str]):
    """Alignment (top row) and diversity (bottom row) vs iteration, one column per method: each knob value
    a shade of the method's colour, the mean over seeds with a band of ± one standard error; rows share
    their y-axis so methods compare across panels."""
    p = points.assign(variant=points["run"].map(variants))
    p = p[p["variant"].notna()]
    p = p.assign(method=p["variant"].str.partition(" (")[0])
    methods = style.order(p["method"].unique())
    fig, axes = plt.subplots(2, len(methods), figsize=(3.3 * len(methods) + 0.6, 6.2), sharex=True, sharey="row",
                             squeeze=False)
    n_seeds = set()
    for j, method in enumerate(methods):
        g_m = p[p["method"] == method]
        labs = sorted(g_m["variant"].unique(), key=lambda v: _natural(knob_text(v)))
        for row, (colname, key) in enumerate(zip(("alignment", "diversity"), keys)):
            ax = axes[row, j]
            for i, lab in enumerate(labs):
                g = g_m[g_m["variant"] == lab]
                steps = sorted(g["step"].unique())
                stats = np.array([_mean_se(g[g["step"] == s_][colname].to_numpy(float)) for s_ in steps])
                n_seeds |= {int(g[g["step"] == s_]["seed"].nunique()) for s_ in steps}
                c = style.shade(style.colour(method), i, len(labs))
                ax.plot(steps, stats[:, 0], color=c, lw=1.6, marker="o", ms=3, label=knob_text(lab) or style.display(method))
                ax.fill_between(steps, stats[:, 1], stats[:, 2], color=c, alpha=0.18, linewidth=0)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(style.display(method), color=style.colour(method), fontweight="bold")
                ax.legend(fontsize=7, loc="best", frameon=False)
            if j == 0:
                style.axis_label(ax, key, "y")
            if row == 1:
                ax.set_xlabel("iteration")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations are whole numbers
    seeds = "/".join(map(str, sorted(n_seeds))) or "?"
    fig.suptitle(f"Evaluation metrics vs iteration: line = mean over seeds (n = {seeds}), band = ± 1 standard error",
                 fontsize=10)
    fig.tight_layout()
    style.metric_keys(fig)
    return fig


def matched_levels(res: dict, n: int = 3) -> tuple[np.ndarray, str]:
    """Alignment levels for the sample grids: quartiles of the range every front covers (else of the
    union of the fronts' ranges, noted)."""
    frs = [np.asarray(r["front"]) for r in res["labels"].values() if len(r["front"])]
    lo, hi = max(f[:, 0].min() for f in frs), min(f[:, 0].max() for f in frs)
    note = "levels at the quartiles of the alignment range every front covers"
    if lo > hi:
        lo, hi = min(f[:, 0].min() for f in frs), max(f[:, 0].max() for f in frs)
        note = "the fronts share no alignment range: levels span their union, so some methods do not reach some levels"
    qs = np.linspace(0, 1, n + 2)[1:-1]
    return lo + qs * (hi - lo), note


def pick_matched(res: dict, points: pd.DataFrame, label_col: str, level: float) -> dict[str, dict | None]:
    """Per label, the front point that defines the staircase D_M(level): the first front point with
    alignment >= level (None if the front never reaches it), with its run, step and sample PNG."""
    out: dict[str, dict | None] = {}
    for lab, r in res["labels"].items():
        fr = np.asarray(r["front"])
        i = np.searchsorted(fr[:, 0], level, side="left") if len(fr) else 0
        if len(fr) == 0 or i >= len(fr):
            out[lab] = None
            continue
        a, d = fr[i]
        p = points[(points[label_col] == lab) & (points["alignment"] == a) & (points["diversity"] == d)]
        p = p.sort_values(["run", "step"])
        with_png = p[p["samples"].notna()]
        row = (with_png if len(with_png) else p).iloc[0]
        out[lab] = {"alignment": float(a), "diversity": float(d), "run": row["run"], "step": int(row["step"]),
                    "samples": row["samples"] if isinstance(row["samples"], str) else None}
    return out


def samples_figure(res: dict, points: pd.DataFrame, label_col: str, path: str) -> tuple[str | None, dict, str]:
    """Grid of figures: rows = matched alignment levels, columns = labels; each cell the eval sample grid of
    the front point that realises D_M(level). Returns (path or None if no samples exist, picks, note)."""
    levels, note = matched_levels(res)
    labels = list(res["labels"])
    picks = {float(lv): pick_matched(res, points, label_col, lv) for lv in levels}
    if not any(pk and pk["samples"] for row in picks.values() for pk in row.values()):
        return None, picks, "no sample PNGs are available for the matched points"
    from PIL import Image

    fig, axes = plt.subplots(len(levels), len(labels), figsize=(2.6 * len(labels), 2.9 * len(levels)), squeeze=False)
    for i, (lv, row) in enumerate(picks.items()):
        for j, lab in enumerate(labels):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            pk = row[lab]
            if pk is None:
                ax.text(0.5, 0.5, "level not reached", ha="center", va="center", fontsize=8)
            elif pk["samples"] is None:
                ax.text(0.5, 0.5, "no samples", ha="center", va="center", fontsize=8)
            else:
                ax.imshow(np.asarray(Image.open(pk["samples"]).convert("RGB")))
            if pk:
                ax.set_title(f"{name(lab)} (iteration {pk['step']})\na={pk['alignment']:.3f} d={pk['diversity']:.3f}",
                             fontsize=7)
            else:
                ax.set_title(name(lab), fontsize=7)
            if j == 0:
                ax.set_ylabel(f"alignment ≥ {lv:.3f}", fontsize=8)
    fig.suptitle("Eval samples at matched alignment (the front point realising D_M(a))", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path, picks, note


def _tables_only(md: str) -> str:
    """A gains/ablation document from its first table on (the settings are already at the report's top)."""
    i = md.find("### ")
    return md[i:].strip() if i >= 0 else md.strip()


def report_md(meta: dict, gains_md: str, ablation_md: str | None, files: dict[str, str | None],
              warnings: list[str], excluded: list[str], sample_note: str, exclusions: list[dict] | None = None,
              rules: dict[str, str] | None = None) -> str:
    out = ["# Frontier analysis", "", settings_text(meta), "Definitions and formulas: docs/analysis.md.", ""]
    out += ["## Controls and gains", "", _tables_only(gains_md), ""]
    out += ["## Fronts", "", "![pareto](pareto.png)", "",
            "All evaluation points faint; each method's front bold with its bootstrap 95% band; the star is the "
            "base model. Vector version: pareto.pdf.", ""]
    out += ["## Training curves", "", "![curves](curves.png)", ""]
    if files.get("samples"):
        out += ["## Samples at matched alignment", "", f"![samples]({os.path.basename(files['samples'])})", "",
                sample_note + ".", ""]
    else:
        out += ["## Samples at matched alignment", "", f"Not drawn: {sample_note}.", ""]
    if ablation_md:
        out += ["## Ablation", ""]
        if files.get("ablation_pareto"):
            out += ["![ablation fronts](ablation_pareto.png)", ""]
        out += [_tables_only(ablation_md), ""]
    out += ["## Excluded runs and warnings", ""]
    kinds = sorted({e["kind"] for e in exclusions or []})
    if kinds and rules:
        out += ["Rules applied (a gain marked † was computed from a front that lost points to them):", ""]
        out += [f"* **{k}**: {rules[k]}" for k in kinds] + [""]
    out += [f"* [{e['kind']}] {e['detail']}" for e in exclusions or []]
    out += [f"* {w}" for w in ([] if exclusions is not None else excluded) + [w for w in warnings if w not in excluded]]
    if out[-1] == "":
        out.append("None.")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# Judging: controls and per-seed paired gains (analysis/judge.py)
# ------------------------------------------------------------------------------------------------
def t_cell(t: dict | None, pct: bool = True) -> str:
    """'+4.1% [+1.0, +7.2] (n=8)' from a ``paired.t_interval`` dict; '—' when undefined."""
    if not t or t.get("mean") is None:
        return DASH
    f = fmt_pct if pct else fmt_num
    s = f(t["mean"])
    if t.get("ci"):
        s += f" [{f(t['ci'][0]).rstrip('%')}, {f(t['ci'][1]).rstrip('%')}]"
    return s + f" (n={t['n']})"


def ci_cell(ci: list | None, pct: bool = True) -> str:
    f = fmt_pct if pct else fmt_num
    return DASH if not ci else f"[{f(ci[0]).rstrip('%')}, {f(ci[1]).rstrip('%')}]"


STATUS = {"pass": "behaves", "fail": "**FAILS**", "not run": "not run", "undefined": "undefined"}


def controls_md(j: dict) -> str:
    """The controls section: the verdict in words, then one row per control, then the resolvable gain."""
    from .judge import verdict

    c = j["controls"]
    key = j["primary_measure"]
    out = ["### Controls (read these first)", ""] + verdict(c) + [""]
    rows = []
    neg = c["negative"]
    if neg["status"] == "not run":
        rows.append(["(a) negative, A/A", DASH, "not run", DASH, neg["why"]])
    else:
        aa = neg["all_arms"][neg["arm"]]
        halves = ", ".join(f"{x} vs {y}" for x, y in aa["pairs"])
        rows.append([f"(a) negative, A/A: {name(neg['arm'])} seeds split in halves ({halves})", "includes 0",
                     STATUS[neg["status"]], t_cell(aa["diversity_gain_at_equal_alignment"]["t"]),
                     "div. gain at equal alignment of the first half's per-seed fronts over the second's"])
    pos = c["positive"]
    rows.append([f"(b) positive: {name(pos['method'])} vs {name(pos['baseline'])}", "excludes 0, > 0",
                 STATUS[pos["status"]],
                 t_cell(pos["diversity_gain_at_equal_alignment"]["t"]) if pos["status"] != "not run" else DASH,
                 pos.get("why", "per-seed paired diversity gain at equal alignment")])
    pw = c["power"]
    rows.append(["(c) power: final diversity, strongest KL − Flow-GRPO", "excludes 0, > 0", STATUS[pw["status"]],
                 t_cell(pw["t"], pct=False) + (f"; {fmt_pct(pw['relative_to_flow_grpo']['mean'])} of Flow-GRPO"
                                                if pw.get("relative_to_flow_grpo") else "")
                 if pw["status"] != "not run" else DASH,
                 pw.get("why", f"{pw['kl']}; paired by seed at the final iteration")])
    t = Table(f"Controls, diversity = `{key}`, {int(100 * j['ci'])}% t-intervals over seeds",
              ["Control", "Must", "Result", "Statistic: mean [CI] (n)", "What"], rows)
    out.append(t.md())
    r = c.get("resolvable")
    if r and r.get("gain") is not None:
        out.append(f"(d) Smallest resolvable gain: {fmt_share(r['gain'])} (the half-width t·sd_AA/√n of a per-seed paired "
                   f"interval with n = {r['n_seeds']} seeds, sd_AA = {100 * r['sd_aa']:.2f}% the per-pair SD of the "
                   f"{name(r['arm'])} A/A gain); found with 80% power: {fmt_share(r['gain_80_power'])}. A gain smaller "
                   f"than this is not resolved at this budget. (The A/A interval itself, over "
                   f"{r['n_seeds'] // 2} pairs, has half-width {fmt_share(r['aa_half_width'])}.)\n")
    else:
        out.append("(d) Smallest resolvable gain: unknown (the A/A control did not run or its interval is undefined).\n")
    if neg["status"] != "not run" and len(neg["all_arms"]) > 1:
        others = [f"{name(lab)} {t_cell(v['diversity_gain_at_equal_alignment']['t'])}"
                  for lab, v in neg["all_arms"].items() if lab != neg["arm"]]
        out.append("A/A of the other arms (information only): " + "; ".join(others) + ".\n")
    return "\n".join(out)


def paired_tables(j: dict) -> list[Table]:
    """One table of per-seed paired gains per diversity measure (the primary first)."""
    tables = []
    boot = j["bootstrap"]
    for k in j["measures"]:
        primary = k == j["primary_measure"]
        rows = []
        for e in j["pairs"]:
            pg = e["measures"][k]
            pts = sorted(set(pg["points"]))
            prow = DASH if not pts else (str(pts[0]) if len(pts) == 1 else f"{pts[0]}–{pts[-1]}")
            row = [name(e["method"]), name(e["baseline"]), str(len(pg["seeds"])), prow]
            for gname in ("diversity_gain_at_equal_alignment", "alignment_gain_at_equal_diversity"):
                row.append(t_cell(pg[gname]["t"]))
                if primary:
                    row.append(ci_cell(pg[gname].get("bootstrap_ci")))
            rows.append(row)
        hdr = ["Method", "Baseline", "Seeds", "Points per seed front",
               "Div. gain @ eq. alignment: mean [t-CI] (n)"] + (["bootstrap CI"] if primary else []) + \
              ["Align. gain @ eq. diversity: mean [t-CI] (n)"] + (["bootstrap CI"] if primary else [])
        notes = []
        if primary:
            notes.append(f"Primary measure. Bootstrap CI: {boot['detail']}; {j['n_boot']} resamples, percentile interval.")
            for e in j["pairs"]:
                for gname in ("diversity_gain_at_equal_alignment", "alignment_gain_at_equal_diversity"):
                    und = e["measures"][k][gname]["undefined_seeds"]
                    if und:
                        notes.append(f"{name(e['method'])} vs {name(e['baseline'])}: {gname.replace('_', ' ')} undefined "
                                     f"(no overlap) for seed(s) {und}; left out of the mean")
        else:
            und = sum(len(e["measures"][k][g]["undefined_seeds"]) for e in j["pairs"]
                      for g in ("diversity_gain_at_equal_alignment", "alignment_gain_at_equal_diversity"))
            if und:
                notes.append(f"{und} (pair, gain, seed) cases undefined on this measure (the seed's fronts do not "
                             f"overlap); left out of the means; {DASH} = undefined for every seed")
        title = f"Per-seed paired gains, diversity = `{k}`" + (" (primary)" if primary else "")
        tables.append(Table(title, hdr, rows, notes))
    return tables


def subset_md(j: dict) -> str:
    """The prompt-subset sensitivity section (``judge.prompt_subset``): what the subset is, the final alignment on
    it and on the rest per arm, and the primary measure's per-seed paired gains with and without it."""
    sub = j.get("subset")
    if not sub:
        return ""
    head = f"### Sensitivity: without the prompts matching `{sub['pattern']}`"
    if sub["status"] == "unavailable":
        return f"{head}\n\nNot computed: {sub['why']}.\n"
    if sub["status"] != "done":
        what = "none" if sub["status"] == "no match" else "all"
        return f"{head}\n\n{what.capitalize()} of the {sub['n_prompts']} evaluation prompts match: no subset to leave out.\n"
    out = [head, "", f"{sub['n_subset']} of the {sub['n_prompts']} evaluation prompts match "
           f"({'; '.join(sub['subset'][:6])}{'; …' if sub['n_subset'] > 6 else ''}). Every point below is the mean over "
           "the prompts outside the subset only; the all-prompt figures are the ones above.", ""]
    base = sub.get("base")
    rows = []
    for arm in sorted(sub["arms"]):
        v = sub["arms"][arm]
        rows.append([name(arm), str(len(v.get("rest", {}).get("per_seed", {}))),
                     fmt_num(base["subset"]) if base else DASH, t_cell(v.get("subset", {}).get("t"), pct=False),
                     fmt_num(base["rest"]) if base else DASH, t_cell(v.get("rest", {}).get("t"), pct=False)])
    out.append(Table(f"Final alignment (`{j.get('alignment_key', 'eval/alignment')}`) on the subset and on the rest",
                     ["Arm", "Seeds", "Base, subset", "Final, subset: mean [t-CI] (n)", "Base, rest",
                      "Final, rest: mean [t-CI] (n)"], rows).md())
    key = j["primary_measure"]
    full = {(e["method"], e["baseline"]): e["measures"][key] for e in j["pairs"]}
    rows = []
    for e in sub["pairs"]:
        w, a = e["without_subset"], full.get((e["method"], e["baseline"]), {})
        row = [name(e["method"]), name(e["baseline"])]
        for g in ("diversity_gain_at_equal_alignment", "alignment_gain_at_equal_diversity"):
            row += [t_cell(a.get(g, {}).get("t")), t_cell(w[g]["t"])]
        rows.append(row)
    out.append(Table(f"Per-seed paired gains with and without the subset, diversity = `{key}`",
                     ["Method", "Baseline", "Div. gain, all prompts", "Div. gain, without subset",
                      "Align. gain, all prompts", "Align. gain, without subset"], rows).md())
    return "\n".join(out)


def judge_md(j: dict) -> str:
    """Controls first, then the per-seed paired gains on every measure, then the prompt-subset sensitivity."""
    out = [controls_md(j), "Per-seed paired gain: for each seed both arms ran, each arm's front from that seed's runs "
           "(every knob value and evaluation step), both cut to the same number of points (evenly spaced alignment "
           "ranks); the mean gain over the fronts' overlap; mean and t-interval over seeds (docs/analysis.md §11).", ""]
    out += [t.md() for t in paired_tables(j)]
    sub = subset_md(j)
    if sub:
        out.append(sub)
    return "\n".join(out)
