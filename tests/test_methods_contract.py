"""One contract every method (DRIFT, each DRIFT ablation, each baseline) must pass on the shapes world."""

import json
import math
import os

import pytest

from drift.config import ConfigError, make_config
from drift.train import train

TINY = {
    "train.iterations": "2", "sample.groups_per_iter": "2", "sample.group_size": "4", "sample.num_steps": "4",
    "eval.num_prompts": "2", "eval.seeds": "2", "eval.num_steps": "3", "eval.every": "2", "eval.grid_prompts": "1",
    "tracking_uri": "none",
}

V1 = {"drift.subset": "densest", "drift.prompt": "embed", "drift.shaping": "terminal", "drift.lam": "1.0"}
"""The first DRIFT's components (its defaults before v2)."""

# name -> (overrides, metric keys the method must log at every step; the correlation diagnostics of drift are logged only where
# defined, >= 3 gated samples with spread, which these tiny groups rarely have: tests/test_drift_v2.py covers them)
METHODS = {
    "flow_grpo": ({"method": "flow_grpo"}, []),
    "flow_grpo_kl": ({"method": "flow_grpo_kl", "flow_grpo_kl.beta": "0.04"}, ["loss/kl"]),
    "diverse_grpo": ({"method": "diverse_grpo"}, ["diverse/bonus_mean", "diverse/clusters", "loss/sa_reg"]),
    "oracle_spread": ({"method": "oracle_spread"}, ["oracle/spread_mean", "oracle/bonus_mean"]),
    "drift": ({"method": "drift"}, ["drift/std_kept_over_all", "drift/judge_levels_kept", "drift/cads_scale",
                                    "drift/bonus_mean", "drift/bonus_to_incorrect"]),
    "drift_kl_robust_decoupled": ({"method": "drift", "drift.kl_beta": "0.04", "drift.subset": "robust",
                                   "drift.shaping": "decoupled", "drift.lam": "0.5", "drift.cads_uncond": "true"},
                                  ["loss/kl", "drift/robust_clipped_frac"]),
    "drift_window_all_stats": ({"method": "drift", "drift.subset": "densest", "drift.subset_stats": "all",
                                "drift.shaping": "drive", "drift.prompt": "paraphrase"}, ["drift/std_kept_over_all"]),
    "drift_outlier_gardo": ({"method": "drift", "drift.shaping": "gardo", "drift.gardo_divide_std": "true"},
                            []),
    "drift-v1": ({"method": "drift", **V1}, ["drift/dropped_high", "drift/dropped_low", "drift/prompt_scale",
                                             "drift/bonus_mean"]),
    "drift-v1_paraphrase_kl": ({"method": "drift", **V1, "drift.prompt": "both", "drift.kl_beta": "0.01"}, ["loss/kl"]),
    "drift-no-subset": ({"method": "drift", "drift.subset": "none"}, ["drift/cads_scale", "drift/bonus_mean"]),
    "drift-no-prompt": ({"method": "drift", "drift.prompt": "none"}, ["drift/std_kept_over_all", "drift/bonus_mean"]),
    "drift-no-shaping": ({"method": "drift", "drift.shaping": "none"}, ["drift/std_kept_over_all", "drift/cads_scale"]),
    "drift-subset-only": ({"method": "drift", "drift.prompt": "none", "drift.shaping": "none"}, ["drift/std_kept_over_all"]),
    "drift-prompt-only": ({"method": "drift", "drift.subset": "none", "drift.shaping": "none"}, ["drift/cads_scale"]),
    "drift-shaping-only": ({"method": "drift", "drift.subset": "none", "drift.prompt": "none"}, ["drift/bonus_mean"]),
}


def run(tmp_path, overrides, sub):
    cfg = make_config({**TINY, "out": str(tmp_path / sub), **overrides})
    train(cfg, progress=False)
    with open(os.path.join(cfg.run_dir(), "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", list(METHODS))
def test_method_contract(tmp_path, name):
    overrides, keys = METHODS[name]
    rows = run(tmp_path, overrides, "a")
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert math.isfinite(r["loss/total"]) and math.isfinite(r["loss/policy"])
        for k in keys + ["reward/mean", "diversity/train_pairwise", "reward/kept_mean"]:
            assert k in r, f"{name}: missing metric {k}"
        assert all(k.split("/")[0] in ("reward", "diversity", "loss", "sys", "eval", "drift", "diverse",
                                                 "oracle") for k in r if k != "step")
    # reproducible with a fixed seed
    again = run(tmp_path, overrides, "b")
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("sys/") or k == "sys/opt_steps"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(again)


@pytest.mark.parametrize("overrides, pattern", [
    ({"method": "flow_grpo", "drift.subset": "densest"}, r"drift\.subset=.*option of method 'drift', but method is 'flow_grpo'"),
    ({"method": "flow_grpo_kl", "diverse_grpo.beta": "1"}, r"option of method 'diverse_grpo', but method is 'flow_grpo_kl'"),
    ({"method": "drift", "drift.subset": "densest", "drift.oversample": "1"},
     r"drift\.oversample=1: must be >= 2 with drift\.subset='densest'"),
    ({"method": "drift", "drift.subset": "median"}, r"drift\.subset='median': must be 'none' or one of"),
    ({"method": "drift", "drift.subset_stats": "all"}, r"drift\.subset_stats='all': 'all' applies to the window rules"),
    ({"method": "drift", "drift.kappa": "0"}, r"drift\.kappa=0\.0: must be > 0"),
    ({"method": "drift", "drift.cads_tau2": "0.5"}, r"drift\.cads_tau2=0\.5: must be in \(drift\.cads_tau1=0\.6, 1\]"),
    ({"method": "drift", "drift.delta": "0"}, r"drift\.delta=0\.0: must be > 0"),
    ({"method": "drift", "drift.kl_beta": "-1"}, r"drift\.kl_beta=-1\.0: must be >= 0"),
    ({"method": "drift", "drift.shaping": "gardo", "drift.subset": "robust"}, r"drift\.shaping='gardo'.*computes the advantages"),
    ({"method": "drift", "drift.subset": "robust", "train.global_std": "true"},
     r"train\.global_std=True: must be false with drift\.subset='robust'"),
    ({"method": "flow_grpo", "eval.conditioning": "noisy"}, r"eval\.conditioning='noisy': must be 'clean' or 'cads'"),
    ({"method": "drift", "drift.shaping": "dense"}, r"drift\.shaping='dense'"),
    ({"method": "drift", "drift.lam": "-1"}, r"drift\.lam=-1\.0: must be >= 0"),
    ({"method": "diverse_grpo", "diverse_grpo.sigma": "0"}, r"diverse_grpo\.sigma=0\.0: must be > 0"),
    ({"method": "drift", "drift.colour": "red"}, r"drift\.colour=.*unknown field"),
])
def test_bad_options_are_refused(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_config({**TINY, **overrides})
