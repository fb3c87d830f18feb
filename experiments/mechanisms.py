"""The DRIFT components' mechanism metrics as measured during training, per configuration of a sweep's runs.

A claim about a mechanism is checked with a metric of that mechanism: this reads the training rows of every
finished run under a folder (its metrics.jsonl) and prints, per configuration (method and its options, seeds
pooled), the mean over training iterations and the range over seeds of:

    drift/corr_adv_div_given_gate   O1-O3: corr(A, d | gate) within groups (must be > 0.3)
    drift/bonus_to_incorrect        O1-O3: the bonus paid to judge-incorrect samples (must be 0)
    drift/std_kept_over_all         S1: std(kept rewards) / std(all) (about 1: the scale is untouched)
    drift/dropped_frac              S1: the share of candidates masked
    drift/success_dropped_frac      S1: the share of successes masked (0 with drift.outlier_protect=success)
    drift/judge_levels_kept, _all   S1: distinct judge levels among the kept samples and among all of them
    drift/success_frac              the share of samples in the success set

Only training rows are read (no evaluation metric), so it can be run on tuning runs without looking at any
result a tuning rule or a judge uses. Unfinished runs are left out and counted.

    python experiments/mechanisms.py runs/tune
    python experiments/mechanisms.py runs/tune --json mechanisms.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from analysis.io import find_run_dirs  # noqa: E402
from drift.rundir import RunDir  # noqa: E402

METRICS = ("corr_adv_div_given_gate", "bonus_to_incorrect", "std_kept_over_all", "dropped_frac",
           "success_dropped_frac", "judge_levels_kept", "judge_levels_all", "success_frac")
"""The drift/<name> training metrics reported (those a run did not log are left blank)."""


def run_means(rows: list[dict]) -> dict[str, float]:
    """{name: mean over the rows that hold a finite drift/<name>} for every name of METRICS a run logged."""
    out = {}
    for name in METRICS:
        vals = [float(r[f"drift/{name}"]) for r in rows if isinstance(r.get(f"drift/{name}"), (int, float))
                and math.isfinite(float(r[f"drift/{name}"]))]
        if vals:
            out[name] = sum(vals) / len(vals)
    return out


def config_label(cfg: dict) -> str:
    """'method k=v ...' from the run's method and the options that differ between runs (all of them, sorted)."""
    opts = cfg.get("options") or {}
    return cfg.get("method", "?") + "".join(f" {k}={opts[k]}" for k in sorted(opts))


def collect(root: str) -> tuple[dict[str, dict[int, dict[str, float]]], int]:
    """({configuration label: {seed: run_means}}, unfinished runs) over the run directories under ``root``."""
    table: dict[str, dict[int, dict[str, float]]] = {}
    unfinished = 0
    for d in find_run_dirs(root):
        rd = RunDir(d)
        if not rd.is_done():
            unfinished += 1
            continue
        cfg = rd.read_config()
        means = run_means(rd.read_metrics())
        if means:
            table.setdefault(config_label(cfg), {})[int(cfg.get("seed", -1))] = means
    return table, unfinished


def short_label(label: str, common: set[str]) -> str:
    """The label without the option settings every configuration shares."""
    parts = label.split(" ")
    return " ".join([parts[0]] + [p for p in parts[1:] if p not in common])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="a folder of run directories (e.g. runs/tune)")
    ap.add_argument("--json", default=None, help="also write {label: {seed: {metric: mean}}} to this file")
    a = ap.parse_args(argv)
    if not os.path.isdir(a.root):
        ap.error(f"root={a.root!r}: not a folder")
    table, unfinished = collect(a.root)
    if not table:
        print(f"no finished run under {a.root} logged a DRIFT mechanism metric ({unfinished} unfinished)")
        return 1
    sets = [set(lab.split(" ")[1:]) for lab in table]
    common = set.intersection(*sets) if sets else set()
    print(f"{sum(len(v) for v in table.values())} finished runs ({unfinished} unfinished left out); per configuration "
          "the mean over training iterations, [min, max] over seeds")
    for label in sorted(table):
        seeds = table[label]
        print(f"\n{short_label(label, common)}  (seeds {sorted(seeds)})")
        for name in METRICS:
            vals = [m[name] for m in seeds.values() if name in m]
            if vals:
                print(f"  {name:26s} {sum(vals) / len(vals):7.3f}  [{min(vals):.3f}, {max(vals):.3f}]")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({lab: {str(s): m for s, m in v.items()} for lab, v in table.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
