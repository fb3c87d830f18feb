"""KL-regularised Flow-GRPO (Liu et al., arXiv 2505.05470, Eq. 5 with beta > 0).

Differs from Flow-GRPO by: 1. a regulariser beta * KL(pi_theta || pi_ref) per trained step, where
pi_ref is the base model (LoRA adapter disabled) and the KL between the two same-variance Gaussian
steps has the closed form ||mu_theta - mu_ref||^2 / (2 std_t^2) (SD3-trainer code form, without the
|dt| factor) or, with ``exact=true``, ||mu_theta - mu_ref||^2 / (2 std_t^2 |dt|). beta is the knob
swept to trace this baseline's alignment-diversity front. Flow-GRPO used beta = 0.04 (GenEval/OCR)
and 0.01 (PickScore) on SD3.5-M.
"""

from dataclasses import dataclass

from drift.config import check
from drift.methods import Hooks, MethodSpec, kl_regulariser


@dataclass
class Options:
    beta: float = 0.04
    """KL coefficient beta (> 0)."""
    exact: bool = False
    """Use the exact per-step KL (divides by |dt|) instead of Flow-GRPO's SD3 code form."""

    def __post_init__(self):
        check(self.beta > 0, "flow_grpo_kl.beta", self.beta, "must be > 0 (beta = 0 is method=flow_grpo)")


def build(options: Options) -> Hooks:
    return Hooks(regulariser=kl_regulariser(options.beta, options.exact), needs_reference=True)


SPEC = MethodSpec(name="flow_grpo_kl", options_cls=Options, build=build,
                  summary="Flow-GRPO with KL to the reference (beta > 0)")
