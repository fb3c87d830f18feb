"""Flow-SDE steps with per-step Gaussian log-probabilities (Flow-GRPO, arXiv 2505.05470, Sec. 4.2).

Convention: flow time sigma in [0, 1], 1 = noise, 0 = data; x_sigma = (1 - sigma) x0 + sigma x1;
velocity v = x1 - x0. A schedule sigma_0 = 1 > sigma_1 > ... > sigma_N = 0 is walked with
dt = sigma_{i+1} - sigma_i < 0.

Adapted from the formulas of flow_grpo/diffusers_patch/sd3_sde_with_logprob.py (yifan123/flow_grpo
@ac4c86e), written anew as pure functions; the formulas in our notation: docs/methods.md (Shared engine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


SCHEDULES = ("linear", "diffusers")


def sigma_schedule(num_steps: int, shift: float = 1.0, kind: str = "linear") -> torch.Tensor:
    """Sigmas (num_steps + 1,) from 1 to 0, through SD3's shift sigma' = s*sigma / (1 + (s-1)*sigma).

    linear:    sigma_i = shift(1 - i / N), i = 0..N (ends exactly at 0; this project's shapes world).
    diffusers: what FlowMatchEulerDiscreteScheduler.set_timesteps(N) gives (SD3 pipelines, Flow-GRPO):
               sigma_i = shift(1 - i (1 - m) / (N - 1)), i = 0..N-1, with m = shift(1/1000), then 0.
               The last step (into 0) is then short (e.g. shift 3, N 10: ..., 0.278, 0.0089, 0).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: must be >= 1")
    if shift <= 0:
        raise ValueError(f"shift={shift}: must be > 0")
    if kind not in SCHEDULES:
        raise ValueError(f"kind={kind!r}: must be one of {SCHEDULES}")

    def shifted(x):
        return shift * x / (1 + (shift - 1) * x)

    if kind == "linear":
        s = shifted(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64))
    else:
        m = shifted(torch.tensor(1e-3, dtype=torch.float64))
        s = torch.cat([shifted(torch.linspace(1.0, float(m), num_steps, dtype=torch.float64)), torch.zeros(1, dtype=torch.float64)])
    return s.float()


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample log N(x; mean, std^2 I), **averaged** (not summed) over all non-batch dims.

    log p = mean_d [ -(x_d - mu_d)^2 / (2 std^2) - log std - 0.5 log(2 pi) ]      (Flow-GRPO Sec. 2.3)
    ``std`` broadcasts against x (a scalar or (B, 1, ..., 1)).
    """
    lp = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, x.ndim)))


@dataclass
class StepOut:
    """One SDE step. ``prev_sample`` is x_{i+1}; ``log_prob`` (B,) is log p(x_{i+1} | x_i);
    ``mean`` is mu; ``std`` the step's total std (std_t * sqrt(-dt) for 'sde')."""

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def sde_step_with_logprob(
    v: torch.Tensor,
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: float,
    sigma_1: torch.Tensor | float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sde_type: str = "sde",
    eps: torch.Tensor | None = None,
) -> StepOut:
    """One Euler-Maruyama step of the marginal-preserving flow-SDE, with its Gaussian log-prob.

    'sde' (Flow-GRPO Eq. 9, code form), dt = sigma_next - sigma < 0:
        std_t = a * sqrt(sigma / (1 - sigma))       (1 - sigma_1 replaces 1 - sigma at sigma = 1)
        mu    = x (1 + std_t^2 dt / (2 sigma)) + v (1 + std_t^2 (1 - sigma) / (2 sigma)) dt
        x'    = mu + std_t sqrt(-dt) eps
    'cps' (coefficients-preserving sampling):
        std = sigma_next sin(a pi / 2);  x0 = x - sigma v;  x1 = x + (1 - sigma) v
        mu  = (1 - sigma_next) x0 + sqrt(sigma_next^2 - std^2) x1;  x' = mu + std eps
        log p = -mean (x' - mu)^2  (constants and the 1/(2 std^2) scale dropped, as upstream)
    With a = 0 both reduce to the Euler ODE step x + v dt. All math runs in fp32 (bf16 overflows in mu).
    If ``prev_sample`` is given it is used as x' (to re-score a stored trajectory); else x' is drawn
    with standard-normal ``eps`` if given (multi-process runs pass their slice of the global batch's
    noise), else from ``generator``.
    The log-prob at a = 0 is undefined (degenerate Gaussian) and returned as zeros.
    """
    dtype = x.dtype
    v, x = v.float(), x.float()
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=x.device)
    sigma_1 = torch.as_tensor(sigma_1, dtype=torch.float32, device=x.device)
    shape = (-1,) + (1,) * (x.ndim - 1)
    if sigma.ndim:
        sigma, sigma_next = sigma.view(shape), sigma_next.view(shape)
    dt = sigma_next - sigma
    if sde_type == "sde":
        std_t = noise_level * torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_1, sigma)))
        mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
        std = std_t * torch.sqrt(-dt)
    elif sde_type == "cps":
        std = sigma_next * math.sin(noise_level * math.pi / 2)
        x0_hat, x1_hat = x - sigma * v, x + (1 - sigma) * v
        mean = (1 - sigma_next) * x0_hat + torch.sqrt((sigma_next**2 - std**2).clamp(min=0)) * x1_hat
    else:
        raise ValueError(f"sde_type={sde_type!r}: must be 'sde' or 'cps'")
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    if prev_sample is None:
        if eps is None:
            # drawn on the generator's device (the run's generators live on the CPU), then moved
            eps = torch.randn(x.shape, generator=generator, dtype=torch.float32,
                              device=generator.device if generator is not None else x.device)
        eps = eps.to(x.device).float()
        prev_sample = mean + std * eps
    prev_sample = prev_sample.float()
    if noise_level == 0:
        log_prob = torch.zeros(x.shape[0], device=x.device)
    elif sde_type == "sde":
        log_prob = gaussian_log_prob(prev_sample, mean, std)
    else:
        log_prob = -((prev_sample - mean) ** 2).mean(dim=tuple(range(1, x.ndim)))
    return StepOut(prev_sample.to(dtype), log_prob, mean, std)


def ode_step(v: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Euler step of the probability-flow ODE: x' = x + v (sigma_next - sigma)."""
    return (x.float() + v.float() * (sigma_next - sigma)).to(x.dtype)


def x0_from_v(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Predicted clean sample x0_hat = x - sigma v (exact for the rectified-flow path)."""
    return x - sigma * v


def kl_gaussian_same_std(mean_theta: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor, exact: bool = False,
                         dt: torch.Tensor | None = None, sde_type: str = "sde") -> torch.Tensor:
    """Closed-form KL between two same-variance Gaussian steps, per sample (B,), mean over dims.

    Code form (Flow-GRPO SD3 trainer, default): mean_d (mu_theta - mu_ref)^2 / (2 s^2), where s is the std
    Flow-GRPO's step function returns: for 'sde' std_t, which excludes sqrt(|dt|) -- i.e. |dt| times the exact
    per-dimension KL; for 'cps' the step's total std, so the code form is the exact form (no |dt| factor).
    Exact form (``exact=True``): mean_d (mu_theta - mu_ref)^2 / (2 std_t^2 |dt|).
    Here ``std`` is the step's total std (std_t sqrt(|dt|) for 'sde'); ``dt`` (broadcastable) recovers std_t.
    """
    sq = ((mean_theta.float() - mean_ref.float()) ** 2).mean(dim=tuple(range(1, mean_theta.ndim)))
    var_total = std.float().reshape(-1) ** 2
    if exact or sde_type == "cps":
        return sq / (2 * var_total)
    if dt is None:
        raise ValueError("kl_gaussian_same_std: dt is needed for the code form (exact=False)")
    return sq * dt.abs().float().reshape(-1) / (2 * var_total)
