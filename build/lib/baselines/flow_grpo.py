"""Flow-GRPO (Liu et al., arXiv 2505.05470), vanilla: beta = 0.

Differs from Flow-GRPO by: nothing -- this is the reference method. Every hook is the engine's
default: no prompt variation, no oversampling or subset selection, no reward shaping, no
regulariser (so the reference forward is skipped).
"""

from drift.methods import Hooks, MethodSpec, NoOptions


def build(options: NoOptions) -> Hooks:
    return Hooks()


SPEC = MethodSpec(name="flow_grpo", options_cls=NoOptions, build=build,
                  summary="Flow-GRPO without KL (beta = 0)")
