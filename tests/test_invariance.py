"""Speed work must not change results: per-step metrics and final weights of a short run of every method
match a golden record made before the optimisations (tests/golden/engine_<method>.json), up to
floating-point noise (rtol 1e-4 on metrics; the weights' sum and sum of squares likewise).

Regenerate only after an intended change of the algorithm (and say so in the commit):
    UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_invariance.py
"""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from drift.config import make_config
from drift.train import train

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
ITEMS = ["train.iterations=3", "sample.groups_per_iter=2", "sample.group_size=4", "sample.num_steps=5",
         "eval.num_prompts=4", "eval.seeds=2", "eval.num_steps=4", "eval.every=3", "eval.grid_prompts=2",
         "checkpoint_every=3", "tracking_uri=none", "threads=1"]


def record(tmp_path, method: str) -> dict:
    cfg = make_config(ITEMS + [f"method={method}", f"out={tmp_path}"])
    train(cfg, progress=False)
    with open(os.path.join(cfg.run_dir(), "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    metrics = [{k: v for k, v in r.items() if not k.startswith("sys/") or k == "sys/opt_steps"} for r in rows]
    ckpt = os.path.join(cfg.run_dir(), "checkpoints", "step_000003", "tensors.safetensors")
    if not os.path.exists(ckpt):  # the checkpoint's payload file name
        d = os.path.dirname(ckpt)
        ckpt = os.path.join(d, next(n for n in sorted(os.listdir(d)) if n.endswith(".safetensors")))
    t = load_file(ckpt)
    w = [v.double() for k, v in sorted(t.items()) if k.startswith("model/")]
    return {"metrics": metrics, "weights_sum": float(sum(x.sum() for x in w)),
            "weights_sumsq": float(sum(x.square().sum() for x in w)), "n_tensors": len(w)}


def close(a, b, rtol=1e-4, atol=1e-6) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= atol + rtol * abs(b)
    return a == b


@pytest.mark.parametrize("method", ["flow_grpo", "flow_grpo_kl", "diverse_grpo", "drift"])
def test_results_match_the_golden_record(tmp_path, method):
    got = record(tmp_path, method)
    path = os.path.join(GOLDEN, f"engine_{method}.json")
    if os.environ.get("UPDATE_GOLDEN"):
        with open(path, "w") as f:
            json.dump(got, f, indent=1)
    with open(path) as f:
        want = json.load(f)
    assert got["n_tensors"] == want["n_tensors"]
    assert close(got["weights_sum"], want["weights_sum"]) and close(got["weights_sumsq"], want["weights_sumsq"]), \
        (got["weights_sum"], want["weights_sum"], got["weights_sumsq"], want["weights_sumsq"])
    assert [r["step"] for r in got["metrics"]] == [r["step"] for r in want["metrics"]]
    for g, w in zip(got["metrics"], want["metrics"]):
        assert set(g) == set(w), set(g) ^ set(w)
        bad = {k: (g[k], w[k]) for k in w if not close(g[k], w[k])}
        assert not bad, f"step {w['step']}: {bad}"
