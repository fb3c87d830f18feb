"""tune: every tuned method with the same tuning budget, on validation prompts and tuning seeds only.

Equal budget: 6 configurations per method (KL beta; DiverseGRPO beta; DRIFT's strength lambda x one more DRIFT
knob, 3 x 2), plus Flow-GRPO once as the alignment reference. Every point trains on the training prompts
(which exclude the validation and test prompts) and is evaluated on the validation prompts (eval.split=
validation, all of them, with the validation noise seed 4242), with tuning seeds 100-104 only, at the judging
budget (presets.SHAPES_JUDGE: 30 iterations x 4 prompts x 8 samples, eval at 0/10/20/30).
19 configurations x 5 seeds = 95 points at ~350-480 s each with one thread on the 2-core dev machine
(point_seconds below: Flow-GRPO and KL from the calibrate grid's ~6.5 min per run at this budget; DiverseGRPO
taken as KL's and DRIFT's 480 s, for its 2x oversampling, are estimates, not measurements), i.e. about 11.5
CPU-hours: ~5.7 h with 2 at a time.

    python experiments/sweep.py --grid tune --dry-run
    python experiments/sweep.py --grid tune && python experiments/freeze.py --grid tune

Selection rule (written before any tuning run; experiments/freeze.py applies it and nothing else):
1. For every configuration c, over the tuning seeds 100-104: A(c) = the mean final (last evaluation)
   eval/alignment and D(c) = the mean final eval/diversity/heldout (the evaluation-only feature net; where the
   runs lack it, eval/diversity, and tuned_defaults.json says so).
2. Reference alignment A_ref = A_base + 0.5 (A_fg - A_base): A_base the mean step-0 alignment (the base model)
   of all tuning runs, A_fg Flow-GRPO's mean final alignment. A configuration must keep at least half of
   Flow-GRPO's alignment gain.
3. Per method, c* = the configuration with the largest D(c) among those with A(c) >= A_ref; if none reaches
   A_ref, the one with the largest A(c) (tuned_defaults.json records that none did).
4. The judging grid's front of the method: its strength knob (STRENGTH below) at c*'s value and its two
   neighbours in the sorted tuning values (at an end of the list: the two nearest), the other knobs fixed at c*.
5. DRIFT on top of KL (drift_kl) takes DRIFT's c* and drift.kl_beta = KL's c* beta.
"""

from .presets import SHAPES, SHAPES_JUDGE
from .protocol import TUNING_SEEDS
from .spec import Arm, Grid, available_arms

from drift.worlds.shapes.world import prompt_split

KL_BETAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # flow_grpo_kl.beta
DIVERSE_BETAS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)  # diverse_grpo.beta
DRIFT_LAMS = (0.5, 1.0, 2.0)  # drift.lam: DRIFT's strength
DRIFT_SECOND = (("drift.kappa", (1.5, 2.5)), ("drift.prompt_scale", (0.15, 0.3)))
"""DRIFT's second tuned knob: the first of these that this code has (DRIFT v2's outlier threshold kappa, else the
prompt-noise scale of the first DRIFT); 2 values, so DRIFT gets 3 x 2 = 6 configurations like the others."""
CONFIGS_PER_METHOD = 6
STRENGTH = {"flow_grpo_kl": "flow_grpo_kl.beta", "diverse_grpo": "diverse_grpo.beta", "drift": "drift.lam"}
"""The knob along which each method's judging front is drawn (selection rule, step 4)."""
VALIDATION_PROMPTS = len(prompt_split("validation"))
"""Every validation prompt of the shapes world is evaluated."""


def drift_second() -> tuple[str, tuple]:
    for key, vals in DRIFT_SECOND:
        if available_arms([Arm("drift", {"method": "drift"}, {key: vals})])[0]:
            return key, vals
    raise RuntimeError(f"none of {[k for k, _ in DRIFT_SECOND]} is a DRIFT option")


SECOND_KEY, SECOND_VALUES = drift_second()

GRID = Grid(
    name="tune",
    doc=__doc__,
    arms=(
        Arm("flow_grpo", {"method": "flow_grpo"}),  # the alignment reference (A_fg), not tuned
        Arm("flow_grpo_kl", {"method": "flow_grpo_kl"}, {"flow_grpo_kl.beta": KL_BETAS}),
        Arm("diverse_grpo", {"method": "diverse_grpo"}, {"diverse_grpo.beta": DIVERSE_BETAS}),
        Arm("drift", {"method": "drift"}, {"drift.lam": DRIFT_LAMS, SECOND_KEY: SECOND_VALUES}),
    ),
    seeds=TUNING_SEEDS,
    base={"eval.split": "validation"},
    budget={**SHAPES_JUDGE, "eval.num_prompts": VALIDATION_PROMPTS},
    worlds={"shapes": SHAPES},
    point_seconds={"flow_grpo": 350, "flow_grpo_kl": 420, "diverse_grpo": 420, "drift": 480},
    notes=(f"tuning on validation prompts ({VALIDATION_PROMPTS}), seeds {TUNING_SEEDS}; DRIFT's second knob: "
           f"{SECOND_KEY} {SECOND_VALUES}",),
)
