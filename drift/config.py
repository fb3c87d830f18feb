"""Typed run configuration: dataclasses with one docstring per field, validated in ``__post_init__``.

Every error names the field, the value and the rule. ``apply_overrides`` turns CLI/grid overrides
such as ``train.lr=3e-4``, ``method=flow_grpo_kl`` or ``flow_grpo_kl.beta=0.04`` into a config;
keys of the method's own options are prefixed with the method's name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .contract import METHODS, method_spec
from .errors import ConfigError, check
from .errors import fail as _fail
from .prompts import REPO_ROOT, resolve_path  # noqa: F401  (REPO_ROOT: re-exported)
from .rundir import RunDir, science_hash
from .tracking import TrackingAccessError, check_tracking_uri

SHAPES_ASSETS = os.path.join(os.path.dirname(__file__), "worlds", "shapes", "assets")

WORLD_DEFAULTS: dict[str, dict[str, str]] = {
    "shapes": {"path": os.path.join(SHAPES_ASSETS, "base"), "features": os.path.join(SHAPES_ASSETS, "features")},
    "sd3": {"path": "stabilityai/stable-diffusion-3.5-medium", "features": "dreamsim"},
}
"""What an empty ``model.path`` / ``model.features`` resolves to, per world (resolved in __post_init__, so
config.json and the config hash hold the resolved value)."""

SD3_FEATURES = ("dreamsim", "clip", "dino")  # = drift.worlds.sd3.features.FEATURES (kept here: no torch import)
SD3_REWARDS = ("pickscore", "hpsv21", "clipscore", "aesthetic", "jpeg")  # = drift.worlds.sd3.rewards.REWARDS
DTYPES = ("fp32", "fp16", "bf16")
FLOW_GRPO_LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                          "attn.add_v_proj", "attn.to_add_out")
"""Flow-GRPO's LoRA target modules for SD3 (scripts/train_sd3.py of yifan123/flow_grpo): attention of the joint
blocks only, no MLPs, no 'attn2' of the dual-attention blocks."""


@dataclass
class ModelConfig:
    world: str = "shapes"
    """Which world/backend: 'shapes' (the embedded pixel-space world) or 'sd3' (diffusers SD3-family
    pipelines; its own settings are the sd3.* section)."""
    path: str = ""
    """Base model: a local folder (or, for 'sd3', a hub id). '' = the world's default: shapes -> the
    committed model, sd3 -> stabilityai/stable-diffusion-3.5-medium."""
    finetune: str = "lora"
    """'lora' (peft adapter; the reference policy is the base with the adapter disabled) or 'full'."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: float = 16.0
    """LoRA alpha (scale = alpha / r)."""
    lora_targets: tuple[str, ...] = FLOW_GRPO_LORA_TARGETS
    """Modules that get LoRA adapters, matched as peft does (a module whose name ends with '.' + target).
    Default: Flow-GRPO's list, the joint-attention projections of each block ('attn.to_q', ...); the
    'attn.' prefix keeps the second self-attention of SD3.5's dual-attention blocks ('attn2.*') frozen, as
    Flow-GRPO does. Checked against the model's module names before a run starts."""
    features: str = ""
    """Diversity feature network used in-loop and for evaluation. shapes: a folder ('' = the committed
    CNN); sd3: a feature-net name, 'dreamsim' (default), 'clip' or 'dino' (its weights: sd3.features_path)."""

    def __post_init__(self):
        self.lora_targets = tuple(self.lora_targets)
        check(self.world in ("shapes", "sd3"), "model.world", self.world, "must be 'shapes' or 'sd3'")
        self.path = self.path or WORLD_DEFAULTS[self.world]["path"]
        self.features = self.features or WORLD_DEFAULTS[self.world]["features"]
        if self.world == "sd3":
            check(self.features in SD3_FEATURES, "model.features", self.features,
                  f"for model.world='sd3' it names a feature net, one of {SD3_FEATURES}")
        check(self.finetune in ("lora", "full"), "model.finetune", self.finetune, "must be 'lora' or 'full'")
        check(self.lora_rank >= 1, "model.lora_rank", self.lora_rank, "must be >= 1")
        check(self.lora_alpha > 0, "model.lora_alpha", self.lora_alpha, "must be > 0")
        check(len(self.lora_targets) > 0, "model.lora_targets", self.lora_targets, "must name at least one module")


@dataclass
class RewardConfig:
    """The shapes world's task reward (the alignment axis); see drift/worlds/shapes/reward.py."""

    judge: str = "partial"
    """Judge term: 'partial' (mean of the named attributes that are right) or 'all' (1 iff all right)."""
    w_judge: float = 1.0
    """Weight of the judge term."""
    w_size: float = 2.0
    """Weight of the preference term for large objects (object area / image area): a PickScore-like bias."""
    w_center: float = 0.0
    """Weight of the preference term for centred objects (1 - distance of centroid from centre / 0.5)."""

    def __post_init__(self):
        check(self.judge in ("partial", "all"), "reward.judge", self.judge, "must be 'partial' or 'all'")
        for n in ("w_judge", "w_size", "w_center"):
            check(getattr(self, n) >= 0, f"reward.{n}", getattr(self, n), "must be >= 0")
        check(self.w_judge + self.w_size + self.w_center > 0, "reward.w_judge", self.w_judge, "the weights must not all be 0")


@dataclass
class SampleConfig:
    num_steps: int = 10
    """Denoising steps per training trajectory."""
    noise_level: float = 0.7
    """SDE noise level a (sigma_t = a sqrt(t / (1 - t))); Flow-GRPO uses 0.7 for SD3.5-M."""
    sde_type: str = "sde"
    """'sde' (Flow-GRPO flow-SDE) or 'cps' (coefficients-preserving sampling)."""
    cfg: float = 3.0
    """Classifier-free guidance scale at sampling and in the training forward (the policy is the
    guided velocity, as Flow-GRPO); 1 = no CFG (half the cost, Flow-GRPO's later recommendation)."""
    shift: float = 0.0
    """Timestep shift of the sigma schedule; 0 = the model's own: shapes 1.0 (as its base model was trained),
    sd3 the pipeline scheduler's config ('shift', 3.0 for SD3.5-M)."""
    micro_batch: int = 0
    """Trajectories per transformer call while sampling (and in evaluation); 0 = the whole batch in one call.
    With CFG each call runs 2x this many rows; set it to bound sampling memory (e.g. = train.micro_batch).
    Must divide group_size * groups_per_iter; the trajectories do not depend on it (same noise, equal slices: on the
    CPU bitwise the one-call result)."""
    group_size: int = 8
    """G: images per prompt whose rewards are compared (after any subset selection)."""
    groups_per_iter: int = 4
    """Prompts (groups) per iteration."""
    same_noise: bool = False
    """Share the initial noise within a group (Flow-GRPO found different noise better)."""

    def __post_init__(self):
        check(self.num_steps >= 2, "sample.num_steps", self.num_steps, "must be >= 2")
        check(0 <= self.noise_level <= 2, "sample.noise_level", self.noise_level, "must be in [0, 2]")
        check(self.sde_type in ("sde", "cps"), "sample.sde_type", self.sde_type, "must be 'sde' or 'cps'")
        check(self.cfg >= 1, "sample.cfg", self.cfg, "must be >= 1 (1 = no guidance)")
        check(self.shift >= 0, "sample.shift", self.shift, "must be > 0, or 0 (the model's own shift)")
        check(self.micro_batch >= 0, "sample.micro_batch", self.micro_batch, "must be >= 0 (0 = the whole batch)")
        check(self.group_size >= 2, "sample.group_size", self.group_size, "must be >= 2: advantages compare samples within a group")
        check(self.groups_per_iter >= 1, "sample.groups_per_iter", self.groups_per_iter, "must be >= 1")


@dataclass
class TrainConfig:
    iterations: int = 30
    """RL iterations (sample -> reward -> update). The run's budget (shapes world: ~4 s each on one core)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    clip_range: float = 1e-2
    """PPO ratio clip epsilon (Flow-GRPO SD3: 1e-4 with mean-reduced log-probs)."""
    adv_clip: float = 5.0
    """Advantages are clamped to +-adv_clip."""
    global_std: bool = False
    """Normalise advantages by the std of all rewards of the iteration (Flow-GRPO's SD3 configs) instead of the group's."""
    std_eps: float = 1e-4
    """Epsilon added to the std in the advantage denominator."""
    timestep_fraction: float = 0.99
    """Trained steps = int(num_steps * fraction); the last step (into sigma = 0) is never trained."""
    steps_per_update: int = 1
    """Trained denoising steps accumulated per optimiser step (1 = one AdamW step per denoising step;
    num_train_steps = Flow-GRPO's one step per batch over all timesteps)."""
    micro_batch: int = 0
    """Trajectories per training forward (0 = all at once); gradients accumulate across micro-batches."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    ema: bool = True
    """Keep an EMA of the trainable weights; evaluation and the final weights use it."""
    ema_decay: float = 0.9
    """EMA decay (with Flow-GRPO's warm-up min((1 + s) / (10 + s), decay))."""
    ema_every: int = 2
    """Update the EMA every this many ``ema_unit``s (2 iterations: the lag of Flow-GRPO's SD3 configs, docs/methods.md)."""
    ema_unit: str = "iteration"
    """What ``ema_every`` counts: 'iteration' (one EMA update per ema_every iterations, warm-up indexed by the
    iteration; the lag then does not depend on train.steps_per_update) or 'opt_step' (optimiser steps)."""
    cfg_grad: str = "cond_only"
    """Gradient of the CFG-guided velocity in the training forward: 'cond_only' (the unconditional prediction
    is detached before v_u + w (v_c - v_u), as Flow-GRPO's SD3 trainer at ac4c86e; gradient w dv_c) or 'both'
    (through both branches: w dv_c - (w - 1) dv_u; later Flow-GRPO code reportedly). Sampling is gradient-free either way."""
    max_nonfinite_skips: int = 5
    """Stop the run after this many consecutive optimiser steps skipped for a non-finite loss or gradient."""
    holdout_validation: bool = True
    """Leave the validation prompts out of the RL training prompts (False: the pool before the validation split
    existed, only to reproduce older records; eval.split=validation then is refused)."""

    def __post_init__(self):
        self.adam_betas = tuple(self.adam_betas)
        check(self.iterations >= 1, "train.iterations", self.iterations, "must be >= 1")
        check(self.lr > 0, "train.lr", self.lr, "must be > 0")
        check(self.clip_range > 0, "train.clip_range", self.clip_range, "must be > 0")
        check(self.adv_clip > 0, "train.adv_clip", self.adv_clip, "must be > 0")
        check(self.std_eps > 0, "train.std_eps", self.std_eps, "must be > 0")
        check(0 < self.timestep_fraction <= 1, "train.timestep_fraction", self.timestep_fraction, "must be in (0, 1]")
        check(self.steps_per_update >= 1, "train.steps_per_update", self.steps_per_update, "must be >= 1")
        check(self.micro_batch >= 0, "train.micro_batch", self.micro_batch, "must be >= 0")
        check(self.max_grad_norm > 0, "train.max_grad_norm", self.max_grad_norm, "must be > 0")
        check(0 <= self.ema_decay < 1, "train.ema_decay", self.ema_decay, "must be in [0, 1)")
        check(self.ema_every >= 1, "train.ema_every", self.ema_every, "must be >= 1")
        check(self.ema_unit in ("iteration", "opt_step"), "train.ema_unit", self.ema_unit, "must be 'iteration' or 'opt_step'")
        check(self.cfg_grad in ("cond_only", "both"), "train.cfg_grad", self.cfg_grad, "must be 'cond_only' or 'both'")
        check(self.max_nonfinite_skips >= 1, "train.max_nonfinite_skips", self.max_nonfinite_skips, "must be >= 1")


EVAL_SPLITS = ("test", "validation")
"""Values of eval.split."""


@dataclass
class EvalConfig:
    every: int = 10
    """Evaluate every this many iterations (and always at iteration 0 and at the end)."""
    num_prompts: int = 16
    """Held-out eval prompts used (the first N of the eval split, spread over prompt kinds)."""
    seeds: int = 8
    """Images per eval prompt; the initial noise is fixed per (prompt, seed) across the run."""
    num_steps: int = 20
    """ODE steps at evaluation (noise level 0)."""
    grid_prompts: int = 8
    """Prompts (rows) in the sample-grid image."""
    split: str = "test"
    """Prompts evaluated on: 'test' (the held-out eval split, noise seed 2026; judging) or 'validation' (the
    carve-out of the training prompts, noise seed 4242; tuning only). drift/evaluate.py EVAL_NOISE_SEEDS."""
    conditioning: str = "clean"
    """Conditioning of the evaluation sampler, for every method alike: 'clean' (the prompt's embedding) or 'cads'
    (CADS condition annealing with its published defaults and a fixed noise per (prompt, seed); drift/evaluate.py)."""

    def __post_init__(self):
        check(self.split in EVAL_SPLITS, "eval.split", self.split, f"must be one of {EVAL_SPLITS}")
        check(self.every >= 1, "eval.every", self.every, "must be >= 1")
        check(self.conditioning in ("clean", "cads"), "eval.conditioning", self.conditioning, "must be 'clean' or 'cads'")
        check(self.num_prompts >= 1, "eval.num_prompts", self.num_prompts, "must be >= 1")
        check(self.seeds >= 2, "eval.seeds", self.seeds, "must be >= 2: diversity needs pairs")
        check(self.num_steps >= 1, "eval.num_steps", self.num_steps, "must be >= 1")
        check(self.grid_prompts >= 1, "eval.grid_prompts", self.grid_prompts, "must be >= 1")


@dataclass
class SD3Config:
    """Settings of the SD3 world (model.world=sd3; drift/worlds/sd3/backend.py). Other worlds ignore this
    section, and it must then stay at its defaults; it enters config.json and the config hash only for sd3.

    Flow-GRPO's SD3.5-M settings for the other sections (LoRA r 32 / alpha 64, shift 3, CFG 4.5, ...) are in
    experiments/grids/presets.py (SD3); ``python experiments/grids/presets.py sd3`` prints them as overrides."""

    dtype: str = "bf16"
    """Weights and compute of the transformer and text encoders: 'bf16', 'fp16' or 'fp32' (LoRA weights, the
    optimiser and all SDE / log-prob math stay fp32). Flow-GRPO trains in fp16 with loss scaling, which
    this engine does not do, hence bf16 by default."""
    vae_dtype: str = "fp32"
    """VAE weights and decode precision (Flow-GRPO keeps the VAE in fp32)."""
    device: str = "auto"
    """Where the model runs: 'auto' (cuda if available, else cpu), 'cpu', 'cuda' or 'cuda:<i>'."""
    resolution: int = 512
    """Image side in pixels (square); the latent is resolution / 8 (the VAE's factor) per side."""
    gradient_checkpointing: bool = False
    """Recompute transformer activations in the backward pass (less memory, ~30% slower training forward)."""
    max_sequence_length: int = 128
    """T5 tokens per prompt (diffusers' pipeline default is 256; 128 is this project's default for speed)."""
    text_cache_size: int = 512
    """Prompt texts whose embeddings stay cached on the device (LRU); ~1.7 MB each for SD3.5-M at 128 T5 tokens."""
    vae_batch_size: int = 16
    """Latents decoded per VAE call (bounds decode memory)."""
    prompts: str = "prompts/drift_sd3_v1.txt"
    """Prompt file: text (one prompt per line) or JSONL ({"prompt": ..., optional "split": "train"|"eval"}).
    A relative path is looked up from the current directory, then from the repository root."""
    eval_prompts: str = ""
    """Optional separate file of evaluation prompts ('' = the eval split of ``prompts``)."""
    eval_fraction: float = 0.25
    """Share of the prompts of ``prompts`` without a "split" field that go to evaluation (by a hash of the text)."""
    paraphrases: str = ""
    """JSONL file of {"prompt": ..., "paraphrases": [...]} lines giving training prompts of ``prompts`` their
    paraphrases (DRIFT's drift.prompt=paraphrase needs one); a JSONL prompt file with "paraphrases" fields may
    name itself. '' = none (the world then offers no paraphrases). Ours: prompts/drift_sd3_v1.paraphrases.jsonl."""
    w_pickscore: float = 1.0
    """Weight of PickScore (/26 scale, ~0.8-0.9 on SD3.5-M) in the training reward (0 = not used)."""
    w_hpsv21: float = 0.0
    """Weight of HPSv2.1 (raw cosine, ~0.25-0.35) in the training reward."""
    w_clipscore: float = 0.0
    """Weight of CLIPScore in the training reward. The head is 100 max(cos, 0) (~20-35); Flow-GRPO's scale is
    a weight of 1/30."""
    w_aesthetic: float = 0.0
    """Weight of the LAION aesthetic predictor (~1-10 scale) in the training reward."""
    w_jpeg: float = 0.0
    """Weight of JPEG compressibility in the training reward (no weights needed). The head is -kB of the JPEG
    at quality 95 (ddpo); Flow-GRPO's scale is a weight of 1/500."""
    eval_rewards: tuple[str, ...] = ()
    """Extra reward heads computed at evaluation only (monitors, logged as eval/monitor/<name>)."""
    pickscore_path: str = ""
    """PickScore weights: hub id or local folder ('' = yuvalkirstain/PickScore_v1 + the CLIP-H processor)."""
    hpsv21_path: str = ""
    """HPSv2.1: a folder or file holding HPS_v2.1_compressed.pt ('' = hub xswu/HPSv2)."""
    clipscore_path: str = ""
    """CLIPScore's CLIP model: hub id or folder ('' = openai/clip-vit-large-patch14)."""
    aesthetic_path: str = ""
    """Aesthetic predictor: folder (or file) with sac+logos+ava1-l14-linearMSE.pth, optionally with a CLIP-L
    save_pretrained folder's files (else openai/clip-vit-large-patch14); required when the head is used."""
    reward_batch_size: int = 32
    """Images per forward of each reward model."""
    reward_dtype: str = "fp32"
    """Precision of the reward models (PickScore is scored in fp32 upstream)."""
    features_path: str = ""
    """Weights of the feature net named by model.features ('' = its default: ~/.cache/dreamsim, or the hub id)."""
    features_batch_size: int = 32
    """Images per forward of the feature net."""
    features_image_size: int = 0
    """Side the feature net sees (0 = its native size, 224); smaller is cheaper."""
    schedule: str = "diffusers"
    """Sigma schedule of sampling, training and evaluation: 'diffusers' (FlowMatchEulerDiscreteScheduler's
    set_timesteps, as SD3 pipelines and Flow-GRPO; short last step) or 'linear' (the shapes world's)."""

    def __post_init__(self):
        self.eval_rewards = tuple(self.eval_rewards)
        check(self.schedule in ("linear", "diffusers"), "sd3.schedule", self.schedule, "must be 'linear' or 'diffusers'")
        for n in ("dtype", "vae_dtype", "reward_dtype"):
            check(getattr(self, n) in DTYPES, f"sd3.{n}", getattr(self, n), f"must be one of {DTYPES}")
        check(self.device == "auto" or self.device == "cpu" or self.device.split(":")[0] == "cuda", "sd3.device",
              self.device, "must be 'auto', 'cpu', 'cuda' or 'cuda:<index>'")
        check(self.resolution >= 16 and self.resolution % 16 == 0, "sd3.resolution", self.resolution,
              "must be a positive multiple of 16 (VAE factor 8 x patch 2)")
        check(self.max_sequence_length >= 1, "sd3.max_sequence_length", self.max_sequence_length, "must be >= 1")
        check(self.text_cache_size >= 1, "sd3.text_cache_size", self.text_cache_size, "must be >= 1")
        check(self.vae_batch_size >= 1, "sd3.vae_batch_size", self.vae_batch_size, "must be >= 1")
        check(bool(self.prompts), "sd3.prompts", self.prompts, "must name a prompt file")
        check(0 < self.eval_fraction < 1, "sd3.eval_fraction", self.eval_fraction, "must be in (0, 1)")
        check(not self.paraphrases or self.paraphrases.endswith(".jsonl"), "sd3.paraphrases", self.paraphrases,
              "must be '' or a JSONL file (.jsonl) of {\"prompt\": ..., \"paraphrases\": [...]} lines")
        for n in SD3_REWARDS:
            w = getattr(self, f"w_{n}")
            check(w == w and abs(w) != float("inf"), f"sd3.w_{n}", w, "must be finite")
        check(any(getattr(self, f"w_{n}") != 0 for n in SD3_REWARDS), "sd3.w_pickscore", self.w_pickscore,
              f"the reward weights sd3.w_{{{','.join(SD3_REWARDS)}}} must not all be 0")
        bad = [n for n in self.eval_rewards if n not in SD3_REWARDS]
        check(not bad, "sd3.eval_rewards", self.eval_rewards, f"unknown reward(s) {bad}; known: {SD3_REWARDS}")
        check(len(set(self.eval_rewards)) == len(self.eval_rewards), "sd3.eval_rewards", self.eval_rewards, "repeats a name")
        check(self.reward_batch_size >= 1, "sd3.reward_batch_size", self.reward_batch_size, "must be >= 1")
        check(self.features_batch_size >= 1, "sd3.features_batch_size", self.features_batch_size, "must be >= 1")
        check(self.features_image_size == 0 or self.features_image_size >= 14, "sd3.features_image_size",
              self.features_image_size, "must be 0 (native) or >= 14")

    def reward_weights(self) -> dict[str, float]:
        """{name: weight} of the training reward heads with a non-zero weight."""
        return {n: getattr(self, f"w_{n}") for n in SD3_REWARDS if getattr(self, f"w_{n}") != 0}

    def reward_paths(self) -> dict[str, str | None]:
        """{name: path or None (the reward's default location)} for every reward with weights."""
        return {n: (getattr(self, f"{n}_path") or None) for n in SD3_REWARDS if n != "jpeg"}


WORLD_SECTIONS = {"sd3": "sd3"}
"""Sections that belong to one world (section -> world): in config.json and the hash only for that world."""

LATE_FIELDS = {"sd3.paraphrases": "", "options.outlier_protect": "none"}
"""Fields added after run directories were recorded ('section.field' -> default): in config.json and the hash only
when set to another value, so that the runs recorded before them keep their directories (tests/golden)."""


@dataclass
class RunConfig:
    method: str = "flow_grpo"
    """Method preset (see drift.contract.METHODS): flow_grpo, flow_grpo_kl, ..."""
    seed: int = 0
    """Seed of every random stream of the run."""
    experiment: str = "default"
    """Experiment name: the run directory's first level and the MLflow experiment."""
    out: str = "runs"
    """Output root: run directories, the default MLflow SQLite database and its artifacts live under it."""
    tracking_uri: str = ""
    """MLflow tracking URI; '' = $MLFLOW_TRACKING_URI if set, else sqlite:///<out>/mlflow.db; 'none' disables MLflow."""
    checkpoint_every: int = 10
    """Write a checkpoint every this many iterations (and at the end)."""
    threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""
    device: str = "cpu"
    """Where the shapes world runs: 'cpu', 'cuda', 'cuda:<i>' or 'auto' (cuda if available). Like threads, it is
    not part of the run's identity (the config hash). The sd3 world has its own setting, sd3.device."""
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sd3: SD3Config = field(default_factory=SD3Config)
    options: Any = None
    """The method's own options dataclass (set from '<method>.<field>=...' overrides)."""

    def __post_init__(self):
        spec = method_spec(self.method)  # raises ConfigError naming the known methods
        if self.options is None:
            self.options = spec.options_cls()
        elif isinstance(self.options, dict):
            self.options = _build(spec.options_cls, self.options, self.method)
        check(isinstance(self.options, spec.options_cls), "options", type(self.options).__name__,
              f"method {self.method!r} takes options of type {spec.options_cls.__name__}")
        check(self.seed >= 0, "seed", self.seed, "must be >= 0")
        check(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "must be >= 1")
        check(self.threads >= 0, "threads", self.threads, "must be >= 0")
        check(self.device in ("cpu", "auto") or self.device.split(":")[0] == "cuda", "device", self.device,
              "must be 'cpu', 'auto', 'cuda' or 'cuda:<index>'")
        check(self.model.world == "shapes" or self.device == "cpu", "device", self.device,
              f"applies to model.world='shapes' only (model.world={self.model.world!r} uses sd3.device)")
        check(bool(self.experiment) and "/" not in self.experiment, "experiment", self.experiment,
              "must be a non-empty name without '/'")
        try:  # the message must not repeat the value: it would hold a password
            check_tracking_uri(self.tracking_uri)
        except TrackingAccessError as e:
            raise ConfigError(f"tracking_uri: {e}") from None
        for sec, world in WORLD_SECTIONS.items():
            if self.model.world != world:
                changed = diff_configs(dataclasses.asdict(type(getattr(self, sec))()), dataclasses.asdict(getattr(self, sec)),
                                       f"{sec}.")
                check(not changed, f"{sec}.*", "; ".join(changed), f"the {sec}.* settings apply to model.world={world!r} "
                      f"only (model.world is {self.model.world!r})")
        n = self.sample.group_size * self.sample.groups_per_iter
        for name, mb in (("train.micro_batch", self.train.micro_batch), ("sample.micro_batch", self.sample.micro_batch)):
            check(not mb or n % mb == 0, name, mb, f"must divide the trajectories per iteration (group_size * "
                  f"groups_per_iter = {n})")
        check(self.eval.split != "validation" or self.train.holdout_validation, "eval.split", self.eval.split,
              "needs train.holdout_validation=true: validation prompts must never be trained on")
        spec.validate(self)

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain nested dict of the config (what config.json holds, minus ``model_fingerprint``)."""
        d = dataclasses.asdict(self)
        d["options"] = dataclasses.asdict(self.options)
        for sec, world in WORLD_SECTIONS.items():  # absent for other worlds: their hashes predate the section
            if self.model.world != world:
                d.pop(sec)
        for key, default in LATE_FIELDS.items():  # absent at their default: those hashes predate the field
            sec, name = key.split(".")
            if sec in d and name in d[sec] and d[sec][name] == default:  # 'options' differs by method
                d[sec].pop(name)
        return d

    def science_hash(self) -> str:
        """Hash of everything that changes results except the seed and where outputs go (drift.rundir.science_hash)."""
        return science_hash(self.to_dict())

    def input_paths(self) -> dict[str, str]:
        """Files and folders whose content (not only their name) the results depend on; their fingerprints
        go into config.json (``model_fingerprint``) and a resume refuses changed content."""
        out = {"path": self.model.path, "features": self.model.features}
        if self.model.world == "sd3":
            out["prompts"] = resolve_path(self.sd3.prompts)
            if self.sd3.eval_prompts:
                out["eval_prompts"] = resolve_path(self.sd3.eval_prompts)
            if self.sd3.paraphrases:
                out["paraphrases"] = resolve_path(self.sd3.paraphrases)
        return out

    def run_dir(self) -> str:
        """<out>/<experiment>/<method>/<hash>/seed<k>: deterministic, no timestamps (drift.rundir.RunDir.of)."""
        return RunDir.of(self.out, self.experiment, self.method, self.science_hash(), self.seed).path

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return "sqlite:///" + os.path.abspath(os.path.join(self.out, "mlflow.db"))


# ----------------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------------
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|inf|infinity)", re.IGNORECASE)


def _coerce(field_name: str, tp: Any, raw: Any) -> Any:
    """Parse a string (or pass a typed value) into the annotated type; errors name the field."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return raw
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            return None
        return _coerce(field_name, args[0], raw)
    if origin is tuple:
        args = typing.get_args(tp)
        items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).strip("()[]").split(",") if s.strip()]
        inner = args[0] if args else str
        return tuple(_coerce(field_name, inner, i.strip() if isinstance(i, str) else i) for i in items)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).lower()
        if s in ("true", "1", "yes", "on"):
            return True
        if s in ("false", "0", "no", "off"):
            return False
        _fail(field_name, raw, "must be a boolean (true/false)")
    if tp in (int, float):
        if isinstance(raw, bool):
            _fail(field_name, raw, f"must be of type {tp.__name__}")
        # Text must be a plain ASCII literal: int('٣') == 3 and int('3_000') == 3000 in Python, which
        # a typo should not become. NaN is never a meaningful setting.
        if isinstance(raw, str) and not (_INT_TEXT if tp is int else _FLOAT_TEXT).fullmatch(raw.strip()):
            _fail(field_name, raw, f"must be of type {tp.__name__} (a plain decimal number"
                  + (")" if tp is int else ", or inf)"))
        try:
            if tp is int:
                if isinstance(raw, float) and not raw.is_integer():
                    raise ValueError
                return int(raw)
            v = float(raw)
        except (ValueError, TypeError, OverflowError):
            _fail(field_name, raw, f"must be of type {tp.__name__}")
        if math.isnan(v):
            _fail(field_name, raw, "must be a number, not NaN")
        if math.isinf(v) and isinstance(raw, str) and "inf" not in raw.lower():
            _fail(field_name, raw, "is out of the range of a float (it would become inf)")
        return v
    if tp is str:
        if not isinstance(raw, str):
            _fail(field_name, raw, "must be a string")
        return raw
    return raw


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _build(cls, values: dict, prefix: str):
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            _fail(f"{prefix}.{k}", v, f"unknown field; {cls.__name__} has {sorted(names)}")
        kwargs[k] = _coerce(f"{prefix}.{k}", hints[k], v)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix}: {e}") from None


SECTIONS = ("model", "reward", "sample", "train", "eval", "sd3")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """['a.b=1', 'method=x'] -> {'a.b': '1', 'method': 'x'}; a malformed item raises ConfigError."""
    out: dict[str, str] = {}
    for it in items:
        if "=" not in it or it.startswith("="):
            raise ConfigError(f"override {it!r}: must look like key=value (e.g. train.lr=3e-4)")
        k, v = it.split("=", 1)
        k = k.strip()
        if k in out:
            raise ConfigError(f"override {k!r} given twice ({out[k]!r} and {v!r})")
        out[k] = v
    return out


def make_config(overrides: dict[str, Any] | list[str] | None = None, base: dict[str, Any] | None = None) -> RunConfig:
    """Build a validated RunConfig from flat dotted overrides (strings or typed values).

    Keys: top-level fields ('seed', 'method', ...), '<section>.<field>' for model/reward/sample/train/
    eval, and '<method>.<field>' for the chosen method's own options. An option of another method is
    refused with a message naming both methods.
    """
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    flat = {**(base or {}), **(overrides or {})}
    method = str(flat.get("method", RunConfig.method))
    spec = method_spec(method)
    top_hints = _hints(RunConfig)
    top_names = {f.name for f in dataclasses.fields(RunConfig)} - set(SECTIONS) - {"options"}
    sections: dict[str, dict] = {s: {} for s in SECTIONS}
    options: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for key, val in flat.items():
        head, _, rest = key.partition(".")
        if not rest:
            if key not in top_names:
                _fail(key, val, f"unknown key; top-level keys are {sorted(top_names)}, sections {list(SECTIONS)}, "
                      f"and '{method}.<option>' for the method's options")
            top[key] = _coerce(key, top_hints[key], val)
        elif head in SECTIONS:
            sections[head][rest] = val
        elif head == method:
            options[rest] = val
        elif head in METHODS:
            _fail(key, val, f"option of method {head!r}, but method is {method!r}; "
                  f"{method!r} takes {sorted(f.name for f in dataclasses.fields(spec.options_cls))}")
        else:
            _fail(key, val, f"unknown section {head!r}; sections are {list(SECTIONS)} and the method name {method!r}")
    classes = {"model": ModelConfig, "reward": RewardConfig, "sample": SampleConfig, "train": TrainConfig, "eval": EvalConfig,
               "sd3": SD3Config}
    built = {s: _build(classes[s], sections[s], s) for s in SECTIONS}
    opts = _build(spec.options_cls, options, method)
    return RunConfig(**top, **built, options=opts)


def config_from_dict(d: dict) -> RunConfig:
    """Rebuild a RunConfig from ``to_dict()`` output (e.g. a run directory's config.json)."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if k == "model_fingerprint":
            continue
        if k in SECTIONS:
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        elif k == "options":
            flat.update({f"{d['method']}.{kk}": vv for kk, vv in (v or {}).items()})
        else:
            flat[k] = v
    return make_config(flat)


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Readable differences between two ``to_dict()`` outputs: ['train.lr: 0.001 -> 0.0003', ...]."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<missing>"), b.get(k, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, f"{prefix}{k}.")
        elif json.dumps(va, default=str) != json.dumps(vb, default=str):
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def help_text() -> str:
    """Every config field with its docstring, grouped by section."""
    import ast
    import inspect

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
    for sec, cls in [("", RunConfig), ("model.", ModelConfig), ("reward.", RewardConfig),
                     ("sample.", SampleConfig), ("train.", TrainConfig), ("eval.", EvalConfig),
                     ("sd3.", SD3Config)]:
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
    return "\n".join(lines)
