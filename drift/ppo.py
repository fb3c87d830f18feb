"""The PPO-clip update over the trained denoising steps (Flow-GRPO Eq. 5), with the method's regulariser.

For each trained step j (in order) and each micro-batch, the policy's step j is replayed on the
recorded states (x_j -> x_{j+1}): log pi_theta(x_{j+1} | x_j) against the sampling-time log-prob
gives the ratio; loss = PPO-clip(A, ratio) + regulariser. Gradients accumulate over
``train.steps_per_update`` steps, are summed over processes, and one AdamW step follows unless a
loss or gradient is non-finite (then the step is skipped and counted; ``train.max_nonfinite_skips``
in a row stop the run).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from . import distributed as dist
from .advantages import ppo_clip_loss
from .contract import RegInput
from .sampling import guided_velocity
from .sde import StepOut, sde_step_with_logprob


def policy_step(world, x: torch.Tensor, x_next: torch.Tensor, j: int, sigmas: torch.Tensor, cond, uncond,
                sample_cfg, detach_uncond: bool = False) -> StepOut:
    """The current policy's (or, inside ``world.reference()``, the reference's) SDE step j from x to
    the recorded x_next: guided velocity, then the step's mean, std and log p(x_next | x).
    ``detach_uncond`` (train.cfg_grad='cond_only'): no gradient through the unconditional branch."""
    v = guided_velocity(world, x, sigmas[j], cond, uncond, sample_cfg.cfg, detach_uncond=detach_uncond)
    return sde_step_with_logprob(v, x, sigmas[j], sigmas[j + 1], sample_cfg.noise_level, sigmas[1],
                                 prev_sample=x_next, sde_type=sample_cfg.sde_type)


def _finite_grads(params) -> bool:
    """All gradients finite; one device synchronisation for all tensors (not one per tensor)."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def ppo_update(state, world, hooks, traj, cond, uncond, adv: torch.Tensor, sigmas: torch.Tensor, cfg, bp,
               it: int, sw, on_phase) -> dict[str, float]:
    """One iteration's PPO updates on this rank's trajectories ``traj`` (B) with advantages ``adv``
    ((B,) or per step (B, T)); updates ``state`` (parameters, AdamW, EMA, counters) in place.

    Returns this rank's metrics: ``loss/*`` means over the micro-batches (``loss/skipped_steps`` a
    count) and the ``sys/{forward,backward,optimizer,train}_seconds`` timings, lapped on ``sw``.
    """
    S, tc, T, n_train = cfg.sample, cfg.train, cfg.sample.num_steps, bp.trained_steps
    params = state.params
    t_fwd = t_bwd = t_opt = 0.0
    B, mb = bp.trajectories_per_rank, bp.micro_batch
    logs: dict[str, list[float]] = {}
    n_acc, reg, opt_steps_before = 0, hooks.regulariser, state.opt_step
    detach_uncond = tc.cfg_grad == "cond_only"
    state.opt.zero_grad(set_to_none=True)
    for j in range(n_train):
        adv_j = adv if adv.ndim == 1 else adv[:, j]
        cond_j = hooks.step_cond(cond, j, T)  # as at sampling time (drift.sampling.sample_trajectories)
        uncond_j = hooks.step_uncond(uncond, cond, j, T)
        for s0 in range(0, B, mb):
            sl = slice(s0, s0 + mb)
            x_j, x_next = traj.xs[sl, j], traj.xs[sl, j + 1]
            c, u = cond_j.index(sl), uncond_j.index(sl)
            out = policy_step(world, x_j, x_next, j, sigmas, c, u, S, detach_uncond)
            policy, diag = ppo_clip_loss(adv_j[sl], out.log_prob, traj.log_probs[sl, j], tc.clip_range)
            loss = policy
            if reg is not None and reg.active(j):
                mean_ref = None
                if reg.needs_reference:
                    with torch.no_grad(), world.reference():
                        mean_ref = policy_step(world, x_j, x_next, j, sigmas, c, u, S).mean
                n = x_j.shape[0]
                term, rm = reg.fn(RegInput(out.mean, mean_ref, out.std.reshape(-1).expand(n),
                                           (sigmas[j + 1] - sigmas[j]).expand(n), j, T, it, tc.iterations,
                                           S.sde_type))
                loss = loss + term
                for k2, v2 in rm.items():
                    if k2 not in reg.metrics:
                        raise ValueError(f"the regulariser returned metric {k2!r}, which its Regulariser.metrics "
                                         f"{reg.metrics} does not declare (declared ones are averaged over processes)")
                    logs.setdefault(k2, []).append(v2)
            loss = loss.mean() * (x_j.shape[0] / bp.trajectories) / tc.steps_per_update  # global batch
            on_phase("backward", it)
            t_fwd += sw.lap()
            loss.backward()
            t_bwd += sw.lap()
            logs.setdefault("loss/policy", []).append(float(policy.detach().mean()))
            logs.setdefault("loss/total", []).append(
                float(loss.detach()) * bp.trajectories / x_j.shape[0] * tc.steps_per_update)
            logs.setdefault("loss/approx_kl", []).append(float(diag["approx_kl"].mean()))
            logs.setdefault("loss/clipfrac", []).append(float(diag["clipped"].mean()))
            logs.setdefault("loss/ratio_mean", []).append(float(diag["ratio"].mean()))
            if j == 0:  # before the iteration's first optimiser step: every ratio here is on-policy
                logs.setdefault("loss/ratio_first_step_dev", []).append(float((diag["ratio"] - 1).abs().max()))
                logs.setdefault("loss/clipfrac_first_step", []).append(float(diag["clipped"].float().mean()))
        n_acc += 1
        if n_acc == tc.steps_per_update or j == n_train - 1:
            n_acc = 0
            on_phase("optimizer", it)
            dist.sum_grads(params.values())  # = the 1-process gradient of the global batch
            if not _finite_grads(params.values()) or not dist.all_true(np.isfinite(logs["loss/total"][-1])):
                state.opt.zero_grad(set_to_none=True)
                state.skips_in_row += 1
                logs.setdefault("loss/skipped_steps", []).append(1.0)
                if state.skips_in_row >= tc.max_nonfinite_skips:  # train() marks the run FAILED
                    raise RuntimeError(f"{state.skips_in_row} consecutive optimiser steps had a non-finite loss or "
                                       f"gradient (iteration {it}); stopping (train.max_nonfinite_skips)")
                continue
            state.skips_in_row = 0
            gn = torch.nn.utils.clip_grad_norm_(list(params.values()), tc.max_grad_norm)
            logs.setdefault("loss/grad_norm", []).append(float(gn))
            state.opt.step()
            state.opt.zero_grad(set_to_none=True)
            state.opt_step += 1
            if state.ema:
                state.ema.step(state.opt_step, "opt_step")
            t_opt += sw.lap()
    if state.ema and state.opt_step > opt_steps_before:  # an iteration whose every step was skipped changes neither
        state.ema.step(it + 1, "iteration")
    m = {k: float(np.mean(v)) for k, v in logs.items()}
    if "loss/ratio_first_step_dev" in logs:
        m["loss/ratio_first_step_dev"] = float(np.max(logs["loss/ratio_first_step_dev"]))  # max over micro-batches
    if it == 0 and m.get("loss/clipfrac_first_step", 0) > 0:
        warnings.warn(f"iteration 0: {m['loss/clipfrac_first_step']:.1%} of the on-policy ratios of the first trained "
                      f"step are clipped (max |ratio - 1| = {m['loss/ratio_first_step_dev']:.2e} > train.clip_range="
                      f"{tc.clip_range}): sampling and training forwards differ numerically; try sample.micro_batch = "
                      "train.micro_batch or a higher sd3.dtype (docs/sd3.md, Memory)")
    m["loss/skipped_steps"] = float(len(logs.get("loss/skipped_steps", [])))  # a count, not a mean of 1s
    t_fwd += sw.lap()  # the logging of the last micro-batch
    m.update({"sys/forward_seconds": t_fwd, "sys/backward_seconds": t_bwd, "sys/optimizer_seconds": t_opt,
              "sys/train_seconds": t_fwd + t_bwd + t_opt})
    return m
