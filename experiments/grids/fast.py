"""pareto: every method across its strength knob, 3 seeds, on the shapes world: each method's
alignment-diversity front (analysis/frontier.py draws it).

10 settings x 3 seeds = 30 points at the SHAPES_FAST budget (presets.py: 16 iterations of 2 prompts x
8 samples, eval at 0/8/16 on 8 prompts x 6 seeds): ~61-75 s per point with one thread, so about 18
minutes on a 2-core machine with 2 at a time (point_seconds below; the dry run prints the estimate).

    python experiments/sweep.py --grid pareto --dry-run
    python experiments/sweep.py --grid pareto && python analysis/frontier.py --grid pareto

Edit the knob values here; each change of a value is a new run directory (its config hash changes).
"""

from .presets import SHAPES, SHAPES_FAST
from .spec import Arm, Grid

KL_BETAS = (0.04, 0.2, 1.0)  # flow_grpo_kl.beta: KL-to-reference strength (0.04 = Flow-GRPO GenEval; the shapes world needs more)
DIVERSE_BETAS = (0.25, 0.5, 1.0)  # diverse_grpo.beta: creativity-bonus weight
DRIFT_LAMS = (0.5, 1.0, 2.0)  # drift.lam: diversity-shaping strength (subset + prompt variation at defaults)
SEEDS = (0, 1, 2)


def pareto_arms(kl_betas, diverse_betas, drift_lams) -> tuple[Arm, ...]:
    """Every method across its strength knob (shared by pareto and pareto_sd3; only the values differ)."""
    return (
        Arm("flow_grpo", {"method": "flow_grpo"}),  # beta = 0: the collapse end of every front
        Arm("flow_grpo_kl", {"method": "flow_grpo_kl"}, {"flow_grpo_kl.beta": kl_betas}),
        Arm("diverse_grpo", {"method": "diverse_grpo"}, {"diverse_grpo.beta": diverse_betas}),
        Arm("drift", {"method": "drift"}, {"drift.lam": drift_lams}),
    )


GRID = Grid(
    name="pareto",
    doc=__doc__,
    arms=pareto_arms(KL_BETAS, DIVERSE_BETAS, DRIFT_LAMS),
    seeds=SEEDS,
    budget=SHAPES_FAST,
    worlds={"shapes": SHAPES},  # SD3.5-M: the <grid>_sd3 grid (same arms, knobs for PickScore's scale)
    point_seconds={"flow_grpo": 61, "flow_grpo_kl": 75, "diverse_grpo": 73, "drift": 75},
)
