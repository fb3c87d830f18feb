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
from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

from . import distributed as dist
from .checkpoint import load_latest, save_checkpoint, sha256_file
from .config import RunConfig, diff_configs
from .errors import ConfigError
from .diversity import mean_pairwise_distance
from .eval_cache import BaseEvalCache, base_eval_key
from .evaluate import eval_noise, evaluate
from .export import EXPORT_JSON, export_run
from .contract import AdvInput, SelectInput, ShapeInput, VaryInput, method_spec
from .ppo import ppo_update
from .rundir import FINGERPRINT, NON_SCIENCE_KEYS, RunDir
from .sampling import sample_trajectories
from .state import TrainState
from .heartbeat import Heartbeat
from .tracking import Tracker, run_params, run_tags
from .viz import save_grid
from .worlds import check_available, make_world


# ================================================================================================
# PLUMBING: timing, run directory, code record
# ================================================================================================
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


def config_changes(cfg: RunConfig) -> tuple[dict, list[str]]:
    """(config.json's new content, its differences from the run directory's config.json); reads only."""
    path = RunDir(cfg.run_dir()).config
    new = cfg.to_dict()
    new[FINGERPRINT] = {k: folder_fingerprint(v) for k, v in cfg.input_paths().items()}
    if not os.path.exists(path):
        return new, []
    with open(path) as f:
        old = json.load(f)
    return new, [c for c in diff_configs(old, new) if c.split(":")[0] not in NON_SCIENCE_KEYS]


def prepare_run_dir(cfg: RunConfig, allow_changes: bool = False) -> tuple[str, list[str]]:
    """Create the run directory and write config.json; on an existing one, refuse a changed config
    or a changed model/feature-net content (``model_fingerprint``) with a readable diff."""
    run_dir = cfg.run_dir()
    os.makedirs(run_dir, exist_ok=True)
    path = RunDir(run_dir).config
    new, changes = config_changes(cfg)
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
PHASES = ("sampling", "reward", "advantage", "backward", "optimizer", "checkpoint", "log")
"""The points at which ``train(on_phase=...)`` calls ``on_phase(phase, iteration)``: at the start of
each phase of an iteration ('backward' once per micro-batch, 'optimizer' once per optimiser step,
'checkpoint' with the iteration just finished, after the state is gathered and before it is written).
Its one job is to observe phase boundaries from outside the loop: the failure-injection tests raise or
SIGKILL there, the launcher's hold waits there, the benchmark times the bare compute there."""


def _no_phase(phase: str, iteration: int) -> None:
    pass


def train(cfg: RunConfig, progress: bool = True, allow_changes: bool = False, on_phase=None,
          tags: dict | None = None) -> dict:
    """Run (or resume, or skip if finished) one training run; returns the final eval metrics.

    ``on_phase(phase, iteration)``: called at each of ``PHASES`` (see there), or None.
    ``tags``: extra MLflow tags (the sweep's grid, arm and knob values)."""
    check_available(cfg)
    dist.init()  # a no-op unless launched with several processes (torchrun, accelerate launch, Slurm tasks)
    bp = batch_plan(cfg, dist.world_size())  # ConfigError naming the field before anything is written
    run_dir, changes = dist.on_main(lambda: prepare_run_dir(cfg, allow_changes), share=True)
    final = _finished(run_dir)
    if final is not None:
        return final
    on_phase = on_phase or _no_phase
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    S, tc, T, P, G = cfg.sample, cfg.train, cfg.sample.num_steps, cfg.sample.groups_per_iter, cfg.sample.group_size
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    hooks = method_spec(cfg.method).build(cfg.options)
    world = make_world(cfg)  # LoRA init draws from the seeded global torch RNG
    params = world.trainable_parameters()
    dist.broadcast_(params.values())  # every rank starts from rank 0's weights
    state = TrainState.fresh(params, tc, cfg.seed)
    train_prompts, eval_set = world.train_prompts(), EvalSet(world, cfg)
    sigmas = world.sigma_schedule(T, S.shift).to(world.device)
    K, Pl, grp, rows = hooks.oversample * G, bp.groups_per_rank, bp.group_rows(), bp.sample_rows()  # this rank's share
    dist.on_main(lambda: print(bp.describe(), flush=True))
    ckpt = load_latest(run_dir)
    if ckpt is not None:
        state = TrainState.from_checkpoint(params, tc, cfg.seed, *ckpt)
        changes = changes + _code_changes(ckpt[2].get("code"), run_dir, allow_changes)  # the code the run used
        print(f"[drift] resumed from checkpoint at iteration {state.iteration} in {run_dir}", flush=True)
    tracker = _open_tracker(cfg, run_dir, changes, resumed=ckpt is not None, start=state.iteration,
                            extra_tags={"features_variant": getattr(world.features, "variant", cfg.model.features), **(tags or {})})
    if state.pending_row is not None and tracker.last_step() < state.iteration:  # crashed between checkpoint and log
        tracker.log(state.iteration, state.pending_row)
    try:
        if state.iteration == 0:
            tracker.log(0, eval_set.run(world, state.ema, run_dir, 0, tracker))
        bar = tqdm(range(state.iteration, tc.iterations), desc=f"{cfg.method} seed{cfg.seed}", mininterval=2,
                   disable=not (progress and dist.is_main()), initial=state.iteration, total=tc.iterations)
        heartbeat = Heartbeat(tc.iterations, state.iteration, enabled=dist.is_main(), write=tqdm.write)  # job logs
        for it in bar:
            t_iter, sw, m = time.time(), Stopwatch(), {}
            # ============================================================================================
            # ALGO 1: prompts, per-sample conditioning (method: vary_prompts), sampling with log-probs
            # ============================================================================================
            groups = [train_prompts[state.prompt_rng.randrange(len(train_prompts))] for _ in range(P)]
            prompts = [p for p in groups for _ in range(K)]
            texts = [world.prompt_text(p) for p in prompts]
            cond, vm = hooks.vary_prompts(VaryInput(world.encode(texts), texts, prompts, world.paraphrase, world.encode,
                                                    it, tc.iterations, state.g_method))
            cond, uncond = cond.index(rows), world.encode([""] * (rows.stop - rows.start))  # vary saw the global batch
            noise = draw_noise(P, K, world.latent_shape, S.same_noise, state.g_sample)[rows]  # global draw, sliced
            m.update(vm)
            on_phase("sampling", it)
            m["sys/prompt_seconds"] = sw.lap()
            with torch.no_grad():
                traj = sample_trajectories(world, cond, uncond, noise, sigmas, S.noise_level, S.cfg, state.g_sample,
                                           S.sde_type, record_x0=hooks.needs_step_features,
                                           draw_eps=dist.sliced_randn(state.g_sample, rows, bp.images),
                                           step_cond=hooks.step_cond, step_uncond=hooks.step_uncond, micro_batch=S.micro_batch)
            m["sys/sample_seconds"] = sw.lap()
            # ============================================================================================
            # ALGO 2: rewards (always against the original prompt), subset selection (method), features
            # ============================================================================================
            on_phase("reward", it)
            heads = dist.gather_dict_rows(world.reward(traj.images, prompts[rows]))  # every group, every rank
            r_all = heads["reward"].float().view(P, K)
            m.update(reward_metrics(r_all, heads, texts, it))
            idx, sm = hooks.select_subset(SelectInput(r_all, G, it, tc.iterations))
            m.update(sm)
            flat = (torch.arange(Pl).view(-1, 1) * K + idx[grp]).flatten()  # this rank's kept samples
            traj, cond, uncond = traj.index(flat), cond.index(flat), uncond.index(flat)
            r_kept = r_all.gather(1, idx)
            kept_heads = {k: v.float().view(P, K).gather(1, idx) for k, v in heads.items() if k != "reward"}
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
            on_phase("advantage", it)
            shaped, hm = hooks.shape_rewards(ShapeInput(r_kept, feats, step_feats, T, it, tc.iterations, kept_heads))
            m.update(hm)
            adv, am = hooks.advantages(AdvInput(shaped, r_kept, r_all, idx, feats, kept_heads, tc.std_eps, tc.global_std,
                                                tc.adv_clip, it, tc.iterations))
            m.update(am)
            adv = adv[grp].flatten(0, 1).to(world.device)  # this rank's groups: (B,) or (B, T); rewards live on the CPU
            m["sys/advantage_seconds"] = sw.lap()
            # ============================================================================================
            # ALGO 4: PPO-clip updates over the trained steps, in order (+ method regulariser)
            # ============================================================================================
            m.update(ppo_update(state, world, hooks, traj, cond, uncond, adv, sigmas, cfg, bp, it, sw, on_phase))
            m["sys/opt_steps"] = state.opt_step
            # ============================================================================================
            # PLUMBING: evaluation, checkpoint, log
            # ============================================================================================
            step = state.iteration = it + 1
            if step % cfg.eval.every == 0 or step == tc.iterations:
                m.update(eval_set.run(world, state.ema, run_dir, step, tracker))
            m["sys/iter_seconds"] = time.time() - t_iter
            m = dist.reduce_metrics(m, hooks.reduction)  # the per-rank metrics the contract declares
            if step % cfg.checkpoint_every == 0 or step == tc.iterations:
                sw.lap()
                _save(state, m, tracker, cfg, run_dir, on_phase)
                m["sys/checkpoint_seconds"] = sw.lap()
            on_phase("log", it)
            tracker.log(step, m)
            bar.set_postfix(reward=f"{m['reward/mean']:.3f}", div=f"{m['diversity/train_pairwise']:.3f}")
            heartbeat.beat(step, m)
        return dist.on_main(lambda: _finish(run_dir, tracker, tc.iterations, cfg.model.finetune), share=True)
    except BaseException as e:  # leave no MLflow run RUNNING; the last checkpoint is kept
        tracker.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        tracker.set_tag("termination_reason", f"{type(e).__name__}: {e}"[:500])
        raise


# ================================================================================================
# PLUMBING: the pieces train() calls
# ================================================================================================
def draw_noise(P: int, K: int, latent_shape, same_noise: bool, g: torch.Generator) -> torch.Tensor:
    """The iteration's initial noise (P * K, *latent), group-major, drawn on the CPU from ``g``; with
    ``same_noise`` every candidate of a group starts from the same draw."""
    if same_noise:
        return torch.randn(P, 1, *latent_shape, generator=g).expand(P, K, *latent_shape).flatten(0, 1)
    return torch.randn(P * K, *latent_shape, generator=g)


def reward_metrics(r_all: torch.Tensor, heads: dict[str, torch.Tensor], texts: list[str], it: int) -> dict[str, float]:
    """reward/mean and reward/std over the finite task rewards (P, K), the mean of every other head;
    warns once per group holding a non-finite reward, naming its prompt."""
    K = r_all.shape[1]
    bad = ~torch.isfinite(r_all)
    for gi in bad.any(1).nonzero().flatten().tolist():
        warnings.warn(f"iteration {it}: {int(bad[gi].sum())} non-finite reward(s) for prompt {texts[gi * K]!r}")
    m = {"reward/mean": float(r_all[~bad].mean()) if (~bad).any() else float("nan"),
         "reward/std": float(r_all[~bad].std()) if (~bad).sum() > 1 else float("nan")}
    m.update({f"reward/{k}": float(v.float().mean()) for k, v in heads.items() if k != "reward"})
    return m


class EvalSet:
    """The held-out prompts and their fixed noise; ``run`` evaluates the EMA weights (if any). The step-0
    evaluation (the base model) is shared through drift.eval_cache between the runs under the same ``out``."""

    def __init__(self, world, cfg: RunConfig):
        self.cfg = cfg
        self.prompts = world.eval_prompts(cfg.eval.num_prompts, cfg.eval.split)
        self.noise = eval_noise(world, len(self.prompts), cfg.eval.seeds, cfg.eval.split)

    def base_cache(self, world, run_dir: str) -> BaseEvalCache:
        """The shared entry of this run's base-model evaluation (its key: drift.eval_cache.base_eval_key), with the
        input files' fingerprints that this start wrote into config.json (not hashed again: SD3 weights are large)."""
        c = self.cfg
        fingerprints = dict(RunDir(run_dir).read_config()[FINGERPRINT])
        fingerprints.update({k: folder_fingerprint(v) for k, v in world.eval_inputs.items()})  # outside cfg.input_paths()
        return BaseEvalCache(c.out, *base_eval_key(c.to_dict(), fingerprints, world.device))

    def run(self, world, ema, run_dir: str, step: int, tracker) -> dict:
        t = time.time()
        if step == 0 and dist.world_size() == 1:  # one process: see drift/eval_cache.py
            m = self._shared_base_eval(world, ema, run_dir, tracker)
        else:
            m = self._evaluate(world, ema, run_dir, step, tracker)
        m["sys/eval_seconds"] = time.time() - t
        return m

    def _shared_base_eval(self, world, ema, run_dir: str, tracker) -> dict:
        """The step-0 evaluation from <out>/base_eval_cache, or computed and stored there (one run at a time per key)."""
        cache = self.base_cache(world, run_dir)
        with cache.computing():
            hit = cache.load(run_dir)
            if hit is None:
                m = self._evaluate(world, ema, run_dir, 0, tracker)
                cache.store(m, run_dir)
                return m
        m, files = hit  # the same metrics and files as computing them
        print(f"[drift] step-0 evaluation (the base model) shared from {cache.entry.path}", flush=True)
        for rel in files:
            tracker.log_artifact(os.path.join(run_dir, rel), os.path.dirname(rel))
        return m

    def _evaluate(self, world, ema, run_dir: str, step: int, tracker) -> dict:
        S, per_prompt = self.cfg.sample, {}
        with ema.swapped_in() if ema else nullcontext():
            m, imgs = evaluate(world, self.prompts, self.noise, self.cfg.eval.num_steps, S.cfg, S.shift,
                               micro_batch=S.micro_batch, conditioning=self.cfg.eval.conditioning,
                               per_prompt=per_prompt)
        texts = [world.prompt_text(p) for p in self.prompts]
        dist.on_main(lambda: RunDir(run_dir).write_eval_per_prompt(step, texts, per_prompt))
        grid = RunDir(run_dir).eval_grid(step)
        os.makedirs(os.path.dirname(grid), exist_ok=True)
        n, c = self.cfg.eval.grid_prompts, self.cfg
        rows = [world.prompt_text(p) for p in self.prompts[:n]]
        # step 0 is the base model, the same for every run (and shared between them): no method or seed in its title
        title = "iteration 0: the base model" if step == 0 else f"iteration {step}{' (EMA)' if ema else ''}: {c.method}, seed {c.seed}"
        dist.on_main(lambda: save_grid(imgs[:n], grid, rows, title))
        tracker.log_artifact(grid, "samples")  # every evaluation's grid, when it is made (a no-op off rank 0)
        return m


def _open_tracker(cfg: RunConfig, run_dir: str, changes: list[str], resumed: bool, start: int,
                  extra_tags: dict | None = None):
    """The MLflow tracker on rank 0 (a no-op one elsewhere), resuming the run's MLflow run if any."""
    tags = dist.on_main(lambda: run_tags(cfg, run_dir, extra_tags), default={})
    if changes:
        tags["resumed_with_changes"] = "; ".join(changes)[:5000]
    return dist.on_main(lambda: Tracker(run_dir, cfg.resolved_tracking_uri(), cfg.experiment,
                                        f"{cfg.method}/{cfg.science_hash()}/seed{cfg.seed}", run_params(cfg),
                                        os.path.join(cfg.out, "mlartifacts"), resume_step=start if resumed else None,
                                        tags=tags), default=dist.NullTracker())


def _save(state: TrainState, row: dict, tracker, cfg: RunConfig, run_dir: str, on_phase) -> None:
    """Checkpoint ``state`` (after ``state.iteration`` iterations) with its metrics row."""
    tensors, st = state.to_checkpoint(row, {"mlflow_run_id": tracker.run_id, "config_hash": cfg.science_hash(),
                                            "code": code_files()})
    on_phase("checkpoint", state.iteration)
    dist.on_main(lambda: save_checkpoint(run_dir, state.iteration, tensors, st))


def _finished(run_dir: str) -> dict | None:
    """The final eval metrics of a finished run (DONE and final_eval.json present), else None."""
    rd = RunDir(run_dir)
    if rd.is_done():
        with open(rd.final_eval) as f:
            return json.load(f)
    return None


def _finish(run_dir: str, tracker, iterations: int, finetune: str) -> dict:
    """Write final_eval.json, log the artifacts, export a LoRA policy (drift/export.py), close the MLflow run
    and write DONE (rank 0)."""
    rd = RunDir(run_dir)
    done_path, final_path = rd.done, rd.final_eval
    final = _last_eval(run_dir)
    with open(final_path + ".tmp", "w") as f:
        json.dump(final, f, indent=1)
    os.replace(final_path + ".tmp", final_path)
    for pth in (final_path, rd.config):  # the eval grids went with each evaluation
        if os.path.exists(pth):
            tracker.log_artifact(pth)
    if finetune == "lora":  # the policy as standard LoRA / model folders
        try:
            tracker.log_artifact(os.path.join(export_run(run_dir), EXPORT_JSON))
        except Exception as e:  # the run itself is complete; `python -m drift.export RUN_DIR` can retry
            warnings.warn(f"{run_dir}: could not write the export folder ({type(e).__name__}: {e})")
    tracker.finish("FINISHED")
    with open(done_path, "w") as f:
        f.write(json.dumps({"iterations": iterations, "mlflow_run_id": tracker.run_id}))
    return final


def _last_eval(run_dir: str) -> dict:
    first, last = {}, {}
    for row in RunDir(run_dir).read_metrics():
        if "eval/alignment" in row:
            ev = {k: v for k, v in row.items() if k.startswith("eval/") or k == "step"}
            first = first or ev
            last = ev
    return {"final": last, "initial": first}


if __name__ == "__main__":  # python -m drift.train: the command line lives in drift/cli.py
    from .cli import main

    sys.exit(main())
