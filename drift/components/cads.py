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
from dataclasses import dataclass

import torch

from ..worlds.types import Cond

CADS_DEFAULTS = {"tau1": 0.6, "tau2": 0.9, "scale": 0.25, "psi": 1.0}
"""CADS's published defaults (tau1, tau2, noise scale s, rescale weight psi)."""


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
    """fn(row, all dims) for each row separately, stacked to (B, 1, ..., 1): a row's statistic is computed
    on that row alone, so it is bitwise the same whatever batch the row sits in (sampling vs PPO replay)."""
    dims = tuple(range(x.ndim - 1))
    return torch.stack([fn(row, dims) for row in x]).view(-1, *([1] * (x.ndim - 1)))


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
    rms = _per_sample(y, lambda x, d: x.pow(2).mean(dim=d).sqrt())
    y_hat = math.sqrt(gamma) * y + scale * math.sqrt(1.0 - gamma) * rms * noise.to(y.dtype)
    if psi == 0:
        return y_hat
    mean_y = _per_sample(y, lambda x, d: x.mean(dim=d))
    std_y = _per_sample(y, lambda x, d: x.std(dim=d, unbiased=False))
    mean_h = _per_sample(y_hat, lambda x, d: x.mean(dim=d))
    std_h = _per_sample(y_hat, lambda x, d: x.std(dim=d, unbiased=False))
    y_res = (y_hat - mean_h) / std_h.clamp(min=1e-12) * std_y + mean_y
    return psi * y_res + (1.0 - psi) * y_hat


@dataclass
class NoisedCond(Cond):
    """A conditioning that carries its own per-sample CADS noise n (and, optionally, the noise of the
    unconditional branch), drawn once per sample before sampling. Row indexing keeps the noise with its
    row, so the PPO replay of a kept trajectory sees the very n it was sampled with."""

    noise: Cond | None = None
    noise_uncond: Cond | None = None

    def index(self, idx) -> "NoisedCond":
        pick = lambda c: None if c is None else c.index(idx)  # noqa: E731
        return NoisedCond(self.hidden[idx], self.pooled[idx], pick(self.noise), pick(self.noise_uncond))

    def repeat_interleave(self, k: int) -> "NoisedCond":
        rep = lambda c: None if c is None else c.repeat_interleave(k)  # noqa: E731
        return NoisedCond(self.hidden.repeat_interleave(k, 0), self.pooled.repeat_interleave(k, 0),
                          rep(self.noise), rep(self.noise_uncond))


def draw_noise_like(cond: Cond, generator: torch.Generator) -> Cond:
    """n ~ N(0, I) shaped like ``cond`` (hidden and pooled), drawn on the CPU from ``generator``, moved to
    the condition's device and dtype."""
    def draw(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)
    return Cond(draw(cond.hidden), draw(cond.pooled))


def anneal_cond(cond: Cond, noise: Cond, step: int, num_steps: int, tau1: float = 0.6, tau2: float = 0.9,
                scale: float = 0.25, psi: float = 1.0) -> Cond:
    """The CADS condition of denoising step ``step``: gamma = cads_gamma(1 - step / num_steps, tau1, tau2),
    then y_hat = cads_condition(y, n, gamma, s, psi) for the token states and the pooled embedding.

    Row-wise and free of random draws (n is given), so it can be recomputed in the PPO replay; gamma = 1
    (the late steps) returns the clean condition bitwise."""
    g = cads_gamma(step_time(step, num_steps), tau1, tau2)
    if g == 1.0:
        return Cond(cond.hidden, cond.pooled)
    return Cond(cads_condition(cond.hidden, noise.hidden, g, scale, psi),
                cads_condition(cond.pooled, noise.pooled, g, scale, psi))
