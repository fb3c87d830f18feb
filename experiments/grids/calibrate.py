"""calibrate: the seed noise of the judging budget, measured before the judging grid is sized.

Flow-GRPO and one strong KL setting (beta = 1.0), 8 seeds each (20-27: neither tuning seeds 100-104 nor the
judging seeds), at the candidate judging budget (presets.SHAPES_JUDGE: 30 iterations x 4 prompts x 8 samples,
eval at 0/10/20/30 on all 29 held-out prompts x 8 noises). 16 runs, ~6.5 min each with one thread: ~55 min on
2 free cores.

    python experiments/sweep.py --grid calibrate && python analysis/frontier.py --grid calibrate

What it gives: per arm, the per-seed SD of final alignment and final diversity (every diversity measure), and the
per-seed paired Flow-GRPO - KL difference; the seeds per arm needed for an effect delta follow from
n ~= (z_0.975 + z_0.8)^2 sigma^2 / delta^2 (the per-seed paired statistics in analysis/stats.py).
"""

from .presets import SHAPES, SHAPES_JUDGE
from .spec import Arm, Grid

SEEDS = tuple(range(20, 28))

GRID = Grid(
    name="calibrate",
    doc=__doc__,
    arms=(
        Arm("flow_grpo", {"method": "flow_grpo"}),
        Arm("flow_grpo_kl", {"method": "flow_grpo_kl"}, {"flow_grpo_kl.beta": (1.0,)}),
    ),
    seeds=SEEDS,
    budget=SHAPES_JUDGE,
    worlds={"shapes": SHAPES},
    point_seconds={"flow_grpo": 350, "flow_grpo_kl": 420},
)
