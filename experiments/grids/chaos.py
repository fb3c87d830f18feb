"""chaos: the smallest sweep with a front to analyse (3 methods, 1 seed, 4 iterations, a checkpoint
every iteration): tests/test_chaos.py kills its workers and its driver at random and checks that the
final report is the one an undisturbed sweep writes. About 15-25 s on 2 cores with 2 in parallel.

    python experiments/sweep.py --grid chaos --dry-run
"""

from .spec import Arm, Grid
from .presets import SHAPES

GRID = Grid(
    name="chaos",
    doc=__doc__,
    arms=(
        Arm("flow_grpo", {"method": "flow_grpo"}),
        Arm("flow_grpo_kl", {"method": "flow_grpo_kl"}, {"flow_grpo_kl.beta": (0.04,)}),
        Arm("drift", {"method": "drift"}, {"drift.lam": (1.0,)}),
    ),
    seeds=(0,),
    budget={
        "train.iterations": 4, "sample.groups_per_iter": 2, "sample.group_size": 4, "sample.num_steps": 4,
        "eval.num_prompts": 2, "eval.seeds": 2, "eval.num_steps": 4, "eval.every": 2, "eval.grid_prompts": 2,
        "checkpoint_every": 1,
    },
    worlds={"shapes": SHAPES},
    point_seconds={"flow_grpo": 6, "flow_grpo_kl": 7, "drift": 7},
)
