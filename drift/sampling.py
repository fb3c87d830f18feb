"""Sampling trajectories with per-step log-probs (training) and ODE samples (evaluation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .worlds.types import Cond
from .sde import sde_step_with_logprob, x0_from_v


def guided_velocity(world, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, uncond: Cond | None, cfg: float,
                    detach_uncond: bool = False) -> torch.Tensor:
    """v = v_u + cfg (v_c - v_u), computed in one batched forward of 2B (cfg = 1: conditional only).

    ``detach_uncond``: v_u is treated as a constant, so dv/dtheta = cfg dv_c/dtheta (Flow-GRPO's SD3 trainer at
    ac4c86e); otherwise dv/dtheta = cfg dv_c/dtheta - (cfg - 1) dv_u/dtheta. The value of v is the same.
    With ``detach_uncond`` under autograd, v_u comes from its own no-grad forward of B rows and v_c from one of B
    rows with grad, so the backward runs through B rows, not 2B (the same values: on the CPU the two B-row calls
    give bitwise the rows of the 2B call, tests/test_fidelity.py).
    """
    if cfg == 1 or uncond is None:
        return world.velocity(x, sigma, cond)
    if detach_uncond and torch.is_grad_enabled():
        with torch.no_grad():
            v_u = world.velocity(x, sigma, uncond)
        return v_u + cfg * (world.velocity(x, sigma, cond) - v_u)
    n = x.shape[0]
    s = sigma if sigma.ndim == 0 else torch.cat([sigma, sigma])
    v = world.velocity(torch.cat([x, x]), s, Cond.cat([cond, uncond]))
    v_c, v_u = v[:n], v[n:]
    if detach_uncond:
        v_u = v_u.detach()
    return v_u + cfg * (v_c - v_u)


def sliced_guided_velocity(world, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, uncond: Cond | None, cfg: float,
                           micro_batch: int = 0) -> torch.Tensor:
    """``guided_velocity`` over row slices of at most ``micro_batch`` rows (0 = one call), concatenated: the
    same v row for row (each row's computation does not involve the others), at a bounded batch per call."""
    n = x.shape[0]
    if not micro_batch or micro_batch >= n:
        return guided_velocity(world, x, sigma, cond, uncond, cfg)
    parts = []
    for s0 in range(0, n, micro_batch):
        sl = slice(s0, s0 + micro_batch)
        idx = torch.arange(s0, min(n, s0 + micro_batch))
        parts.append(guided_velocity(world, x[sl], sigma, cond.index(idx), None if uncond is None else uncond.index(idx), cfg))
    return torch.cat(parts)


@dataclass
class Trajectories:
    """A batch of B sampled trajectories.

    xs: (B, T + 1, *latent) states x_0 (noise) ... x_T (sample); log_probs: (B, T) log p(x_{i+1} | x_i);
    sigmas: (T + 1,); images: (B, 3, H, W) in [0, 1]; x0_hat: (B, T, *latent) predicted clean
    sample at each step (only when requested).
    """

    xs: torch.Tensor
    log_probs: torch.Tensor
    sigmas: torch.Tensor
    images: torch.Tensor
    x0_hat: torch.Tensor | None = None

    def index(self, idx: torch.Tensor) -> "Trajectories":
        return Trajectories(self.xs[idx], self.log_probs[idx], self.sigmas, self.images[idx],
                            None if self.x0_hat is None else self.x0_hat[idx])


@torch.no_grad()
def sample_trajectories(world, cond: Cond, uncond: Cond | None, noise: torch.Tensor, sigmas: torch.Tensor,
                        noise_level: float, cfg: float, generator: torch.Generator, sde_type: str = "sde",
                        record_x0: bool = False, draw_eps=None, step_cond=None, micro_batch: int = 0,
                        step_uncond=None) -> Trajectories:
    """Run the flow-SDE from ``noise`` along ``sigmas``, recording states and log-probs.

    With noise_level = 0 this is the Euler ODE (log-probs are zeros). Each step's noise comes from
    ``draw_eps(shape, device)`` if given (multi-process runs: drift.distributed.sliced_randn), else
    from ``generator``. ``step_cond(cond, i, T)``, if given, is the conditioning of step i (the method's
    per-step conditioning, drift.contract.Hooks.step_cond; the PPO replay applies it identically), and
    ``step_uncond(uncond, cond, i, T)`` that of the unconditional branch (Hooks.step_uncond).
    ``micro_batch`` (sample.micro_batch) bounds the rows per transformer call (x2 with CFG); the noise is
    drawn for the whole batch, so the trajectories do not depend on it.
    """
    x = noise.to(world.device)  # noise is drawn on the CPU (seeded generators); the world may run elsewhere
    xs, lps, x0s = [x], [], []
    sigma_1 = sigmas[1]
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        c = cond if step_cond is None else step_cond(cond, i, len(sigmas) - 1)
        u = uncond if step_uncond is None or uncond is None else step_uncond(uncond, cond, i, len(sigmas) - 1)
        v = sliced_guided_velocity(world, x, s, c, u, cfg, micro_batch)
        if record_x0:
            x0s.append(x0_from_v(x, v, s))
        eps = draw_eps(x.shape, x.device) if draw_eps is not None else None
        out = sde_step_with_logprob(v, x, s, sigmas[i + 1], noise_level, sigma_1, generator=generator, sde_type=sde_type,
                                    eps=eps)
        x = out.prev_sample
        xs.append(x)
        lps.append(out.log_prob)
    return Trajectories(torch.stack(xs, 1), torch.stack(lps, 1), sigmas, world.decode(x),
                        torch.stack(x0s, 1) if record_x0 else None)
