"""The base-model evaluation shared (issue 18): two runs at the judging evaluation (29 prompts x 8 seeds, 20 ODE
steps) in one fresh output root; the second (another method and seed) copies step 0 from <out>/base_eval_cache.
Prints and writes, per run, the step-0 and step-1 evaluation seconds (step 1 is computed by both runs: the
same-load reference for what the copied step 0 would have cost).

    python benchmarks/base_eval_saving.py [OUT.json]     # default benchmarks/results/base_eval_saving.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drift.config import make_config  # noqa: E402
from drift.rundir import RunDir  # noqa: E402
from drift.train import train  # noqa: E402

COMMON = ["train.iterations=1", "sample.groups_per_iter=1", "eval.num_prompts=29", "eval.seeds=8", "eval.num_steps=20",
          "eval.every=1000", "tracking_uri=none", "threads=1"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(ROOT, "benchmarks", "results", "base_eval_saving.json")
    out = tempfile.mkdtemp(prefix="drift-base-eval-")
    res = []
    for extra in (["method=flow_grpo", "seed=0"], ["method=drift", "seed=1"]):
        cfg = make_config(COMMON + [f"out={out}", *extra])
        t = time.perf_counter()
        train(cfg, progress=False)
        rows = {r["step"]: r for r in RunDir(cfg.run_dir()).read_metrics()}
        res.append({"run": " ".join(extra), "step0_eval_s": rows[0]["sys/eval_seconds"],
                    "step1_eval_s": rows[1]["sys/eval_seconds"], "wall_s": time.perf_counter() - t})
        print(res[-1], flush=True)
    saved = res[1]["step1_eval_s"] - res[1]["step0_eval_s"]
    print(f"the second run's step 0 took {res[1]['step0_eval_s']:.2f} s (copied) against {res[1]['step1_eval_s']:.2f} s "
          f"for its computed step 1: {saved:.1f} s saved per run after the first")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"runs": res, "saved_per_run_s": saved, "load_avg": os.getloadavg()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
