"""DRIFT (Liu et al., arXiv 2601.12401): diversity-incentivised RL fine-tuning, as implemented here.

The paper's equations and hyperparameters are NOT available (only its abstract). Every rule and
default below is this project's choice; docs/methods.md says which, why, and what the alternatives are.
The defaults are our provisional "v2" composition (after DRIVE, CADS and GARDO), not tuned on any
judging result; the first implementation ("v1") stays available, option by option, for the record.

Differs from Flow-GRPO by three components (each switchable on its own, ``none`` = off, for ablations):
1. Sampling (``subset``):
   - ``outlier`` (v2 default, S1): drop candidates whose task reward lies beyond kappa * sigma of the group
     (advantage 0) while the advantages of the others use the mean and std of ALL finite candidates;
   - ``robust`` (S2): median / MAD advantages, clipped, std fallback where MAD = 0;
   - ``densest`` / ``trim`` / ``zband`` (v1): oversample ``oversample * G`` candidates and keep a
     reward-concentrated window of G; advantages on the kept subset (``subset_stats='kept'``, v1) or with
     the statistics of all K candidates (``subset_stats='all'``, S3, the mechanism test).
2. Prompting (``prompt``):
   - ``cads`` (v2 default, P1): CADS condition annealing within each trajectory, per-sample noise drawn
     once, carried with the rows, identical in rollout and PPO replay;
   - ``paraphrase`` (P2) / ``embed`` (v1, embedding noise annealed over iterations) / ``both``.
3. Optimisation (``shaping``):
   - ``drive`` (v2 default, O1): r' = r + alpha * dhat, dhat the min-max-normalised (floor delta) diversity
     among the successful samples, 0 for the others (DRIVE's form);
   - ``decoupled`` (O2): A = z(r) + alpha * z_S(d); ``gardo`` (O3): GARDO's multiplicative weight;
   - ``terminal`` / ``per_step`` (v1): potential-based shaping gated at the group mean.
   The diversity d_i is measured against every candidate of the group (with a window rule: the kept G).
Optionally (``kl_beta`` > 0) Flow-GRPO's KL-to-reference regulariser is composed on top.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch

from .advantages import group_advantages
from .components import bonus, cads, outliers, prompting, shaping, subset
from .components.schedules import SCHEDULES, schedule_factor
from .contract import (AdvInput, Hooks, MethodSpec, SelectInput, ShapeInput, VaryInput, cond_identity, kl_regulariser,
                       select_all, shape_none, uncond_identity, vary_identity)
from .diversity import per_sample_diversity
from .errors import check
from .worlds import lacks

SUBSETS = ("none", "outlier", "robust", *subset.RULES)
"""drift.subset values: off, S1, S2, and the v1 window rules."""
OUTLIER_PROTECT = ("none", "success")
"""drift.outlier_protect values: drop every outlier, or never a success."""
SHAPINGS = ("none", "drive", "decoupled", "gardo", "terminal", "per_step")
"""drift.shaping values: off, O1, O2, O3, and the v1 potential shaping."""


@dataclass
class Options:
    # -- 1. sampling ----------------------------------------------------------------------------
    subset: str = "outlier"
    """Sampling rule: 'none' (off), 'outlier' (S1: mask beyond kappa sigma, full-group statistics), 'robust'
    (S2: median / MAD advantages), or a v1 window rule of an oversampled group: 'densest', 'trim', 'zband'."""
    subset_stats: str = "kept"
    """Window rules only: advantages with the statistics of the 'kept' subset (v1) or of 'all' K candidates (S3)."""
    oversample: int = 2
    """Window rules only: candidates per group = oversample * G (>= 2); the other rules sample G."""
    band: float = 1.0
    """Window rules: z-score band width used to count outliers (and by the 'zband' rule's report)."""
    kappa: float = 2.0
    """'outlier': a candidate is dropped where |r - mean| > kappa * std of its group's finite rewards."""
    outlier_protect: str = "none"
    """'outlier' (and 'gardo''s mask): 'none' drops every candidate beyond kappa sigma; 'success' never drops a
    sample of the success set (success_head, else the top success_quantile of the group), so a rare success,
    itself the group's reward outlier, keeps its advantage (our variant; docs/methods.md)."""
    robust_clip: float = 2.0
    """'robust': advantages are clipped to +-robust_clip."""
    # -- 2. prompting ---------------------------------------------------------------------------
    prompt: str = "cads"
    """Prompt variation: 'none' (off), 'cads' (P1: condition annealing within each trajectory), 'paraphrase'
    (P2), 'embed' (v1: embedding noise annealed over training) or 'both' (paraphrase + embed)."""
    prompt_scale: float = 0.3
    """'embed'/'both': embedding-noise scale relative to the embedding's RMS; 'paraphrase': paraphrase probability."""
    prompt_schedule: str = "linear"
    """Schedule of prompt_scale over training ('embed'/'paraphrase'/'both'): 'constant', 'linear' or 'cosine'."""
    cads_scale: float = 0.25
    """'cads': noise scale s (relative to each embedding's RMS) in y_hat = sqrt(g) y + s sqrt(1 - g) n."""
    cads_tau1: float = 0.6
    """'cads': gamma = 1 (clean condition) for t = 1 - step / T <= tau1."""
    cads_tau2: float = 0.9
    """'cads': gamma = 0 (condition replaced by noise) for t >= tau2; linear in between."""
    cads_rescale: float = 1.0
    """'cads': weight psi of the rescale of y_hat to the clean embedding's mean and std (0 = no rescale)."""
    cads_uncond: bool = False
    """'cads': also anneal the unconditional CFG branch (with its own noise); off keeps CFG's anchor clean."""
    # -- 3. optimisation ------------------------------------------------------------------------
    shaping: str = "drive"
    """Diversity term: 'none' (off), 'drive' (O1: success-gated min-max bonus), 'decoupled' (O2), 'gardo' (O3:
    GARDO's multiplicative weight), or v1 potential shaping 'terminal' / 'per_step'."""
    lam: float = 1.0
    """Coefficient of the diversity term: alpha of 'drive' / 'decoupled', lambda of 'terminal' / 'per_step'
    (unused by 'gardo'). 1.0: the smallest alpha of {0.05, 0.2, 0.5, 1} at which 'drive' passes its own
    mechanism check on the shapes world's base model (corr(A, d | success) > 0.3; experiments/probe_components.py,
    training prompts; docs/methods.md), where the reward's size term orders successes against diversity."""
    lam_schedule: str = "constant"
    """Schedule of lam over training: 'constant', 'linear' or 'cosine' (DIVER decays it)."""
    delta: float = 0.05
    """'drive': floor of the min-max range, dhat = (d - min_S d) / max(max_S d - min_S d, delta)."""
    success_head: str = "judge_all"
    """'drive'/'decoupled': the world's binary success head (shapes: every named attribute right); where the
    world has no such head, success = the group's top quantile of task reward (success_quantile)."""
    success_quantile: float = 0.75
    """'drive'/'decoupled' without a success head: S = {r_i >= the group's success_quantile quantile}."""
    gardo_divide_std: bool = False
    """'gardo': divide (r - mean) * w by the group std (Flow-GRPO's scale); GARDO itself does not."""
    gamma: float = 1.0
    """'terminal'/'per_step': discount gamma of the shaping F = gamma Phi(s') - Phi(s)."""
    gate: str = "above_mean"
    """'terminal'/'per_step': who gets the bonus: 'above_mean' (task reward >= group mean) or 'none'."""
    normalise: str = "none"
    """'terminal'/'per_step': normalise Phi within the group: 'none' or 'minmax'."""
    clip: float = 0.0
    """'terminal'/'per_step': clip Phi to [0, clip] (0 = no clip)."""
    # -- optional KL ----------------------------------------------------------------------------
    kl_beta: float = 0.0
    """Compose flow_grpo_kl's KL-to-reference regulariser with this beta (0 = off; the grid arm 'drift_kl')."""

    def __post_init__(self):
        check(self.subset in SUBSETS, "drift.subset", self.subset, f"must be 'none' or one of {SUBSETS[1:]}")
        check(self.subset_stats in ("kept", "all"), "drift.subset_stats", self.subset_stats, "must be 'kept' or 'all'")
        if self.subset_stats == "all":
            check(self.subset in subset.RULES, "drift.subset_stats", self.subset_stats,
                  f"'all' applies to the window rules {subset.RULES} only (drift.subset is {self.subset!r})")
        check(self.oversample >= 1, "drift.oversample", self.oversample, "must be >= 1")
        if self.subset in subset.RULES:
            check(self.oversample >= 2, "drift.oversample", self.oversample,
                  f"must be >= 2 with drift.subset={self.subset!r}: a subset of G from G candidates drops nothing")
        check(self.band > 0, "drift.band", self.band, "must be > 0")
        check(self.kappa > 0, "drift.kappa", self.kappa, "must be > 0")
        check(self.outlier_protect in OUTLIER_PROTECT, "drift.outlier_protect", self.outlier_protect,
              f"must be one of {OUTLIER_PROTECT}")
        check(self.outlier_protect == "none" or self.subset == "outlier", "drift.outlier_protect",
              self.outlier_protect, f"applies to drift.subset='outlier' only (drift.subset is {self.subset!r})")
        check(self.robust_clip > 0, "drift.robust_clip", self.robust_clip, "must be > 0")
        check(self.prompt in prompting.KINDS, "drift.prompt", self.prompt, f"must be one of {prompting.KINDS}")
        check(self.prompt_scale >= 0, "drift.prompt_scale", self.prompt_scale, "must be >= 0")
        if self.prompt in ("paraphrase",):
            check(self.prompt_scale <= 1, "drift.prompt_scale", self.prompt_scale, "is a probability for 'paraphrase': must be <= 1")
        check(self.prompt_schedule in SCHEDULES, "drift.prompt_schedule", self.prompt_schedule, f"must be one of {SCHEDULES}")
        check(self.cads_scale >= 0, "drift.cads_scale", self.cads_scale, "must be >= 0")
        check(0 <= self.cads_tau1 < 1, "drift.cads_tau1", self.cads_tau1, "must be in [0, 1)")
        check(self.cads_tau1 < self.cads_tau2 <= 1, "drift.cads_tau2", self.cads_tau2,
              f"must be in (drift.cads_tau1={self.cads_tau1}, 1]")
        check(0 <= self.cads_rescale <= 1, "drift.cads_rescale", self.cads_rescale, "must be in [0, 1]")
        check(self.shaping in SHAPINGS, "drift.shaping", self.shaping, f"must be one of {SHAPINGS}")
        check(self.lam >= 0, "drift.lam", self.lam, "must be >= 0")
        check(self.lam_schedule in SCHEDULES, "drift.lam_schedule", self.lam_schedule, f"must be one of {SCHEDULES}")
        check(self.delta > 0, "drift.delta", self.delta, "must be > 0")
        check(bool(self.success_head), "drift.success_head", self.success_head, "must name a reward head")
        check(0 <= self.success_quantile <= 1, "drift.success_quantile", self.success_quantile, "must be in [0, 1]")
        check(0 < self.gamma <= 1, "drift.gamma", self.gamma, "must be in (0, 1]")
        check(self.gate in ("none", "above_mean"), "drift.gate", self.gate, "must be 'none' or 'above_mean'")
        check(self.normalise in ("none", "minmax"), "drift.normalise", self.normalise, "must be 'none' or 'minmax'")
        check(self.clip >= 0, "drift.clip", self.clip, "must be >= 0 (0 = no clip)")
        if self.shaping == "gardo":
            check(self.subset in ("none", "outlier", *subset.RULES) and self.subset_stats == "kept", "drift.shaping",
                  self.shaping, "'gardo' computes the advantages itself: combine it with drift.subset 'none', 'outlier' "
                  "or a window rule with drift.subset_stats='kept'")
        check(self.kl_beta >= 0, "drift.kl_beta", self.kl_beta, "must be >= 0")


# ---- 2. prompting ----------------------------------------------------------------------------
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


def cads_kwargs(o: Options) -> dict:
    return {"tau1": o.cads_tau1, "tau2": o.cads_tau2, "scale": o.cads_scale, "psi": o.cads_rescale}


def make_vary_cads(o: Options):
    def vary(inp: VaryInput):
        """Draw each sample's CADS noise n once (the run's method stream) and carry it with the rows."""
        c = inp.cond
        n = cads.draw_noise_like(c, inp.generator)
        n_u = cads.draw_noise_like(c, inp.generator) if o.cads_uncond else None
        return cads.NoisedCond(c.hidden, c.pooled, n, n_u), {"drift/cads_scale": o.cads_scale}
    return vary


def _noised(cond) -> cads.NoisedCond:
    if not isinstance(cond, cads.NoisedCond):
        raise TypeError("drift.prompt='cads': the conditioning carries no CADS noise (it must come from the "
                        "method's vary_prompts, indexed by rows only)")
    return cond


def make_step_cond(o: Options):
    kw = cads_kwargs(o)
    return lambda cond, j, T: cads.anneal_cond(cond, _noised(cond).noise, j, T, **kw)


def make_step_uncond(o: Options):
    kw = cads_kwargs(o)
    return lambda uncond, cond, j, T: cads.anneal_cond(uncond, _noised(cond).noise_uncond, j, T, **kw)


# ---- 1. sampling -----------------------------------------------------------------------------
def make_select(o: Options):
    def select(inp: SelectInput):
        idx = subset.select(o.subset, inp.rewards, inp.group_size)
        return idx, subset.outlier_stats(inp.rewards, idx, o.band)
    return select


def outlier_keep(o: Options, task_rewards: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """S1's kept set: the kappa-sigma mask, with the success set ``success`` (``success_set``) protected where
    drift.outlier_protect='success'."""
    keep = outliers.outlier_mask(task_rewards, o.kappa)
    return outliers.protect(keep, success, task_rewards) if o.outlier_protect == "success" else keep


def task_advantages(o: Options, inp: AdvInput) -> tuple[torch.Tensor, dict[str, float]]:
    """The (shaped) rewards' advantages under the sampling rule, with its mechanism metrics."""
    adv, stats = group_advantages(inp.rewards, inp.std_eps, inp.global_std, clip=inp.clip)  # v1 / off
    judge = inp.heads.get("judge")
    if o.subset == "outlier":  # K = G: the kept rewards are every candidate's
        success = success_set(o, inp.task_rewards, inp.heads)
        keep = outlier_keep(o, inp.task_rewards, success)
        # = outliers.masked_advantages (statistics of all finite candidates), and with train.global_std the batch std
        adv = torch.where(keep.view(*keep.shape, *([1] * (adv.ndim - 2))), adv, torch.zeros_like(adv))
        stats["drift/std_kept_over_all"] = outliers.kept_std_ratio(inp.task_rewards, keep)
        stats["drift/dropped_frac"] = float((~keep).float().mean())
        stats["drift/success_dropped_frac"] = outliers.dropped_share(keep, success)
        if judge is not None:
            stats["drift/judge_levels_kept"] = outliers.judge_levels(judge, keep)
            stats["drift/judge_levels_all"] = outliers.judge_levels(judge, torch.ones_like(keep))
    elif o.subset == "robust":
        adv = outliers.robust_advantages(inp.rewards, o.robust_clip, inp.std_eps)
        stats["drift/robust_clipped_frac"] = float((adv.abs() >= o.robust_clip).float().mean())
    elif o.subset in subset.RULES:
        if o.subset_stats == "all":
            adv = outliers.all_stats_advantages(inp.rewards, inp.all_rewards, inp.std_eps, inp.clip)
        window = torch.zeros(inp.all_rewards.shape, dtype=torch.bool).scatter_(1, inp.kept, True)
        stats["drift/std_kept_over_all"] = outliers.kept_std_ratio(inp.all_rewards, window)
        if judge is not None:
            stats["drift/judge_levels_kept"] = outliers.judge_levels(judge, torch.ones_like(judge, dtype=torch.bool))
    return adv, stats


# ---- 3. optimisation -------------------------------------------------------------------------
def success_set(o: Options, rewards: torch.Tensor, heads: dict) -> torch.Tensor:
    """S: the world's binary success head where it has one, else the group's top quantile."""
    return bonus.success_mask(rewards, heads.get(o.success_head), o.success_quantile)


def incorrect(o: Options, rewards: torch.Tensor, heads: dict) -> torch.Tensor:
    """The judge-incorrect samples (success head < 1/2); where the world has none, those outside S."""
    head = heads.get(o.success_head)
    return ~success_set(o, rewards, heads) if head is None else head < 0.5


def bonus_metrics(o: Options, bonus_paid: torch.Tensor, rewards: torch.Tensor, heads: dict) -> dict[str, float]:
    """drift/bonus_mean and drift/bonus_to_incorrect (the mean bonus paid to judge-incorrect samples)."""
    wrong = incorrect(o, rewards, heads)
    b = bonus_paid if bonus_paid.ndim == 2 else bonus_paid[..., -1]
    return {"drift/bonus_mean": float(b.mean()),
            "drift/bonus_to_incorrect": float(b[wrong].mean()) if wrong.any() else 0.0}


def make_shape(o: Options):
    def shape(inp: ShapeInput):
        lam = o.lam * schedule_factor(o.lam_schedule, inp.iteration, inp.total_iterations)
        heads = inp.heads or {}
        if o.shaping == "drive":
            S = success_set(o, inp.rewards, heads)
            dhat = bonus.drive_bonus(per_sample_diversity(inp.features).to(inp.rewards.dtype), S, o.delta)
            out = inp.rewards + lam * dhat
            return out, {**bonus_metrics(o, lam * dhat, inp.rewards, heads), "drift/success_frac": float(S.float().mean()),
                         "drift/lambda": lam}
        if o.shaping in ("decoupled", "gardo"):  # advantage-level forms (make_advantages)
            return inp.rewards, {"drift/lambda": lam}
        mask = shaping.gate_mask(inp.rewards, o.gate)
        phi_T = shaping.diversity_potential(inp.features, mask, o.normalise, o.clip)  # (P, G)
        if o.shaping == "terminal":
            bonus_T = phi_T * o.gamma**inp.num_steps  # sum_t gamma^t F_t = gamma^T Phi(s_T), Phi(s_0) = 0
            out = inp.rewards + lam * bonus_T
            stats = {"drift/bonus_mean": float(bonus_T.mean()), "drift/gated_frac": float(mask.mean()), "drift/lambda": lam}
            wrong = incorrect(o, inp.rewards, heads)
            stats["drift/bonus_to_incorrect"] = float((lam * bonus_T)[wrong].mean()) if wrong.any() else 0.0
            return out, stats
        # per-step: Phi_t on x0_hat(s_t) for t < T, Phi_T on the final image; F_t = gamma Phi_{t+1} - Phi_t
        phi_steps = shaping.diversity_potential(inp.step_features, mask, o.normalise, o.clip)  # (P, G, T)
        phi = torch.cat([phi_steps, phi_T.unsqueeze(-1)], -1)
        f = shaping.potential_shaping(phi, o.gamma)  # (P, G, T)
        out = inp.rewards.unsqueeze(-1) + lam * shaping.discounted_return_to_go(f, o.gamma)
        return out, {"drift/bonus_mean": float(phi_T.mean()), "drift/gated_frac": float(mask.mean()), "drift/lambda": lam}
    return shape


def gate_of(o: Options, r: torch.Tensor, heads: dict) -> torch.Tensor:
    """The samples the diversity term acts on (for the mechanism metric corr(A, d | gate))."""
    if o.shaping in ("drive", "decoupled"):
        return success_set(o, r, heads)
    if o.shaping in ("terminal", "per_step"):
        return shaping.gate_mask(r, o.gate) > 0
    if o.shaping == "gardo":
        return shaping.gate_mask(r, "above_mean") > 0
    return torch.isfinite(r)


def make_advantages(o: Options):
    def advantages(inp: AdvInput):
        adv, stats = task_advantages(o, inp)
        d = per_sample_diversity(inp.features)
        lam = o.lam * schedule_factor(o.lam_schedule, inp.iteration, inp.total_iterations)
        if o.shaping == "decoupled":
            S = success_set(o, inp.task_rewards, inp.heads)
            adv = bonus.decoupled_advantages(adv, d, S, lam, inp.std_eps)
        elif o.shaping == "gardo":
            keep = (outlier_keep(o, inp.task_rewards, success_set(o, inp.task_rewards, inp.heads)) if o.subset == "outlier"
                    else torch.isfinite(inp.rewards))
            adv = bonus.gardo_advantages(inp.rewards, d, o.gardo_divide_std, inp.std_eps).clamp(-inp.clip, inp.clip)
            adv = torch.where(keep, adv, torch.zeros_like(adv))
        gate = gate_of(o, inp.task_rewards, inp.heads) & torch.isfinite(inp.task_rewards)
        a = adv if adv.ndim == 2 else adv.mean(-1)
        corr = {"drift/corr_adv_div_given_gate": bonus.conditional_correlation(a, d, gate),
                "drift/corr_adv_div": bonus.conditional_correlation(a, d, torch.isfinite(inp.task_rewards))}
        # logged where defined (>= 3 samples with spread): an undefined correlation is not a measurement
        stats.update({k: v for k, v in corr.items() if math.isfinite(v)})
        return adv, stats
    return advantages


def build(o: Options) -> Hooks:
    cads_on = o.prompt == "cads"
    return Hooks(
        oversample=o.oversample if o.subset in subset.RULES else 1,
        vary_prompts=make_vary_cads(o) if cads_on else make_vary(o) if o.prompt != "none" else vary_identity,
        step_cond=make_step_cond(o) if cads_on else cond_identity,
        step_uncond=make_step_uncond(o) if cads_on and o.cads_uncond else uncond_identity,
        select_subset=make_select(o) if o.subset in subset.RULES else select_all,
        shape_rewards=make_shape(o) if o.shaping != "none" else shape_none,
        advantages=make_advantages(o),
        regulariser=kl_regulariser(o.kl_beta) if o.kl_beta > 0 else None,
        needs_step_features=o.shaping == "per_step",
    )


def validate(cfg) -> None:
    o = cfg.options
    if o.prompt in ("paraphrase", "both"):
        why = lacks(cfg, "paraphrase")
        check(why is None, "drift.prompt", o.prompt, f"model.world={cfg.model.world!r} offers no paraphrases with this "
              f"config: {why}; or use drift.prompt='cads' or 'embed'")
    if o.subset == "robust" or o.subset_stats == "all":
        check(not cfg.train.global_std, "train.global_std", cfg.train.global_std,
              f"must be false with drift.subset={o.subset!r} (drift.subset_stats={o.subset_stats!r}): "
              "that rule sets the advantages' statistics per group")


SPEC = MethodSpec(name="drift", options_cls=Options, build=build, validate_fn=validate,
                  summary="DRIFT v2 (our design): outlier mask + CADS condition annealing + success-gated diversity bonus")
