"""Diversity feature nets for the SD3 path (DreamSim, CLIP, DINO) behind the shapes world's FeatureNet
interface: `embed(images (B, 3, H, W) in [0, 1]) -> unit-norm (B, D) float32`, no gradients, batched
internally. Diversity is 1 - cos between embeddings (drift/diversity.py: pairwise distance, per-sample
group diversity, Vendi), the same for evaluation and for DRIFT's / DiverseGRPO's in-loop features.

    f = load_features("dreamsim", "~/.cache/dreamsim", device="cuda", batch_size=32)
    emb = f.embed(images)                        # (B, D), ||emb_i|| = 1

| name | model | embedding | default path |
|---|---|---|---|
| dreamsim | dreamsim 0.2.x (Fu et al. 2023, arXiv 2306.09344): ensemble of DINO ViT-B/16 + CLIP ViT-B/16 + OpenCLIP ViT-B/16 with LoRA tuned on NIGHTS human similarity | `model.embed` (mean-centred, unit norm) | `~/.cache/dreamsim` (the cache_dir) |
| clip | transformers CLIP ViT-L/14 (`openai/clip-vit-large-patch14`, shared with clipscore/aesthetic) | projected image embedding | hub id |
| dino | transformers DINOv2 (`facebook/dinov2-base`) | pooler output (final-layernormed CLS) | hub id |

Cost knobs: `batch_size` (images per forward) and `image_size` (input resolution; None = the model's native
224; smaller is cheaper, positional embeddings are interpolated). Subsampling images is the caller's choice.
Preprocessing: resize the shortest side + centre crop (the whole frame for square images; no border crop, as
diversity lives in the whole image), then the model's mean/std; DreamSim takes [0, 1] input and normalises
inside the package.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable

import torch
from torch.nn import functional as F

from .rewards import (CLIP_L14, HF_CLIP_L14_CMD, IMAGENET_MEAN, IMAGENET_STD, RewardWeightsError, _BACKBONES,
                      _cache_key, _check_batch, _norm_path, center_crop, load_hf_clip, normalize,
                      resize_shortest_side)

FEATURES = {"dreamsim", "clip", "dino"}
DINO_DEFAULT = "facebook/dinov2-base"
DREAMSIM_DEFAULT_DIR = "~/.cache/dreamsim"
DEFAULT_PATHS = {"dreamsim": DREAMSIM_DEFAULT_DIR, "clip": CLIP_L14, "dino": DINO_DEFAULT}
"""Where each feature net is looked for when its path is None."""

DREAMSIM_FILES = {
    "ensemble": ("dino_vitb16_pretrain.pth", "open_clip_vitb16_pretrain.pth.tar", "clip_vitb16_pretrain.pth.tar",
                 "ensemble_lora"),
    "dino_vitb16": ("dino_vitb16_pretrain.pth", "dino_vitb16_single_lora"),
    "dinov2_vitb14": ("dinov2_vitb14_pretrain.pth", "dinov2_vitb14_single_lora"),
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora"),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora"),
    "synclr_vitb16": ("synclr_vit_b_16.pth", "synclr_vitb16_single_lora"),
}
"""The files dreamsim 0.2.1 requires in its cache_dir per dreamsim_type (its download_weights check); the
first complete set in this order is used, so the paper's default "ensemble" wins when present."""


def resize_center(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shortest side to `size` (bicubic, antialiased, clamped) and centre-crop size x size."""
    return center_crop(resize_shortest_side(images.float().clamp(0, 1), size), size)


class FeatureNet:
    """images (B, 3, H, W) in [0, 1] -> unit-norm embeddings (B, D) float32, on the images' device.

    `fn` maps one batch (on the model's device) to raw embeddings; embed() chunks by batch_size, runs without
    gradients and L2-normalises. `backbone` is the cached model object (shared by every wrapper of it)."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device, batch_size: int,
                 image_size: int, backbone: object, autocast_dtype: torch.dtype | None = None):
        self.name, self.fn, self.device, self.backbone = name, fn, torch.device(device), backbone
        self.batch_size, self.image_size, self.autocast_dtype = int(batch_size), int(image_size), autocast_dtype
        self.variant = name  # what measured the diversity (DreamSim: 'dreamsim/<dreamsim_type>'), recorded by runs

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        _check_batch(images, None)
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = images[i:i + self.batch_size].to(self.device)
            ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                   else contextlib.nullcontext())
            with ctx:
                e = self.fn(x)
            out.append(F.normalize(e.float(), dim=-1).to(images.device))
        if not out:
            raise ValueError("FeatureNet.embed: empty batch")
        return torch.cat(out)


# -- backbones (cached per process in rewards._BACKBONES) -----------------------------------------------------
def find_dreamsim_type(cache_dir: str) -> str | None:
    """The first dreamsim_type (DREAMSIM_FILES order) whose required files are all in cache_dir, or None."""
    for t, files in DREAMSIM_FILES.items():
        if all(os.path.exists(os.path.join(cache_dir, f)) for f in files):
            return t
    return None


def _load_dreamsim(path: str | None, device, dtype):
    """dreamsim.dreamsim(pretrained=True, cache_dir=path, dreamsim_type=<detected>) without any download: the
    package only downloads when its files are missing, and we refuse before that."""
    cache_dir = os.path.abspath(os.path.expanduser(path or DREAMSIM_DEFAULT_DIR))
    key = _cache_key("dreamsim", cache_dir, torch.device(device))
    if key in _BACKBONES:
        return _BACKBONES[key]
    kind = find_dreamsim_type(cache_dir) if os.path.isdir(cache_dir) else None
    if kind is None:
        raise RewardWeightsError(
            f"feature net 'dreamsim': no DreamSim checkpoint in {cache_dir!r} (need one of these file sets: "
            f"{ {k: list(v) for k, v in DREAMSIM_FILES.items()} }). How to obtain it, on a machine with internet: "
            "`python -c \"from dreamsim import dreamsim; "
            f"dreamsim(pretrained=True, device='cpu', cache_dir='{cache_dir}')\"` "
            "(downloads the ensemble zip from github.com/ssundaram21/dreamsim releases and, for its DINO part, the "
            "torch.hub repo facebookresearch/dino into the same dir), then pass that dir as the dreamsim path")
    from dreamsim import dreamsim

    with contextlib.redirect_stdout(None), warnings.catch_warnings():  # it prints "Using cached ..." and
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # wraps its LoRA model twice
        model, _ = dreamsim(pretrained=True, device=str(torch.device(device)), cache_dir=cache_dir, dreamsim_type=kind)
    model.eval().requires_grad_(False)
    _BACKBONES[key] = (model, kind)
    return _BACKBONES[key]


def _load_dino(path: str | None, device, dtype):
    src = path or DINO_DEFAULT
    key = _cache_key("dino", _norm_path(src), torch.device(device), dtype)
    if key in _BACKBONES:
        return _BACKBONES[key]
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise RewardWeightsError(
            f"feature net 'dino': could not load {src!r} ({type(e).__name__}: {e}). How to obtain it: "
            f"`hf download {DINO_DEFAULT} --include '*.json' --include model.safetensors` on a machine with internet "
            "(same HF_HOME at run time), or pass a folder saved with Dinov2Model.save_pretrained") from e
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    _BACKBONES[key] = model
    return model


def load_features(name: str, path: str | None, device="cpu", dtype=torch.float32, batch_size: int = 32,
                  image_size: int | None = None) -> FeatureNet:
    """The feature net `name` (one of FEATURES) from `path` (None = DEFAULT_PATHS[name]). The model is loaded
    once per process per (name, path, device, dtype); the returned wrapper carries batch_size and image_size."""
    if name not in FEATURES:
        raise ValueError(f"unknown feature net {name!r}; known: {sorted(FEATURES)}")
    if int(batch_size) < 1:
        raise ValueError(f"load_features: batch_size = {batch_size}; must be >= 1")
    if image_size is not None and int(image_size) < 14:
        raise ValueError(f"load_features: image_size = {image_size}; must be None (native) or >= 14")
    device = torch.device(device)
    if name == "clip":
        how = (f"`{HF_CLIP_L14_CMD}` on a machine with internet (same HF_HOME at run time), "
               "or pass a CLIPModel/CLIPProcessor save_pretrained folder")
        clip = load_hf_clip(path or CLIP_L14, None, device, dtype, f"feature net 'clip' (path {path!r})", how)
        size = int(image_size or clip.crop)
        return FeatureNet("clip", lambda x: clip.image_embeds(x, size=size), device, batch_size, size, clip)
    if name == "dino":
        model = _load_dino(path, device, dtype)
        size = int(image_size or 224)

        def dino_fn(x):
            px = normalize(resize_center(x, size), IMAGENET_MEAN, IMAGENET_STD).to(dtype)
            return model(pixel_values=px).pooler_output

        return FeatureNet("dino", dino_fn, device, batch_size, size, model)
    model, kind = _load_dreamsim(path, device, dtype)
    if kind != "ensemble":
        warnings.warn(f"feature net 'dreamsim': the ensemble files are not in {path or DREAMSIM_DEFAULT_DIR!r}; using the "
                      f"single-branch dreamsim_type {kind!r}, whose distances are on a different scale (recorded in the "
                      "run's MLflow tag features_variant)")
    size = int(image_size or 224)
    autocast = dtype if (dtype != torch.float32 and device.type == "cuda") else None  # weights stay fp32
    net = FeatureNet("dreamsim", lambda x: model.embed(resize_center(x, size)), device, batch_size, size, model,
                     autocast)
    net.variant = f"dreamsim/{kind}"
    return net


__all__ = ["FEATURES", "DEFAULT_PATHS", "DREAMSIM_FILES", "FeatureNet", "load_features", "find_dreamsim_type",
           "resize_center"]
