"""Side by side with the reference trainer: yifan123/flow_grpo's scripts/train_sd3.py against ours (drift.train,
SD3 world), on CPU, on the same tiny random SD3 pipeline folder, the same batch, steps, CFG and LoRA.

    python benchmarks/flow_grpo_side_by_side.py --flow-grpo PATH --reference-python /path/to/venv/bin/python \\
        [--pairs 8] [--warmup 1] [--threads 1] [--out DIR] [--profile] [--what-if reuse-uncond] [--dry-run]

``--profile``: one more iteration per side after the pairs, under torch.profiler; op tables in OUT.
``--what-if reuse-uncond``: a labelled experiment on our side only (install_reuse_uncond), not the matched comparison.

PATH is a checkout of https://github.com/yifan123/flow_grpo that you made yourself (it is never vendored or
committed here); measured at commit ac4c86e. The harness refuses, before any work, a PATH that is missing or does
not have the layout it hooks into (scripts/train_sd3.py with its sampling / training progress bars and its eval(),
config/grpo.py:compressibility, flow_grpo/rewards.py with jpeg_compressibility, ...). It never edits the checkout.

Extra requirements of the reference (not in this project's pyproject): absl-py, ml_collections and wandb (run
disabled), on top of torch, diffusers, transformers, accelerate and peft. Install them into a separate venv, e.g.
``python -m venv /tmp/ref-venv``, a .pth file pointing at this project's site-packages (to share torch/diffusers),
``/tmp/ref-venv/bin/pip install absl-py ml_collections wandb``, then pass ``--reference-python /tmp/ref-venv/bin/python``.

How it measures
---------------
1. One tiny random SD3 pipeline (drift.worlds.sd3.tiny.build_tiny_sd3, 64 px, saved with save_pretrained) and a
   tiny random CLIP feature net (ours computes diversity features in its loop) are built in OUT. Both trainers load
   the pipeline with StableDiffusion3Pipeline.from_pretrained.
2. Two worker processes are started, one per trainer, each with ``threads`` torch threads (OMP/MKL likewise) and
   CUDA hidden. Each blocks at an iteration boundary until the harness says "go", runs exactly one iteration
   (sample 16 trajectories + reward + advantages, then the PPO update), and reports its wall and CPU seconds.
   Iteration boundaries: theirs, the creation of the "Epoch e: sampling" progress bar (the top of its while-loop,
   after its eval() call); ours, the on_phase("log") callback of drift.train.train. The split between sampling and
   training: theirs, the creation of the "Epoch e.0: training" progress bar; ours, the call of drift.train.ppo_update.
   Hooks are attached at run time, in the worker: theirs by replacing names in the imported train_sd3 module
   (tqdm, eval, and timing wrappers around pipeline_with_logprob, compute_text_embeddings, compute_log_prob and
   Accelerator.backward); ours through train(on_phase=...) and a timing wrapper around drift.train.ppo_update.
   Their config is config/grpo.py:compressibility with the fields below overridden in the worker (no flags file,
   no edit); their own jpeg_compressibility reward is used, so no reward model is loaded or downloaded. The worker
   runs with PYTHONDONTWRITEBYTECODE=1, so nothing is written into the checkout.
3. After ``warmup`` iterations each, ``pairs`` pairs of iterations are run alternately, A B then B A (ABBA),
   so the two sides of a pair see the same machine load. Per pair, ratio = ours / theirs (per phase and total).
   Reported: the median paired ratio with a 95 % percentile-bootstrap interval of that median (2,000 resamples of
   the pairs, seed 0), and each side's median seconds per trajectory per trained step (phase seconds / (16 x 9)),
   wall clock and process CPU time.

Settings matched (both sides)
-----------------------------
2 prompts x 8 images = 16 trajectories per iteration, 64 px, 10 sampled steps, 9 trained steps
(timestep_fraction 0.99), CFG 4.5 at sampling and in the training forward (unconditional branch detached),
noise level 0.7, scheduler shift from the pipeline (3.0), LoRA rank 32 / alpha 64 on Flow-GRPO's 8 joint-attention
targets, one AdamW step per iteration (lr 3e-4, betas 0.9/0.999, wd 1e-4, grad-norm clip 1.0), PPO clip 1e-4,
advantage clip 5, global-std advantages, JPEG-compressibility reward (no reward model), fp32 everywhere, T5 max
sequence length 128, no KL (beta 0), no EMA, no evaluation or checkpoint inside the timed iterations.

Settings that could not be matched (what each side does differently)
-------------------------------------------------------------------
- Evaluation: theirs calls eval() at epoch 0 over its test set; the harness replaces it by a no-op (evaluation is not
  what is timed). Ours runs its step-0 evaluation (1 prompt x 2 seeds x 2 steps) before the first timed iteration.
- Image logging: theirs saves 15 JPEGs and builds wandb.Image objects every 10th epoch (epoch 0, 10, ...) even with
  wandb disabled; it is part of its loop and stays in (epoch 0 is the warm-up; with pairs >= 10 epoch 10 is timed).
- wandb: theirs runs with WANDB_MODE=disabled (wandb.init / wandb.log are no-ops); ours logs to metrics.jsonl
  (tracking_uri=none, no MLflow).
- Prompt encoding: theirs encodes the 16 prompt rows with the three text encoders every iteration (and the empty
  negative prompt once); ours encodes each distinct prompt once and caches it (sd3.text_cache_size). This is a
  design difference, kept as it is.
- Diversity features: ours always embeds the 16 images with the feature net (here a tiny random CLIP) for its
  diversity metric; theirs has no such pass.
- Prompt choice: theirs draws 2 distinct prompts per iteration (DistributedKRepeatSampler); ours draws 2 with
  replacement. Reward scale: theirs -kB/500, ours -kB (cost identical).
- Zero-advantage filter: theirs drops trajectories whose advantages are all zero before training (none are, with
  a JPEG reward on random images); ours trains on all.
- LoRA init: theirs init_lora_weights="gaussian"; ours peft's default (Kaiming A, zero B). Same shapes and cost.
- Optimiser bookkeeping: theirs calls accelerator-wrapped optimizer.step() / zero_grad() after every trained step
  (skipped by accelerate except at the last of 9 accumulated steps) and clip_grad_norm_ once; ours accumulates 9
  steps (train.steps_per_update=9) and steps once.
- Data loading: theirs uses a DataLoader with one worker process for prompts; ours a list of prompts.
- RNG: the two sides draw different noise (their global torch RNG; our per-run generators); the images differ.
- Process: theirs under accelerate's Accelerator (single process, CPU), ours plain drift.train.train.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

TRAJECTORIES = 16  # 2 prompts x 8 images
PROMPTS_PER_ITER, IMAGES_PER_PROMPT = 2, 8
SAMPLED_STEPS, TRAINED_STEPS = 10, 9  # int(10 * 0.99) = 9
CFG, RESOLUTION, LORA_RANK, LORA_ALPHA = 4.5, 64, 32, 64
TRAIN_PROMPTS = ("a red cat on a table", "two blue birds in the sky")
EVAL_PROMPT = "a green tree next to a house"
REFERENCE_COMMIT_MEASURED = "ac4c86e"

REQUIRED_FILES = (
    "scripts/train_sd3.py",
    "config/base.py",
    "config/grpo.py",
    "flow_grpo/rewards.py",
    "flow_grpo/stat_tracking.py",
    "flow_grpo/diffusers_patch/sd3_pipeline_with_logprob.py",
    "flow_grpo/diffusers_patch/sd3_sde_with_logprob.py",
    "flow_grpo/diffusers_patch/train_dreambooth_lora_sd3.py",
)
"""Files of the reference checkout the harness imports or reads."""

REQUIRED_MARKERS = {
    "scripts/train_sd3.py": ("tqdm = partial(tqdm.tqdm", "def eval(", "def compute_log_prob(", "def main(_):",
                             "pipeline_with_logprob(", "compute_text_embeddings(", 'desc=f"Epoch {epoch}: sampling"',
                             'desc=f"Epoch {epoch}.{inner_epoch}: training"', "accelerator.backward(loss)"),
    "config/grpo.py": ("def compressibility():",),
    "flow_grpo/rewards.py": ("def jpeg_compressibility():", "def multi_score("),
}
"""Text the harness's run-time hooks depend on; a checkout without it would be timed wrongly, so it is refused."""

REFERENCE_MODULES = ("absl", "ml_collections", "wandb", "accelerate", "peft", "diffusers", "transformers", "torch")


class LayoutError(ValueError):
    """The --flow-grpo path is missing or is not a flow_grpo checkout of the expected layout."""


# ================================================================================================
# Pure pieces: checkout check, statistics
# ================================================================================================
def check_checkout(path: str | None) -> str:
    """Return the absolute checkout path, or raise LayoutError naming the option, the value and what is wrong.

    Nothing is written; the checkout is only read."""
    if not path:
        raise LayoutError("--flow-grpo is required: the path of a checkout of https://github.com/yifan123/flow_grpo "
                          "that you made (e.g. git clone https://github.com/yifan123/flow_grpo; measured at "
                          f"{REFERENCE_COMMIT_MEASURED}); it is never vendored in this repository")
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise LayoutError(f"--flow-grpo={path!r}: no such directory; clone https://github.com/yifan123/flow_grpo there "
                          "or pass the path of your checkout")
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise LayoutError(f"--flow-grpo={path!r}: not a flow_grpo checkout of the expected layout; missing "
                          f"{', '.join(missing)} (expected the layout of yifan123/flow_grpo at {REFERENCE_COMMIT_MEASURED})")
    for rel, markers in REQUIRED_MARKERS.items():
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            text = f.read()
        absent = [m for m in markers if m not in text]
        if absent:
            raise LayoutError(f"--flow-grpo={path!r}: {rel} lacks {absent!r}, which the harness hooks into; this "
                              f"checkout's trainer differs from the layout measured ({REFERENCE_COMMIT_MEASURED})")
    return root


def checkout_identity(root: str) -> dict:
    """The checkout's git commit (when it is a git work tree) and sha256 of the files the harness uses."""
    commit = None
    try:
        top = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=10)
        if top.returncode == 0 and os.path.realpath(top.stdout.strip()) == os.path.realpath(root):
            commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    files = {}
    for rel in REQUIRED_FILES:
        with open(os.path.join(root, rel), "rb") as f:
            files[rel] = hashlib.sha256(f.read()).hexdigest()[:16]
    return {"path": root, "git_commit": commit, "sha256_16": files}


def paired_ratios(ours: list[float], theirs: list[float]) -> list[float]:
    """r_i = ours_i / theirs_i for each pair i (the two sides of a pair ran back to back)."""
    if len(ours) != len(theirs) or not ours:
        raise ValueError(f"paired_ratios: need equal, non-empty lists (got {len(ours)} and {len(theirs)})")
    return [o / t for o, t in zip(ours, theirs)]


def bootstrap_median_interval(values: list[float], level: float = 0.95, draws: int = 2000,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median: resample ``values`` with replacement ``draws`` times,
    take each resample's median m_b, return the (1 - level) / 2 and (1 + level) / 2 quantiles of {m_b}
    (nearest-rank on the sorted medians)."""
    if not values:
        raise ValueError("bootstrap_median_interval: no values")
    rng = random.Random(seed)
    n = len(values)
    meds = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(draws))
    lo = meds[int((1 - level) / 2 * (draws - 1))]
    hi = meds[int(round((1 + level) / 2 * (draws - 1)))]
    return lo, hi


def summarise(pairs: list[dict], normaliser: int) -> dict:
    """Per phase ('sampling', 'training', 'total') and clock ('wall', 'cpu'): each side's median seconds per
    trajectory per trained step (seconds / normaliser), the median paired ratio ours / theirs and its bootstrap
    interval. ``pairs``: [{"ours": record, "theirs": record}], record = {"wall": {phase: s}, "cpu": {phase: s}}."""
    out = {}
    for clock in ("wall", "cpu"):
        for phase in ("sampling", "training", "total"):
            o = [p["ours"][clock][phase] for p in pairs]
            t = [p["theirs"][clock][phase] for p in pairs]
            r = paired_ratios(o, t)
            lo, hi = bootstrap_median_interval(r)
            out[f"{clock}/{phase}"] = {
                "ours_ms_per_traj_step": 1e3 * statistics.median(o) / normaliser,
                "theirs_ms_per_traj_step": 1e3 * statistics.median(t) / normaliser,
                "ratio_median": statistics.median(r), "ratio_interval95": [lo, hi], "ratios": r}
    return out


# ================================================================================================
# Workers: one iteration per "go", reported on a pipe
# ================================================================================================
class Channel:
    """The worker's end of the control pipes: read "go"/"stop", write one JSON line per message."""

    def __init__(self):
        r, w = (int(x) for x in os.environ["SBS_FDS"].split(","))
        self.rf, self.wf = os.fdopen(r, "r"), os.fdopen(w, "w")

    def send(self, obj: dict) -> None:
        self.wf.write(json.dumps(obj) + "\n")
        self.wf.flush()

    def wait(self) -> None:
        """Block until the harness says go (or profile: the next iteration under torch.profiler, its op table
        written to $SBS_PROFILE_OUT when it ends); exit the process at once on stop (no final eval, no checkpoint)."""
        self.finish_profile()
        cmd = self.rf.readline().strip()
        if cmd == "profile":
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
            self.prof.__enter__()
        elif cmd != "go":
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    prof = None

    def finish_profile(self) -> None:
        if self.prof is None:
            return
        self.prof.__exit__(None, None, None)
        table = self.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
        with open(os.environ["SBS_PROFILE_OUT"], "w") as f:
            f.write(table)
        self.prof = None


class IterationClock:
    """Wall and CPU stamps of one iteration: start (go), split (training starts), end; plus named sub-timers."""

    def __init__(self):
        self.start = self.split = None
        self.sub: dict[str, float] = {}

    def go(self) -> None:
        self.start, self.split, self.sub = (time.perf_counter(), time.process_time()), None, {}

    def mark_split(self) -> None:
        if self.split is None:
            self.split = (time.perf_counter(), time.process_time())

    def record(self) -> dict:
        end = (time.perf_counter(), time.process_time())
        split = self.split or end
        rec = {}
        for k, clock in (("wall", 0), ("cpu", 1)):
            rec[k] = {"sampling": split[clock] - self.start[clock], "training": end[clock] - split[clock],
                      "total": end[clock] - self.start[clock]}
        rec["sub"] = dict(self.sub)
        return rec

    def timed(self, name: str, fn):
        """fn wrapped to add its wall seconds to sub[name]."""
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.sub[name] = self.sub.get(name, 0.0) + time.perf_counter() - t
        return wrapper


def worker_theirs(args) -> None:
    """Run the reference trainer's main() in this process with run-time hooks (its checkout is not edited)."""
    import importlib.util

    import torch

    torch.set_num_threads(args.threads)
    root = check_checkout(args.flow_grpo)
    sys.path.insert(0, root)
    os.chdir(args.workdir)  # its logdir "logs" is relative to the working directory
    spec = importlib.util.spec_from_file_location("flow_grpo_train_sd3", os.path.join(root, "scripts", "train_sd3.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.FLAGS(["train_sd3", f"--config={os.path.join(root, 'config', 'grpo.py')}:compressibility"])
    c = mod.FLAGS.config
    c.pretrained.model = args.model
    c.dataset = args.dataset
    c.resolution = RESOLUTION
    c.mixed_precision = "no"
    c.allow_tf32 = False
    c.use_lora = True
    c.seed = 0
    c.run_name = "side_by_side"
    c.logdir = os.path.join(args.workdir, "logs")
    c.save_dir = os.path.join(args.workdir, "save")
    c.save_freq = 10 ** 9
    c.eval_freq = 10 ** 9
    c.prompt_fn = "general_ocr"
    c.reward_fn = {"jpeg_compressibility": 1.0}
    c.per_prompt_stat_tracking = True
    s, t = c.sample, c.train
    s.num_steps = s.eval_num_steps = SAMPLED_STEPS
    s.guidance_scale = CFG
    s.train_batch_size, s.num_image_per_prompt, s.num_batches_per_epoch = TRAJECTORIES, IMAGES_PER_PROMPT, 1
    s.test_batch_size = 2
    s.noise_level = 0.7
    s.global_std = True
    t.batch_size, t.gradient_accumulation_steps, t.num_inner_epochs = TRAJECTORIES, 1, 1
    t.timestep_fraction = 0.99
    t.beta, t.ema, t.cfg = 0.0, False, True
    t.learning_rate, t.clip_range, t.adv_clip_max, t.max_grad_norm = 3e-4, 1e-4, 5, 1.0
    assert int(s.num_steps * t.timestep_fraction) == TRAINED_STEPS

    ch, clock = Channel(), IterationClock()
    state = {"epoch": None, "pipeline": None}
    real_tqdm, real_sample = mod.tqdm, mod.pipeline_with_logprob

    def tqdm_hook(*a, **k):
        desc = k.get("desc", "")
        if desc.endswith(": sampling"):  # the top of an epoch: the previous one has ended
            if state["epoch"] is None:
                ch.send({"ready": True})
            else:
                rec = clock.record()
                rec["lora_params"] = sum(p.numel() for p in state["pipeline"].transformer.parameters() if p.requires_grad)
                ch.send({"record": rec})
            ch.wait()
            state["epoch"] = 0 if state["epoch"] is None else state["epoch"] + 1
            clock.go()
        elif desc.endswith(": training"):
            clock.mark_split()
        return real_tqdm(*a, **k)

    def sample_hook(pipeline, *a, **k):
        state["pipeline"] = pipeline
        return real_sample(pipeline, *a, **k)

    from accelerate import Accelerator

    mod.tqdm = tqdm_hook
    mod.eval = lambda *a, **k: None  # evaluation is not what is timed
    mod.pipeline_with_logprob = clock.timed("sample_passes_and_decode", sample_hook)
    mod.compute_text_embeddings = clock.timed("text_encode", mod.compute_text_embeddings)
    mod.compute_log_prob = clock.timed("train_forward", mod.compute_log_prob)
    Accelerator.backward = clock.timed("backward", Accelerator.backward)
    mod.main(None)


def worker_ours(args) -> None:
    """Run drift.train.train on the SD3 world with the matched settings; hooks through on_phase and ppo_update."""
    import torch

    torch.set_num_threads(args.threads)
    import drift.train as dt
    from drift.config import make_config

    items = {
        "method": "flow_grpo", "seed": "0", "threads": str(args.threads),
        "model.world": "sd3", "model.path": args.model, "model.lora_rank": str(LORA_RANK),
        "model.lora_alpha": str(LORA_ALPHA), "model.features": "clip", "sd3.features_path": args.features,
        "sd3.prompts": args.prompts, "sd3.device": "cpu", "sd3.dtype": "fp32", "sd3.resolution": str(RESOLUTION),
        "sd3.max_sequence_length": "128", "sd3.w_pickscore": "0", "sd3.w_jpeg": "1",
        "sample.num_steps": str(SAMPLED_STEPS), "sample.cfg": str(CFG), "sample.noise_level": "0.7",
        "sample.groups_per_iter": str(PROMPTS_PER_ITER), "sample.group_size": str(IMAGES_PER_PROMPT),
        "train.iterations": str(args.iterations), "train.timestep_fraction": "0.99",
        "train.steps_per_update": str(TRAINED_STEPS), "train.lr": "3e-4", "train.weight_decay": "1e-4",
        "train.clip_range": "1e-4", "train.adv_clip": "5", "train.global_std": "true", "train.ema": "false",
        "train.max_grad_norm": "1.0", "train.cfg_grad": "cond_only",
        "eval.num_prompts": "1", "eval.seeds": "2", "eval.num_steps": "2", "eval.every": str(10 ** 6),
        "eval.grid_prompts": "1", "checkpoint_every": str(10 ** 6), "out": os.path.join(args.workdir, "runs"),
        "tracking_uri": "none",
    }
    cfg = make_config(items)
    ch, clock = Channel(), IterationClock()
    real_ppo = dt.ppo_update

    lora = {}

    def ppo_hook(state, world, *a, **k):
        clock.mark_split()
        lora["n"] = sum(p.numel() for p in world.trainable_parameters().values())
        return real_ppo(state, world, *a, **k)

    dt.ppo_update = ppo_hook
    if args.what_if == "reuse-uncond":
        install_reuse_uncond(lora)
    started = {"first": False}

    def on_phase(phase: str, it: int) -> None:
        if phase == "sampling" and not started["first"]:
            started["first"] = True
            ch.send({"ready": True})
            ch.wait()
            clock.go()
        elif phase == "log":
            ch.send({"record": {**clock.record(), "lora_params": lora.get("n"),
                                **({"what_if": {k: lora[k] for k in ("reused", "fallback")}} if args.what_if else {})}})
            ch.wait()
            clock.go()

    dt.train(cfg, progress=False, on_phase=on_phase)


def install_reuse_uncond(counts: dict) -> None:
    """What-if (ours only, never the headline figure): the training forward reuses the unconditional velocity
    recorded at sampling and runs the transformer on the B conditional rows alone, instead of on 2B rows with the
    unconditional half detached. With train.cfg_grad='cond_only' and one optimiser step per iteration (the matched
    setting) the policy has not changed since sampling, so v_u is the same value; the gradient is unchanged
    (w dv_c/dtheta). Installed by replacing drift.sampling.guided_velocity / drift.ppo.guided_velocity in the worker;
    a training call whose x is not the recorded one falls back to the full computation and is counted."""
    import torch

    import drift.ppo as dp
    import drift.sampling as ds

    real = ds.guided_velocity
    stash: dict[float, tuple] = {}
    counts.update(reused=0, fallback=0)

    def guided(world, x, sigma, cond, uncond, cfg, detach_uncond=False):
        if cfg == 1 or uncond is None or sigma.ndim != 0:
            return real(world, x, sigma, cond, uncond, cfg, detach_uncond=detach_uncond)
        if not torch.is_grad_enabled():  # sampling: one 2B forward, as ours does; keep v_u for training
            n = x.shape[0]
            v = world.velocity(torch.cat([x, x]), sigma, ds.Cond.cat([cond, uncond]))
            stash[float(sigma)] = (x.clone(), v[n:].clone())
            return v[n:] + cfg * (v[:n] - v[n:])
        rec = stash.get(float(sigma))
        if detach_uncond and rec is not None and rec[0].shape == x.shape and torch.equal(rec[0], x):
            counts["reused"] += 1
            v_u = rec[1]
            return v_u + cfg * (world.velocity(x, sigma, cond) - v_u)
        counts["fallback"] += 1
        return real(world, x, sigma, cond, uncond, cfg, detach_uncond=detach_uncond)

    ds.guided_velocity = guided
    dp.guided_velocity = guided


# ================================================================================================
# Harness
# ================================================================================================
class Worker:
    """A worker process and the harness's ends of its pipes."""

    def __init__(self, name: str, python: str, argv: list[str], env: dict, log_path: str):
        c_r, c_w = os.pipe()  # harness -> worker
        r_r, r_w = os.pipe()  # worker -> harness
        self.name, self.log_path = name, log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), *argv], env={**env, "SBS_FDS": f"{c_r},{r_w}"},
                                     pass_fds=(c_r, r_w), stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        os.close(c_r)
        os.close(r_w)
        self.ctrl, self.res = os.fdopen(c_w, "w"), os.fdopen(r_r, "r")

    def read(self) -> dict:
        line = self.res.readline()
        if not line:
            self.proc.wait()
            self.log.flush()
            with open(self.log_path, errors="replace") as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"the {self.name} worker exited (rc={self.proc.returncode}) before reporting; "
                               f"its log ({self.log_path}) ends with:\n{tail}")
        return json.loads(line)

    def step(self, command: str = "go") -> dict:
        self.ctrl.write(command + "\n")
        self.ctrl.flush()
        return self.read()["record"]

    def stop(self) -> None:
        try:
            self.ctrl.write("stop\n")
            self.ctrl.flush()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def build_inputs(out: str) -> dict:
    """The shared tiny SD3 folder, the tiny CLIP feature net (ours), and the prompt files of both sides."""
    from drift.worlds.sd3.tiny import build_tiny_sd3
    from drift.worlds.sd3.tiny_rewards import build_tiny_reward_models

    paths = {"model": os.path.join(out, "tiny_sd3"), "dataset": os.path.join(out, "flow_grpo_dataset"),
             "prompts": os.path.join(out, "prompts.jsonl")}
    if not os.path.isfile(os.path.join(paths["model"], "model_index.json")):
        build_tiny_sd3(paths["model"])
    rewards = os.path.join(out, "tiny_rewards")
    paths["features"] = (os.path.join(rewards, "clip") if os.path.isdir(os.path.join(rewards, "clip"))
                         else build_tiny_reward_models(rewards, dreamsim=False)["clip"])
    os.makedirs(paths["dataset"], exist_ok=True)
    with open(os.path.join(paths["dataset"], "train.txt"), "w") as f:
        f.write("\n".join(TRAIN_PROMPTS) + "\n")
    with open(os.path.join(paths["dataset"], "test.txt"), "w") as f:
        f.write(EVAL_PROMPT + "\n")
    with open(paths["prompts"], "w") as f:
        for p in TRAIN_PROMPTS:
            f.write(json.dumps({"prompt": p, "split": "train"}) + "\n")
        f.write(json.dumps({"prompt": EVAL_PROMPT, "split": "eval"}) + "\n")
    return paths


def check_reference_python(python: str) -> None:
    """Refuse (before any work) a --reference-python that cannot import the reference's dependencies."""
    code = ("import importlib.util, sys; m = [n for n in sys.argv[1:] if importlib.util.find_spec(n) is None]; "
            "print(' '.join(m)); sys.exit(1 if m else 0)")
    try:
        out = subprocess.run([python, "-c", code, *REFERENCE_MODULES], capture_output=True, text=True, timeout=120)
    except OSError as e:
        raise LayoutError(f"--reference-python={python!r}: cannot run it ({e})") from e
    if out.returncode != 0:
        raise LayoutError(f"--reference-python={python!r}: missing module(s) {out.stdout.strip() or out.stderr[-300:]}; "
                          "install absl-py, ml_collections and wandb (and torch, diffusers, transformers, accelerate, "
                          "peft) into that environment (see this file's docstring)")


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (the machine is often shared: the figures depend on it)."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def run(args) -> dict:
    os.makedirs(args.out, exist_ok=True)
    paths = build_inputs(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          os.environ.get("PYTHONPATH", "")])}
    common = ["--threads", str(args.threads), "--model", paths["model"]]
    total_iters = args.warmup + args.pairs + int(args.profile) + 1
    load_before = load_average()
    wd_t, wd_o = os.path.join(args.out, "theirs_work"), os.path.join(args.out, "ours_work")
    for d in (wd_t, wd_o):
        os.makedirs(d, exist_ok=True)
    t0 = time.time()
    theirs = Worker("theirs", args.reference_python,
                    ["--worker", "theirs", "--flow-grpo", args.flow_grpo, "--dataset", paths["dataset"],
                     "--workdir", wd_t, *common], {**env, "SBS_PROFILE_OUT": os.path.join(args.out, "profile_theirs.txt"),
                                                       "PYTHONDONTWRITEBYTECODE": "1"},  # nothing written in the checkout
                    os.path.join(args.out, "theirs.log"))
    theirs.read()  # ready: model loaded, blocked before its first iteration
    ours = Worker("ours", sys.executable,
                  ["--worker", "ours", "--prompts", paths["prompts"], "--features", paths["features"],
                   "--iterations", str(total_iters + 1), "--workdir", wd_o, *common,
                   *(["--what-if", args.what_if] if args.what_if else [])],
                  {**env, "SBS_PROFILE_OUT": os.path.join(args.out, "profile_ours.txt")},
                  os.path.join(args.out, "ours.log"))
    try:
        ours.read()
        for _ in range(args.warmup):
            theirs.step()
            ours.step()
        pairs = []
        for k in range(args.pairs):
            first, second = (theirs, ours) if k % 2 == 0 else (ours, theirs)  # ABBA
            a = first.step()
            b = second.step()
            pairs.append({first.name: a, second.name: b, "order": f"{first.name}-{second.name}"})
            print(f"pair {k + 1}/{args.pairs}: ours {pairs[-1]['ours']['wall']['total']:.3f} s, "
                  f"theirs {pairs[-1]['theirs']['wall']['total']:.3f} s", flush=True)
        if args.profile:  # one more iteration each, under torch.profiler (not part of the pairs)
            theirs.step("profile")
            ours.step("profile")
    finally:
        theirs.stop()
        ours.stop()
    norm = TRAJECTORIES * TRAINED_STEPS
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "reference": checkout_identity(check_checkout(args.flow_grpo)),
        "settings": {"trajectories": TRAJECTORIES, "prompts": PROMPTS_PER_ITER, "images_per_prompt": IMAGES_PER_PROMPT,
                     "sampled_steps": SAMPLED_STEPS, "trained_steps": TRAINED_STEPS, "cfg": CFG,
                     "resolution": RESOLUTION, "lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA,
                     "threads": args.threads, "warmup": args.warmup, "pairs": args.pairs},
        "machine": {"cpu_count": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_average()},
        "lora_params": {"theirs": pairs[0]["theirs"].get("lora_params"), "ours": pairs[0]["ours"].get("lora_params")},
        "summary": summarise(pairs, norm),
        "sub_timers_median_s": {side: {name: statistics.median(p[side]["sub"].get(name, 0.0) for p in pairs)
                                       for name in sorted({n for p in pairs for n in p[side]["sub"]})}
                                for side in ("theirs",)},
        "ours_phase_median_s": ours_phases(wd_o),
        "pairs": pairs, "wall_seconds": time.time() - t0,
    }
    with open(os.path.join(args.out, "side_by_side.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def ours_phases(workdir: str) -> dict:
    """Medians of our trainer's own sys/*_seconds over its logged iterations after the first (the run dir's metrics)."""
    from drift.rundir import RunDir

    rows = []
    for dirpath, _, _ in os.walk(os.path.join(workdir, "runs")):
        if os.path.isfile(RunDir(dirpath).metrics):
            rows += RunDir(dirpath).read_metrics()
    rows = [r for r in rows if "sys/iter_seconds" in r][1:]
    keys = sorted({k for r in rows for k in r if k.startswith("sys/") and k.endswith("_seconds")})
    return {k: statistics.median(r[k] for r in rows if k in r) for k in keys} if rows else {}


def report(res: dict) -> str:
    """The summary as printed: per phase and clock, each side's ms per trajectory per trained step and the ratio."""
    def fmt(xs):
        return "unknown" if xs is None else " ".join(f"{x:.1f}" for x in xs)

    s = res["summary"]
    lines = [f"reference: {res['reference']['path']} (git {res['reference']['git_commit'] or 'unknown'})",
             f"settings: {res['settings']}", f"load average (1/5/15 min) before: {fmt(res['machine']['loadavg_before'])}, "
             f"after: {fmt(res['machine']['loadavg_after'])}, on {res['machine']['cpu_count']} CPUs",
             "ms per trajectory per trained step (median) and ratio ours/theirs (median of pairs, 95 % bootstrap):"]
    for key, v in s.items():
        lo, hi = v["ratio_interval95"]
        lines.append(f"  {key:16s} ours {v['ours_ms_per_traj_step']:8.3f}  theirs {v['theirs_ms_per_traj_step']:8.3f}"
                     f"  ratio {v['ratio_median']:.3f} [{lo:.3f}-{hi:.3f}]")
    lines.append(f"theirs sub-timers (median s per iteration): {json.dumps(res['sub_timers_median_s']['theirs'])}")
    lines.append(f"ours phases (median s per iteration): {json.dumps(res['ours_phase_median_s'])}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flow-grpo", help="path of your checkout of yifan123/flow_grpo (required)")
    p.add_argument("--reference-python", default=sys.executable,
                   help="python that runs the reference (needs absl-py, ml_collections, wandb); default: this one")
    p.add_argument("--pairs", type=int, default=8, help="alternating A/B pairs of timed iterations (>= 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per side first (>= 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (>= 1)")
    p.add_argument("--out", default="", help="work and result folder (default: a new temporary folder)")
    p.add_argument("--profile", action="store_true",
                   help="after the pairs, one more iteration per side under torch.profiler (op tables in OUT)")
    p.add_argument("--what-if", choices=("reuse-uncond",), default=None,
                   help="ours only, a labelled experiment: training reuses the sampled unconditional velocity "
                        "(see install_reuse_uncond); not the matched comparison")
    p.add_argument("--dry-run", action="store_true", help="check the arguments and the checkout, print the plan, stop")
    p.add_argument("--worker", choices=("theirs", "ours"), help=argparse.SUPPRESS)
    for name in ("--model", "--dataset", "--prompts", "--features", "--workdir"):
        p.add_argument(name, help=argparse.SUPPRESS)
    p.add_argument("--iterations", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, low in (("pairs", 2), ("warmup", 1), ("threads", 1)):
        if getattr(args, name) < low:
            p.error(f"--{name}={getattr(args, name)}: must be >= {low}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "theirs":
        worker_theirs(args)
        return 0
    if args.worker == "ours":
        worker_ours(args)
        return 0
    try:
        root = check_checkout(args.flow_grpo)
        check_reference_python(args.reference_python)
    except LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.flow_grpo = root
    args.out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="flow_grpo_sbs_"))
    plan = (f"reference {root}; {args.warmup} warm-up + {args.pairs} timed iterations per side, alternating ABBA, "
            f"{args.threads} thread(s) each; {TRAJECTORIES} trajectories ({PROMPTS_PER_ITER} prompts x {IMAGES_PER_PROMPT}), "
            f"{SAMPLED_STEPS} sampled / {TRAINED_STEPS} trained steps, CFG {CFG}, LoRA r{LORA_RANK}/a{LORA_ALPHA}, "
            f"{RESOLUTION} px; results in {args.out}")
    print(plan, flush=True)
    if args.dry_run:
        return 0
    res = run(args)
    print(report(res))
    print(f"written: {os.path.join(args.out, 'side_by_side.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
