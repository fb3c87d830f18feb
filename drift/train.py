"""One RL fine-tuning run: the single training loop shared by every method and world.

    python -m drift.train method=flow_grpo train.iterations=60 seed=0
    python -m drift.train method=flow_grpo_kl flow_grpo_kl.beta=0.04
    python -m drift.train --help            # every field with its docstring

Per iteration: prompts -> (method) prompt variation -> sample groups with per-step log-probs ->
rewards -> (method) subset selection -> diversity features -> (method) reward shaping -> group
advantages -> PPO-clip updates (+ method regulariser) -> periodic evaluation -> checkpoint -> log.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from tqdm import tqdm

from . import distributed as dist
from .advantages import group_advantages, ppo_clip_loss
from .checkpoint import load_latest, save_checkpoint, sha256_file
from .config import ConfigError, RunConfig, diff_configs, make_config
from .diversity import mean_pairwise_distance
from .evaluate import eval_noise, evaluate
from .export import EXPORT_JSON, export_run
from .methods import RegInput, SelectInput, ShapeInput, VaryInput, method_spec
from .sampling import guided_velocity, sample_trajectories
from .sde import sde_step_with_logprob
from .tracking import Tracker
from .viz import save_grid
from .worlds import check_available, make_world


# ================================================================================================
# PLUMBING: EMA, RNG state, run directory
# ================================================================================================
class EMA:
    """EMA of the trainable weights (Flow-GRPO: decay min((1 + s) / (10 + s), decay), every k steps), where the
    step count s is of ``unit`` (train.ema_unit): 'opt_step' (optimiser steps) or 'iteration'."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float, every: int, unit: str = "opt_step"):
        self.params, self.decay, self.every, self.unit = params, decay, every, unit
        self.shadow = {k: p.detach().clone() for k, p in params.items()}
        self.updates = 0

    @torch.no_grad()
    def step(self, count: int, unit: str = "opt_step") -> None:
        """Called after every optimiser step (count = optimiser steps so far, unit 'opt_step') and after every
        iteration (count = iterations so far, unit 'iteration'); updates on this EMA's unit every k counts."""
        if unit != self.unit or count % self.every:
            return
        d = min(self.decay, (1 + count) / (10 + count))
        for k, p in self.params.items():
            self.shadow[k].mul_(d).add_(p.detach(), alpha=1 - d)
        self.updates += 1

    @contextmanager
    def swapped_in(self):
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])


def _gen_state(g: torch.Generator) -> torch.Tensor:
    return g.get_state().clone()


def _py_state_to_json(state) -> list:
    return [state[0], list(state[1]), state[2]]


def _py_state_from_json(s) -> tuple:
    return (s[0], tuple(s[1]), s[2])


class Stopwatch:
    """Wall-clock laps for the ``sys/*_seconds`` metrics. On CUDA each lap waits for the queued kernels
    (a few synchronisations per iteration), so each phase is charged with its own GPU work."""

    def __init__(self):
        self.cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.t = time.perf_counter()

    def lap(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        d, self.t = now - self.t, now
        return d


def _finite_grads(params) -> bool:
    """All gradients finite; one device synchronisation for all tensors (not one per tensor)."""
    flags = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(flags).all()) if flags else True


def folder_fingerprint(path: str) -> str:
    """sha256 over (relative name, size, sha256) of every file in a local model folder; the path
    itself for a hub id; sha256 of a single file. Detects a base model, feature net or prompt file
    replaced under the same path."""
    if os.path.isfile(path):
        return sha256_file(path)
    if not os.path.isdir(path):
        return f"id:{path}"
    h = hashlib.sha256()
    for root, _, names in sorted(os.walk(path)):
        for n in sorted(names):
            p = os.path.join(root, n)
            h.update(f"{os.path.relpath(p, path)}:{os.path.getsize(p)}:{sha256_file(p)};".encode())
    return h.hexdigest()


def prepare_run_dir(cfg: RunConfig, allow_changes: bool = False) -> tuple[str, list[str]]:
    """Create the run directory and write config.json; on an existing one, refuse a changed config
    or a changed model/feature-net content (``model_fingerprint``) with a readable diff."""
    run_dir = cfg.run_dir()
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.json")
    new = cfg.to_dict()
    new["model_fingerprint"] = {k: folder_fingerprint(v) for k, v in cfg.input_paths().items()}
    changes: list[str] = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        changes = [c for c in diff_configs(old, new) if not c.startswith(("out:", "tracking_uri:", "threads:"))]
        if changes and not allow_changes:
            raise ConfigError(f"run directory {run_dir} holds a run with a different config:\n  " + "\n  ".join(changes)
                              + "\nuse --allow-resume-with-changes to resume anyway (recorded as an MLflow tag)")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(new, f, indent=1, default=str)
    os.replace(tmp, path)
    return run_dir, changes


def batch_plan(cfg: RunConfig, world: int) -> "dist.BatchPlan":
    """The iteration's batch sizes over ``world`` processes (whole groups per rank); ConfigError if
    sample.groups_per_iter is not divisible by the world size or train.micro_batch does not divide a
    rank's trajectories."""
    T, tc = cfg.sample.num_steps, cfg.train
    oversample = method_spec(cfg.method).build(cfg.options).oversample
    return dist.plan(cfg.sample.groups_per_iter, cfg.sample.group_size, oversample,
                     tc.micro_batch, min(int(T * tc.timestep_fraction), T - 1), tc.steps_per_update, world)


def _rank_reduction(key: str) -> str | None:
    """How a metric computed on one rank's share is combined over ranks: the loss diagnostics
    (per-rank means over equal shares) by their mean, timings by their max; everything else is
    computed from gathered global tensors and is already identical on every rank."""
    if key.startswith("loss/"):
        return "mean"
    if key.startswith("sys/") and key.endswith("_seconds"):
        return "max"
    return None


def code_files() -> dict[str, str]:
    """{relative path: sha256} of every drift/ and baselines/ source file this process has imported:
    the code a run's checkpoint records and a resume must match (edits to modules the run never
    imports, e.g. another world's backend, do not count)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None) or ""
        rel = os.path.relpath(f, root) if f.endswith(".py") else ""
        if rel.split(os.sep)[0] in ("drift", "baselines"):
            out[rel] = sha256_file(f)
    return dict(sorted(out.items()))


def _code_changes(recorded: dict | None, run_dir: str, allow: bool) -> list[str]:
    """The source files that differ from the checkpoint's record (``code_files()`` at save time), as a
    one-line diff; ConfigError unless ``allow`` (--allow-resume-with-changes)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    changed = [rel for rel, sha in (recorded or {}).items()
               if not os.path.exists(os.path.join(root, rel)) or sha256_file(os.path.join(root, rel)) != sha]
    if not changed:
        return []
    change = f"code: changed since the checkpoint: {', '.join(changed[:20])}"
    if not allow:
        raise ConfigError(f"the checkpoint in {run_dir} was written by different code:\n  {change}\nuse "
                          "--allow-resume-with-changes (sweeps: --code-policy warn) to resume anyway (recorded as an MLflow tag)")
    return [change]


# ================================================================================================
# The run
# ================================================================================================
def train(cfg: RunConfig, progress: bool = True, allow_changes: bool = False, fault_hook=None) -> dict:
    """Run (or resume, or skip if finished) one training run; returns the final eval metrics."""
    check_available(cfg)
    dist.init()  # a no-op unless launched with several processes (torchrun, accelerate launch, Slurm tasks)
    bp = batch_plan(cfg, dist.world_size())  # ConfigError naming the field before anything is written
    run_dir, changes = dist.on_main(lambda: prepare_run_dir(cfg, allow_changes), share=True)
    done_path = os.path.join(run_dir, "DONE")
    final_path = os.path.join(run_dir, "final_eval.json")
    if os.path.exists(done_path) and os.path.exists(final_path):
        with open(final_path) as f:
            return json.load(f)
    fault = fault_hook or (lambda phase, it: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    T, S, tc = cfg.sample.num_steps, cfg.sample, cfg.train
    P, G = S.groups_per_iter, S.group_size

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    hooks = method_spec(cfg.method).build(cfg.options)
    world = make_world(cfg)  # LoRA init draws from the seeded global torch RNG
    params = world.trainable_parameters()
    dist.broadcast_(params.values())  # every rank starts from rank 0's weights
    opt = torch.optim.AdamW(params.values(), lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)
    ema = EMA(params, tc.ema_decay, tc.ema_every, tc.ema_unit) if tc.ema else None
    prompt_rng = random.Random(cfg.seed)
    g_sample = torch.Generator().manual_seed(cfg.seed * 1000 + 1)
    g_method = torch.Generator().manual_seed(cfg.seed * 1000 + 2)
    train_prompts = world.train_prompts()
    eval_prompts = world.eval_prompts(cfg.eval.num_prompts)
    noise_eval = eval_noise(world, len(eval_prompts), cfg.eval.seeds)
    sigmas = world.sigma_schedule(T, S.shift).to(world.device)
    n_train = min(int(T * tc.timestep_fraction), T - 1)  # the last step (into sigma = 0) is never trained
    K = hooks.oversample * G
    Pl, grp, rows = bp.groups_per_rank, bp.group_rows(), bp.sample_rows()  # this rank's groups and samples
    dist.on_main(lambda: print(bp.describe(), flush=True))

    # ---- resume -------------------------------------------------------------------------------
    start, opt_step, skips_in_row, pending_row = 0, 0, 0, None
    ckpt = load_latest(run_dir)
    if ckpt is not None:
        start, tensors, st = ckpt
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(tensors[f"model/{k}"])
                if ema:
                    ema.shadow[k].copy_(tensors[f"ema/{k}"])
        opt_state = {"state": {}, "param_groups": st["optim_param_groups"]}
        for i in range(len(params)):
            if f"optim/{i}/exp_avg" in tensors:
                opt_state["state"][i] = {n: tensors[f"optim/{i}/{n}"] for n in ("step", "exp_avg", "exp_avg_sq")}
        opt.load_state_dict(opt_state)
        prompt_rng.setstate(_py_state_from_json(st["prompt_rng"]))
        g_sample.set_state(tensors["rng/sample"])
        g_method.set_state(tensors["rng/method"])
        torch_states = tensors.get("rng/torch_ranks", tensors["rng/torch"].unsqueeze(0))
        py_states = st.get("py_rng_ranks", [st["py_rng"]])
        r = dist.rank() if dist.rank() < len(py_states) else 0  # a resume on more processes than saved
        torch.set_rng_state(torch_states[r].clone())  # a row view (storage offset > 0) crashes set_rng_state
        random.setstate(_py_state_from_json(py_states[r]))
        opt_step, skips_in_row = st["opt_step"], st["skips_in_row"]
        pending_row = st.get("row")
        changes = changes + _code_changes(st.get("code"), run_dir, allow_changes)  # the code the run used
        if ema:
            ema.updates = st["ema_updates"]
        print(f"[drift] resumed from checkpoint at iteration {start} in {run_dir}", flush=True)

    tags = {"method": cfg.method, "seed": str(cfg.seed), "run_dir": os.path.abspath(run_dir),
            "features_variant": getattr(world.features, "variant", cfg.model.features)}  # e.g. dreamsim/ensemble
    if changes:
        tags["resumed_with_changes"] = "; ".join(changes)[:5000]
    tracker = dist.on_main(lambda: Tracker(run_dir, cfg.resolved_tracking_uri(), cfg.experiment,
                                           f"{cfg.method}/{cfg.science_hash()}/seed{cfg.seed}", cfg.to_dict(),
                                           os.path.join(cfg.out, "mlartifacts"), resume_step=start if ckpt else None,
                                           tags=tags), default=dist.NullTracker())
    if pending_row is not None and tracker.last_step() < start:  # crashed between checkpoint and log
        tracker.log(start, pending_row)

    def run_eval(step: int) -> dict:
        t = time.time()
        ctx = ema.swapped_in() if ema else nullcontext()
        with ctx:
            m, imgs = evaluate(world, eval_prompts, noise_eval, cfg.eval.num_steps, S.cfg, S.shift, micro_batch=S.micro_batch)
        grid = os.path.join(run_dir, "samples", f"eval_{step:06d}.png")
        os.makedirs(os.path.dirname(grid), exist_ok=True)
        rows_ = [world.prompt_text(p) for p in eval_prompts[: cfg.eval.grid_prompts]]
        title = f"iteration {step}{' (EMA)' if ema else ''}: {cfg.method}, seed {cfg.seed}"
        dist.on_main(lambda: save_grid(imgs[: cfg.eval.grid_prompts], grid, rows_, title))
        tracker.log_artifact(grid, "samples")  # every evaluation's grid (a no-op off the main process)
        m["sys/eval_seconds"] = time.time() - t
        return m

    def save(step: int, row: dict) -> None:
        for k, p in params.items():
            if not torch.isfinite(p).all():
                raise RuntimeError(f"refusing to checkpoint iteration {step}: parameter {k} is non-finite")
        tensors = {f"model/{k}": p for k, p in params.items()}
        if ema:
            tensors.update({f"ema/{k}": v for k, v in ema.shadow.items()})
        sd = opt.state_dict()
        for i, s in sd["state"].items():
            for n, v in s.items():
                tensors[f"optim/{i}/{n}"] = v if torch.is_tensor(v) else torch.tensor(v)
        torch_states = dist.gather_rows(torch.get_rng_state().unsqueeze(0))  # (world, n): per-rank global RNGs
        py_states = dist.gather_json(_py_state_to_json(random.getstate()))
        tensors.update({"rng/sample": _gen_state(g_sample), "rng/method": _gen_state(g_method),
                        "rng/torch": torch_states[0].clone(), "rng/torch_ranks": torch_states})
        state = {"iteration": step, "opt_step": opt_step, "skips_in_row": skips_in_row,
                 "optim_param_groups": sd["param_groups"], "prompt_rng": _py_state_to_json(prompt_rng.getstate()),
                 "py_rng": py_states[0], "py_rng_ranks": py_states, "world_size": dist.world_size(),
                 "ema_updates": ema.updates if ema else 0,
                 "mlflow_run_id": tracker.run_id, "row": row, "config_hash": cfg.science_hash(),
                 "code": code_files()}
        fault("checkpoint", step)
        dist.on_main(lambda: save_checkpoint(run_dir, step, tensors, state))

    try:
        if start == 0:
            tracker.log(0, run_eval(0))

        bar = tqdm(range(start, tc.iterations), desc=f"{cfg.method} seed{cfg.seed}",
                   disable=not (progress and dist.is_main()), initial=start, total=tc.iterations, mininterval=2)
        for it in bar:
            t_iter = time.time()
            sw = Stopwatch()
            m: dict[str, float] = {}
            # ============================================================================================
            # ALGO 1: prompts, per-sample conditioning (method: vary_prompts), sampling with log-probs
            # ============================================================================================
            groups = [train_prompts[prompt_rng.randrange(len(train_prompts))] for _ in range(P)]
            prompts = [p for p in groups for _ in range(K)]
            texts = [world.prompt_text(p) for p in prompts]
            cond, vm = hooks.vary_prompts(VaryInput(world.encode(texts), texts, prompts, world.paraphrase, world.encode,
                                                    it, tc.iterations, g_method))
            cond = cond.index(rows)  # vary_prompts saw the global batch (same RNG draws on every rank)
            uncond = world.encode([""] * len(cond))
            m.update(vm)
            if S.same_noise:
                noise = torch.randn(P, 1, *world.latent_shape, generator=g_sample).expand(P, K, *world.latent_shape).flatten(0, 1)
            else:
                noise = torch.randn(P * K, *world.latent_shape, generator=g_sample)
            noise = noise[rows]  # the global batch's noise, drawn on every rank, sliced
            fault("sampling", it)
            m["sys/prompt_seconds"] = sw.lap()
            with torch.no_grad():
                traj = sample_trajectories(world, cond, uncond, noise, sigmas, S.noise_level, S.cfg, g_sample,
                                           S.sde_type, record_x0=hooks.needs_step_features,
                                           draw_eps=dist.sliced_randn(g_sample, rows, bp.images), micro_batch=S.micro_batch)
            m["sys/sample_seconds"] = sw.lap()

            # ============================================================================================
            # ALGO 2: rewards (always against the original prompt), subset selection (method)
            # ============================================================================================
            fault("reward", it)
            heads = dist.gather_dict_rows(world.reward(traj.images, prompts[rows]))  # every group, every rank
            r_all = heads["reward"].float().view(P, K)
            bad = ~torch.isfinite(r_all)
            for gi in bad.any(1).nonzero().flatten().tolist():
                warnings.warn(f"iteration {it}: {int(bad[gi].sum())} non-finite reward(s) for prompt {texts[gi * K]!r}")
            m["reward/mean"] = float(r_all[~bad].mean()) if (~bad).any() else float("nan")
            m["reward/std"] = float(r_all[~bad].std()) if (~bad).sum() > 1 else float("nan")
            m.update({f"reward/{k}": float(v.float().mean()) for k, v in heads.items() if k != "reward"})
            idx, sm = hooks.select_subset(SelectInput(r_all, G, it, tc.iterations))
            m.update(sm)
            flat = (torch.arange(Pl).view(-1, 1) * K + idx[grp]).flatten()  # this rank's kept samples
            traj, cond, uncond = traj.index(flat), cond.index(flat), uncond.index(flat)
            r_kept = r_all.gather(1, idx)
            m["reward/kept_mean"] = float(torch.nanmean(r_kept))
            m["sys/reward_seconds"] = sw.lap()
            feats = dist.gather_rows(world.features.embed(traj.images).view(Pl, G, -1))
            step_feats = None
            if hooks.needs_step_features:
                x0 = traj.x0_hat.flatten(0, 1)
                step_feats = dist.gather_rows(world.features.embed(world.decode(x0)).view(Pl, G, T, -1))
            m["diversity/train_pairwise"] = float(mean_pairwise_distance(feats).mean())
            m["sys/features_seconds"] = sw.lap()

            # ============================================================================================
            # ALGO 3: reward shaping (method) and group-relative advantages
            # ============================================================================================
            fault("advantage", it)
            shaped, hm = hooks.shape_rewards(ShapeInput(r_kept, feats, step_feats, T, it, tc.iterations))
            m.update(hm)
            adv, am = group_advantages(shaped, tc.std_eps, tc.global_std, clip=tc.adv_clip)
            m.update(am)
            adv = adv[grp]  # identical global advantages on every rank; this rank's groups
            adv = adv.flatten(0, 1).to(world.device)  # (B,) or (B, T); rewards and features live on the CPU
            B = bp.trajectories_per_rank
            m["sys/advantage_seconds"] = sw.lap()

            # ============================================================================================
            # ALGO 4: PPO-clip updates over the trained steps, in order (+ method regulariser)
            # ============================================================================================
            t_fwd = t_bwd = t_opt = 0.0
            opt_steps_before = opt_step
            mb = bp.micro_batch
            logs: dict[str, list[float]] = {}
            n_acc = 0
            opt.zero_grad(set_to_none=True)
            for j in range(n_train):
                adv_j = adv if adv.ndim == 1 else adv[:, j]
                for s0 in range(0, B, mb):
                    sl = slice(s0, s0 + mb)
                    x_j, x_next = traj.xs[sl, j], traj.xs[sl, j + 1]
                    v = guided_velocity(world, x_j, sigmas[j], cond.index(sl), uncond.index(sl), S.cfg,
                                        detach_uncond=tc.cfg_grad == "cond_only")
                    out = sde_step_with_logprob(v, x_j, sigmas[j], sigmas[j + 1], S.noise_level, sigmas[1],
                                                prev_sample=x_next, sde_type=S.sde_type)
                    policy, diag = ppo_clip_loss(adv_j[sl], out.log_prob, traj.log_probs[sl, j], tc.clip_range)
                    loss = policy
                    if hooks.regulariser is not None:
                        mean_ref = None
                        if hooks.needs_reference:
                            with torch.no_grad(), world.reference():
                                v_ref = guided_velocity(world, x_j, sigmas[j], cond.index(sl), uncond.index(sl), S.cfg)
                                mean_ref = sde_step_with_logprob(v_ref, x_j, sigmas[j], sigmas[j + 1], S.noise_level,
                                                                 sigmas[1], prev_sample=x_next, sde_type=S.sde_type).mean
                        n = x_j.shape[0]
                        reg, rm = hooks.regulariser(RegInput(out.mean, mean_ref, out.std.reshape(-1).expand(n),
                                                             (sigmas[j + 1] - sigmas[j]).expand(n), j, T, it, tc.iterations,
                                                             S.sde_type))
                        loss = loss + reg
                        for k2, v2 in rm.items():
                            logs.setdefault(k2, []).append(v2)
                    loss = loss.mean() * (x_j.shape[0] / bp.trajectories) / tc.steps_per_update  # global batch
                    fault("backward", it)
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
                    fault("optimizer", it)
                    dist.sum_grads(params.values())  # = the 1-process gradient of the global batch
                    if not _finite_grads(params.values()) or not dist.all_true(np.isfinite(logs["loss/total"][-1])):
                        opt.zero_grad(set_to_none=True)
                        skips_in_row += 1
                        logs.setdefault("loss/skipped_steps", []).append(1.0)
                        if skips_in_row >= tc.max_nonfinite_skips:  # the handler below marks the run FAILED
                            raise RuntimeError(f"{skips_in_row} consecutive optimiser steps had a non-finite loss or "
                                               f"gradient (iteration {it}); stopping (train.max_nonfinite_skips)")
                        continue
                    skips_in_row = 0
                    gn = torch.nn.utils.clip_grad_norm_(list(params.values()), tc.max_grad_norm)
                    logs.setdefault("loss/grad_norm", []).append(float(gn))
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    opt_step += 1
                    if ema:
                        ema.step(opt_step, "opt_step")
                    t_opt += sw.lap()
            if ema and opt_step > opt_steps_before:  # an iteration whose every step was skipped leaves both as they were
                ema.step(it + 1, "iteration")
            m.update({k: float(np.mean(v)) for k, v in logs.items()})
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
            m["sys/opt_steps"] = opt_step

            # ============================================================================================
            # PLUMBING: evaluation, checkpoint, log
            # ============================================================================================
            step = it + 1
            if step % cfg.eval.every == 0 or step == tc.iterations:
                m.update(run_eval(step))
            m["sys/iter_seconds"] = time.time() - t_iter
            m = dist.reduce_metrics(m, _rank_reduction)  # loss/*: mean over ranks, sys/*_seconds: max
            if step % cfg.checkpoint_every == 0 or step == tc.iterations:
                sw.lap()
                save(step, m)
                m["sys/checkpoint_seconds"] = sw.lap()
            fault("log", it)
            tracker.log(step, m)
            bar.set_postfix(reward=f"{m['reward/mean']:.3f}", div=f"{m['diversity/train_pairwise']:.3f}")

        # ---- finish ---------------------------------------------------------------------------------
        def finish() -> dict:
            final = _last_eval(run_dir)
            with open(final_path + ".tmp", "w") as f:
                json.dump(final, f, indent=1)
            os.replace(final_path + ".tmp", final_path)
            last_grid = os.path.join(run_dir, "samples", f"eval_{tc.iterations:06d}.png")
            first_grid = os.path.join(run_dir, "samples", f"eval_{0:06d}.png")
            for pth in (first_grid, last_grid, final_path, os.path.join(run_dir, "config.json")):
                if os.path.exists(pth):
                    tracker.log_artifact(pth)
            if cfg.model.finetune == "lora":  # the policy as standard LoRA / model folders (drift/export.py)
                try:
                    tracker.log_artifact(os.path.join(export_run(run_dir), EXPORT_JSON))
                except Exception as e:  # the run itself is complete; `python -m drift.export RUN_DIR` can retry
                    warnings.warn(f"{run_dir}: could not write the export folder ({type(e).__name__}: {e})")
            tracker.finish("FINISHED")
            with open(done_path, "w") as f:
                f.write(json.dumps({"iterations": tc.iterations, "mlflow_run_id": tracker.run_id}))
            return final

        return dist.on_main(finish, share=True)
    except BaseException as e:  # leave no MLflow run RUNNING; the last checkpoint is kept
        tracker.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        tracker.set_tag("termination_reason", f"{type(e).__name__}: {e}"[:500])
        raise


def _last_eval(run_dir: str) -> dict:
    from .tracking import read_metrics

    first, last = {}, {}
    for row in read_metrics(run_dir):
        if "eval/alignment" in row:
            ev = {k: v for k, v in row.items() if k.startswith("eval/") or k == "step"}
            first = first or ev
            last = ev
    return {"final": last, "initial": first}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print(help_text())
        return 0
    allow = "--allow-resume-with-changes" in argv
    quiet = "--quiet" in argv
    items = [a for a in argv if not a.startswith("--")]
    try:
        cfg = make_config(items)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dist.init()  # under torchrun / accelerate launch: one process per rank, rank 0 prints
    if dist.is_main():
        print(f"[drift] run directory: {cfg.run_dir()}", flush=True)
    final = train(cfg, progress=not quiet, allow_changes=allow)
    if dist.is_main():
        print(json.dumps(final["final"], indent=1))
    return 0


def help_text() -> str:
    """Every config field with its docstring, grouped by section."""
    import ast
    import dataclasses
    import inspect

    from . import config as C
    from .methods import METHODS

    def docs(cls) -> dict[str, str]:
        src = inspect.getsource(cls)
        tree = ast.parse(src.strip() if not src.startswith(" ") else "if 1:\n" + src)
        out, body = {}, None
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                body = node.body
                break
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant):
                out[a.target.id] = " ".join(str(b.value.value).split())
        return out

    lines = ["", "Overrides are key=value. Keys and defaults:"]
    for sec, cls in [("", C.RunConfig), ("model.", C.ModelConfig), ("reward.", C.RewardConfig),
                     ("sample.", C.SampleConfig), ("train.", C.TrainConfig), ("eval.", C.EvalConfig),
                     ("sd3.", C.SD3Config)]:
        d = docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in ("model", "reward", "sample", "train", "eval", "sd3", "options"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {sec}{f.name}={default!r}\n      {d.get(f.name, '')}")
    lines.append("\nMethods (their options are '<method>.<field>=value'):")
    for name in sorted(METHODS):
        spec = method_spec(name)
        lines.append(f"  method={name}: {spec.summary}")
        d = docs(spec.options_cls)
        for f in dataclasses.fields(spec.options_cls):
            lines.append(f"      {name}.{f.name}={f.default!r}  {d.get(f.name, '')}")
    lines.append("\nFlags: --allow-resume-with-changes, --quiet")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
