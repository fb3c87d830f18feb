"""Freeze the tuned defaults: apply the tune grid's selection rule (experiments/grids/tune.py, written before any
tuning run) to the finished tuning runs and write experiments/grids/tuned_defaults.json with the evidence.

    python experiments/freeze.py --grid tune               # runs/tune/... -> experiments/grids/tuned_defaults.json
    python experiments/freeze.py --grid tune --dry-run     # print the selection, write nothing

Refuses (exit 2, nothing written) when any run under <runs>/<grid>/ has a judging seed (0-7) or another seed
outside the tuning seeds 100-104, was evaluated on the test split, or when a point of the grid has not finished.
The file is written atomically (a temporary file, then a rename); the judging grid (pareto) reads it.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from drift.provenance import code_state  # noqa: E402
from drift.rundir import RunDir  # noqa: E402
from experiments.grids import GridError, expand, load  # noqa: E402
from experiments.grids.protocol import JUDGING_SEEDS, TUNED_DEFAULTS, TUNED_METHODS, TUNING_SEEDS, load_tuned  # noqa: E402

PRIMARY, FALLBACK = "eval/diversity/heldout", "eval/diversity"
ALIGNMENT = "eval/alignment"
KEEP_OF_GAIN = 0.5
"""Rule step 2: a configuration must keep this share of Flow-GRPO's alignment gain over the base model."""


def reference_alignment(a_base: float, a_fg: float, keep: float = KEEP_OF_GAIN) -> float:
    """A_ref = A_base + keep * (A_fg - A_base)."""
    return a_base + keep * (a_fg - a_base)


def select_config(configs: list[dict], a_ref: float) -> tuple[dict, bool]:
    """Rule step 3: (the config with the largest D among those with A >= a_ref, True); if none reaches a_ref,
    (the one with the largest A, False). ``configs``: dicts with 'A' and 'D'; ties go to the first listed."""
    ok = [c for c in configs if c["A"] >= a_ref]
    if ok:
        return max(ok, key=lambda c: c["D"]), True
    return max(configs, key=lambda c: c["A"]), False


def front_values(values: list[float], chosen: float) -> list[float]:
    """Rule step 4: ``chosen`` and its two neighbours in sorted ``values`` (at an end: the two nearest), sorted."""
    v = sorted(values)
    if len(v) < 3:
        raise ValueError(f"values={values}: a front needs at least 3 tuning values")
    i = min(max(v.index(chosen), 1), len(v) - 2)
    return v[i - 1:i + 2]


class FreezeError(ValueError):
    """The tuning runs cannot serve as evidence (or are incomplete); nothing is written."""


def eval_rows(rd: RunDir) -> list[dict]:
    return [r for r in rd.read_metrics() if ALIGNMENT in r]


def check_evidence(exp_dir: str) -> None:
    """FreezeError naming the run if any run under exp_dir has a seed outside TUNING_SEEDS (a judging seed
    above all) or was evaluated on another split than 'validation'."""
    for cfg_path in sorted(glob.glob(os.path.join(exp_dir, "*", "*", "seed*", RunDir.CONFIG))):
        rd = os.path.dirname(cfg_path)
        with open(cfg_path) as f:
            cfg = json.load(f)
        seed, split = cfg.get("seed"), cfg.get("eval", {}).get("split", "test")
        if seed in JUDGING_SEEDS:
            raise FreezeError(f"{rd}: seed={seed} is a judging seed {JUDGING_SEEDS}; tuning evidence must use the "
                              f"tuning seeds {TUNING_SEEDS} only (move the run away to freeze)")
        if seed not in TUNING_SEEDS:
            raise FreezeError(f"{rd}: seed={seed} is not a tuning seed {TUNING_SEEDS}")
        if split != "validation":
            raise FreezeError(f"{rd}: eval.split={split!r}: tuning evidence must be evaluated on 'validation' "
                              "prompts, never on the test prompts")


def collect(grid, runs_dir: str) -> tuple[list[dict], str]:
    """One evidence row per point of the grid (every point must be done), and the diversity key used."""
    points = expand(grid, common={"experiment": grid.name, "out": runs_dir, "tracking_uri": "none", "threads": 1})
    missing = [p for p in points if not RunDir(p.run_dir).is_done()]
    if missing:
        raise FreezeError(f"{len(missing)} of {len(points)} points of grid {grid.name!r} have not finished (e.g. "
                          f"#{missing[0].index} {missing[0].label()}: {missing[0].run_dir}); run "
                          f"python experiments/sweep.py --grid {grid.name} first")
    rows, has_primary = [], True
    for p in points:
        rd = RunDir(p.run_dir)
        ev = eval_rows(rd)
        has_primary &= all(PRIMARY in r for r in ev)
        rows.append({"point": p, "base": ev[0], "final": ev[-1]})
    dkey = PRIMARY if has_primary else FALLBACK
    evidence = []
    for r in rows:
        p = r["point"]
        evidence.append({"run_dir": os.path.relpath(p.run_dir, runs_dir), "config_hash": os.path.basename(
            os.path.dirname(p.run_dir)), "arm": p.arm, "method": p.cfg.method, "knobs": p.knobs, "seed": p.cfg.seed,
            "base_step": r["base"]["step"], "final_step": r["final"]["step"], "alignment_base": r["base"][ALIGNMENT],
            "alignment_final": r["final"][ALIGNMENT], "diversity_final": r["final"][dkey]})
    return evidence, dkey


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def select(evidence: list[dict], strength: dict[str, str], tune_values: dict[str, tuple]) -> dict:
    """The selection rule (tune.py, steps 1-5) on evidence rows; returns the 'methods'/'drift_kl'/'selection'
    parts of tuned_defaults.json."""
    a_base = _mean([e["alignment_base"] for e in evidence])
    fg = [e["alignment_final"] for e in evidence if e["arm"] == "flow_grpo" and not e["knobs"]]
    if not fg:
        raise FreezeError("no Flow-GRPO tuning run: the reference alignment needs it (tune.py, rule step 2)")
    a_ref = reference_alignment(a_base, _mean(fg))
    methods, selection = {}, {"A_base": a_base, "A_flow_grpo": _mean(fg), "A_ref": a_ref, "per_method": {}}
    for m in TUNED_METHODS:
        by_cfg: dict[str, dict] = {}
        for e in (e for e in evidence if e["arm"] == m):
            c = by_cfg.setdefault(json.dumps(e["knobs"], sort_keys=True), {"knobs": e["knobs"], "As": [], "Ds": []})
            c["As"].append(e["alignment_final"])
            c["Ds"].append(e["diversity_final"])
        if not by_cfg:
            raise FreezeError(f"no tuning run of {m}")
        configs = [{"knobs": c["knobs"], "A": _mean(c["As"]), "D": _mean(c["Ds"]), "seeds": len(c["As"])}
                   for c in by_cfg.values()]
        chosen, reached = select_config(configs, a_ref)
        key = strength[m]
        methods[m] = {"fixed": {k: v for k, v in chosen["knobs"].items() if k != key},
                      "axis": {key: front_values(list(tune_values[key]), chosen["knobs"][key])}}
        selection["per_method"][m] = {"configs": configs, "chosen": chosen["knobs"], "reached_reference": reached}
    return {"methods": methods, "drift_kl": {"drift.kl_beta": selection["per_method"]["flow_grpo_kl"]["chosen"][
        "flow_grpo_kl.beta"]}, "selection": selection}


def write_atomic(path: str, doc: dict) -> None:
    """Write a temporary file, check that the judging grid accepts it (load_tuned), then rename it over ``path``:
    the old file stays whole if anything fails."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        load_tuned(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python experiments/freeze.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", required=True, help="the tuning grid (tune)")
    ap.add_argument("--runs-dir", default=os.path.join(ROOT, "runs"), help="the sweep's --out (default runs/)")
    ap.add_argument("--out", default=TUNED_DEFAULTS, help="the file to write (default %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="print the selection, write nothing")
    a = ap.parse_args(argv)
    try:
        from importlib import import_module

        grid = load(a.grid)
        mod = import_module(f"experiments.grids.{a.grid}")
        if grid.base.get("eval.split") != "validation" or not set(grid.seeds) <= set(TUNING_SEEDS) \
                or not hasattr(mod, "STRENGTH"):
            raise FreezeError(f"--grid {a.grid!r}: not a tuning grid (a tuning grid evaluates on eval.split="
                              f"'validation' with tuning seeds {TUNING_SEEDS} and names each method's STRENGTH knob)")
        runs_dir = os.path.abspath(a.runs_dir)
        check_evidence(os.path.join(runs_dir, grid.name))
        evidence, dkey = collect(grid, runs_dir)
        tune_values = {k: v for arm in grid.arms for k, v in arm.axes.items()}
        chosen = select(evidence, mod.STRENGTH, tune_values)
    except (FreezeError, GridError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    code = code_state()
    doc = {"status": "tuned",
           "statement": f"selected by experiments/freeze.py from {len(evidence)} runs of grid {grid.name!r} "
                        f"(validation prompts, seeds {list(grid.seeds)}) with the rule of experiments/grids/"
                        f"{grid.name}.py; diversity key {dkey}"
                        + ("" if dkey == PRIMARY else f" (the runs lack {PRIMARY})"),
           "rule": f"experiments/grids/{grid.name}.py, Selection rule",
           "methods": chosen["methods"], "drift_kl": chosen["drift_kl"], "selection": chosen["selection"],
           "diversity_key": dkey, "evidence": evidence, "commit": code["git_sha"], "dirty": code["git_dirty"],
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    print(json.dumps({"methods": doc["methods"], "drift_kl": doc["drift_kl"],
                      "reference": {k: v for k, v in chosen["selection"].items() if k != "per_method"},
                      "reached_reference": {m: s["reached_reference"] for m, s in chosen["selection"]["per_method"].items()}},
                     indent=1))
    if a.dry_run:
        return 0
    write_atomic(a.out, doc)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
