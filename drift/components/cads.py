"""DRIFT v2 prompting (our design, after CADS): condition annealing within each trajectory.

CADS (Sadat et al., ICLR 2024, "Condition-Annealed Diffusion Sampler") mixes the conditioning
vector with Gaussian noise whose weight depends on the denoising step, not on the training
iteration: the first steps (which set the layout) see mostly noise, the last steps (which set the
attributes) see the clean condition. With t = 1 - step / num_steps (t = 1 at pure noise, 0 at data):

    gamma(t) = 1                          for t <= tau1
             = (tau2 - t) / (tau2 - tau1) for tau1 < t < tau2
             = 0                          for t >= tau2

    y_hat = sqrt(gamma) * y + s * rms(y) * sqrt(1 - gamma) * n,       n ~ N(0, I), drawn once per sample

    optional rescale (psi in [0, 1]):
        y_res = (y_hat - mean(y_hat)) / std(y_hat) * std(y) + mean(y)
        y_out = psi * y_res + (1 - psi) * y_hat

CADS's own noise is unit-scale; multiplying by rms(y) (per sample) keeps s comparable across
worlds whose embeddings have different sizes (our choice). CADS defaults: tau1 = 0.6, tau2 = 0.9,
s = 0.25, psi = 1. The same n is reused at every step of a trajectory and in the PPO replay, so the
replayed condition equals the sampled one exactly.
"""

from __future__ import annotations

import math

import torch


def cads_gamma(t: float, tau1: float = 0.6, tau2: float = 0.9) -> float:
    """gamma(t) of CADS (the weight of the clean condition), t = 1 - step / num_steps in [0, 1]."""
    if not 0 <= tau1 < tau2 <= 1:
        raise ValueError(f"tau1={tau1!r}, tau2={tau2!r}: must satisfy 0 <= tau1 < tau2 <= 1")
    if t <= tau1:
        return 1.0
    if t >= tau2:
        return 0.0
    return (tau2 - t) / (tau2 - tau1)


def step_time(step: int, num_steps: int) -> float:
    """t = 1 - step / num_steps: 1 at the first denoising step (pure noise), -> 0 at the last."""
    return 1.0 - step / num_steps


def _per_sample(x: torch.Tensor, fn) -> torch.Tensor:
    return fn(x, tuple(range(1, x.ndim)))


def cads_condition(y: torch.Tensor, noise: torch.Tensor, gamma: float, scale: float = 0.25,
                   psi: float = 1.0) -> torch.Tensor:
    """y_hat = sqrt(gamma) y + s rms(y) sqrt(1 - gamma) n, then rescaled towards y's mean / std with weight psi.

    y, noise: (B, ...) with the same shape; statistics are per sample (over all non-batch dims).
    gamma = 1 returns y unchanged (bitwise)."""
    if y.shape != noise.shape:
        raise ValueError(f"condition {tuple(y.shape)} and noise {tuple(noise.shape)} must have the same shape")
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma={gamma!r}: must be in [0, 1]")
    if not 0 <= psi <= 1:
        raise ValueError(f"psi={psi!r}: must be in [0, 1]")
    if gamma == 1.0:
        return y
    rms = _per_sample(y, lambda x, d: x.pow(2).mean(dim=d, keepdim=True).sqrt())
    y_hat = math.sqrt(gamma) * y + scale * math.sqrt(1.0 - gamma) * rms * noise.to(y.dtype)
    if psi == 0:
        return y_hat
    mean_y = _per_sample(y, lambda x, d: x.mean(dim=d, keepdim=True))
    std_y = _per_sample(y, lambda x, d: x.std(dim=d, keepdim=True, unbiased=False))
    mean_h = _per_sample(y_hat, lambda x, d: x.mean(dim=d, keepdim=True))
    std_h = _per_sample(y_hat, lambda x, d: x.std(dim=d, keepdim=True, unbiased=False))
    y_res = (y_hat - mean_h) / std_h.clamp(min=1e-12) * std_y + mean_y
    return psi * y_res + (1.0 - psi) * y_hat
