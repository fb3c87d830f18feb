"""Speed work must not change results: per-step metrics and final weights of a short run of every method
match a golden record made before the optimisations (tests/golden/engine_<method>.json), up to
floating-point noise (rtol 1e-4 on metrics; the weights' sum and sum of squares likewise).

Regenerate only after an intended change of the algorithm (and say so in the commit):
    UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_invariance.py -k golden_record

tests/golden/engine_<method>_pre17.json are the records before issue 17 changed two defaults (train.cfg_grad:
both -> cond_only; the EMA: every 8 optimiser steps -> every 2 iterations); with those two settings switched back
the engine still reproduces them (every key they hold; later metrics are extra). They are never regenerated.
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


PRE17 = ["train.cfg_grad=both", "train.ema_unit=opt_step", "train.ema_every=8", "train.holdout_validation=false"]
"""The settings that give the engine's behaviour before issue 17 (and the training prompt pool before issue 16
carved the validation split out of it)."""

DRIFT_V1 = ["drift.subset=densest", "drift.prompt=embed", "drift.shaping=terminal", "drift.lam=1.0"]
"""Method drift's components before DRIFT v2 changed its defaults (issue 16): its pre-17 record was made with them."""


def record(tmp_path, method: str, extra: tuple = ()) -> dict:
    cfg = make_config(ITEMS + [f"method={method}", f"out={tmp_path}", *extra])
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


@pytest.mark.parametrize("method", ["flow_grpo", "flow_grpo_kl", "diverse_grpo", "drift"])
def test_pre17_settings_reproduce_the_pre17_record(tmp_path, method):
    got = record(tmp_path, method, tuple(PRE17) + (tuple(DRIFT_V1) if method == "drift" else ()))
    with open(os.path.join(GOLDEN, f"engine_{method}_pre17.json")) as f:
        want = json.load(f)
    assert got["n_tensors"] == want["n_tensors"]
    assert close(got["weights_sum"], want["weights_sum"]) and close(got["weights_sumsq"], want["weights_sumsq"])
    assert [r["step"] for r in got["metrics"]] == [r["step"] for r in want["metrics"]]
    for g, w in zip(got["metrics"], want["metrics"]):
        assert set(w) <= set(g), set(w) - set(g)
        bad = {k: (g[k], w[k]) for k in w if not close(g[k], w[k])}
        assert not bad, f"step {w['step']}: {bad}"
