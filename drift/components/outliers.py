"""DRIFT v2 sampling (our design): drop reward outliers without changing the advantage scale.

The first DRIFT kept a reward-concentrated window of an oversampled group and renormalised the
advantages on the kept subset. Measured on the base model, the kept window has about a third of the
group's reward std, so each unit of reward difference buys about 3x more advantage (the "illusory
advantage" of Pref-GRPO), and the window tends to keep a single judge level. The functions here keep
the statistics of the full group instead:

    mu, sigma  = mean and population std of the group's finite rewards (all K candidates)
    keep_i     = finite(r_i) and |r_i - mu| <= kappa * sigma                      (S1: outlier mask)
    A_i        = clip((r_i - mu) / (sigma + eps), -c, c) if keep_i else 0          (full-group advantages)

a variant that never drops a protected sample (ours, after the measured failure below):

    keep_i     = finite(r_i) and (|r_i - mu| <= kappa * sigma  or  i in S)              (S1 + protection)

with S the success set (the world's binary success head, else the group's top quantile): in a group where
success is rare, the one success is itself the reward outlier, and the plain mask drops exactly the sample
the task signal lives in; and a robust alternative that keeps every sample and bounds the influence of outliers:

    A_i = clip((r_i - med) / (1.4826 * MAD + eps), -c, c)                          (S2: median / MAD)

falling back to the std where the MAD vanishes (a discrete reward where most samples tie).
All functions are pure, work per group (dim 1) and treat non-finite rewards as dropped (A = 0).
"""

from __future__ import annotations

import torch


def finite_group_stats(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and population std (ddof 0) over finite entries: (P, K) -> ((P, 1), (P, 1)).

    A group with no finite entry gets mean 0 and std 0."""
    r = rewards.double()
    ok = torch.isfinite(r)
    n = ok.sum(1, keepdim=True).clamp(min=1)
    r0 = torch.where(ok, r, torch.zeros_like(r))
    mean = r0.sum(1, keepdim=True) / n
    var = (torch.where(ok, r - mean, torch.zeros_like(r)) ** 2).sum(1, keepdim=True) / n
    return mean, var.sqrt()


def outlier_mask(rewards: torch.Tensor, kappa: float = 2.0) -> torch.Tensor:
    """keep_i = finite(r_i) and |r_i - mu| <= kappa * sigma, with the group's finite mean / std.

    (P, K) -> bool (P, K). A group whose finite rewards are all equal keeps every finite sample."""
    if kappa <= 0:
        raise ValueError(f"kappa={kappa!r}: must be > 0")
    mean, std = finite_group_stats(rewards)
    r = rewards.double()
    return torch.isfinite(r) & ((r - mean).abs() <= kappa * std + 1e-12)


def protect(keep: torch.Tensor, protected: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """keep_i or (protected_i and finite(r_i)): a protected sample with a finite reward is never dropped.

    (P, K) bool, (P, K) bool, (P, K) -> bool (P, K)."""
    return keep | (protected.bool() & torch.isfinite(rewards))


def dropped_share(keep: torch.Tensor, members: torch.Tensor) -> float:
    """Mechanism check: the share of ``members`` (e.g. the successes) that the mask drops; 0 where there are none.

    (P, K) bool, (P, K) bool -> float in [0, 1]."""
    m = members.bool()
    return float((m & ~keep).sum() / m.sum()) if m.any() else 0.0


def masked_advantages(rewards: torch.Tensor, keep: torch.Tensor, eps: float = 1e-4,
                      clip: float | None = None) -> torch.Tensor:
    """A_i = (r_i - mu) / (sigma + eps) for kept samples, 0 for dropped ones; mu, sigma over ALL finite.

    The statistics are those of every finite candidate, not of the kept ones, so masking changes
    which samples are trained on but neither the advantage scale nor its centre. (P, K) -> (P, K)."""
    mean, std = finite_group_stats(rewards)
    r = rewards.double()
    adv = (r - mean) / (std + eps)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    keep = keep.view(*keep.shape, *([1] * (r.ndim - keep.ndim)))  # per-sample mask on per-step (P, K, T) rewards
    adv = torch.where(keep & torch.isfinite(r), adv, torch.zeros_like(adv))
    return adv.to(rewards.dtype)


def all_stats_advantages(rewards: torch.Tensor, all_rewards: torch.Tensor, eps: float = 1e-4,
                         clip: float | None = None) -> torch.Tensor:
    """S3: A_i = clip((r_i - mu_all) / (sigma_all + eps), -c, c) for the kept samples of a subset rule,
    with mu_all, sigma_all the mean and population std of ALL K candidates' finite task rewards.

    rewards: (P, G) or per-step (P, G, T) rewards of the kept samples; all_rewards: (P, K). The subset
    still decides which samples are trained on, but no longer the advantage scale (the mechanism test
    that separates 'which samples' from 'renormalised on a narrow window'). Non-finite -> 0."""
    mean, std = finite_group_stats(all_rewards)
    r = rewards.double()
    extra = (1,) * (r.ndim - 2)
    adv = (r - mean.view(-1, 1, *extra)) / (std.view(-1, 1, *extra) + eps)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return torch.where(torch.isfinite(r), adv, torch.zeros_like(adv)).to(rewards.dtype)


def judge_levels(judge: torch.Tensor, keep: torch.Tensor) -> float:
    """Mechanism check: mean over groups of the number of distinct finite judge levels among the kept samples.

    judge: (P, K) the judge head (e.g. the share of named attributes right: 0, 1/3, 2/3, 1); keep: (P, K) bool."""
    counts = []
    for row, k in zip(judge.double(), keep):
        vals = row[k & torch.isfinite(row)]
        counts.append(len(torch.unique(torch.round(vals * 1e6))))
    return float(sum(counts) / max(len(counts), 1))


def robust_advantages(rewards: torch.Tensor, clip: float = 2.0, eps: float = 1e-4) -> torch.Tensor:
    """A_i = clip((r_i - median) / (1.4826 MAD + eps), -clip, clip); std instead of 1.4826 MAD where MAD < eps.

    1.4826 MAD estimates the std of a Gaussian. Median and MAD are over the group's finite rewards;
    non-finite rewards get A = 0. (P, K) -> (P, K)."""
    r = rewards.double()
    ok = torch.isfinite(r)
    nan = torch.full_like(r, float("nan"))
    rf = torch.where(ok, r, nan)
    med = torch.nanmedian(rf, dim=1, keepdim=True).values
    mad = torch.nanmedian((rf - med).abs(), dim=1, keepdim=True).values
    _, std = finite_group_stats(rewards)
    scale = torch.where(mad >= eps, 1.4826 * mad, std)
    adv = ((r - med) / (scale + eps)).clamp(-clip, clip)
    adv = torch.where(ok & torch.isfinite(adv), adv, torch.zeros_like(adv))
    return adv.to(rewards.dtype)


def kept_std_ratio(rewards: torch.Tensor, keep: torch.Tensor) -> float:
    """Mechanism check: mean over groups of std(kept finite rewards) / std(all finite rewards).

    About 1 for an outlier mask (the scale is untouched), about 0.3 for a densest window of half the
    group. Groups with zero std are left out; nan when every group is."""
    _, std_all = finite_group_stats(rewards)
    kept = torch.where(keep, rewards.double(), torch.full_like(rewards.double(), float("nan")))
    _, std_kept = finite_group_stats(kept)
    valid = std_all.squeeze(1) > 0
    if not valid.any():
        return float("nan")
    return float((std_kept.squeeze(1)[valid] / std_all.squeeze(1)[valid]).mean())
