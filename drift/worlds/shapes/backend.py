"""The shapes world as the engine sees it: model, prompts, reward, features and world-specific eval.

Every world exposes the same attributes and methods (see drift/worlds/__init__.py), so the training
loop never branches on the world.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

from ..types import Cond
from ..policy import TransformerPolicy, check_lora_targets, transformer_module_names
from ...sde import sigma_schedule
from . import world
from .features import load_features
from .model import load_pretrained
from .reward import shapes_reward


HELDOUT_FEATURES = os.path.join(os.path.dirname(__file__), "assets", "features_heldout")
"""The held-out feature network (drift/worlds/shapes/features.py, objective 'denoise'): evaluation only."""


class ShapesFeatures:
    """A committed feature network behind the shared FeatureNet interface; it runs on ``device``, takes and returns
    CPU tensors."""

    def __init__(self, path: str, device: torch.device = torch.device("cpu")):
        self.path = path
        self.net = load_features(path).to(device)
        self.device = device
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.to(self.device).float().clamp(0, 1)).cpu()


class ShapesWorld(TransformerPolicy):
    """Pixel-space SD3 transformer + word-level text encoder; judge-based reward; CNN features."""

    name = "shapes"
    device = torch.device("cpu")
    """Where the transformer, text encoder and feature net run (the config's ``device``); images, rewards and
    features are CPU tensors."""

    @staticmethod
    def preflight(cfg) -> None:
        """model.lora_targets checked against the base transformer's modules (built on the meta device)."""
        import json
        import os

        if cfg.model.finetune == "lora":
            with open(os.path.join(cfg.model.path, "transformer", "config.json")) as f:
                check_lora_targets(cfg.model.lora_targets, transformer_module_names(json.load(f)))

    def __init__(self, cfg):
        m = cfg.model
        self.reward_cfg = cfg.reward
        self.holdout_validation = cfg.train.holdout_validation
        self.tokenizer, self.text_encoder, transformer = load_pretrained(m.path)
        for p in self.text_encoder.parameters():
            p.requires_grad_(False)
        for p in transformer.parameters():
            p.requires_grad_(False)
        if cfg.device != "cpu":
            from ..sd3.backend import resolve_device

            self.device = resolve_device(cfg.device, "device")
            self.text_encoder.to(self.device)
            transformer.to(self.device)
        self.setup_finetune(transformer, m)
        self.features = ShapesFeatures(m.features, self.device)
        self.heldout_features = ShapesFeatures(HELDOUT_FEATURES, self.device)  # eval/diversity/heldout only; no method sees it
        self.eval_inputs = {"heldout_features": HELDOUT_FEATURES}
        self.latent_shape = (3, world.IMAGE_SIZE, world.IMAGE_SIZE)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- prompts ------------------------------------------------------------------------------
    def train_prompts(self) -> list[world.Prompt]:
        """The RL training prompts: the 'train' split (with train.holdout_validation=false also 'validation')."""
        return world.prompt_split("train") if self.holdout_validation else world.prompt_split("train", "validation")

    def eval_prompts(self, n: int, split: str = "test") -> list[world.Prompt]:
        """The first n prompts of the eval ('test') or 'validation' split, interleaving kinds so that every kind
        is represented (all of them, with a warning, if the split holds fewer)."""
        pool = world.prompt_split({"test": "eval", "validation": "validation"}[split])
        if n > len(pool):
            warnings.warn(f"eval.num_prompts={n} but the shapes world's {split} split holds {len(pool)} prompts; "
                          "using all of them")
        by_kind: dict[str, list] = {}
        for p in pool:
            by_kind.setdefault(p.kind, []).append(p)
        order = []
        while any(by_kind.values()):
            for k in ("full", "free_fg", "free_shape", "free_bg"):
                if by_kind.get(k):
                    order.append(by_kind[k].pop(0))
        return order[:n]

    @staticmethod
    def prompt_text(p: world.Prompt) -> str:
        return str(p)

    @staticmethod
    def paraphrase(p: world.Prompt, rng) -> str:
        return p.paraphrase(rng)

    # -- model --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: list[str]) -> Cond:
        """Text -> conditioning; each distinct text is encoded once and cached."""
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            h, p = self.text_encoder(self.tokenizer(missing).to(self.device))
            for i, t in enumerate(missing):
                self._cache[t] = (h[i], p[i])
        return Cond(torch.stack([self._cache[t][0] for t in texts]), torch.stack([self._cache[t][1] for t in texts]))

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=self.device)  # the evaluation's schedule is a CPU tensor (no copy on the CPU)
        t = (1000 * sigma).expand(x.shape[0]) if sigma.ndim == 0 else 1000 * sigma
        net = self.policy_net()
        return net(x, cond.hidden, cond.pooled, t, return_dict=False)[0]

    default_shift = 1.0
    """sample.shift=0 means this: the base model was trained and sampled unshifted."""

    @classmethod
    def sigma_schedule(cls, num_steps: int, shift: float) -> torch.Tensor:
        """The linear schedule (drift/sde.py), as the base model was trained and sampled with; shift 0 = 1.0."""
        return sigma_schedule(num_steps, shift or cls.default_shift, "linear")

    @staticmethod
    def decode(x: torch.Tensor) -> torch.Tensor:
        """Model space [-1, 1] -> images in [0, 1], on the CPU (a no-op move there)."""
        return ((x.float() + 1) / 2).clamp(0, 1).cpu()

    # -- reward and evaluation ------------------------------------------------------------------
    def reward(self, images: torch.Tensor, prompts: list[world.Prompt]) -> dict[str, torch.Tensor]:
        r = self.reward_cfg
        return shapes_reward(images, prompts, r.judge, r.w_judge, r.w_size, r.w_center)

    @classmethod
    def eval_extras(cls, images: torch.Tensor, prompts: list[world.Prompt]) -> dict[str, float]:
        """Judge-level diversity and quality of (P, S, 3, H, W) eval images.

        diversity/position_std: mean over prompts of the std of the object centroid (x and y averaged);
        diversity/size_std: mean over prompts of the std of sqrt(area);
        diversity/free_attr_entropy: for prompts with a free attribute, the entropy of the judged
        value of that attribute over the S images, divided by log(number of allowed values);
        quality/no_object_frac, quality/tv (mean absolute difference of neighbouring pixels).
        """
        return cls._judge_level(images, prompts)[0]

    @classmethod
    def eval_extras_per_prompt(cls, images: torch.Tensor, prompts: list[world.Prompt]) -> dict[str, list[float]]:
        """``eval_extras``' keys, one value per prompt (free_attr_entropy: NaN for a prompt with no free
        attribute; no_object_frac and tv: over that prompt's images)."""
        return cls._judge_level(images, prompts)[1]

    @staticmethod
    def _judge_level(images: torch.Tensor, prompts: list[world.Prompt]) -> tuple[dict[str, float], dict[str, list[float]]]:
        """(eval_extras, eval_extras_per_prompt) from one judge pass."""
        p, s = images.shape[:2]
        flat = images.flatten(0, 1)
        v = world.judge(flat)
        cx, cy, area = (t.view(p, s) for t in (v.cx, v.cy, v.area))
        has = v.has_object.view(p, s)

        def nanstd(t):
            out = []
            for row, ok in zip(t, has):
                vals = row[ok]
                out.append(vals.std(unbiased=False) if len(vals) >= 2 else torch.tensor(0.0))
            return torch.stack(out)

        pos = 0.5 * (nanstd(cx) + nanstd(cy))
        size = nanstd(area.sqrt())
        ents, ent_per_prompt = [], []
        for i, pr in enumerate(prompts):
            if pr.kind == "full":
                ent_per_prompt.append(float("nan"))
                continue
            vals, n_allowed = {
                "free_fg": (v.fg.view(p, s)[i], len(world.FG_COLOURS) - 1),
                "free_shape": (v.shape.view(p, s)[i], len(world.SHAPES)),
                "free_bg": (v.bg.view(p, s)[i], len(world.BG_COLOURS) - 1),
            }[pr.kind]
            vals = vals[has[i]]
            if len(vals) == 0:
                ents.append(0.0)
                ent_per_prompt.append(0.0)
                continue
            freq = torch.bincount(vals.clamp(min=0)).float()
            freq = freq[freq > 0] / len(vals)
            ents.append(float(-(freq * freq.log()).sum()) / math.log(n_allowed))
            ent_per_prompt.append(ents[-1])
        dy = (flat[..., 1:, :] - flat[..., :-1, :]).abs()
        dx = (flat[..., 1:] - flat[..., :-1]).abs()
        tv = dy.mean() + dx.mean()
        tv_per_prompt = (dy.view(p, -1).mean(1) + dx.view(p, -1).mean(1)) / 2
        scalars = {
            "diversity/position_std": float(pos.mean()),
            "diversity/size_std": float(size.mean()),
            "diversity/free_attr_entropy": float(sum(ents) / len(ents)) if ents else float("nan"),
            "quality/no_object_frac": float(1 - has.float().mean()),
            "quality/tv": float(tv / 2),
        }
        per_prompt = {
            "diversity/position_std": pos.tolist(),
            "diversity/size_std": size.tolist(),
            "diversity/free_attr_entropy": ent_per_prompt,
            "quality/no_object_frac": (1 - has.float().mean(1)).tolist(),
            "quality/tv": tv_per_prompt.tolist(),
        }
        return scalars, per_prompt


__all__ = ["ShapesWorld", "ShapesFeatures"]
