"""Presets shared by grids: worlds (``Grid.worlds``; ``--world NAME`` picks one) and budgets.

``shapes`` is the embedded pixel-space world (CPU, minutes). ``sd3`` is the real SD3.5-Medium path
(drift/worlds/sd3, docs/sd3.md) with Flow-GRPO's SD3.5-M settings (the table in docs/sd3.md, Settings);
it needs the weights and GPUs (README "Running on a cluster"). The SD3 grids are pareto_sd3 and
ablation_sd3 (their knob values are scaled for PickScore rewards); of the embedded grids only smoke has an
``sd3`` world (the same preset at a tiny budget).

Print a preset as command-line overrides for a single run:

    python experiments/grids/presets.py sd3            # -> model.world=sd3 model.path=... (one per line)
    python -m drift.train $(python experiments/grids/presets.py sd3) method=drift seed=0
"""

import sys

SHAPES: dict = {}

SD3: dict = {
    # model: SD3.5-Medium with LoRA r 32 / alpha 64 on the joint-attention projections (ModelConfig.lora_targets)
    "model.world": "sd3",
    "model.path": "stabilityai/stable-diffusion-3.5-medium",
    "model.lora_rank": 32,
    "model.lora_alpha": 64.0,
    "model.features": "dreamsim",
    # sampling: 10 flow-SDE steps (a = 0.7), shift 3, CFG 4.5 at sampling and in the training forward
    "sample.num_steps": 10,
    "sample.noise_level": 0.7,
    "sample.shift": 3.0,
    "sample.cfg": 4.5,
    "sample.group_size": 16,  # Flow-GRPO: 24 on 32 GPUs, 16 on its 4-GPU preset (8 on 1 GPU)
    "sample.groups_per_iter": 8,  # 128 images per iteration (DRIFT's oversampling draws 2x)
    # optimisation: AdamW 3e-4, clip 1e-4 (mean-reduced log-probs), global-std advantages, adv clip 5,
    # one optimiser step per iteration over all trained steps (Flow-GRPO makes 2 per epoch over half the
    # batch each), micro-batches of 8 trajectories per training forward
    "train.lr": 3e-4,
    "train.clip_range": 1e-4,
    "train.global_std": True,
    "train.steps_per_update": 9,
    "train.micro_batch": 8,
    # the training forward detaches the unconditional CFG branch (Flow-GRPO at ac4c86e); the EMA every 2
    # iterations (the lag of Flow-GRPO's 32-GPU configs, docs/methods.md); sampling in calls of 32 trajectories
    "train.cfg_grad": "cond_only",
    "train.ema_unit": "iteration",
    "train.ema_every": 2,
    "sample.micro_batch": 32,
    # evaluation: 40 ODE steps, 24 held-out prompts x 8 fixed seeds (diversity is measured within a prompt)
    "eval.num_steps": 40,
    "eval.num_prompts": 24,
    "eval.seeds": 8,
    "eval.grid_prompts": 8,
    # sd3 section: 512 px, bf16 transformer / text encoders, fp32 VAE, PickScore as the training reward,
    # HPSv2.1 and the aesthetic predictor as evaluation-only monitors
    "sd3.resolution": 512,
    "sd3.w_pickscore": 1.0,
    "sd3.eval_rewards": ("hpsv21", "aesthetic"),
}
"""Flow-GRPO's SD3.5-M recipe as overrides (a single-GPU run; multi-GPU runs raise groups_per_iter)."""

SD3_BUDGET: dict = {"train.iterations": 300, "eval.every": 50, "checkpoint_every": 10}
"""Per-point budget of the SD3 grids: 300 iterations x 128 images (~38K images; Flow-GRPO's PickScore runs
see ~1.2K images per epoch for hundreds of epochs). A placeholder to size the GPU-hours, not a tuned value."""


SD3_MINUTES: dict = {
    "iteration": 1.65,  # flow_grpo: 10 sampling steps, 9 trained steps, decode + rewards + features
    "iteration_reference": 2.13,  # + the reference policy's forward on every trained step (KL, DiverseGRPO)
    "iteration_oversample2": 2.23,  # 2x oversampled candidates (DRIFT's subset selection)
    "evaluation": 3.0,  # 24 prompts x 8 seeds, 40 ODE steps
    "source": "README 'GPU-hours'",
}
"""Minutes of one H200 per iteration / evaluation at the ``SD3`` preset, for the dry run's GPU-hour
estimate: the GPU check's per-layer cost of the mid-sized random SD3 times SD3.5-M's 24 layers (an
extrapolation, not a measurement of SD3.5-M). They reproduce the README table's 8.6 / 11.0 / 11.5 GPU-h per
run of 300 iterations and 7 evaluations."""


def as_overrides(preset: dict) -> list[str]:
    """A preset as 'key=value' strings (tuples as comma lists) for drift.train / make_config."""
    return [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in preset.items()]


if __name__ == "__main__":
    presets = {"sd3": SD3, "shapes": SHAPES}
    if len(sys.argv) != 2 or sys.argv[1] not in presets:
        print(f"usage: python experiments/grids/presets.py {{{','.join(presets)}}}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(as_overrides(presets[sys.argv[1]])))

# Per-point budget of the embedded fast grid (`make main`), sized so that `make main` on a fresh clone (set-up
# included) finishes in under 20 minutes on the 2-core CPU dev machine (2 points at a time, 1 thread each).
# Each iteration still makes 9 optimiser steps (one per trained denoising step): 2 prompts x 8 samples instead
# of 4 x 8 halves an iteration's cost without halving the number of updates. Evaluation at iterations 0, 4
# and 8 on 8 held-out prompts x 4 fixed seeds (20 ODE steps); the step-0 evaluation is computed once per
# output root and shared (drift/eval_cache.py). Measured on the dev machine of 2026-12-02 (sgemm peak 58
# GFLOP/s on one thread), at 12 iterations: KL points 97-123 s, DiverseGRPO 91-111 s, DRIFT 90 s, which put
# `make main` at ~22 min with its set-up (4-7 min); hence 8 iterations. benchmarks/pareto_walltime.py times it.
SHAPES_FAST: dict = {
    "train.iterations": 8,
    "sample.groups_per_iter": 2,
    "eval.every": 4,
    "eval.num_prompts": 8,
    "eval.seeds": 4,
    "eval.grid_prompts": 8,
    "checkpoint_every": 4,
}

# Candidate budget of the judging grids on the shapes world (the calibrate grid measures its seed noise):
# 30 iterations of 4 prompts x 8 samples (the run defaults; Flow-GRPO's diversity collapse is well under way by
# then while its images still hold), evaluated at iterations 0/10/20/30 on all 29 held-out prompts x 8 fixed noises.
# About 6.5 min per run with one thread on the 2-core dev machine (37-52 s per evaluation).
SHAPES_JUDGE: dict = {
    "train.iterations": 30,
    "sample.groups_per_iter": 4,
    "eval.every": 10,
    "eval.num_prompts": 29,
    "eval.seeds": 8,
    "eval.grid_prompts": 8,
    "checkpoint_every": 5,
}
