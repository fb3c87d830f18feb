"""Loaders: evaluation points from run directories, an MLflow experiment or a CSV, as one table.

Every loader returns a ``Dataset``: one row per (run, evaluation step) with the columns

    method, arm, run, seed, config, step, alignment, diversity, final, run_dir, samples, <other eval metrics>

(arm = the grid arm from sweep.json / the MLflow tag 'arm' / a CSV column 'arm', else the method)

plus a table of the kept runs (method, seed, config hash, flattened config, ablation options) and the
warnings raised while loading. Runs that crashed, lack their final evaluation or duplicate another run
are excluded, each with a warning naming it; non-finite points are dropped, each with a warning.
"""

from __future__ import annotations

import csv
import glob
import io as _io
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from drift.rundir import FINGERPRINT, NON_SCIENCE_KEYS, SWEEP_INDEX, RunDir, read_jsonl_torn, science_hash

NOT_SCIENCE = (*NON_SCIENCE_KEYS, FINGERPRINT)  # left out of a run's compared settings (as of its hash)
SKIP_DIRS = {"analysis", "mlartifacts", "figures", RunDir.CHECKPOINTS, RunDir.SAMPLES}
ABLATION_FIELDS = ("subset", "prompt", "shaping")


class AnalysisInputError(ValueError):
    """The input cannot be analysed; the message says what is missing and where."""


@dataclass
class Dataset:
    points: pd.DataFrame
    runs: pd.DataFrame
    source: str
    warnings: list[str] = field(default_factory=list)
    exclusions: list[dict] = field(default_factory=list)
    """One record per excluded run: {run, method, kind, detail}; kind is a key of EXCLUSION_RULES."""
    dropped_points: list[dict] = field(default_factory=list)
    """Non-finite evaluation points dropped from kept runs (not at their final step): {run, method, step}."""

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)


# ------------------------------------------------------------------------------------------------
# Exclusion rules: what happens to each kind of imperfect run (report.md and gains.json list them)
# ------------------------------------------------------------------------------------------------
EXCLUSION_RULES = {
    "running": "no DONE marker and its LOCK is held by a live process: still running; excluded",
    "crashed": "no DONE marker and no live LOCK holder: crashed, killed or never finished; excluded",
    "no_final_eval": "finished but its final evaluation (both axes at step train.iterations, and final_eval.json) "
                     "is missing; excluded",
    "torn": "the last metrics.jsonl line is torn (a crash while writing it): the line is dropped; the run is "
            "excluded if that loses its final evaluation, kept otherwise (with a warning)",
    "unreadable": "config.json or metrics.jsonl cannot be read (damaged); excluded",
    "diverged": "a non-finite value (NaN/Inf) of either axis at its final evaluation: the whole run is excluded "
                "(its other points come from a run that broke); a non-finite point before the final one is dropped "
                "alone, with a warning, and its method's gains are flagged",
    "duplicate": "same method, config hash and seed as an earlier run (in run-name order); the later one is excluded",
    "status": "a CSV/MLflow run whose status is not finished; excluded",
    "missing": "a seed listed in sweep.json whose run directory does not exist (never started); counted as "
               "excluded (without sweep.json a seed that never started cannot be known)",
}
"""The rule for each kind of imperfect run. Every excluded run (except a duplicate, whose twin stays)
and every dropped non-finite point flags the gains of its method; ``--strict`` makes any of them an error."""


class Notes(list):
    """A loader's warnings (a list of str) that also collects the structured exclusions."""

    def __init__(self, *a):
        super().__init__(*a)
        self.exclusions: list[dict] = []

    def merge(self, other: list[str]) -> "Notes":
        self.extend(other)
        self.exclusions += getattr(other, "exclusions", [])
        return self

    def exclude(self, run: str, method: str | None, kind: str, text: str) -> None:
        assert kind in EXCLUSION_RULES, kind
        self.append(text)
        self.exclusions.append({"run": run, "method": method, "kind": kind, "detail": text})


def _lock_holder(run_dir: str) -> str | None:
    from drift.launch import RunLock

    try:
        return RunLock.holder(run_dir)
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _f(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _column(df: pd.DataFrame, key: str) -> str | None:
    """The column for a metric key: the key itself, else the key without its 'eval/' prefix."""
    if key in df.columns:
        return key
    short = key.split("/", 1)[1] if key.startswith("eval/") else None
    return short if short and short in df.columns else None


def _finish(rows: list[dict], runs: list[dict], source: str, warnings: Notes, akey: str, dkey: str) -> Dataset:
    """Common tail of every loader: build the tables, exclude diverged runs (non-finite final evaluation),
    drop (and record) the other non-finite points."""
    p = pd.DataFrame(rows)
    dropped: list[dict] = []
    if not p.empty:
        bad = ~(np.isfinite(p["alignment"].astype(float)) & np.isfinite(p["diversity"].astype(float)))
        diverged = set(p[bad & p["final"].astype(bool)]["run"])
        for run, g in p[bad & p["run"].isin(diverged)].groupby("run", sort=True):
            r = g.sort_values("step").iloc[0]
            warnings.exclude(run, r["method"], "diverged",
                             f"excluded run {run}: it diverged (non-finite final evaluation; the first non-finite "
                             f"one at step {int(r['step'])}: {akey}={r['alignment']}, {dkey}={r['diversity']})")
        for _, r in p[bad & ~p["run"].isin(diverged)].iterrows():
            warnings.append(f"dropped a non-finite point: run {r['run']} step {int(r['step'])} "
                            f"({akey}={r['alignment']}, {dkey}={r['diversity']})")
            dropped.append({"run": r["run"], "method": r["method"], "step": int(r["step"])})
        p = p[~bad & ~p["run"].isin(diverged)]
    if p.empty:
        raise AnalysisInputError(f"no evaluation points with '{akey}' and '{dkey}' in {source}"
                                 + (": " + "; ".join(warnings[:5]) if warnings else ""))
    arms = {r["run"]: (r.get("arm") or r["method"]) for r in runs}
    for r in runs:
        r["arm"] = arms[r["run"]]
    p = p.assign(arm=p["run"].map(arms).fillna(p["method"]))
    ds = Dataset(p, pd.DataFrame(runs), source, list(warnings), list(warnings.exclusions), dropped_points=dropped)
    ds.points = p.sort_values(["method", "run", "step"]).reset_index(drop=True)
    ds.runs = ds.runs.sort_values(["method", "run"]).reset_index(drop=True)
    ds.runs = ds.runs[ds.runs["run"].isin(set(ds.points["run"]))].reset_index(drop=True)
    return ds


def _check_keys(seen: set[str], akey: str, dkey: str, where: str) -> None:
    """Refuse a metric key that no run logged, naming the evaluation keys that exist."""
    missing = [k for k in (akey, dkey) if k not in seen]
    if missing and seen:
        raise AnalysisInputError(f"metric(s) {missing} logged by no run in {where}; evaluation keys there: "
                                 f"{sorted(k for k in seen if k.startswith('eval/'))}")


def _dedupe(runs: list[dict], warnings: Notes) -> list[dict]:
    """Keep one run per (method, config hash, seed); the later ones are named in a warning."""
    seen: dict[tuple, dict] = {}
    kept = []
    for r in runs:
        key = (r["method"], r["config"], r["seed"])
        if key in seen:
            warnings.exclude(r["run"], r["method"], "duplicate",
                             f"excluded duplicated run {r['run']}: same method, config ({r['config']}) and seed as "
                             f"{seen[key]['run']}")
            continue
        seen[key] = r
        kept.append(r)
    return kept


def _ablation_options(options: dict) -> dict:
    return {f: str(options[f]) for f in ABLATION_FIELDS if f in options}


# ------------------------------------------------------------------------------------------------
# (a) Run directories
# ------------------------------------------------------------------------------------------------
def find_run_dirs(root: str) -> list[str]:
    """Every directory under ``root`` that holds a config.json (analysis/, samples/, ... are skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if RunDir.CONFIG in filenames:
            out.append(dirpath)
            dirnames[:] = []
    return sorted(out)


def sweep_run_dirs(sweep_json: str, runs_root: str) -> tuple[list[str], list[str]]:
    """Run dirs listed in a sweep.json (experiments/sweep.py writes {"points": [{"run_dir": ...}, ...]};
    also accepted: a list of paths, or a dict whose 'run_dirs'/'runs' lists paths or dicts with 'run_dir').
    Relative paths are tried against the cwd, the runs root's parent and the sweep file's folder.
    Returns (existing dirs, warnings)."""
    try:
        with open(sweep_json, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        raise AnalysisInputError(f"{sweep_json}: unreadable ({type(e).__name__}: {e})") from None
    items = spec
    if isinstance(spec, dict):
        items = next((spec[k] for k in ("points", "run_dirs", "runs") if k in spec), None)
    if not isinstance(items, list):
        raise AnalysisInputError(f"{sweep_json}: no list of run directories (expected a list, or a dict with "
                                 "'points', 'run_dirs' or 'runs')")
    found, warnings = [], Notes()
    bases = ["", os.path.dirname(os.path.abspath(runs_root)), os.path.dirname(os.path.abspath(sweep_json))]
    for it in items:
        p = it.get("run_dir") if isinstance(it, dict) else it
        if not isinstance(p, str):
            continue
        cands = [p] if os.path.isabs(p) else [os.path.join(b, p) for b in bases]
        hit = next((c for c in cands if os.path.isdir(c)), None)
        if hit is None:
            warnings.exclude(p, it.get("method") if isinstance(it, dict) else None, "missing",
                             f"excluded run {p}: listed in {sweep_json} but its directory does not exist (never started?)")
        else:
            found.append(os.path.normpath(os.path.abspath(hit)))
    return found, warnings


def sweep_arm(run_dir: str, cache: dict[str, dict[str, str]]) -> str | None:
    """The grid arm of a run directory <exp>/<method>/<hash>/seed<k>: its point's "arm" in <exp>/sweep.json
    (experiments/sweep.py writes it), None when there is no sweep.json or it does not list the run. Arms
    tell apart runs of one method with different fixed options (e.g. 'drift' and 'drift_kl', 'flow_grpo' and
    'flow_grpo_k4')."""
    exp_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(run_dir))))
    if exp_dir not in cache:
        cache[exp_dir] = {}
        try:
            with open(os.path.join(exp_dir, SWEEP_INDEX), encoding="utf-8") as f:
                spec = json.load(f)
            for pt in spec.get("points", []) if isinstance(spec, dict) else []:
                if isinstance(pt, dict) and isinstance(pt.get("arm"), str):
                    for key in ("run_dir", "rel_dir"):
                        if isinstance(pt.get(key), str):
                            cache[exp_dir][os.path.normpath(os.path.join(exp_dir, pt[key]))] = pt["arm"]
        except (OSError, ValueError):
            pass
    return cache[exp_dir].get(os.path.normpath(os.path.abspath(run_dir)))


def load_run_dirs(run_dirs: list[str], akey: str = "eval/alignment", dkey: str = "eval/diversity",
                  root: str | None = None, source: str | None = None) -> Dataset:
    """Points from engine run directories (config.json, metrics.jsonl, final_eval.json, DONE, samples/).

    A run is kept only if it finished (DONE and final_eval.json exist) and metrics.jsonl holds both keys
    at its last iteration (train.iterations); otherwise it is excluded with a warning naming it and the
    rule of EXCLUSION_RULES it fell under (running, crashed, torn, unreadable, no_final_eval, diverged,
    duplicate).
    """
    warnings = Notes()
    runs, rows = [], []
    seen_paths: set[str] = set()
    seen_keys: set[str] = set()
    arm_cache: dict[str, dict[str, str]] = {}
    for rd in run_dirs:
        rd = os.path.normpath(os.path.abspath(rd))
        name = os.path.relpath(rd, root) if root else rd
        if rd in seen_paths:
            warnings.exclude(name, None, "duplicate", f"excluded duplicated run {rd}: listed twice")
            continue
        seen_paths.add(rd)
        try:
            with open(RunDir(rd).config, encoding="utf-8") as f:
                cfg = json.load(f)
            last = cfg["train"]["iterations"]
            if type(last) is not int or not isinstance(cfg.get("method"), str) or type(cfg.get("seed")) is not int:
                raise ValueError("no integer train.iterations and seed, or no method name")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            warnings.exclude(name, None, "unreadable",
                             f"excluded run {name}: unreadable config.json ({type(e).__name__}: {e})")
            continue
        method = cfg["method"]
        if not os.path.exists(RunDir(rd).done):
            holder = _lock_holder(rd)
            if holder:
                warnings.exclude(name, method, "running", f"excluded run {name}: it did not finish (no DONE "
                                 f"marker): still running, its LOCK is held by {holder}")
            else:
                warnings.exclude(name, method, "crashed", f"excluded run {name}: it did not finish (no DONE "
                                 "marker: crashed or still running; no live process holds its LOCK)")
            continue
        if not os.path.exists(RunDir(rd).final_eval):
            warnings.exclude(name, method, "no_final_eval",
                             f"excluded run {name}: no final_eval.json (the run lacks its final evaluation)")
            continue
        try:
            mrows, torn = read_jsonl_torn(RunDir(rd).metrics)
        except (OSError, ValueError) as e:
            warnings.exclude(name, method, "unreadable",
                             f"excluded run {name}: unreadable metrics.jsonl ({type(e).__name__}: {e})")
            continue
        seen_keys.update(k for r in mrows for k in r)
        ev = [r for r in mrows if akey in r or dkey in r]
        if not any(r["step"] == last and akey in r and dkey in r for r in ev):
            if torn:
                warnings.exclude(name, method, "torn", f"excluded run {name}: the last line of its metrics.jsonl "
                                 f"is torn ({torn}), and with it its final evaluation (step {last})")
            else:
                warnings.exclude(name, method, "no_final_eval",
                                 f"excluded run {name}: it lacks its final evaluation ('{akey}' and '{dkey}' at "
                                 f"step {last} = train.iterations are not both in metrics.jsonl)")
            continue
        if torn:
            warnings.append(f"run {name}: dropped the torn last line of its metrics.jsonl ({torn}); its final "
                            "evaluation is intact, the run is kept")
        seed = cfg["seed"]
        chash = science_hash(cfg)
        flat = {k: v for k, v in flatten(cfg).items() if k.split(".")[0] not in NOT_SCIENCE}
        runs.append({"run": name, "method": method, "seed": seed, "config": chash, "run_dir": rd,
                     "flat": flat, "ablation": _ablation_options(cfg.get("options") or {}),
                     "final_step": last, "_rows": ev, "arm": sweep_arm(rd, arm_cache)})
    _check_keys(seen_keys, akey, dkey, source or root or "the run directories")
    runs = _dedupe(runs, warnings)
    for r in runs:
        for m in r.pop("_rows"):
            step = int(m["step"])
            png = RunDir(r["run_dir"]).eval_grid(step)
            extra = {k: v for k, v in m.items() if k.startswith("eval/") and k not in (akey, dkey)}
            rows.append({"method": r["method"], "run": r["run"], "seed": r["seed"], "config": r["config"],
                         "step": step, "alignment": _f(m.get(akey)), "diversity": _f(m.get(dkey)),
                         "final": step == r["final_step"], "run_dir": r["run_dir"],
                         "samples": png if os.path.exists(png) else None, **extra})
    return _finish(rows, runs, source or (root or "run directories"), warnings, akey, dkey)


def default_input(runs_root: str, experiment: str | None) -> tuple[list[str], str, str | None, list[str]]:
    """What to analyse when only the runs root (and maybe an experiment) is named.

    Returns (run dirs, description, experiment, warnings): the named experiment's folder; else the folder
    of the most recently modified ``<runs>/*/sweep.json`` (its listed run dirs); else every run dir under
    the runs root.
    """
    warnings = Notes()
    if experiment:
        folder = os.path.join(runs_root, experiment)
        if not os.path.isdir(folder):
            raise AnalysisInputError(f"experiment folder {folder} does not exist")
        sweep = os.path.join(folder, SWEEP_INDEX)
        dirs = find_run_dirs(folder)
        if os.path.exists(sweep):
            listed, w = sweep_run_dirs(sweep, runs_root)
            warnings.merge(w)
            dirs = sorted(set(dirs) | set(listed))
        return dirs, folder, experiment, warnings
    sweeps = sorted(glob.glob(os.path.join(runs_root, "*", SWEEP_INDEX)), key=os.path.getmtime)
    if sweeps:
        folder = os.path.dirname(sweeps[-1])
        listed, w = sweep_run_dirs(sweeps[-1], runs_root)
        return sorted(set(find_run_dirs(folder)) | set(listed)), folder, os.path.basename(folder), warnings.merge(w)
    if not os.path.isdir(runs_root):
        raise AnalysisInputError(f"runs root {runs_root} does not exist; name --runs-dir, --csv or --source mlflow")
    dirs = find_run_dirs(runs_root)
    exps = sorted({os.path.relpath(d, runs_root).split(os.sep)[0] for d in dirs})
    if len(exps) > 1:
        warnings.append(f"no sweep.json under {runs_root}: pooling the runs of experiments {exps}")
    if len(exps) == 1:
        return dirs, os.path.join(runs_root, exps[0]), exps[0], warnings
    return dirs, runs_root, None, warnings


# ------------------------------------------------------------------------------------------------
# (b) MLflow
# ------------------------------------------------------------------------------------------------
def load_mlflow(uri: str, experiment: str, akey: str = "eval/alignment", dkey: str = "eval/diversity") -> Dataset:
    """Points from the MLflow runs of one experiment (tags method/seed/run_dir, params = flat config).

    Kept: status FINISHED and both keys logged at step train.iterations. Runs tagged kind=analysis are
    this tool's own output and are skipped silently.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisInputError(f"MLflow experiment {experiment!r} not found at {uri}; experiments there: {names}")
    all_runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token, order_by=["attributes.start_time ASC"])
        all_runs += list(page)
        token = page.token
        if not token:
            break
    warnings = Notes()
    runs, rows = [], []
    seen_keys = {k for mr in all_runs if mr.data.tags.get("kind") != "analysis" for k in mr.data.metrics}
    _check_keys(seen_keys, akey, dkey, f"MLflow experiment {experiment!r}")
    for mr in all_runs:
        tags, params = mr.data.tags, mr.data.params
        if tags.get("kind") == "analysis":
            continue
        name = tags.get("mlflow.runName", mr.info.run_id)
        label = f"{name} ({mr.info.run_id[:8]})"
        if "method" not in tags:
            warnings.append(f"skipped MLflow run {label}: no 'method' tag (not a training run)")
            continue
        if mr.info.status != "FINISHED":
            warnings.exclude(label, tags["method"], "running" if mr.info.status == "RUNNING" else "status",
                             f"excluded run {label}: MLflow status {mr.info.status} (crashed or still running)")
            continue
        last = int(float(params.get("train.iterations", -1)))
        keys = sorted(k for k in mr.data.metrics if k.startswith("eval/"))
        hist = {k: {m.step: m.value for m in client.get_metric_history(mr.info.run_id, k)} for k in keys}
        if last not in hist.get(akey, {}) or last not in hist.get(dkey, {}):
            warnings.exclude(label, tags["method"], "no_final_eval",
                             f"excluded run {label}: it lacks its final evaluation ('{akey}' and '{dkey}' at step "
                             f"{last} = train.iterations)")
            continue
        flat = {k: v for k, v in params.items() if k not in NOT_SCIENCE}
        chash = science_hash(flat)  # of the flat string params: stable per config, not the run directory's hash
        run_dir = tags.get("run_dir")
        opts = {k.split(".", 1)[1]: v for k, v in params.items()  # <method>.<field> (older runs: options.<field>)
                if k.startswith((f"{tags['method']}.", "options."))}
        runs.append({"run": label, "method": tags["method"], "seed": int(tags.get("seed", params.get("seed", -1))),
                     "config": chash, "run_dir": run_dir, "flat": flat, "ablation": _ablation_options(opts),
                     "final_step": last, "_hist": hist, "mlflow_run_id": mr.info.run_id, "arm": tags.get("arm")})
    runs = _dedupe(runs, warnings)
    for r in runs:
        hist = r.pop("_hist")
        for step in sorted(set(hist.get(akey, {})) | set(hist.get(dkey, {}))):
            png = RunDir(r["run_dir"]).eval_grid(step) if r["run_dir"] else None
            extra = {k: h[step] for k, h in hist.items() if k not in (akey, dkey) and step in h}
            rows.append({"method": r["method"], "run": r["run"], "seed": r["seed"], "config": r["config"],
                         "step": int(step), "alignment": _f(hist.get(akey, {}).get(step)),
                         "diversity": _f(hist.get(dkey, {}).get(step)), "final": step == r["final_step"],
                         "run_dir": r["run_dir"], "samples": png if png and os.path.exists(png) else None, **extra})
    return _finish(rows, runs, f"MLflow {uri} experiment {experiment!r}", warnings, akey, dkey)


# ------------------------------------------------------------------------------------------------
# (c) CSV
# ------------------------------------------------------------------------------------------------
CSV_REQUIRED = ("method", "seed", "step")


def load_csv(path: str, akey: str = "eval/alignment", dkey: str = "eval/diversity") -> Dataset:
    """Points from a CSV with at least ``method, seed, step`` and the two metric columns (named by the key,
    or by the key without 'eval/', e.g. 'alignment'). Optional: run, config, status, samples,
    subset/prompt/shaping (or options.subset, ...) for ablation labels.

    A run = the ``run`` column, else (method, config, seed). Excluded with a warning: runs whose status is
    not 'finished' (if a status column exists); runs whose last step is below the last step of the
    other runs of the same method and config (they lack their final evaluation); repeated (run, step) rows
    are dropped after the first.
    """
    df, lines = _read_csv_table(path)
    missing = [c for c in CSV_REQUIRED if c not in df.columns]
    acol, dcol = _column(df, akey), _column(df, dkey)
    if acol is None:
        missing.append(f"{akey} (or {akey.removeprefix('eval/')})")
    if dcol is None:
        missing.append(f"{dkey} (or {dkey.removeprefix('eval/')})")
    if missing:
        raise AnalysisInputError(f"{path}: missing column(s) {missing}; columns are {list(df.columns)}")
    warnings = Notes()
    for col, short in ((acol, "alignment"), (dcol, "diversity")):
        if col != short and short in df.columns:  # the rename below would make two columns of one name
            raise AnalysisInputError(f"{path}: columns {col!r} and {short!r} both present; which one is the "
                                     f"{short} axis is ambiguous (drop one, or rename it)")
    df = df.rename(columns={acol: "alignment", dcol: "diversity"})
    bad = lambda col, rule: next(((lines[i], df[col].iloc[i]) for i in range(len(df))  # noqa: E731
                                  if not rule(df[col].iloc[i].strip())), None)
    for col, name, rule, what in (("method", "method", bool, "a non-empty method name"),
                                  ("seed", "seed", _INT_CELL.fullmatch, "an integer"),
                                  ("step", "step", _INT_CELL.fullmatch, "an integer"),
                                  ("alignment", acol, _METRIC_CELL, "a number (empty or nan: no value)"),
                                  ("diversity", dcol, _METRIC_CELL, "a number (empty or nan: no value)")):
        hit = bad(col, rule)
        if hit:
            raise AnalysisInputError(f"{path}, line {hit[0]}, column {name!r}: {hit[1]!r} must be {what}")
    df["method"] = df["method"].str.strip()
    for col in ("seed", "step"):
        df[col] = df[col].astype(int)
    blank = (df["alignment"].str.strip() == "") | (df["diversity"].str.strip() == "")
    if blank.any():  # no evaluation on that row (an explicit nan/inf is a value: a diverged run)
        warnings.append(f"dropped {int(blank.sum())} row(s) with an empty {acol} or {dcol} cell (lines "
                        f"{[lines[i] for i in np.flatnonzero(blank.to_numpy())][:5]}): no evaluation there")
        df = df[~blank.to_numpy()].reset_index(drop=True)
    for col in ("alignment", "diversity"):
        df[col] = [float(v) for v in df[col]]
    for col in df.columns:  # the optional columns: numbers where every cell is one, else text
        if col not in ("method", "seed", "step", "alignment", "diversity"):
            num = pd.to_numeric(df[col].replace("", np.nan), errors="coerce")
            if num.notna().sum() == (df[col] != "").sum():
                df[col] = num
    df["config"] = df["config"].astype(str) if "config" in df.columns else "-"
    if "run" not in df.columns:
        df["run"] = df["method"].astype(str) + "/" + df["config"] + "/seed" + df["seed"].astype(str)
    df["run"] = df["run"].astype(str)
    dup = df.duplicated(["run", "step"], keep="first")
    for run, g in df[dup].groupby("run"):
        warnings.append(f"dropped {len(g)} duplicated row(s) of run {run} (steps {sorted(g['step'].tolist())[:5]})")
    df = df[~dup]
    if "status" in df.columns:
        for run, g in df.groupby("run"):
            st = str(g["status"].iloc[-1]).lower()
            if st not in ("finished", "done", "ok"):
                warnings.exclude(run, str(g["method"].iloc[0]), "status",
                                 f"excluded run {run}: status {st!r} (crashed or unfinished)")
                df = df[df["run"] != run]
    last = df.groupby("run")["step"].max()
    meta = df.groupby("run")[["method", "config"]].first()
    target = last.groupby([meta["method"], meta["config"]]).transform("max")
    for run in last.index[last < target]:
        warnings.exclude(run, str(meta.loc[run, "method"]), "no_final_eval",
                         f"excluded run {run}: it lacks its final evaluation (last step {int(last[run])}, "
                        f"other runs of its method and config reach {int(target[run])})")
        df = df[df["run"] != run]
    extra_cols = [c for c in df.columns if c not in ("method", "run", "seed", "config", "step", "alignment",
                                                     "diversity", "status", "samples", "arm")]
    runs, rows = [], []
    for run, g in df.groupby("run", sort=True):
        g = g.sort_values("step")
        first = g.iloc[0]
        opts = {}
        for f in ABLATION_FIELDS:
            for c in (f, f"options.{f}"):
                if c in g.columns and pd.notna(first[c]):
                    opts[f] = str(first[c])
        runs.append({"run": run, "method": str(first["method"]), "seed": int(first["seed"]), "config": str(first["config"]),
                     "run_dir": None, "flat": {c: first[c] for c in extra_cols if c.startswith("options.")},
                     "ablation": opts, "final_step": int(g["step"].max()),
                     "arm": str(first["arm"]) if "arm" in g.columns and pd.notna(first["arm"]) and str(first["arm"]) else None})
        for _, r in g.iterrows():
            png = r["samples"] if "samples" in g.columns and isinstance(r["samples"], str) else None
            rows.append({"method": str(r["method"]), "run": run, "seed": int(r["seed"]), "config": str(r["config"]),
                         "step": int(r["step"]), "alignment": _f(r["alignment"]), "diversity": _f(r["diversity"]),
                         "final": int(r["step"]) == int(g["step"].max()), "run_dir": None,
                         "samples": png if png and os.path.exists(png) else None,
                         **{c: r[c] for c in extra_cols if c not in ABLATION_FIELDS and not c.startswith("options.")}})
    runs = _dedupe(runs, warnings)
    kept = {r["run"] for r in runs}
    rows = [r for r in rows if r["run"] in kept]
    return _finish(rows, runs, f"CSV {path}", warnings, akey, dkey)


_INT_CELL = re.compile(r"[+-]?[0-9]+")
_FLOAT_CELL = re.compile(r"[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE)


def _METRIC_CELL(v: str) -> bool:
    return v == "" or bool(_FLOAT_CELL.fullmatch(v))


def _read_csv_table(path: str) -> tuple[pd.DataFrame, list[int]]:
    """(every cell as text, the file line of each row). AnalysisInputError naming the file (and line) for
    an unreadable or non-UTF-8 file, no header, a repeated column name or a row with the wrong number of
    fields (pandas would shift such a row into an index, or rename a repeated column, without a word)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise AnalysisInputError(f"{path}: cannot read it as UTF-8 text ({type(e).__name__}: {e})") from None
    reader = csv.reader(_io.StringIO(text))
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise AnalysisInputError(f"{path}: empty file (no header line with the column names)")
        header = [h.strip() for h in header]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise AnalysisInputError(f"{path}, line 1: column(s) {dup} appear more than once")
        rows, lines = [], []
        for r in reader:
            if not any(c.strip() for c in r):
                continue  # a blank line
            if len(r) != len(header):
                raise AnalysisInputError(f"{path}, line {reader.line_num}: {len(r)} fields, the header has "
                                         f"{len(header)} ({header})")
            rows.append(r)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise AnalysisInputError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
    return pd.DataFrame(rows, columns=header, dtype=object).astype(str) if rows else \
        pd.DataFrame({h: pd.Series(dtype=str) for h in header}), lines


# ------------------------------------------------------------------------------------------------
# Base model and labels
# ------------------------------------------------------------------------------------------------
def base_point(ds: Dataset, rel_tol: float = 1e-3) -> tuple[float, float] | None:
    """(a0, d0) = mean of the step-0 evaluations over all kept runs (the base model); None if there are none.

    Warns when the step-0 values differ between runs by more than ``rel_tol`` (relative): the runs may
    not share one base model or evaluation set.
    """
    p0 = ds.points[ds.points["step"] == 0]
    if p0.empty:
        ds.warn("no step-0 evaluation: the base model is unknown, so base-relative gains are undefined")
        return None
    a0, d0 = float(p0["alignment"].mean()), float(p0["diversity"].mean())
    for col, v in (("alignment", a0), ("diversity", d0)):
        spread = float(p0[col].max() - p0[col].min())
        if spread > rel_tol * max(abs(v), 1e-12):
            ds.warn(f"step-0 {col} differs between runs (spread {spread:.4g} around {v:.4g}): do all runs share one "
                    "base model and evaluation set? The base point is their mean")
    return a0, d0


METHOD_NAMES = {"flow_grpo": "Flow-GRPO", "flow_grpo_kl": "Flow-GRPO+KL", "diverse_grpo": "DiverseGRPO",
                "drift": "DRIFT"}
COMPONENTS = (("subset", "sampling"), ("prompt", "prompting"), ("shaping", "shaping"))


def ablation_label(opts: dict) -> str:
    """'DRIFT (full)', '− sampling', ..., 'sampling only', ..., 'DRIFT (no components)' from the options
    subset / prompt / shaping ('none' = component off)."""
    on = [name for f, name in COMPONENTS if str(opts.get(f, "none")) != "none"]
    if len(on) == 3:
        return "DRIFT (full)"
    if not on:
        return "DRIFT (no components)"
    if len(on) == 2:
        return "− " + next(name for _, name in COMPONENTS if name not in on)
    return " + ".join(on) + " only"


ABLATION_ORDER = ["DRIFT (full)", "− sampling", "− prompting", "− shaping", "sampling only", "prompting only",
                  "shaping only", "DRIFT (no components)"]


def ablation_labels(runs: pd.DataFrame) -> dict[str, str]:
    """run -> ablation label for the drift runs; when two component settings share a label (e.g. two subset
    rules), the differing fields are appended: '− shaping (subset=trim)'."""
    d = runs[runs["method"] == "drift"]
    base = {r: ablation_label(o) for r, o in zip(d["run"], d["ablation"])}
    out = {}
    for lab in set(base.values()):
        members = [r for r in base if base[r] == lab]
        opts = {r: d.set_index("run").loc[r, "ablation"] for r in members}
        diff = [f for f in ABLATION_FIELDS if len({o.get(f) for o in opts.values()}) > 1]
        for r in members:
            out[r] = lab + (" (" + ", ".join(f"{f}={opts[r].get(f)}" for f in diff) + ")" if diff else "")
    return out


def variant_labels(runs: pd.DataFrame) -> dict[str, str]:
    """run -> 'method' or 'method (k=v, ...)' naming the config fields that differ among that method's runs
    (e.g. 'flow_grpo_kl (beta=0.01)'): the curves' grouping."""
    out = {}
    for method, g in runs.groupby("method"):
        flats = list(g["flat"])
        keys = sorted({k for f in flats for k in f})
        diff = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
        for run, f in zip(g["run"], flats):
            parts = [f"{k.removeprefix('options.').removeprefix(method + '.')}={f.get(k)}" for k in diff]
            out[run] = method + (f" ({', '.join(parts)})" if parts else "")
    return out


# ------------------------------------------------------------------------------------------------
# Per-prompt evaluation metrics and compute per iteration
# ------------------------------------------------------------------------------------------------
def per_prompt_path(run_dir: str, step: int) -> str:
    """<run>/evals/per_prompt_NNNNNN.json: ``RunDir(run_dir).eval_per_prompt(step)``, the file the engine's
    evaluation writes at every eval step."""
    return RunDir(run_dir).eval_per_prompt(step)


def read_per_prompt(run_dir: str | None, step: int) -> dict | None:
    """{'prompts': [...], 'metrics': {key: np.ndarray (one value per prompt)}} of one evaluation, or None when
    the file is absent, unreadable, or its lists do not match its prompts in length."""
    if not run_dir:
        return None
    path = per_prompt_path(run_dir, step)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        prompts = [str(x) for x in doc["prompts"]]
        metrics = {str(k): np.asarray(v, dtype=float) for k, v in doc["metrics"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if int(doc.get("step", step)) != step or any(v.shape != (len(prompts),) for v in metrics.values()):
        return None
    return {"prompts": prompts, "metrics": metrics}


def images_per_iteration(group_size: int, groups_per_iter: int, oversample: int) -> int:
    """Images sampled per training iteration = groups_per_iter x group_size x oversample (the candidates per
    prompt are oversample x group_size; a method that keeps a subset still renders every candidate)."""
    return int(groups_per_iter) * int(group_size) * int(oversample)


def run_images_per_iteration(flat: dict, method: str) -> tuple[int | None, str | None]:
    """(images per iteration, None) of one run from its flattened config: sample.group_size,
    sample.groups_per_iter and the method's oversampling factor as its hooks state it
    (``drift.contract.method_spec(method).build(options).oversample``); (None, why) when it cannot be known."""
    import dataclasses

    from drift.config import SampleConfig
    from drift.contract import method_spec

    def get(key: str, default):
        v = flat.get(key, default)
        try:
            return int(float(v))
        except (TypeError, ValueError):
            return None
    gs, gpi = get("sample.group_size", SampleConfig.group_size), get("sample.groups_per_iter", SampleConfig.groups_per_iter)
    if gs is None or gpi is None:
        return None, "sample.group_size / sample.groups_per_iter unreadable"
    try:
        spec = method_spec(method)
        names = {f.name: f for f in dataclasses.fields(spec.options_cls)}
        opts = {}
        for k, v in flat.items():
            for pre in ("options.", f"{method}."):
                if k.startswith(pre) and k[len(pre):] in names:
                    opts[k[len(pre):]] = _typed(v, names[k[len(pre):]].default)
        over = spec.build(spec.options_cls(**opts)).oversample
    except Exception as e:  # an unknown method or options the engine at hand does not take
        return None, f"the method's oversampling is unknown here ({type(e).__name__}: {e})"
    return images_per_iteration(gs, gpi, over), None


def _typed(v, default):
    """A flat config value (MLflow params are strings) in the type of the option's default."""
    if isinstance(v, str) and not isinstance(default, str) and default is not None:
        if isinstance(default, bool):
            return v.lower() in ("true", "1")
        try:
            return type(default)(float(v)) if isinstance(default, int) else type(default)(v)
        except (TypeError, ValueError):
            return v
    return v
