"""ablation_sd3: DRIFT with each component removed, and each alone, against Flow-GRPO, on SD3.5-Medium.

The arms of the embedded ``ablation`` grid at drift.lam = 0.3 (the middle of pareto_sd3's range), 2 seeds:
8 arms x 2 seeds = 16 points of one GPU each for SD3_BUDGET (presets.py).

    python experiments/sweep.py --grid ablation_sd3 --dry-run
"""

from .ablation import ablation_arms, drift
from .presets import SD3, SD3_BUDGET
from .spec import Arm, Grid

LAM = 0.3


def arm(name: str, *on: str) -> Arm:
    fixed = drift(*on)
    if "shaping" in on:
        fixed["drift.lam"] = LAM
    return Arm(name, fixed)


GRID = Grid(
    name="ablation_sd3",
    doc=__doc__,
    arms=ablation_arms(arm),
    seeds=(0, 1),
    budget=SD3_BUDGET,
    worlds={"sd3": SD3},
)
