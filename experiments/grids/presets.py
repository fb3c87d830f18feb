"""Presets shared by grids: worlds (``Grid.worlds``; ``--world NAME`` picks one) and budgets.

World presets a grid can offer (``Grid.worlds``); ``--world NAME`` picks one.

``shapes`` is the embedded pixel-space world (CPU, minutes). ``sd3`` is the real SD3.5-Medium path with
Flow-GRPO's sampling settings (shift 3, CFG 4.5, 10 SDE steps for training, 40 ODE steps for evaluation,
groups of 24); it needs the SD3 backend (``model.world=sd3``) and GPUs, so use it with
``--executor slurm --profile example_gpu``. Budgets for it are placeholders until that backend lands.
"""

SHAPES: dict = {}

SD3: dict = {
    "model.world": "sd3",
    "model.path": "stabilityai/stable-diffusion-3.5-medium",
    "sample.shift": 3.0,
    "sample.cfg": 4.5,
    "sample.num_steps": 10,
    "sample.group_size": 24,
    "eval.num_steps": 40,
}


# Per-point budget of the embedded pareto/ablation grids on the shapes world, sized so that the 30-point
# pareto grid finishes in under 20 minutes on a 2-core CPU machine (2 points at a time, 1 thread each).
# Each iteration still makes 9 optimiser steps (one per trained denoising step), so 2 prompts x 8 samples
# instead of 4 x 8 halves an iteration's cost without halving the number of updates. Evaluation at
# iterations 0, 8 and 16 on 8 held-out prompts x 6 fixed seeds (20 ODE steps).
# Measured (one point alone on a free core, 1 thread, at 20 iterations / eval 8 x 8 every 10): 71-86 s of
# training per point + ~4 s start-up; one iteration 2.3 s (flow_grpo) to 3.0 s (KL, DiverseGRPO, DRIFT);
# one evaluation 7-8 s. At this budget: ~61 s (flow_grpo) to ~75 s per point.
SHAPES_FAST: dict = {
    "train.iterations": 16,
    "sample.groups_per_iter": 2,
    "eval.every": 8,
    "eval.num_prompts": 8,
    "eval.seeds": 6,
    "eval.grid_prompts": 8,
    "checkpoint_every": 4,
}
