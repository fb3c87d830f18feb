"""The method contract: the few pure functions by which a method may differ from Flow-GRPO.

The training loop (drift/train.py) calls, in this order, per iteration:

1. ``vary_prompts``   -- before sampling: per-sample conditioning (e.g. noise on prompt embeddings,
                         paraphrases). Rewards are always computed against the original prompt.
2. sampling of ``oversample * G`` candidates per prompt with per-step log-probs,
   rewards of every candidate;
3. ``select_subset``  -- after rewards: which G candidates of each group are trained on;
4. ``shape_rewards``  -- with the kept samples' rewards and diversity features (final images and,
                         if ``needs_step_features``, the predicted clean image of every step):
                         returns per-sample (P, G) or per-step (P, G, T) rewards for the advantage;
5. group advantages (shared, drift/advantages.py);
6. ``regulariser``    -- per trained step, from the policy's and the reference's step means
                         (the reference forward runs only when ``needs_reference``).

A method is a module exposing ``SPEC = MethodSpec(...)``: an options dataclass, a ``build`` that
turns options into ``Hooks``, and an optional ``validate`` for cross-field rules. The engine holds
no method-specific branch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .config import ConfigError
from .sde import kl_gaussian_same_std


@dataclass
class Cond:
    """Text conditioning: token states (B, L, D) and pooled embedding (B, P)."""

    hidden: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def index(self, idx) -> "Cond":
        return Cond(self.hidden[idx], self.pooled[idx])

    def repeat_interleave(self, k: int) -> "Cond":
        return Cond(self.hidden.repeat_interleave(k, 0), self.pooled.repeat_interleave(k, 0))

    @staticmethod
    def cat(items: list["Cond"]) -> "Cond":
        return Cond(torch.cat([c.hidden for c in items]), torch.cat([c.pooled for c in items]))


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


def kl_regulariser(beta: float, exact: bool = False):
    """Flow-GRPO's regulariser beta * KL(pi_theta || pi_ref) per trained step (closed form for two
    same-variance Gaussian steps; see drift.sde.kl_gaussian_same_std for the code vs exact form)."""
    def reg(inp: "RegInput"):
        kl = kl_gaussian_same_std(inp.mean_theta, inp.mean_ref, inp.std, exact=exact, dt=inp.dt, sde_type=inp.sde_type)
        return beta * kl, {"loss/kl": float(kl.detach().mean())}

    return reg


@dataclass(frozen=True)
class Hooks:
    """What a method changes. Defaults are Flow-GRPO (beta = 0)."""

    oversample: int = 1
    vary_prompts: Callable[[VaryInput], tuple[Cond, dict]] = vary_identity
    select_subset: Callable[[SelectInput], tuple[torch.Tensor, dict]] = select_all
    shape_rewards: Callable[[ShapeInput], tuple[torch.Tensor, dict]] = shape_none
    regulariser: Callable[[RegInput], tuple[torch.Tensor, dict]] | None = None
    needs_reference: bool = False
    needs_step_features: bool = False


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
    "drift": "drift.method",
}


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"method={name!r}: unknown method; known methods are {sorted(METHODS)}")
    spec = importlib.import_module(METHODS[name]).SPEC
    assert spec.name == name, f"{METHODS[name]}.SPEC.name={spec.name!r} does not match registry name {name!r}"
    return spec


__all__ = ["Cond", "VaryInput", "SelectInput", "ShapeInput", "RegInput", "Hooks", "MethodSpec", "NoOptions",
           "METHODS", "method_spec", "kl_regulariser"]
