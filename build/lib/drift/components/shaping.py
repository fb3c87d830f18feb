"""DRIFT component 3 (optimisation): intra-group diversity through potential-based reward shaping.

Shaping in the sense of Ng, Harada & Russell (1999): F(s, s') = gamma * Phi(s') - Phi(s). Over a
denoising trajectory s_0 ... s_T the discounted sum telescopes,

    sum_{t=0}^{T-1} gamma^t F_t = gamma^T Phi(s_T) - Phi(s_0),

so with Phi(s_0) = 0 (pure noise carries no diversity) the terminal form is a bonus
lambda * gamma^T * Phi(s_T) on the final sample, and the optimal policy is unchanged for any Phi.

Phi(s) is the sample's diversity with respect to the rest of its group in the world's feature space,
d_i = 1/(G-1) sum_{j != i} (1 - cos(f_i, f_j)) (DIVER's per-sample group diversity), optionally
gated (only samples whose task reward is >= the group mean, as in DIVER / DRIVE), min-max
normalised within the group (DRIVE) and clipped to [0, clip] (DIVER's balanced shaping).
The per-step form uses Phi_t = d_i of the predicted clean image x0_hat(s_t) at each step, and gives
each step t the shaped return-to-go R + lambda * sum_{k >= t} gamma^(k-t) F_k.
"""

from __future__ import annotations

import torch

from ..diversity import per_sample_diversity


def potential_shaping(phi: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """F_t = gamma Phi_{t+1} - Phi_t along the last dim: (..., T + 1) potentials -> (..., T) shaping terms."""
    return gamma * phi[..., 1:] - phi[..., :-1]


def discounted_return_to_go(f: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k - t) f_k along the last dim (..., T)."""
    out = torch.zeros_like(f)
    acc = torch.zeros_like(f[..., 0])
    for t in range(f.shape[-1] - 1, -1, -1):
        acc = f[..., t] + gamma * acc
        out[..., t] = acc
    return out


def gate_mask(rewards: torch.Tensor, gate: str) -> torch.Tensor:
    """(P, G) -> {0, 1} mask of samples that may receive the bonus. 'above_mean': r_i >= group mean
    of finite rewards; 'none': all finite samples."""
    ok = torch.isfinite(rewards)
    if gate == "none":
        return ok.float()
    if gate == "above_mean":
        r0 = torch.where(ok, rewards, torch.zeros_like(rewards))
        mean = r0.sum(1, keepdim=True) / ok.sum(1, keepdim=True).clamp(min=1)
        return (ok & (rewards >= mean)).float()
    raise ValueError(f"gate={gate!r}: must be 'none' or 'above_mean'")


def diversity_potential(features: torch.Tensor, mask: torch.Tensor, normalise: str, clip: float) -> torch.Tensor:
    """Phi = (gated, normalised, clipped) per-sample group diversity. features (P, G, [T,] D); mask (P, G)."""
    if features.ndim == 4:  # (P, G, T, D): diversity within the group at each step
        d = per_sample_diversity(features.transpose(1, 2)).transpose(1, 2)  # (P, G, T)
        m = mask.unsqueeze(-1)
    else:
        d = per_sample_diversity(features)
        m = mask
    if normalise == "minmax":
        big = torch.finfo(d.dtype).max
        lo = torch.where(m > 0, d, torch.full_like(d, big)).amin(1, keepdim=True)
        hi = torch.where(m > 0, d, torch.full_like(d, -big)).amax(1, keepdim=True)
        d = ((d - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
    elif normalise != "none":
        raise ValueError(f"normalise={normalise!r}: must be 'none' or 'minmax'")
    if clip > 0:
        d = d.clamp(0, clip)
    return d * m
