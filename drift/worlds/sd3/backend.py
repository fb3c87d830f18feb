"""The SD3 world: a diffusers SD3-family pipeline (SD3.5-Medium by default) as the engine sees it.

Latent space: the engine's states x are VAE latents (C, res/8, res/8), normalised as SD3 does
(z = (vae_latent - shift_factor) * scaling_factor). ``velocity`` is the SD3 transformer's output with
timestep = 1000 * sigma (the FlowMatchEulerDiscreteScheduler convention, v = noise - x0); ``decode`` is
the VAE decode back to images in [0, 1]. Prompts are encoded with all three text encoders (two CLIPs and
T5, through the pipeline's own ``encode_prompt``) once per distinct text and kept in an LRU cache on the
device; ``Cond`` holds (prompt_embeds (B, 77 + T5 tokens, 4096), pooled (B, 2048)). The unconditional
branch of CFG is the empty prompt's embedding, as in diffusers and Flow-GRPO.

Finetuning: LoRA (peft, via diffusers' ``add_adapter``) on the modules named by model.lora_targets (the
joint-attention projections; Flow-GRPO: r 32, alpha 64, Gaussian init). The reference policy is the same
transformer with the adapter disabled, so no second copy of the weights exists. With model.finetune=full
the transformer is trained in fp32 and a frozen copy is the reference.

Precision: base weights in sd3.dtype, run under torch.autocast(sd3.dtype); trainable weights (LoRA or the
full transformer) in fp32; the VAE in sd3.vae_dtype. Velocities are returned in fp32, so every SDE,
log-prob and KL computation of the engine (drift/sde.py) is fp32.

Devices: the model, latents, conditioning and velocities live on ``self.device``; decoded images,
rewards and diversity features are returned on the CPU (the engine's advantage and method code runs
there; images are also what sample grids are drawn from).

Rewards: drift.worlds.sd3.rewards.MultiReward over the sd3.w_* weights (every head logged); features:
drift.worlds.sd3.features.load_features(model.features). Both are imported when the world is built.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

import torch

from ...errors import ConfigError
from ..types import Cond
from ..policy import TransformerPolicy, check_lora_targets, transformer_module_names
from ...sde import sigma_schedule
from ...prompts import carve_validation, load_prompt_splits, read_paraphrases

if TYPE_CHECKING:
    from ...config import RunConfig

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SD35_MEDIUM = "stabilityai/stable-diffusion-3.5-medium"
COMPONENTS = ("model_index.json", "scheduler/*", "text_encoder/*", "text_encoder_2/*", "text_encoder_3/*",
              "tokenizer/*", "tokenizer_2/*", "tokenizer_3/*", "transformer/*", "vae/*")
"""What a diffusers-format SD3 folder holds (the hub repo also has single-file checkpoints not needed here)."""


class SD3WeightsError(FileNotFoundError):
    """The SD3 pipeline could not be loaded from model.path; the message says how to obtain it."""


def resolve_device(name: str, field: str = "sd3.device") -> torch.device:
    """'auto' -> the current CUDA device if CUDA is available, else the CPU; 'cuda' -> the current CUDA device
    (with its index); otherwise torch.device(name). ``field`` names the setting in the error (the shapes world:
    'device')."""
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field}={name!r}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    if dev.type == "cuda" and dev.index is None:  # 'cuda' = this process's current device (multi-process: its rank's)
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def how_to_get(path: str) -> str:
    """Instructions for obtaining an SD3 pipeline (named in every loading error)."""
    inc = " ".join(f"--include '{c}'" for c in COMPONENTS)
    return (f"For the default {SD35_MEDIUM} (a gated model): accept its licence at https://huggingface.co/{SD35_MEDIUM}, "
            f"run `hf auth login`, then `hf download {SD35_MEDIUM} {inc}` (huggingface-cli login / huggingface-cli "
            "download on huggingface_hub < 0.34) with the same HF_HOME as at run time (runs set HF_HUB_OFFLINE=1). "
            "Or set model.path to a local folder in diffusers "
            "format (model_index.json + one subfolder per component, e.g. written by "
            "StableDiffusion3Pipeline.save_pretrained or `python -m drift.worlds.sd3.tiny DIR` for a random test model).")


def _looks_local(path: str) -> bool:
    return os.path.isabs(path) or path.startswith(".") or os.path.exists(path)


def pipeline_problem(path: str) -> str | None:
    """Why ``path`` cannot be loaded without a download, or None: a local folder needs model_index.json; a
    hub id needs to be in the Hugging Face cache when HF_HUB_OFFLINE is set (else it may be downloaded)."""
    if _looks_local(path):
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            return f"model.path={path!r}: no diffusers SD3 pipeline there (no model_index.json)"
        return None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(path, "model_index.json"), str):
            return f"model.path={path!r}: not in the Hugging Face cache (HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}) and HF_HUB_OFFLINE is set"
    return None


def load_pipeline(path: str, dtype: torch.dtype, vae_dtype: torch.dtype):
    """StableDiffusion3Pipeline.from_pretrained(path) with the VAE in ``vae_dtype`` and the rest in ``dtype``;
    SD3WeightsError (naming the path and how to get the weights) if it cannot be loaded."""
    from diffusers import AutoencoderKL, StableDiffusion3Pipeline

    problem = pipeline_problem(path)
    if problem:
        raise SD3WeightsError(f"{problem}. {how_to_get(path)}")
    try:
        with warnings.catch_warnings():  # diffusers >= 0.36 renames torch_dtype to dtype; older ones need torch_dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=vae_dtype)
            pipe = StableDiffusion3Pipeline.from_pretrained(path, vae=vae, torch_dtype=dtype)
    except (OSError, ValueError) as e:  # huggingface_hub's offline / missing-entry errors are OSErrors
        raise SD3WeightsError(f"model.path={path!r}: could not load an SD3 pipeline ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}). {how_to_get(path)}") from e
    return pipe


def pipeline_file(path: str, rel: str) -> str | None:
    """A small file of the pipeline (e.g. 'transformer/config.json') without downloading: from a local folder or
    the Hugging Face cache; None if it is not at hand."""
    if _looks_local(path):
        p = os.path.join(path, rel)
        return p if os.path.isfile(p) else None
    from huggingface_hub import try_to_load_from_cache

    p = try_to_load_from_cache(path, rel)
    return p if isinstance(p, str) else None


SHAPES_DEFAULTS_OFF_RECIPE = {"model.lora_rank": 32, "model.lora_alpha": 64.0, "sample.cfg": 4.5, "train.lr": 3e-4,
                              "train.clip_range": 1e-4, "eval.num_steps": 40}
"""Engine defaults (sized for the shapes world) and Flow-GRPO's SD3.5-M values: an sd3 run that leaves one of these
fields at the engine default is warned (experiments/grids/presets.py SD3 holds the whole recipe)."""


def off_recipe_fields(cfg: RunConfig) -> list[str]:
    """The fields of SHAPES_DEFAULTS_OFF_RECIPE left at the engine's (shapes-sized) default: 'field=value (Flow-GRPO
    SD3.5-M: x)' each."""
    from ...config import make_config

    engine = make_config(["model.world=sd3"])
    out = []
    for key, recipe in SHAPES_DEFAULTS_OFF_RECIPE.items():
        sec, name = key.split(".")
        have, default = getattr(getattr(cfg, sec), name), getattr(getattr(engine, sec), name)
        if have == default and have != recipe:
            out.append(f"{key}={have!r} (Flow-GRPO SD3.5-M: {recipe!r})")
    return out


class PromptSets(NamedTuple):
    """The SD3 world's prompt texts: the eval, validation and training splits and the paraphrases."""

    train: list[str]
    """What RL trains on: the train split without the validation carve-out (with it if not train.holdout_validation)."""
    eval: list[str]
    validation: list[str]
    paraphrases: dict[str, tuple[str, ...]]
    """{training prompt: its paraphrases} from sd3.paraphrases ({} without one); prompts without any are absent."""


def load_prompt_sets(cfg: RunConfig) -> PromptSets:
    """The splits of sd3.prompts (+ sd3.eval_prompts), by the original texts' hashes, and the paraphrases of the
    training prompts from sd3.paraphrases (none may be an eval or validation prompt's text); ConfigError naming
    sd3.paraphrases if it gives no training prompt a paraphrase, PromptFileError for a bad file."""
    s = cfg.sd3
    pool, ev = load_prompt_splits(s.prompts, s.eval_prompts, s.eval_fraction)
    train, val = carve_validation(pool)
    if not cfg.train.holdout_validation:
        train = pool
    table: dict[str, tuple[str, ...]] = {}
    if s.paraphrases:
        every = read_paraphrases(s.paraphrases, pool + ev, ev + val)
        table = {t: every[t] for t in train if t in every}
        if not table:
            raise ConfigError(f"sd3.paraphrases={s.paraphrases!r}: none of the {len(train)} training prompts of "
                              f"{s.prompts!r} has a paraphrase there (it gives {len(every)} eval or validation prompts "
                              "paraphrases, which are never trained on); paraphrase the training prompts")
    return PromptSets(train, ev, val, table)


def vae_scale_factor(vae) -> int:
    """Pixels per latent cell: 2 ** (number of VAE blocks - 1) (8 for SD3's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


class SD3World(TransformerPolicy):
    """SD3 pipeline + prompt file + MultiReward + feature net behind the engine's world interface."""

    name = "sd3"

    @staticmethod
    def preflight(cfg: RunConfig) -> None:
        """Cheap checks before anything is written: the prompt files parse into non-empty splits, the paraphrase
        file (if any) fits them, the pipeline is loadable without a download, and local reward / feature paths exist."""
        s = cfg.sd3
        sets = load_prompt_sets(cfg)
        if cfg.eval.split == "validation" and not sets.validation:
            raise ConfigError(f"eval.split='validation': the validation carve-out of {s.prompts!r}'s training "
                              "prompts is empty (1 in 5 by a hash of the text, drift/prompts.py); add prompts")
        problem = pipeline_problem(cfg.model.path)
        if problem:  # a ConfigError here (sweeps report those per point); loading itself raises SD3WeightsError
            raise ConfigError(f"{problem}. {how_to_get(cfg.model.path)}")
        for field_name in ("pickscore_path", "hpsv21_path", "clipscore_path", "aesthetic_path", "features_path"):
            p = getattr(s, field_name)
            if p and _looks_local(p) and not os.path.exists(os.path.expanduser(p)):
                raise ConfigError(f"sd3.{field_name}={p!r}: no such file or folder")
        if (s.w_aesthetic or "aesthetic" in s.eval_rewards) and not s.aesthetic_path:
            raise ConfigError("sd3.aesthetic_path='': the aesthetic predictor's MLP has no default location; download "
                              "sac+logos+ava1-l14-linearMSE.pth (docs/rewards.md) and set sd3.aesthetic_path to its folder")
        tconf = pipeline_file(cfg.model.path, "transformer/config.json")
        if cfg.model.finetune == "lora" and tconf:  # else checked on the loaded model, before the adapter is added
            import json

            with open(tconf) as f:
                check_lora_targets(cfg.model.lora_targets, transformer_module_names(json.load(f)))
        off = off_recipe_fields(cfg)
        if off:
            warnings.warn("model.world=sd3 with engine defaults sized for the shapes world: " + "; ".join(off)
                          + ". Flow-GRPO's recipe: `python experiments/grids/presets.py sd3` (docs/sd3.md)")

    def __init__(self, cfg: RunConfig):
        m, s = cfg.model, cfg.sd3
        self.cfg = s
        self.device = resolve_device(s.device)
        self.dtype = TORCH_DTYPES[s.dtype]
        sets = load_prompt_sets(cfg)
        self.train_texts, self.eval_texts, self.validation_texts = sets.train, sets.eval, sets.validation
        self.paraphrases = sets.paraphrases
        if s.paraphrases:  # drift.worlds.offers(cfg, 'paraphrase') says the same from the config
            print(f"[drift] sd3: {len(self.paraphrases)} of {len(self.train_texts)} training prompts have paraphrases "
                  f"({sum(map(len, self.paraphrases.values()))} in all, from {s.paraphrases})", flush=True)
        else:
            self.paraphrase = None  # no text-level variation without a paraphrase file

        pipe = load_pipeline(m.path, self.dtype, TORCH_DTYPES[s.vae_dtype])
        for mod in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
            if mod is not None:
                mod.requires_grad_(False).eval()
        pipe.to(self.device)
        self.pipe, self.vae = pipe, pipe.vae
        transformer = pipe.transformer
        self.default_shift = float(pipe.scheduler.config.get("shift", 1.0))  # sample.shift=0 means this

        f, patch = vae_scale_factor(self.vae), transformer.config.patch_size
        side = s.resolution // f
        if s.resolution % (f * patch):
            raise ConfigError(f"sd3.resolution={s.resolution}: must be a multiple of {f * patch} for this model "
                              f"(VAE factor {f} x patch {patch})")
        if side // patch > transformer.config.pos_embed_max_size:
            raise ConfigError(f"sd3.resolution={s.resolution}: this transformer's pos_embed_max_size "
                              f"{transformer.config.pos_embed_max_size} allows at most "
                              f"{transformer.config.pos_embed_max_size * patch * f} px")
        self.latent_shape = (transformer.config.in_channels, side, side)

        self.setup_finetune(transformer, m, full_dtype=torch.float32)
        for p in transformer.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # trainable weights (and so grads and AdamW state) in fp32
        if s.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()

        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_stats = {"hits": 0, "misses": 0}

        from .features import load_features
        from .rewards import MultiReward

        rdtype = TORCH_DTYPES[s.reward_dtype]
        self._reward = MultiReward(s.reward_weights(), s.reward_paths(), self.device, rdtype, s.reward_batch_size)
        self._reward_paths, self._reward_dtype = s.reward_paths(), rdtype
        from .rewards import load_reward

        self._monitors = {n: load_reward(n, None if n == "jpeg" else self._reward_paths.get(n), self.device, rdtype)
                          for n in s.eval_rewards}  # loaded now: missing weights fail at start-up, not at the first eval
        self.features = load_features(m.features, s.features_path or None, self.device, torch.float32,
                                      s.features_batch_size, s.features_image_size or None)

    # -- prompts ------------------------------------------------------------------------------
    def train_prompts(self) -> list[str]:
        return list(self.train_texts)

    def eval_prompts(self, n: int, split: str = "test") -> list[str]:
        """The first n prompts of the eval ('test') or 'validation' split (all of them, with a warning, if it holds
        fewer)."""
        texts = self.eval_texts if split == "test" else self.validation_texts
        if n > len(texts):
            warnings.warn(f"eval.num_prompts={n} but the {split} split of {self.cfg.prompts!r} holds "
                          f"{len(texts)} prompts; using all of them")
        return list(texts[:n])

    @staticmethod
    def prompt_text(p: str) -> str:
        return p

    def paraphrase(self, prompt: str, rng) -> str:
        """rng.choice of the prompt's paraphrases (sd3.paraphrases); the prompt itself when it has none. The
        instance's ``paraphrase`` is None (the world offers none) when sd3.paraphrases is ''."""
        options = self.paraphrases.get(prompt)
        return rng.choice(options) if options else prompt

    # -- model --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: list[str]) -> Cond:
        """Texts -> Cond on the device; each distinct text is encoded once (all three encoders) and kept in
        an LRU cache of sd3.text_cache_size entries."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        self.cache_stats["misses"] += len(missing)
        self.cache_stats["hits"] += len(texts) - len(missing)
        for i in range(0, len(missing), 64):
            chunk = missing[i : i + 64]
            hidden, _, pooled, _ = self.pipe.encode_prompt(
                prompt=chunk, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=False, max_sequence_length=self.cfg.max_sequence_length)
            for t, h, p in zip(chunk, hidden, pooled):
                self._cache[t] = (h, p)
        for t in texts:
            self._cache.move_to_end(t)
        out = Cond(torch.stack([self._cache[t][0] for t in texts]), torch.stack([self._cache[t][1] for t in texts]))
        while len(self._cache) > self.cfg.text_cache_size:
            self._cache.popitem(last=False)
        return out

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """v(x, sigma | cond) in fp32: the SD3 transformer at timestep 1000 * sigma."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        t = (1000 * sigma).expand(x.shape[0]) if sigma.ndim == 0 else 1000 * sigma
        net = self.policy_net()
        with self._autocast():
            v = net(hidden_states=x.to(self.device), timestep=t, encoder_hidden_states=cond.hidden,
                    pooled_projections=cond.pooled, return_dict=False)[0]
        return v.float()

    @torch.no_grad()
    def sigma_schedule(self, num_steps: int, shift: float) -> torch.Tensor:
        """sd3.schedule: 'diffusers' (the pipeline scheduler's sigmas, as Flow-GRPO samples) or 'linear'; shift 0 =
        the pipeline scheduler's configured shift (3.0 for SD3.5-M)."""
        return sigma_schedule(num_steps, shift or self.default_shift, self.cfg.schedule)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, 8h, 8w) in [0, 1], float32 on the CPU (VAE in sd3.vae_dtype)."""
        vc = self.vae.config
        out = []
        for chunk in x.split(self.cfg.vae_batch_size):
            z = chunk.to(self.device, torch.float32) / vc.scaling_factor + (vc.shift_factor or 0.0)
            img = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
            out.append((img.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> normalised latents (the VAE posterior's mode), fp32 on the device."""
        vc = self.vae.config
        out = []
        for chunk in images.split(self.cfg.vae_batch_size):
            px = (chunk.to(self.device, torch.float32) * 2 - 1).to(self.vae.dtype)
            z = self.vae.encode(px).latent_dist.mode().float()
            out.append((z - (vc.shift_factor or 0.0)) * vc.scaling_factor)
        return torch.cat(out)

    # -- reward and evaluation ------------------------------------------------------------------
    def reward(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """{'reward': weighted sum of the sd3.w_* heads, '<name>': each head}, float32 on the CPU."""
        heads = self._reward(images, [self.prompt_text(p) for p in prompts])
        return {k: v.float().cpu() for k, v in heads.items()}

    heldout_features = None
    eval_inputs: dict = {}
    """No held-out feature net for this world yet (eval/diversity/heldout is absent)."""

    def eval_extras(self, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """Monitor rewards (sd3.eval_rewards) of the (P, S, 3, H, W) eval images: monitor/<name> = mean."""
        return {k: float(v.mean()) for k, v in self._monitor_values(images, prompts).items()}

    def eval_extras_per_prompt(self, images: torch.Tensor, prompts: list[str]) -> dict[str, list[float]]:
        """monitor/<name> per prompt: the mean over that prompt's S images."""
        return {k: v.view(images.shape[0], -1).mean(1).tolist() for k, v in self._monitor_values(images, prompts).items()}

    def _monitor_values(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        flat = images.flatten(0, 1)
        texts = [self.prompt_text(p) for p in prompts for _ in range(images.shape[1])]
        out = {}
        for name, model in self._monitors.items():
            bs = self.cfg.reward_batch_size
            vals = torch.cat([model(flat[i : i + bs], texts[i : i + bs]) for i in range(0, len(texts), bs)])
            out[f"monitor/{name}"] = vals.float()
        return out


__all__ = ["SD3World", "SD3WeightsError", "load_pipeline", "resolve_device", "vae_scale_factor", "how_to_get",
           "TORCH_DTYPES"]
