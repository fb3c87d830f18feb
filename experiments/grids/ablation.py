"""ablation: DRIFT with each component removed, and each alone, against Flow-GRPO, at the judging budget.

Components (drift/components/): sampling (drift.subset), prompting (drift.prompt) and optimisation
(drift.shaping); a component is off at 'none' and, when on, at DRIFT's own setting (its defaults plus the
tuned values of tuned_defaults.json, the strength at the middle of its judging front). 8 arms x 8 seeds (the
judging seeds 0-7) = 64 points at presets.SHAPES_JUDGE (30 iterations x 4 prompts x 8 samples, eval on all 29
test prompts x 8 noises), ~350-480 s each with one thread: ~7.5 CPU-hours, ~3.7 h with 2 at a time (estimate).

Seeds: 8, as for judging. What the ablation can resolve follows from the calibrate grid's per-seed SD sigma of
the paired gain (n ~= 7.85 sigma^2 / delta^2 seeds for an effect delta; pareto.py, Sizing); until it is
measured, only the prior there applies (about 5.6 % with 8 seeds), so a smaller component effect would not be
resolved and the report must say which effects it can resolve. An arm this code cannot build (a component
option another branch adds) is left out and named in the dry run.

    python experiments/sweep.py --grid ablation --dry-run
"""

from .presets import SHAPES, SHAPES_JUDGE
from .protocol import JUDGING_SEEDS, load_tuned, tuned_arm_values
from .spec import Arm, Grid, available_arms

OFF = {"subset": "none", "prompt": "none", "shaping": "none"}  # each component's 'off' value


def drift(*on: str) -> dict:
    """method=drift with only the named components on (the others at their 'off' value)."""
    return {"method": "drift", **{f"drift.{c}": v for c, v in OFF.items() if c not in on}}


_fixed, _axis = tuned_arm_values(load_tuned(), "drift")
TUNED = {**_fixed, **{k: v[len(v) // 2] for k, v in _axis.items()}}
"""DRIFT's tuned values (the middle of its judging front's strength axis)."""


def arm(name: str, *on: str) -> Arm:
    return Arm(name, {**drift(*on), **TUNED})


VARIANTS = (
    ("drift", ("subset", "prompt", "shaping")),
    ("drift -subset", ("prompt", "shaping")),
    ("drift -prompt", ("subset", "shaping")),
    ("drift -shaping", ("subset", "prompt")),
    ("subset only", ("subset",)),
    ("prompt only", ("prompt",)),
    ("shaping only", ("shaping",)),
)
"""The ablation's DRIFT variants: (arm name, the components left on); shared with ablation_sd3."""


def ablation_arms(make_arm) -> tuple[Arm, ...]:
    """Every variant through ``make_arm(name, *on)``, then Flow-GRPO (every component off, no DRIFT at all)."""
    return (*(make_arm(name, *on) for name, on in VARIANTS), Arm("flow_grpo", {"method": "flow_grpo"}))


ARMS, LEFT_OUT = available_arms(ablation_arms(arm), SHAPES_JUDGE)

GRID = Grid(
    name="ablation",
    doc=__doc__,
    arms=ARMS,
    seeds=JUDGING_SEEDS,
    budget=SHAPES_JUDGE,
    worlds={"shapes": SHAPES},  # SD3.5-M: the <grid>_sd3 grid (same arms, knobs for PickScore's scale)
    point_seconds={"flow_grpo": 350, "drift": 480},
    notes=LEFT_OUT,
)
