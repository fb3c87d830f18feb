"""Alignment-diversity fronts, gains at equivalent alignment / diversity, dominance, hypervolume,
bootstrap CIs, the ablation table, figures and a report; everything also logged to one MLflow run.

    python analysis/frontier.py                              # the last sweep under runs/ (or every run there)
    python analysis/frontier.py --experiment pareto          # runs/pareto/...
    python analysis/frontier.py --csv points.csv --no-mlflow # method,seed,step,alignment,diversity[,run,config,...]
    python analysis/frontier.py --source mlflow --mlflow-uri sqlite:///runs/mlflow.db --experiment pareto
    python analysis/frontier.py --interp linear --baseline flow_grpo --bootstrap 2000

    python analysis/frontier.py --grid pareto --seeds 0-7     # only these seeds (any that ran)

gains.md and report.md open with the controls (A/A, positive control, power check, smallest resolvable gain)
and the per-seed paired gains on every diversity measure (the primary statistic; analysis/judge.py), then the
pooled fronts' tables. The diversity axis is eval/diversity/heldout where every run logged it, else
eval/diversity (--diversity-key auto). Fronts are per grid arm (sweep.json's 'arm'), else per method.

Writes to --out (default <runs>/<experiment>/analysis/): pareto.png/.pdf, curves.png, samples_matched.png,
gains.json/.md/.tex, ablation.md/.tex (+ ablation_pareto.png/.pdf) when DRIFT ablation variants are
present, report.md. Definitions: docs/analysis.md. Runs that crashed, lack their final evaluation or
duplicate another run are excluded with a warning naming them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # run as a script: analysis/ itself must not shadow top-level modules (io, ...)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import io as aio  # noqa: E402
from analysis import judge  # noqa: E402
from analysis import report as rep  # noqa: E402
from analysis.stats import Settings, analyse  # noqa: E402
from drift.rundir import RunDir  # noqa: E402

DEFAULT_BASELINES = ["flow_grpo_kl", "flow_grpo"]


def add_input_args(ap: argparse.ArgumentParser) -> None:
    """The input options (where the runs are, which metrics, which seeds), shared with analysis/calibrate.py."""
    g = ap.add_argument_group("input")
    g.add_argument("--source", choices=("runs", "mlflow", "csv"), default=None,
                   help="where points come from (default: csv if --csv is given, else run directories)")
    runs = os.path.join(ROOT if os.path.exists(os.path.join(ROOT, "pyproject.toml")) else os.getcwd(), "runs")
    g.add_argument("--runs-dir", default=runs, help="runs root (default: %(default)s; from an installed package ./runs)")
    g.add_argument("--experiment", "--grid", dest="experiment", default=None,
                   help="experiment (= sweep grid name) folder under --runs-dir / MLflow experiment (default: the most recently "
                        "modified <runs>/*/sweep.json's, else every run under --runs-dir)")
    g.add_argument("--run-dir", action="append", default=[],
                   help="a run directory, or a folder to scan for run directories (repeatable; overrides the default input)")
    g.add_argument("--csv", default=None,
                   help="CSV with columns method, seed, step, alignment, diversity (+ optional run, config, ...)")
    g.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI to read (--source mlflow) and to log the analysis run to "
                        "(default: $MLFLOW_TRACKING_URI, else sqlite:///<runs-dir>/mlflow.db, or next to the --csv file)")
    g.add_argument("--alignment-key", default="eval/alignment", help="metric on the alignment axis (default: %(default)s)")
    g.add_argument("--diversity-key", default="auto",
                   help="metric on the diversity axis (default: auto = eval/diversity/heldout, the held-out feature "
                        "network no method trains on, where every run logged it; else eval/diversity, with a note)")
    g.add_argument("--seeds", default=None,
                   help="analyse only these seeds, e.g. 0,1,2,3 or 0-7 (default: every seed that ran)")


def check_input_args(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Validate and normalise the input options (``add_input_args``) in place; ``ap.error`` on a bad value."""
    if a.seeds is not None:
        try:
            a.seeds = parse_seeds(a.seeds)
        except ValueError as e:
            ap.error(f"--seeds={a.seeds!r}: {e}")
    a.source = a.source or ("csv" if a.csv else "runs")
    if a.source == "csv" and not a.csv:
        ap.error("--source csv needs --csv PATH")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(ap)
    g = ap.add_argument_group("definitions")
    g.add_argument("--baseline", nargs="+", default=DEFAULT_BASELINES,
                   help="baseline method(s) the gains are computed against (default: %(default)s)")
    g.add_argument("--interp", choices=("staircase", "linear"), default="staircase",
                   help="front functions between front points (default: %(default)s, conservative)")
    g.add_argument("--levels", type=int, default=21, help="levels on each pair's overlap (default: %(default)s)")
    g.add_argument("--steps", choices=("all", "final"), default="all",
                   help="evaluation steps pooled into the fronts: all (after step 0) or only each run's final "
                        "(default: %(default)s)")
    g.add_argument("--include-base", action="store_true", help="also pool the step-0 (base model) points into every front")
    g.add_argument("--subset-prompts", default=judge.SUBSET_DEFAULT, metavar="REGEX",
                   help="the prompts of the sensitivity section: every result also without the evaluation prompts "
                        "matching this case-insensitive regular expression (default: %(default)s, the shapes world's "
                        "square prompts, which its base model cannot draw; '' for no such section)")
    g.add_argument("--hv-ref", default="worst",
                   help="hypervolume reference point: 'worst' (lowest alignment and lowest diversity of any loaded "
                        "point, step 0 included) or 'A,D' (default: %(default)s)")
    g = ap.add_argument_group("uncertainty")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (default: %(default)s)")
    g.add_argument("--ci", type=float, default=0.95, help="CI level (default: %(default)s)")
    g = ap.add_argument_group("output")
    g.add_argument("--out", default=None, help="output folder (default: <runs-dir>/<experiment>/analysis)")
    g.add_argument("--no-mlflow", action="store_true", help="do not log the analysis run to MLflow")
    g.add_argument("--mlflow-experiment", default=None,
                   help="MLflow experiment of the analysis run (default: the analysed experiment, else 'analysis')")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--strict", action="store_true", help="any excluded run (crashed, running, torn, diverged, "
                   "duplicated, never started) or dropped non-finite point is an error (exit 2) instead of a "
                   "warning and a flagged gain")
    a = ap.parse_args(argv)
    if a.subset_prompts:
        try:
            re.compile(a.subset_prompts)
        except re.error as e:
            ap.error(f"--subset-prompts={a.subset_prompts!r}: not a regular expression ({e})")
    if a.levels < 1:
        ap.error(f"--levels={a.levels}: must be >= 1")
    if a.bootstrap < 0:
        ap.error(f"--bootstrap={a.bootstrap}: must be >= 0")
    if not 0 < a.ci < 1:
        ap.error(f"--ci={a.ci}: must be in (0, 1)")
    check_input_args(ap, a)
    return a


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' / '0-7' / '0-3,10' -> sorted distinct seeds; ValueError naming the bad item."""
    out: set[int] = set()
    for item in (x.strip() for x in str(text).split(",")):
        m = re.fullmatch(r"(-?[0-9]+)(?:-([0-9]+))?", item)
        if not m:
            raise ValueError(f"{item!r} is not a seed or a range lo-hi of seeds")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise ValueError(f"range {item!r} is empty")
        out.update(range(lo, hi + 1))
    return sorted(out)


def select_seeds(ds: aio.Dataset, seeds: list[int]) -> None:
    """Keep only the runs of ``seeds`` (in place); an error naming the seeds that exist when none is left, a
    warning for each requested seed that did not run. Exclusions of runs of other seeds are dropped too."""
    have = sorted({int(x) for x in ds.runs["seed"]})
    keep = [x for x in seeds if x in have]
    if not keep:
        raise aio.AnalysisInputError(f"--seeds {seeds}: none of them ran in {ds.source}; seeds there: {have}")
    missing = [x for x in seeds if x not in have]
    if missing:
        ds.warn(f"--seeds: seed(s) {missing} have no kept run; analysing seeds {keep}")
    ds.points = ds.points[ds.points["seed"].isin(keep)].reset_index(drop=True)
    ds.runs = ds.runs[ds.runs["seed"].isin(keep)].reset_index(drop=True)

    def ours(run: str) -> bool:
        m = re.search(r"seed(-?[0-9]+)$", str(run))
        return m is None or int(m.group(1)) in keep
    ds.exclusions = [e for e in ds.exclusions if ours(e["run"])]
    ds.dropped_points = [d for d in ds.dropped_points if ours(d["run"])]


def resolve_diversity(ds: aio.Dataset, a: argparse.Namespace) -> None:
    """--diversity-key auto: make eval/diversity/heldout the diversity axis when every point has it (the loaded
    eval/diversity moves to its own column), else keep eval/diversity and say so."""
    if a.diversity_key != "auto":
        return
    a.diversity_key = judge.FALLBACK_DIVERSITY
    key = judge.PRIMARY_DIVERSITY
    vals = pd.to_numeric(ds.points[key], errors="coerce") if key in ds.points.columns else None
    if vals is None or not np.isfinite(vals).all():
        lacking = sorted(set(ds.points["run"]) if vals is None else set(ds.points.loc[~np.isfinite(vals), "run"]))
        ds.warn(f"primary diversity {key!r} missing in {len(lacking)} run(s) (e.g. {lacking[:3]}): the diversity axis "
                f"falls back to {judge.FALLBACK_DIVERSITY!r}, the feature network the shaping methods' bonuses use")
        return
    ds.points = ds.points.assign(**{judge.FALLBACK_DIVERSITY: ds.points["diversity"]}).drop(columns=[key])
    ds.points["diversity"] = vals.to_numpy(float)
    a.diversity_key = key


# ------------------------------------------------------------------------------------------------
def load(a: argparse.Namespace) -> tuple[aio.Dataset, str | None, str]:
    """(dataset, experiment name or None, default output folder); --seeds and --diversity-key auto applied."""
    ds, exp, out = _load(a)
    if getattr(a, "seeds", None):
        select_seeds(ds, a.seeds)
    resolve_diversity(ds, a)
    return ds, exp, out


def _load(a: argparse.Namespace) -> tuple[aio.Dataset, str | None, str]:
    ak, dk = a.alignment_key, (judge.FALLBACK_DIVERSITY if a.diversity_key == "auto" else a.diversity_key)
    if a.source == "csv":
        ds = aio.load_csv(a.csv, ak, dk)
        return ds, a.experiment, os.path.join(os.path.dirname(os.path.abspath(a.csv)), "analysis")
    if a.source == "mlflow":
        if not a.experiment:
            raise aio.AnalysisInputError("--source mlflow needs --experiment NAME")
        ds = aio.load_mlflow(mlflow_uri(a), a.experiment, ak, dk)
        return ds, a.experiment, os.path.join(a.runs_dir, a.experiment, "analysis")
    warns: list[str] = []
    if a.run_dir:
        dirs = sorted({d for p in a.run_dir for d in (aio.find_run_dirs(p) or [p])})
        folder, exp = os.path.commonpath([os.path.abspath(p) for p in a.run_dir]), a.experiment
        names_root = os.path.dirname(folder)
    else:
        dirs, folder, exp, warns = aio.default_input(a.runs_dir, a.experiment)
        names_root = os.path.abspath(a.runs_dir)
    if not dirs:
        raise aio.AnalysisInputError(f"no run directories (folders with config.json) under {folder}")
    ds = aio.load_run_dirs(dirs, ak, dk, root=names_root, source=f"run directories under {folder}")
    ds.warnings = warns + ds.warnings
    ds.exclusions = getattr(warns, "exclusions", []) + ds.exclusions
    return ds, exp, os.path.join(folder, "analysis")


def mlflow_home(a: argparse.Namespace) -> str:
    """Folder of the default SQLite DB and artifacts: the runs root (as the engine), or the CSV's folder."""
    return os.path.dirname(os.path.abspath(a.csv)) if a.source == "csv" else os.path.abspath(a.runs_dir)


def mlflow_uri(a: argparse.Namespace) -> str:
    return a.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + os.path.join(mlflow_home(a), "mlflow.db")


def hv_reference(rule: str, points: pd.DataFrame) -> tuple[tuple[float, float], str]:
    if rule == "worst":
        return ((float(points["alignment"].min()), float(points["diversity"].min())),
                "the lowest alignment and the lowest diversity of any loaded point (step 0 included)")
    try:
        ra, rd = (float(x) for x in rule.split(","))
    except ValueError:
        raise aio.AnalysisInputError(f"--hv-ref={rule!r}: must be 'worst' or 'A,D' (two numbers)") from None
    return (ra, rd), "given with --hv-ref"


def front_points(ds: aio.Dataset, a: argparse.Namespace) -> pd.DataFrame:
    p = ds.points
    if a.steps == "final":
        return p[p["final"]]
    return p if a.include_base else p[p["step"] > 0]


def ablation_setup(ds: aio.Dataset) -> tuple[dict[str, str], dict[str, tuple]]:
    """run -> ablation label for drift runs (empty when all drift runs share one component setting), and
    label -> (sampling, prompting, shaping) on/off."""
    labs = aio.ablation_labels(ds.runs)
    if len(set(labs.values())) < 2:
        return {}, {}
    comps = {}
    opts = dict(zip(ds.runs["run"], ds.runs["ablation"]))
    for run, lab in labs.items():
        comps[lab] = tuple(str(opts[run].get(f, "none")) != "none" for f, _ in aio.COMPONENTS)
    return labs, comps


def mlflow_key(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ :]", "_", s)


def headline_metrics(res: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for lab, r in res["labels"].items():
        if r["hypervolume"]["value"] is not None:
            out[mlflow_key(f"{prefix}hypervolume/{lab}")] = r["hypervolume"]["value"]
    for p in res["pairs"]:
        for key in ("diversity_gain_at_equal_alignment", "alignment_gain_at_equal_diversity",
                    "alignment_gain_at_equal_diversity_vs_base"):
            g = p.get(key, {})
            for stat in ("min", "max", "mean"):
                v = g.get(stat, {}).get("value") if isinstance(g.get(stat), dict) else None
                if v is not None:
                    out[mlflow_key(f"{prefix}{key}/{p['method']}_vs_{p['baseline']}/{stat}")] = v
        v = p["dominance"]["method_over_baseline"]["value"]
        if v is not None:
            out[mlflow_key(f"{prefix}dominance/{p['method']}_over_{p['baseline']}")] = v
    return out


def judge_metrics(j: dict) -> dict[str, float]:
    """The per-seed paired gains (primary measure) and the controls' statistics as MLflow metrics."""
    out = {}
    for e in j["pairs"]:
        pg = e["measures"][j["primary_measure"]]
        for key in ("diversity_gain_at_equal_alignment", "alignment_gain_at_equal_diversity"):
            v = pg[key]["t"]["mean"]
            if v is not None:
                out[mlflow_key(f"per_seed/{key}/{e['method']}_vs_{e['baseline']}/mean")] = v
    c = j["controls"]
    for name, stat in (("negative_aa", c["negative"]["all_arms"].get(c["negative"]["arm"] or "", {})
                        .get("diversity_gain_at_equal_alignment", {}).get("t")),
                       ("positive", c["positive"].get("diversity_gain_at_equal_alignment", {}).get("t")),
                       ("power", c["power"].get("t"))):
        if stat and stat.get("mean") is not None:
            out[f"controls/{name}/mean"] = stat["mean"]
    if (c.get("resolvable") or {}).get("gain") is not None:
        out["controls/resolvable_gain"] = c["resolvable"]["gain"]
    return out


def log_to_mlflow(uri: str, experiment: str, artifact_root: str, out: str, params: dict, metrics: dict,
                  tags: dict) -> str:
    """One MLflow run named 'analysis' (tag kind=analysis) with params, headline metrics and every output file."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from drift.tracking import init_mlflow_experiment

    client = MlflowClient(tracking_uri=uri)
    exp_id = init_mlflow_experiment(uri, experiment, artifact_root)
    run = client.create_run(exp_id, run_name="analysis", tags={"kind": "analysis", **tags})
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())],
                     metrics=[Metric(k, float(v), 0, 0) for k, v in sorted(metrics.items())])
    for fname in sorted(os.listdir(out)):  # the output files only (never a folder such as an artifact store)
        if os.path.isfile(os.path.join(out, fname)):
            client.log_artifact(rid, os.path.join(out, fname))
    client.set_terminated(rid, "FINISHED")
    return rid


def input_runs(ds: aio.Dataset) -> list[dict]:
    """The runs the analysis read (kept ones): label, method, seed, run directory and MLflow run id
    (from the MLflow source, or the run directory's mlflow_run.json), for inputs.json and the MLflow tags."""
    out = []
    for r in ds.runs.to_dict("records"):
        rid = r.get("mlflow_run_id") if isinstance(r.get("mlflow_run_id"), str) else None
        rd = r.get("run_dir") if isinstance(r.get("run_dir"), str) else None
        if rid is None and rd and os.path.exists(RunDir(rd).mlflow_state):
            with open(RunDir(rd).mlflow_state) as f:
                rid = json.load(f).get("run_id")
        out.append({"run": r["run"], "method": r["method"], "seed": int(r["seed"]), "run_dir": rd, "mlflow_run_id": rid})
    return out


# ------------------------------------------------------------------------------------------------
def run(a: argparse.Namespace) -> dict:
    ds, exp, default_out = load(a)
    if getattr(a, "strict", False) and (ds.exclusions or ds.dropped_points):
        lines = [f"{e['kind']}: {e['detail']}" for e in ds.exclusions] + \
            [f"non-finite point: run {d['run']} step {d['step']}" for d in ds.dropped_points]
        raise aio.AnalysisInputError(f"--strict: {len(lines)} imperfect run(s) or configuration(s) in {ds.source}:\n  "
                                     + "\n  ".join(lines))
    out = os.path.abspath(a.out or default_out)
    os.makedirs(out, exist_ok=True)
    base = aio.base_point(ds)
    ref, ref_rule = hv_reference(a.hv_ref, ds.points)
    pts = front_points(ds, a)
    if pts.empty:
        raise aio.AnalysisInputError(f"no points left for the fronts with --steps {a.steps}"
                                     + ("" if a.include_base else " (step 0 excluded)"))
    abl_labels, comps = ablation_setup(ds)
    notes: list[str] = []

    # main analysis: label = method; with ablation variants present, 'drift' = the full-DRIFT runs only
    main = pts.assign(label=pts["arm"])
    if abl_labels:
        ablated = [r for r, lab in abl_labels.items() if not lab.startswith("DRIFT (full)")]
        main = main[~main["run"].isin(ablated)]
        notes.append(f"the DRIFT front uses only full-DRIFT runs; {len(ablated)} ablated drift runs are in the ablation table")
    labels = sorted(main["label"].unique())
    baselines = [b for b in a.baseline if b in labels]
    missing = [b for b in a.baseline if b not in labels]
    if missing:
        ds.warn(f"baseline(s) {missing} not in the analysed set (methods: {labels}): no gains against them")
    pairs = [(m, b) for b in baselines for m in labels if m != b]
    st = Settings(a.interp, a.levels, a.bootstrap, a.seed, a.ci, ref, base[0] if base else None)
    for lab in labels:
        runs_l = main[main["label"] == lab].groupby("config")["run"].nunique()
        if (runs_l == 1).all():
            ds.warn(f"{lab} has one seed per configuration: its statistics get no bootstrap CI")
    res = analyse(main, "label", pairs, st, progress=not a.no_progress, desc="bootstrap (methods)")
    flag_lost_points(res, ds)
    add_images_per_iteration(res, main, ds)
    finals = ds.points[ds.points["final"]]
    if abl_labels:
        finals = finals[~finals["run"].isin(ablated)]
    js = judge.JudgeSettings(a.interp, a.levels, a.bootstrap, a.seed, a.ci, a.alignment_key, a.diversity_key)
    initial = ds.points[(ds.points["step"] == 0) & ds.points["run"].isin(set(main["run"]))]
    jres = judge.judge(main, finals, ds.runs, pairs, js, progress=not a.no_progress,
                       subset_pattern=a.subset_prompts or None, initial=initial)

    abl = None
    if abl_labels:
        ap = pts[pts["run"].isin(abl_labels) | (pts["arm"] == "flow_grpo")]
        ap = ap.assign(label=ap["run"].map(abl_labels).fillna(ap["arm"]))
        ref_lab = "flow_grpo" if (ap["label"] == "flow_grpo").any() else None
        apairs = [(lab, ref_lab) for lab in sorted(ap["label"].unique()) if ref_lab and lab != ref_lab]
        abl = analyse(ap, "label", apairs, Settings(**{**st.__dict__, "seed": a.seed + 1}),
                      progress=not a.no_progress, desc="bootstrap (ablation)")

    excluded = [e["detail"] for e in ds.exclusions]
    meta = {"source": ds.source, "experiment": exp, "n_runs": int(ds.runs.shape[0]), "n_excluded": len(excluded),
            "base": list(base) if base else None, "notes": notes,
            "settings": {"alignment_key": a.alignment_key, "diversity_key": a.diversity_key, "interp": a.interp,
                         "n_levels": a.levels, "n_boot": a.bootstrap, "seed": a.seed, "ci": a.ci, "ref": list(ref),
                         "ref_rule": ref_rule, "baselines": baselines,
                         "steps": ("each run's final evaluation" if a.steps == "final" else
                                   "every evaluation step" + (" including step 0" if a.include_base else " after step 0"))}}
    keys = (a.alignment_key, a.diversity_key)
    files: dict[str, str | None] = {}
    gmd, gtex = rep.gains_docs(res, meta, jres)
    if not pairs:
        gmd += f"\nNo gains: none of the baselines {a.baseline} is in the analysed set.\n"
    if notes:
        gmd += "\n" + "\n".join(f"* Note: {n}" for n in notes) + "\n"
    _write(out, "gains.md", gmd)
    _write(out, "gains.tex", gtex)
    variants = aio.variant_labels(ds.runs)
    plotted = aio.variant_labels(ds.runs[ds.runs["run"].isin(set(main["run"]))])  # knobs among the fronts' runs
    files["pareto"] = rep.pareto_figure(res, main, "label", base, a.interp, os.path.join(out, "pareto"), keys,
                                        variants=plotted, ci=a.ci, n_boot=a.bootstrap)[0]
    files["curves"] = rep.curves_figure(ds.points, variants, os.path.join(out, "curves.png"), keys)
    files["samples"], picks, sample_note = rep.samples_figure(res, main, "label", os.path.join(out, "samples_matched.png"))
    amd = None
    if abl is not None:
        order = aio.ABLATION_ORDER
        t = rep.ablation_table(abl, order, "flow_grpo" if "flow_grpo" in abl["labels"] else None, comps)
        amd = "# Ablation\n\n" + rep.settings_text(meta) + "\n" + t.md()
        _write(out, "ablation.md", amd)
        _write(out, "ablation.tex", "% Generated by analysis/frontier.py; needs \\usepackage{booktabs,amssymb}\n" + t.tex())
        files["ablation_pareto"] = rep.pareto_figure(abl, ap, "label", base, a.interp, os.path.join(out, "ablation_pareto"),
                                                     keys, "Ablation fronts", ci=a.ci, n_boot=a.bootstrap)[0]
    doc = {"meta": meta, "judge": jres, "methods": res, "ablation": abl, "excluded_runs": excluded,
           "exclusions": {"rules": aio.EXCLUSION_RULES, "runs": ds.exclusions, "dropped_points": ds.dropped_points},
           "warnings": ds.warnings,
           "matched_samples": {f"{k:.6g}": v for k, v in picks.items()}}
    _write(out, "gains.json", json.dumps(doc, indent=1, allow_nan=False, default=_json_default))
    _write(out, "report.md", rep.report_md(meta, gmd, amd, files, ds.warnings, excluded, sample_note,
                                           ds.exclusions, aio.EXCLUSION_RULES))

    inputs = input_runs(ds)
    _write(out, "inputs.json", json.dumps(inputs, indent=1, default=_json_default))
    if not a.no_mlflow:
        uri = mlflow_uri(a)
        mexp = a.mlflow_experiment or exp or "analysis"
        art_root = os.path.join(mlflow_home(a), "mlartifacts")
        params = {f"analysis.{k}": v for k, v in meta["settings"].items()}
        params["analysis.source"] = ds.source
        metrics = headline_metrics(res)
        metrics.update(judge_metrics(jres))
        if abl:
            metrics.update(headline_metrics(abl, "ablation/"))
        try:
            ids = [r["mlflow_run_id"] for r in inputs if r.get("mlflow_run_id")]
            link = {"source": ds.source[:5000], "input_runs": str(len(inputs)),
                    "input_run_ids": ",".join(ids)[:5000]}  # the runs it read; all of them in inputs.json
            rid = log_to_mlflow(uri, mexp, art_root, out, params, metrics, link)
            doc["mlflow"] = {"uri": uri, "experiment": mexp, "run_id": rid}
        except Exception as e:  # the outputs are written; say clearly that the MLflow copy is not
            doc["mlflow_error"] = f"logging to MLflow {uri} (experiment {mexp!r}) failed: {type(e).__name__}: {e}"
    return {"out": out, "doc": doc, "gains_md": gmd}


def add_images_per_iteration(res: dict, points: pd.DataFrame, ds: aio.Dataset) -> None:
    """res['labels'][label]['images_per_iter'] = the distinct images sampled per training iteration of the
    label's runs (``io.run_images_per_iteration``), and 'images_per_iter_note' where it is unknown."""
    flat = dict(zip(ds.runs["run"], ds.runs["flat"]))
    method = dict(zip(ds.runs["run"], ds.runs["method"]))
    cache: dict[str, tuple] = {}
    for lab, r in res["labels"].items():
        vals, why = set(), set()
        for run in sorted(set(points.loc[points["label"] == lab, "run"])):
            if run not in cache:
                cache[run] = aio.run_images_per_iteration(flat.get(run) or {}, method.get(run, lab))
            n, w = cache[run]
            (vals.add(n) if n is not None else why.add(w))
        r["images_per_iter"] = sorted(vals)
        if why:
            r["images_per_iter_note"] = "; ".join(sorted(why))


def flag_lost_points(res: dict, ds: aio.Dataset) -> None:
    """Mark every pair whose method's or baseline's front lost points to exclusions (an excluded run of that
    method, a dropped non-finite point): ``pair['front_lost_points'] = {label: [reasons]}``, ``pair['flagged']``.
    An exclusion whose method is unknown (an unreadable config.json) flags every pair."""
    lost: dict[str, list[str]] = {}
    for e in (e for e in ds.exclusions if e["kind"] != "duplicate"):  # a duplicate's twin is still on the front
        if e.get("method"):
            lost.setdefault(e["method"], []).append(f"{e['kind']}: {e['run']}")
    for d in ds.dropped_points:
        lost.setdefault(d["method"], []).append(f"non-finite point: {d['run']} step {d['step']}")
    unknown = [f"{e['kind']}: {e['run']}" for e in ds.exclusions if not e.get("method") and e["kind"] != "duplicate"]
    for p in res["pairs"]:
        got = {lab: lost.get(lab, []) + unknown for lab in (p["method"], p["baseline"]) if lost.get(lab) or unknown}
        p["front_lost_points"], p["flagged"] = got, bool(got)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write(out: str, fname: str, text: str) -> None:
    with open(os.path.join(out, fname), "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        r = run(a)
    except aio.AnalysisInputError as e:
        print(f"[frontier] error: {e}", file=sys.stderr)
        return 2
    for w in r["doc"]["warnings"]:
        print(f"[frontier] warning: {w}", file=sys.stderr)
    print(r["gains_md"])
    print(f"[frontier] wrote {r['out']}")
    if "mlflow" in r["doc"]:
        m = r["doc"]["mlflow"]
        print(f"[frontier] logged MLflow run {m['run_id']} (experiment {m['experiment']!r}) at {m['uri']}")
    if "mlflow_error" in r["doc"]:
        print(f"[frontier] error: {r['doc']['mlflow_error']}; the files in {r['out']} are complete", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
