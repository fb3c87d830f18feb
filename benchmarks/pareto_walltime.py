"""Wall time of the embedded fast grid (the README's main job, formerly named pareto), with the breakdown by method and phase.

    python benchmarks/pareto_walltime.py                       # runs the grid into a fresh folder, times it
    python benchmarks/pareto_walltime.py --analyze runs/fast    # breakdown of a sweep already run (no total)

The grid runs exactly as ``make main`` runs it (experiments/sweep.py --grid fast --executor local),
into a throw-away output root so nothing is skipped as already done. Per point, ``launch.jsonl`` gives
the job's seconds (start-up included) and ``metrics.jsonl`` the engine's ``sys/*_seconds``; the
difference is start-up (imports, model load) and teardown. Writes benchmarks/results/pareto_walltime.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drift.rundir import SWEEP_INDEX, RunDir, read_jsonl  # noqa: E402

PHASES = {"sample": ("sample",), "reward+features": ("reward", "features"), "forward+backward": ("forward", "backward"),
          "optimizer": ("optimizer",), "evaluation": ("eval",), "checkpoint": ("checkpoint",),
          "prompt+advantage": ("prompt", "advantage")}


def point_breakdown(run_dir: str) -> dict:
    rd = RunDir(run_dir)
    seconds = next((ev["seconds"] for ev in reversed(read_jsonl(rd.launch_log, decode=False, metrics=False))
                    if ev.get("event") == "done"), None)
    out = {k: 0.0 for k in PHASES}
    for row in rd.read_metrics():
        for name, keys in PHASES.items():
            out[name] += sum(row.get(f"sys/{k}_seconds", 0.0) for k in keys)
    out["point"] = seconds
    out["startup+other"] = seconds - sum(out[k] for k in PHASES) if seconds is not None else None
    return out


def finished(run_dir: str) -> bool:
    """The point ran to its end (its launch log records 'done')."""
    rd = RunDir(run_dir)
    return os.path.exists(rd.launch_log) and any(ev.get("event") == "done" for ev in read_jsonl(rd.launch_log, decode=False, metrics=False))


def analyze(grid_dir: str) -> dict:
    """Per-method sums of the finished points' job seconds and phase seconds; unfinished points are counted apart
    (a sweep still running, or stopped, can be broken down; any grid's folder, not only fast's)."""
    with open(os.path.join(grid_dir, SWEEP_INDEX)) as f:
        sweep = json.load(f)
    by_method: dict[str, dict] = {}
    unfinished = 0
    for p in sweep["points"]:
        if not finished(p["run_dir"]):
            unfinished += 1
            continue
        b = point_breakdown(p["run_dir"])
        agg = by_method.setdefault(p["method"], {"points": 0})
        agg["points"] += 1
        for k, v in b.items():
            agg[k] = agg.get(k, 0.0) + (v or 0.0)
    for agg in by_method.values():
        agg["mean_point_seconds"] = agg["point"] / agg["points"]
    return {"grid_dir": os.path.abspath(grid_dir), "n_points": sweep["n_points"], "unfinished_points": unfinished,
            "by_method": by_method,
            "sum_point_seconds": sum(a["point"] for a in by_method.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--analyze", metavar="GRID_DIR", help="only break down an existing sweep (<out>/fast)")
    ap.add_argument("--parallel", type=int, default=None, help="passed to sweep.py (default: its own)")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "pareto_walltime.json"))
    a = ap.parse_args()
    import torch

    from drift.bench import MatmulPeak, machine

    torch.set_num_threads(1)

    total = None
    if a.analyze:
        grid_dir = a.analyze
    else:
        out = tempfile.mkdtemp(prefix="drift-pareto-bench-")
        cmd = [sys.executable, os.path.join(ROOT, "experiments", "sweep.py"), "--grid", "fast", "--executor", "local",
               "--out", out]
        if a.parallel:
            cmd += ["--parallel", str(a.parallel)]
        print("[bench] " + " ".join(cmd), flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        total = time.perf_counter() - t
        if rc != 0:
            print(f"[bench] the sweep failed (exit {rc}) after {total:.0f} s", file=sys.stderr)
            return rc
        grid_dir = os.path.join(out, "fast")
    res = analyze(grid_dir)
    res["total_wall_seconds"] = total
    res["machine"] = machine()
    peak = MatmulPeak("cpu")  # the figure's yardstick: this machine's sgemm rate on one thread, as each point runs
    for _ in range(5):
        peak.measure()
    res["matmul_peak_1_thread"] = peak.summary()
    print(f"\n{os.path.basename(os.path.normpath(grid_dir))} grid: {res['n_points']} points"
          + (f" ({unfinished} not finished or not run, not counted)" if (unfinished := res["unfinished_points"]) else "")
          + (f", wall time {total / 60:.1f} min" if total else "")
          + f"; this machine's sgemm peak on 1 thread: {res['matmul_peak_1_thread']['flops_per_second'] / 1e9:.1f} GFLOP/s")
    cols = ["points", "mean_point_seconds", "point", *PHASES, "startup+other"]
    print(f"{'method':<14}" + "".join(f"{c[:16]:>17}" for c in cols))
    for m, agg in sorted(res["by_method"].items()):
        print(f"{m:<14}" + "".join(f"{agg[c]:>17.1f}" for c in cols))
    print(f"sum of point seconds: {res['sum_point_seconds']:.0f} s (points run 'parallel' at a time)")
    if not a.analyze:
        os.makedirs(os.path.dirname(a.json), exist_ok=True)
        with open(a.json + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
