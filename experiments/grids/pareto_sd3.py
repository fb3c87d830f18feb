"""pareto_sd3: every method across its strength knob, 3 seeds, on SD3.5-Medium with PickScore (the real path).

The same arms as the embedded ``fast`` grid, with knob values for this reward's scale: PickScore/26 varies
by ~0.01-0.02 within a group, DreamSim distances by ~0.05 (docs/methods.md, Knob scales on SD3.5), so the
shapes world's diversity weights would swamp it. KL betas bracket Flow-GRPO's 0.01 (PickScore) and 0.04
(GenEval); DiverseGRPO's bonus saturates near beta 3-5 in its paper (secondary source); the DRIFT lambdas
are this project's guess. A 1-2 point pilot should confirm the ranges before the full sweep.

10 settings x 3 seeds = 30 points, each one GPU for SD3_BUDGET (presets.py); GPU-hours: README "Running on
a cluster".

    python experiments/sweep.py --grid pareto_sd3 --dry-run
    python experiments/sweep.py --grid pareto_sd3 --executor slurm --profile sd3_1gpu --tracking-uri "$MLFLOW_TRACKING_URI"
"""

from .presets import SD3, SD3_BUDGET
from .fast import pareto_arms
from .spec import Grid

KL_BETAS = (0.004, 0.01, 0.04)  # flow_grpo_kl.beta: Flow-GRPO uses 0.01 for PickScore, 0.04 for GenEval
DIVERSE_BETAS = (1.0, 3.0, 5.0)  # diverse_grpo.beta: creativity-bonus weight (paper notes: gains saturate ~3-5)
DRIFT_LAMS = (0.1, 0.3, 1.0)  # drift.lam: diversity-shaping strength (project guess for PickScore/26 + DreamSim)
SEEDS = (0, 1, 2)

GRID = Grid(
    name="pareto_sd3",
    doc=__doc__,
    arms=pareto_arms(KL_BETAS, DIVERSE_BETAS, DRIFT_LAMS),
    seeds=SEEDS,
    budget=SD3_BUDGET,
    worlds={"sd3": SD3},
)
