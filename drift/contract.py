"""The method contract: the few pure functions by which a method may differ from Flow-GRPO.

The training loop (drift/train.py) calls, in this order, per iteration:

1. ``vary_prompts``   -- before sampling: per-sample conditioning (e.g. noise on prompt embeddings,
                         paraphrases). Rewards are always computed against the original prompt.
2. sampling of ``oversample * G`` candidates per prompt with per-step log-probs, where the
   conditioning of denoising step j is ``step_cond(cond, j, T)`` (and of the unconditional CFG branch
   ``step_uncond(uncond, cond, j, T)``) -- the same functions, on the same rows, in the PPO replay, so
   the ratio is exactly 1 before the first update; rewards of every
   candidate (every reward head of the world);
3. ``select_subset``  -- after rewards: which G candidates of each group are trained on;
4. ``shape_rewards``  -- with the kept samples' rewards, reward heads and diversity features (final
                         images and, if ``needs_step_features``, the predicted clean image of every
                         step): returns per-sample (P, G) or per-step (P, G, T) rewards;
5. ``advantages``     -- from the shaped rewards (and every candidate's rewards, the kept indices):
                         (P, G) or (P, G, T) advantages; default: group-relative (drift/advantages.py);
6. ``regulariser``    -- a ``Regulariser``: a loss term per trained step from the policy's and (if it
                         declares ``needs_reference``) the reference's step means, on the first
                         ``steps`` trained steps only if it says so (no reference forward on the others).

Every hook sees global tensors (all groups of the iteration, identical on every process), so its
metrics need no combining across processes. The metrics computed on one process's share of the batch
are declared: ``RANK_REDUCTIONS`` (the engine's) and ``Regulariser.metrics`` (the method's), each with
how it is combined over processes; the engine refuses an undeclared one.

A method is a module exposing ``SPEC = MethodSpec(...)``: an options dataclass, a ``build`` that
turns options into ``Hooks``, and an optional ``validate`` for cross-field rules. The engine holds
no method-specific branch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .advantages import group_advantages
from .errors import ConfigError
from .sde import kl_gaussian_same_std
from .worlds.types import Cond


@dataclass
class VaryInput:
    cond: Cond  # (P*K) per-sample conditioning of the original prompts, group-major
    texts: list[str]  # (P*K) original prompt text per sample
    prompts: list[Any]  # (P*K) the world's prompt objects (structured where the world has them)
    paraphrase: Callable[[Any, Any], str] | None  # (prompt, random.Random) -> text, if the world offers paraphrases
    encode: Callable[[list[str]], Cond]  # text -> conditioning (cached, frozen encoder)
    iteration: int
    total_iterations: int
    generator: torch.Generator  # the run's method RNG stream (checkpointed)


@dataclass
class SelectInput:
    rewards: torch.Tensor  # (P, K) task rewards of all candidates (may hold NaN)
    group_size: int  # G to keep
    iteration: int
    total_iterations: int


@dataclass
class ShapeInput:
    rewards: torch.Tensor  # (P, G) task rewards of the kept samples (may hold NaN)
    features: torch.Tensor | None  # (P, G, D) unit-norm diversity features of the final images
    step_features: torch.Tensor | None  # (P, G, T, D) features of the predicted clean image per step
    num_steps: int  # T, denoising steps per trajectory
    iteration: int
    total_iterations: int
    heads: dict[str, torch.Tensor] | None = None  # {head: (P, G)} the world's other reward heads of the kept samples


@dataclass
class AdvInput:
    rewards: torch.Tensor  # (P, G) or (P, G, T) shaped rewards of the kept samples (may hold NaN)
    task_rewards: torch.Tensor  # (P, G) task rewards of the kept samples
    all_rewards: torch.Tensor  # (P, K) task rewards of every candidate, before subset selection
    kept: torch.Tensor  # (P, G) indices into the K candidates of the kept samples
    features: torch.Tensor  # (P, G, D) diversity features of the kept samples
    heads: dict[str, torch.Tensor]  # {head: (P, G)} the world's other reward heads of the kept samples
    std_eps: float  # train.std_eps
    global_std: bool  # train.global_std
    clip: float  # train.adv_clip
    iteration: int
    total_iterations: int


@dataclass
class RegInput:
    mean_theta: torch.Tensor  # (B, ...) policy step mean mu_theta
    mean_ref: torch.Tensor | None  # (B, ...) reference step mean (None unless needs_reference)
    std: torch.Tensor  # (B,) the step's total std
    dt: torch.Tensor  # (B,) sigma_next - sigma (< 0)
    step_index: int  # j, 0 = the first (noisiest) step
    num_steps: int
    iteration: int
    total_iterations: int
    sde_type: str = "sde"  # sample.sde_type: with 'cps', std is what Flow-GRPO's KL divides by (no |dt| in it)


def vary_identity(inp: VaryInput) -> tuple[Cond, dict[str, float]]:
    """Flow-GRPO: every sample of a group sees the prompt's own conditioning."""
    return inp.cond, {}


def select_all(inp: SelectInput) -> tuple[torch.Tensor, dict[str, float]]:
    """Flow-GRPO: no oversampling, keep every candidate (indices (P, G))."""
    p, k = inp.rewards.shape
    return torch.arange(k).unsqueeze(0).repeat(p, 1)[:, : inp.group_size], {}


def shape_none(inp: ShapeInput) -> tuple[torch.Tensor, dict[str, float]]:
    """Flow-GRPO: the advantage is computed from the task reward alone."""
    return inp.rewards, {}


def group_relative(inp: AdvInput) -> tuple[torch.Tensor, dict[str, float]]:
    """Flow-GRPO: A = (r - mean_group r) / (std + eps), clamped (drift.advantages.group_advantages)."""
    return group_advantages(inp.rewards, inp.std_eps, inp.global_std, clip=inp.clip)


def cond_identity(cond: Cond, step_index: int, num_steps: int) -> Cond:
    """Flow-GRPO: every denoising step sees the same conditioning."""
    return cond


def uncond_identity(uncond: Cond, cond: Cond, step_index: int, num_steps: int) -> Cond:
    """Flow-GRPO: the unconditional branch sees the empty prompt's conditioning at every step."""
    return uncond


@dataclass(frozen=True)
class Regulariser:
    """A loss term added per trained step, and what it needs from the engine."""

    fn: Callable[[RegInput], tuple[torch.Tensor, dict[str, float]]]
    """RegInput -> (loss per sample (B,), metrics); metrics: only keys named in ``metrics``."""
    needs_reference: bool = False
    """Run the reference policy's forward (RegInput.mean_ref) on the steps where the term is active."""
    steps: int | None = None
    """Active on the first ``steps`` trained steps only (None = every trained step); on the others
    neither the term nor the reference forward runs."""
    metrics: tuple[str, ...] = ()
    """The metric keys ``fn`` returns: per-process means over micro-batches, combined by their mean."""

    def active(self, step_index: int) -> bool:
        return self.steps is None or step_index < self.steps


def kl_regulariser(beta: float, exact: bool = False) -> Regulariser:
    """Flow-GRPO's regulariser beta * KL(pi_theta || pi_ref) per trained step (closed form for two
    same-variance Gaussian steps; see drift.sde.kl_gaussian_same_std for the code vs exact form)."""
    def reg(inp: "RegInput"):
        kl = kl_gaussian_same_std(inp.mean_theta, inp.mean_ref, inp.std, exact=exact, dt=inp.dt, sde_type=inp.sde_type)
        return beta * kl, {"loss/kl": float(kl.detach().mean())}

    return Regulariser(reg, needs_reference=True, metrics=("loss/kl",))


RANK_REDUCTIONS: dict[str, str] = {
    **{f"loss/{k}": "mean" for k in ("policy", "total", "approx_kl", "clipfrac", "ratio_mean", "grad_norm",
                                     "skipped_steps", "clipfrac_first_step")},
    "loss/ratio_first_step_dev": "max",
    **{f"sys/{k}_seconds": "max" for k in ("prompt", "sample", "reward", "features", "advantage", "forward",
                                           "backward", "optimizer", "train", "eval", "iter")},
}
"""The engine's metrics computed on one process's share of the batch, and how they are combined over
processes: the PPO diagnostics (means over equal shares) by their mean, the first trained step's largest
|ratio - 1| and the timings by their max (the slowest process sets the pace). Every other metric comes from global tensors and is left as it is."""


@dataclass(frozen=True)
class Hooks:
    """What a method changes. Defaults are Flow-GRPO (beta = 0)."""

    oversample: int = 1
    vary_prompts: Callable[[VaryInput], tuple[Cond, dict]] = vary_identity
    select_subset: Callable[[SelectInput], tuple[torch.Tensor, dict]] = select_all
    shape_rewards: Callable[[ShapeInput], tuple[torch.Tensor, dict]] = shape_none
    advantages: Callable[[AdvInput], tuple[torch.Tensor, dict]] = group_relative
    step_cond: Callable[[Cond, int, int], Cond] = cond_identity
    """(cond, step index j, T) -> the conditioning of denoising step j. Pure and row-wise (row i of the
    result depends on row i of ``cond`` only, no random draws): it runs on the sampled batch and again,
    on micro-batches of the kept rows, in the PPO replay, and both must agree bit for bit."""
    step_uncond: Callable[[Cond, Cond, int, int], Cond] = uncond_identity
    """(uncond, cond, step index j, T) -> the unconditional branch's conditioning of step j, given the rows'
    (possibly per-sample-noise-carrying) ``cond``. Pure and row-wise like ``step_cond``; the same in
    sampling and replay."""
    regulariser: Regulariser | None = None
    needs_step_features: bool = False

    @property
    def needs_reference(self) -> bool:
        return self.regulariser is not None and self.regulariser.needs_reference

    def reference_steps(self, trained_steps: int) -> int:
        """How many of the ``trained_steps`` steps run a reference forward."""
        r = self.regulariser
        if r is None or not r.needs_reference:
            return 0
        return trained_steps if r.steps is None else min(r.steps, trained_steps)

    def reduction(self, key: str) -> str | None:
        """How metric ``key`` is combined over processes: 'mean', 'max', or None (already global)."""
        if key in RANK_REDUCTIONS:
            return RANK_REDUCTIONS[key]
        return "mean" if self.regulariser is not None and key in self.regulariser.metrics else None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    options_cls: type
    build: Callable[[Any], Hooks]
    summary: str
    validate_fn: Callable[[Any], None] | None = None

    def validate(self, cfg) -> None:
        if self.validate_fn is not None:
            self.validate_fn(cfg)


@dataclass
class NoOptions:
    """This method has no options of its own."""


# name -> module holding SPEC. Baselines live in the top-level ``baselines`` package.
METHODS: dict[str, str] = {
    "flow_grpo": "baselines.flow_grpo",
    "flow_grpo_kl": "baselines.flow_grpo_kl",
    "diverse_grpo": "baselines.diverse_grpo",
    "oracle_spread": "baselines.oracle_spread",
    "drift": "drift.drift_method",
}


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"method={name!r}: unknown method; known methods are {sorted(METHODS)}")
    spec = importlib.import_module(METHODS[name]).SPEC
    assert spec.name == name, f"{METHODS[name]}.SPEC.name={spec.name!r} does not match registry name {name!r}"
    return spec


__all__ = ["VaryInput", "SelectInput", "ShapeInput", "AdvInput", "RegInput", "Regulariser", "Hooks", "MethodSpec",
           "NoOptions", "METHODS", "RANK_REDUCTIONS", "method_spec", "kl_regulariser", "group_relative", "cond_identity",
           "uncond_identity"]
