"""smoke: every method once, tiny budget, one seed. First contact and the test suite (CI).

4 points x ~6-15 s each (3 iterations of 2 prompts x 4 samples, 4 steps; eval of 4 prompts x 2 seeds);
about 30-60 s on 2 cores with 2 in parallel, including Python start-up.

    python experiments/sweep.py --grid smoke --dry-run
    python experiments/sweep.py --grid smoke                     # local, or Slurm where there is one
"""

from .spec import Arm, Grid
from .presets import SD3, SHAPES

GRID = Grid(
    name="smoke",
    doc=__doc__,
    arms=(
        Arm("flow_grpo", {"method": "flow_grpo"}),
        Arm("flow_grpo_kl", {"method": "flow_grpo_kl"}, {"flow_grpo_kl.beta": (0.04,)}),
        Arm("diverse_grpo", {"method": "diverse_grpo"}, {"diverse_grpo.beta": (0.5,)}),
        Arm("drift", {"method": "drift"}, {"drift.lam": (1.0,)}),
    ),
    seeds=(0,),
    budget={
        "train.iterations": 3, "sample.groups_per_iter": 2, "sample.group_size": 4, "sample.num_steps": 4,
        "eval.num_prompts": 4, "eval.seeds": 2, "eval.num_steps": 4, "eval.every": 1, "eval.grid_prompts": 2,
        "checkpoint_every": 1,
    },
    worlds={"shapes": SHAPES, "sd3": {**SD3, "sample.group_size": 4, "eval.num_steps": 4}},
    point_seconds={"flow_grpo": 8, "flow_grpo_kl": 9, "diverse_grpo": 9, "drift": 9},
)
