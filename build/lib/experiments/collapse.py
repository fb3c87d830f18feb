"""The collapse demo on the embedded shapes world: Flow-GRPO without and with KL, then figures.

    python experiments/collapse.py                 # 2 runs in parallel (~10 min on 2 CPU cores)
    python experiments/collapse.py --seeds 0 1 --iterations 60 --out runs

Writes, under <out>/collapse/figures/: curves.png (eval alignment, diversity and the judge-level
diversity measures vs iteration), grid_<method>.png (eval samples at the start and end, stacked),
summary.md (start -> end per run). Runs already finished are not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drift.config import make_config  # noqa: E402
from drift.tracking import read_metrics  # noqa: E402

METHODS = {"flow_grpo": [], "flow_grpo_kl": ["flow_grpo_kl.beta=1.0"]}
KEYS = [("eval/alignment", "alignment (mean task reward)"), ("eval/diversity", "diversity (feature pairwise)"),
        ("eval/diversity/position_std", "position spread"), ("eval/diversity/size_std", "size spread"),
        ("eval/diversity/free_attr_entropy", "free-attribute entropy"), ("eval/reward/judge_all", "judge all-correct")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--iterations", type=int, default=None, help="override train.iterations")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs"))
    ap.add_argument("--parallel", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--tracking-uri", default="", help="MLflow URI (default: sqlite under --out)")
    args = ap.parse_args()

    jobs = []
    for method, extra in METHODS.items():
        for seed in args.seeds:
            items = [f"method={method}", f"seed={seed}", "experiment=collapse", f"out={args.out}", "threads=1", *extra]
            if args.iterations:
                items.append(f"train.iterations={args.iterations}")
            if args.tracking_uri:
                items.append(f"tracking_uri={args.tracking_uri}")
            jobs.append((method, seed, items, make_config(items)))  # validates before anything runs

    # Initialise the MLflow DB once, before parallel runs touch it (first-time migration is racy).
    cfg0 = jobs[0][3]
    if cfg0.resolved_tracking_uri().lower() != "none":
        from drift.tracking import init_mlflow_experiment

        os.makedirs(args.out, exist_ok=True)
        init_mlflow_experiment(cfg0.resolved_tracking_uri(), "collapse", os.path.join(args.out, "mlartifacts"))

    t0 = time.time()
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < args.parallel:
            method, seed, items, cfg = pending.pop(0)
            log = os.path.join(cfg.run_dir(), "stdout.log")
            os.makedirs(cfg.run_dir(), exist_ok=True)
            print(f"[collapse] start {method} seed {seed} -> {cfg.run_dir()}", flush=True)
            running.append((method, seed, cfg, subprocess.Popen([sys.executable, "-m", "drift.train", *items, "--quiet"],
                                                               cwd=ROOT, stdout=open(log, "a"), stderr=subprocess.STDOUT)))
        time.sleep(2)
        for r in list(running):
            if r[3].poll() is not None:
                running.remove(r)
                status = "done" if r[3].returncode == 0 else f"FAILED (exit {r[3].returncode}), see stdout.log"
                print(f"[collapse] {r[0]} seed {r[1]}: {status} after {time.time() - t0:.0f} s", flush=True)
                if r[3].returncode != 0:
                    sys.exit(1)
    figures(jobs, os.path.join(args.out, "collapse", "figures"))
    print(f"[collapse] all runs done in {time.time() - t0:.0f} s")


def figures(jobs, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    os.makedirs(out, exist_ok=True)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    lines = ["| method | seed | " + " | ".join(lbl for _, lbl in KEYS) + " |", "|---|---|" + "---|" * len(KEYS)]
    colours = {"flow_grpo": "tab:red", "flow_grpo_kl": "tab:blue"}
    for method, seed, _, cfg in jobs:
        ev = [r for r in read_metrics(cfg.run_dir()) if "eval/alignment" in r]
        for ax, (key, label) in zip(axes.flat, KEYS):
            ax.plot([r["step"] for r in ev], [r[key] for r in ev], color=colours.get(method), alpha=0.8,
                    label=f"{method} s{seed}", marker="o", ms=3)
            ax.set_title(label)
            ax.set_xlabel("iteration")
        lines.append(f"| {method} | {seed} | " + " | ".join(f"{ev[0][k]:.3f} → {ev[-1][k]:.3f}" for k, _ in KEYS) + " |")
        grids = [os.path.join(cfg.run_dir(), "samples", f"eval_{ev[i]['step']:06d}.png") for i in (0, -1)]
        ims = [Image.open(g) for g in grids]
        canvas = Image.new("RGB", (ims[0].width * 2 + 10, ims[0].height), "white")
        canvas.paste(ims[0], (0, 0))
        canvas.paste(ims[1], (ims[0].width + 10, 0))
        canvas.save(os.path.join(out, f"grid_{method}_seed{seed}.png"))
    axes.flat[0].legend()
    fig.suptitle("Shapes world: Flow-GRPO (β=0) vs KL-regularised (β=1.0); eval on held-out prompts, ODE, fixed noise")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=110)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("Eval start → end (iteration 0 → last), held-out prompts, fixed noise.\n"
                "Left grid of each grid_*.png = start, right = end; rows = prompts, columns = seeds.\n\n")
        f.write("\n".join(lines) + "\n")
    print(open(os.path.join(out, "summary.md")).read())
    print(f"[collapse] figures in {out}")
    with open(os.path.join(out, "runs.json"), "w") as f:
        json.dump([{"method": m, "seed": s, "run_dir": c.run_dir()} for m, s, _, c in jobs], f, indent=1)


if __name__ == "__main__":
    main()
