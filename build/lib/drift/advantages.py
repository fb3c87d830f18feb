"""Group-relative advantages (Flow-GRPO Eq. 4; flow_grpo/stat_tracking.py), NaN-aware."""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, global_std: bool = False,
                     clip: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """A_i = (r_i - mean_j r_j) / (std + eps) within each group (dim 1), optionally clamped to +-clip.

    rewards: (P, G) per-sample, or (P, G, T) per-step rewards (normalised per step over the group).
    std is the population std (ddof = 0) of the group, or of every finite reward of the batch when
    ``global_std``. Non-finite rewards are left out of every statistic and get advantage exactly 0;
    a group whose finite rewards are all equal gets advantage exactly 0 (A = 0 / (0 + eps)).
    Returns (advantages, {'reward/nonfinite_frac', 'reward/zero_std_frac'}).
    """
    if rewards.ndim not in (2, 3):
        raise ValueError(f"rewards must be (P, G) or (P, G, T), got shape {tuple(rewards.shape)}")
    r = rewards.double()
    ok = torch.isfinite(r)
    n = ok.sum(1, keepdim=True).clamp(min=1)
    r0 = torch.where(ok, r, torch.zeros_like(r))
    mean = r0.sum(1, keepdim=True) / n
    centred = torch.where(ok, r - mean, torch.zeros_like(r))
    if global_std:
        m_all = r0.sum() / ok.sum().clamp(min=1)
        std = torch.sqrt((torch.where(ok, r - m_all, torch.zeros_like(r)) ** 2).sum() / ok.sum().clamp(min=1))
    else:
        std = torch.sqrt((centred**2).sum(1, keepdim=True) / n)
    adv = centred / (std + eps)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    adv = torch.where(ok, adv, torch.zeros_like(adv))
    zero_std = (centred == 0).all(1)
    stats = {"reward/nonfinite_frac": float((~ok).float().mean()), "reward/zero_std_frac": float(zero_std.float().mean())}
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32), stats


def ppo_clip_loss(adv: torch.Tensor, log_prob: torch.Tensor, old_log_prob: torch.Tensor,
                  clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample PPO-clip loss: max(-A rho, -A clip(rho, 1 - eps, 1 + eps)), rho = exp(logp - logp_old).

    Returns (loss (B,), diagnostics): approx_kl = 0.5 (logp - logp_old)^2, clipped = |rho - 1| > eps.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    diag = {
        "ratio": ratio.detach(),
        "approx_kl": 0.5 * (log_prob - old_log_prob).detach() ** 2,
        "clipped": ((ratio - 1.0).abs() > clip_range).float().detach(),
    }
    return loss, diag
