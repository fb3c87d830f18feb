"""DRIFT (Liu et al., arXiv 2601.12401): diversity-incentivised RL fine-tuning, as implemented here.

Differs from Flow-GRPO by (each switchable on its own, for ablations):
1. Sampling (``subset``): draw ``oversample * G`` candidates per prompt, score them, keep the G whose
   rewards are most concentrated (``densest`` window of sorted rewards, symmetric ``trim``, or
   ``zband`` = the G nearest the group mean) -- reward outliers are filtered out; advantages and the
   loss use the kept subset only.
2. Prompting (``prompt``): per-sample stochastic variation of the conditioning -- Gaussian noise on
   the prompt embeddings (``embed``), world paraphrases (``paraphrase``) or both, with a scale annealed
   over training. Rewards are computed against the original prompt.
3. Optimisation (``shaping``): potential-based reward shaping with Phi = the sample's feature-space
   diversity within its group: ``terminal`` (the telescoped bonus lambda * gamma^T * Phi(x0) added to
   the reward before group normalisation) or ``per_step`` (Phi of the predicted clean image at every
   step; per-step shaped returns and per-step advantages). Gated to samples at or above the group's
   reward mean by default (as DIVER / DRIVE from the same lab), optionally min-max normalised and
   clipped; lambda follows a schedule.
Optionally (``beta`` > 0) Flow-GRPO's KL term is kept.

The paper's equations and hyperparameters are NOT available (only its abstract). Every rule and
default below is this project's choice; docs/methods.md says which, why, and what the alternatives are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .components import prompting, shaping, subset
from .components.schedules import SCHEDULES, schedule_factor
from .config import check
from .methods import Hooks, MethodSpec, SelectInput, ShapeInput, VaryInput, kl_regulariser, select_all, shape_none, vary_identity


@dataclass
class Options:
    # -- 1. sampling ----------------------------------------------------------------------------
    subset: str = "densest"
    """Subset rule: 'none' (component off), 'densest', 'trim' or 'zband'."""
    oversample: int = 2
    """Candidates per group = oversample * G (>= 2 when a subset rule is on; ignored when it is off)."""
    band: float = 1.0
    """z-score band width used to count outliers (and by the 'zband' rule's report)."""
    # -- 2. prompting ---------------------------------------------------------------------------
    prompt: str = "embed"
    """Prompt variation: 'none' (off), 'embed' (embedding noise), 'paraphrase' or 'both'."""
    prompt_scale: float = 0.3
    """Embedding-noise scale relative to the embedding's RMS ('embed'/'both'); paraphrase probability ('paraphrase')."""
    prompt_schedule: str = "linear"
    """Schedule of prompt_scale over training: 'constant', 'linear' (anneal to 0) or 'cosine'."""
    # -- 3. optimisation ------------------------------------------------------------------------
    shaping: str = "terminal"
    """Diversity shaping: 'none' (off), 'terminal' (telescoped bonus on x0) or 'per_step'."""
    lam: float = 1.0
    """Shaping coefficient lambda."""
    lam_schedule: str = "constant"
    """Schedule of lambda over training: 'constant', 'linear' or 'cosine' (DIVER decays it)."""
    gamma: float = 1.0
    """Discount gamma of the shaping F = gamma Phi(s') - Phi(s)."""
    gate: str = "above_mean"
    """Who gets the bonus: 'above_mean' (task reward >= group mean) or 'none' (every sample)."""
    normalise: str = "none"
    """Normalise Phi within the group: 'none' or 'minmax' (DRIVE)."""
    clip: float = 0.0
    """Clip Phi to [0, clip] (0 = no clip; DIVER's balanced shaping clips)."""
    # -- optional KL ----------------------------------------------------------------------------
    beta: float = 0.0
    """Keep Flow-GRPO's KL to the reference with this coefficient (0 = off)."""

    def __post_init__(self):
        check(self.subset in ("none", *subset.RULES), "drift.subset", self.subset, f"must be 'none' or one of {subset.RULES}")
        check(self.oversample >= 1, "drift.oversample", self.oversample, "must be >= 1")
        if self.subset != "none":
            check(self.oversample >= 2, "drift.oversample", self.oversample,
                  f"must be >= 2 with drift.subset={self.subset!r}: a subset of G from G candidates drops nothing")
        check(self.band > 0, "drift.band", self.band, "must be > 0")
        check(self.prompt in prompting.KINDS, "drift.prompt", self.prompt, f"must be one of {prompting.KINDS}")
        check(self.prompt_scale >= 0, "drift.prompt_scale", self.prompt_scale, "must be >= 0")
        if self.prompt in ("paraphrase",):
            check(self.prompt_scale <= 1, "drift.prompt_scale", self.prompt_scale, "is a probability for 'paraphrase': must be <= 1")
        check(self.prompt_schedule in SCHEDULES, "drift.prompt_schedule", self.prompt_schedule, f"must be one of {SCHEDULES}")
        check(self.shaping in ("none", "terminal", "per_step"), "drift.shaping", self.shaping,
              "must be 'none', 'terminal' or 'per_step'")
        check(self.lam >= 0, "drift.lam", self.lam, "must be >= 0")
        check(self.lam_schedule in SCHEDULES, "drift.lam_schedule", self.lam_schedule, f"must be one of {SCHEDULES}")
        check(0 < self.gamma <= 1, "drift.gamma", self.gamma, "must be in (0, 1]")
        check(self.gate in ("none", "above_mean"), "drift.gate", self.gate, "must be 'none' or 'above_mean'")
        check(self.normalise in ("none", "minmax"), "drift.normalise", self.normalise, "must be 'none' or 'minmax'")
        check(self.clip >= 0, "drift.clip", self.clip, "must be >= 0 (0 = no clip)")
        check(self.beta >= 0, "drift.beta", self.beta, "must be >= 0")


def make_vary(o: Options):
    def vary(inp: VaryInput):
        s = o.prompt_scale * schedule_factor(o.prompt_schedule, inp.iteration, inp.total_iterations)
        cond = inp.cond
        if o.prompt in ("paraphrase", "both"):
            prob = s if o.prompt == "paraphrase" else 0.5
            texts = prompting.paraphrase_texts(inp.prompts, inp.texts, inp.paraphrase, min(prob, 1.0), inp.generator)
            cond = inp.encode(texts)
        if o.prompt in ("embed", "both"):
            cond = prompting.embed_noise(cond, s, inp.generator)
        return cond, {"drift/prompt_scale": s}
    return vary


def make_select(o: Options):
    def select(inp: SelectInput):
        idx = subset.select(o.subset, inp.rewards, inp.group_size)
        return idx, subset.outlier_stats(inp.rewards, idx, o.band)
    return select


def make_shape(o: Options):
    def shape(inp: ShapeInput):
        lam = o.lam * schedule_factor(o.lam_schedule, inp.iteration, inp.total_iterations)
        mask = shaping.gate_mask(inp.rewards, o.gate)
        phi_T = shaping.diversity_potential(inp.features, mask, o.normalise, o.clip)  # (P, G)
        if o.shaping == "terminal":
            bonus = phi_T * o.gamma**inp.num_steps  # sum_t gamma^t F_t = gamma^T Phi(s_T), Phi(s_0) = 0
            out = inp.rewards + lam * bonus
            stats = {"drift/bonus_mean": float(bonus.mean()), "drift/gated_frac": float(mask.mean()), "drift/lambda": lam}
            return out, stats
        # per-step: Phi_t on x0_hat(s_t) for t < T, Phi_T on the final image; F_t = gamma Phi_{t+1} - Phi_t
        phi_steps = shaping.diversity_potential(inp.step_features, mask, o.normalise, o.clip)  # (P, G, T)
        phi = torch.cat([phi_steps, phi_T.unsqueeze(-1)], -1)
        f = shaping.potential_shaping(phi, o.gamma)  # (P, G, T)
        out = inp.rewards.unsqueeze(-1) + lam * shaping.discounted_return_to_go(f, o.gamma)
        return out, {"drift/bonus_mean": float(phi_T.mean()), "drift/gated_frac": float(mask.mean()), "drift/lambda": lam}
    return shape


def build(o: Options) -> Hooks:
    return Hooks(
        oversample=o.oversample if o.subset != "none" else 1,
        vary_prompts=make_vary(o) if o.prompt != "none" else vary_identity,
        select_subset=make_select(o) if o.subset != "none" else select_all,
        shape_rewards=make_shape(o) if o.shaping != "none" else shape_none,
        regulariser=kl_regulariser(o.beta) if o.beta > 0 else None,
        needs_reference=o.beta > 0,
        needs_step_features=o.shaping == "per_step",
    )


def validate(cfg) -> None:
    o = cfg.options
    if o.prompt in ("paraphrase", "both"):
        check(cfg.model.world == "shapes", "drift.prompt", o.prompt,
              "paraphrases are offered by the shapes world only; use 'embed' on other worlds")


SPEC = MethodSpec(name="drift", options_cls=Options, build=build, validate_fn=validate,
                  summary="DRIFT: reward-concentrated subset + prompt variation + diversity potential shaping (our implementation)")
