"""ablation: DRIFT with each component removed, and each alone, against Flow-GRPO; 2 seeds.

Components (drift/components/): reward-concentrated subset selection (drift.subset), prompt variation
(drift.prompt) and diversity potential shaping (drift.shaping). 8 arms x 2 seeds = 16 points at the
SHAPES_FAST budget, about 10 minutes on 2 cores.

    python experiments/sweep.py --grid ablation --dry-run
"""

from .presets import SHAPES, SHAPES_FAST
from .spec import Arm, Grid

OFF = {"subset": "none", "prompt": "none", "shaping": "none"}  # each component's 'off' value


def drift(*on: str) -> dict:
    """method=drift with only the named components on (the others at their 'off' value)."""
    return {"method": "drift", **{f"drift.{c}": v for c, v in OFF.items() if c not in on}}


GRID = Grid(
    name="ablation",
    doc=__doc__,
    arms=(
        Arm("drift", drift("subset", "prompt", "shaping")),
        Arm("drift -subset", drift("prompt", "shaping")),
        Arm("drift -prompt", drift("subset", "shaping")),
        Arm("drift -shaping", drift("subset", "prompt")),
        Arm("subset only", drift("subset")),
        Arm("prompt only", drift("prompt")),
        Arm("shaping only", drift("shaping")),
        Arm("flow_grpo", {"method": "flow_grpo"}),
    ),
    seeds=(0, 1),
    budget=SHAPES_FAST,
    worlds={"shapes": SHAPES},  # SD3.5-M: the <grid>_sd3 grid (same arms, knobs for PickScore's scale)
    point_seconds={"flow_grpo": 61, "drift": 75},
)
