"""Reward models for the SD3 path: PickScore, HPSv2.1, CLIPScore, the LAION aesthetic predictor and JPEG
compressibility, each behind one interface, loaded once per process, plus a weighted multi-reward.

    r = load_reward("pickscore", None, device="cuda", dtype=torch.bfloat16)
    r(images, prompts)                        # images (B, 3, H, W) in [0, 1] -> (B,) float32
    MultiReward({"pickscore": 1.0, "aesthetic": 0.0}, {"aesthetic": "/weights/aesthetic"})(images, prompts)
    # -> {"reward": 1.0 * pickscore + 0.0 * aesthetic, "pickscore": ..., "aesthetic": ...}

Scales (what each head returns; they matter for KL betas and bonus coefficients):

| name | value | typical range on SD3.5-M (from the literature, not measured here) |
|---|---|---|
| pickscore | logit_scale * cos(image, text) / 26 (Flow-GRPO's training form; logit_scale = 100) | ~0.83-0.91 (x26 = the papers' ~21.7-23.4) |
| hpsv21 | cos(image, text), no logit scale (the HPSv2 score) | ~0.25-0.35 |
| clipscore | 100 * max(cos, 0) (torchmetrics / Hessel et al. with w = 1 in percent; Flow-GRPO divides by 30) | ~28-30 |
| aesthetic | LAION MLP on the L2-normalised CLIP-L/14 image embedding | ~1-10 (SD3.5-M ~5.4) |
| jpeg | -(JPEG size in kB at quality 95) (ddpo's compressibility; Flow-GRPO divides by 500) | ~ -10 ... -100 at 512 px |

Preprocessing is done in torch on the generated tensors (no PIL round trip): resize the shortest side
(bicubic, antialiased, clamped to [0, 1] as an 8-bit pipeline would be), centre-crop, normalise with the
model's mean/std. The functions below are pure and differentiable; `RewardModel.score` keeps the graph for
reward-gradient methods, `RewardModel.__call__` is the no-grad float32 form the RL engine uses.

Weights: loaded by hub id (from the Hugging Face cache; HF_HUB_OFFLINE=1 works once downloaded) or from a
local path; `.pt/.pth/.bin` state dicts only with torch.load(weights_only=True), safetensors preferred when
present. Missing weights raise RewardWeightsError with the download command. docs/rewards.md lists sources,
licences and commands; drift/worlds/sd3/tiny_rewards.py writes tiny random models in the same layouts.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

REWARDS = {"pickscore", "hpsv21", "clipscore", "aesthetic", "jpeg"}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_L14 = "openai/clip-vit-large-patch14"
HPS_REPO, HPS_FILE, HPS_ARCH = "xswu/HPSv2", "HPS_v2.1_compressed.pt", "ViT-H-14"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                 "sac%2Blogos%2Bava1-l14-linearMSE.pth")
HF_CLIP_L14_CMD = f"hf download {CLIP_L14} --include '*.json' --include '*.txt' --include model.safetensors"
PICKSCORE_DIVISOR = 26.0
"""Flow-GRPO divides PickScore by 26 so that it lies near [0, 1]; multiply by 26 for the papers' scale."""


class RewardWeightsError(FileNotFoundError):
    """Weights of a reward model or feature net are missing; the message names the model, the path tried and
    how to obtain the weights."""


# -- pure preprocessing -----------------------------------------------------------------------------------
def resize_shortest_side(images: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize (B, C, H, W) so that min(H, W) = size, keeping the aspect ratio (rounded like torchvision's
    Resize(int)): the long side becomes int(size * long / short). Antialiased; bicubic overshoot is clamped
    to [0, 1] (what an 8-bit PIL pipeline does). A no-op when min(H, W) already equals size."""
    h, w = images.shape[-2:]
    if min(h, w) == size:
        return images
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    out = F.interpolate(images, size=(new_h, new_w), mode=mode, align_corners=False,
                        antialias=mode in ("bilinear", "bicubic"))
    return out.clamp(0, 1)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Crop the central size x size window of (B, C, H, W); offsets round((H - size) / 2) as torchvision."""
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"center_crop: image {h}x{w} is smaller than the crop {size}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return images[..., top:top + size, left:left + size]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean_c) / std_c per channel c of (B, 3, H, W)."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def clip_preprocess(images: torch.Tensor, size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD, crop: int | None = None) -> torch.Tensor:
    """The CLIP image transform on a tensor: resize shortest side to `size` (bicubic), centre-crop `crop`
    (default = size), normalise. Input (B, 3, H, W) in [0, 1], computed in float32."""
    x = images.float().clamp(0, 1)
    return normalize(center_crop(resize_shortest_side(x, size), crop or size), mean, std)


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (B, D) and (B, D) -> (B,), computed in float32."""
    return (F.normalize(a.float(), dim=-1) * F.normalize(b.float(), dim=-1)).sum(-1)


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 on the CPU: round(255 x), clamped (ddpo's conversion)."""
    return (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """Size in kB (1000 bytes) of each image saved by PIL as JPEG at `quality`: (B, 3, H, W) -> (B,) float32."""
    from PIL import Image

    sizes = []
    for arr in quantize_uint8(images).numpy():
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


def _check_batch(images: torch.Tensor, prompts: Sequence[str] | None) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if prompts is not None and len(prompts) != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {len(prompts)} prompts")


# -- the interface ----------------------------------------------------------------------------------------
class RewardModel:
    """A reward head: images (B, 3, H, W) in [0, 1] and B prompts -> (B,) float32.

    Subclasses implement `score` (differentiable where the model is); `__call__` runs it without gradients
    and returns float32 on the images' device. Text embeddings are cached per prompt string (bounded)."""

    name: str = "reward"
    text_cache_size = 4096

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        _check_batch(images, prompts)
        out = self.score(images.to(self.device), list(prompts))
        return out.detach().float().to(images.device)

    def _cached_text(self, prompts: Sequence[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """Embeddings (B, D) of prompts: each distinct prompt is encoded once and cached (LRU, no grad)."""
        cache = self._text_cache
        for p in prompts:
            if p in cache:
                cache.move_to_end(p)
        missing = list(dict.fromkeys(p for p in prompts if p not in cache))
        if missing:
            with torch.no_grad():
                emb = encode(missing)
            for p, e in zip(missing, emb):
                cache[p] = e
        out = torch.stack([cache[p] for p in prompts])
        while len(cache) > self.text_cache_size:  # evict after the lookup: a batch may exceed the bound
            cache.popitem(last=False)
        return out


# -- transformers CLIP backbones (PickScore, CLIPScore, aesthetic, CLIP features) ----------------------------
class HFClip:
    """A transformers CLIPModel with its tokenizer and image-processor geometry (resize, crop, mean, std)."""

    def __init__(self, model, tokenizer, resize: int, crop: int, mean, std):
        self.model, self.tokenizer = model, tokenizer
        self.resize, self.crop, self.mean, self.std = resize, crop, tuple(mean), tuple(std)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def image_embeds(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Projected (unnormalised) image embeddings (B, D). `size` overrides the processor's resolution
        (positional embeddings are then interpolated)."""
        resize, crop = (size, size) if size else (self.resize, self.crop)
        px = clip_preprocess(images.to(self.device), resize, self.mean, self.std, crop).to(self.dtype)
        out = self.model.vision_model(pixel_values=px, interpolate_pos_encoding=bool(size) and size != self.crop)
        return self.model.visual_projection(out.pooler_output)

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """Projected (unnormalised) text embeddings (B, D); prompts truncated to the model's 77 tokens."""
        max_len = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.text_model(input_ids=tok["input_ids"].to(self.device),
                                    attention_mask=tok["attention_mask"].to(self.device))
        return self.model.text_projection(out.pooler_output)


def _processor_geometry(ip) -> tuple[int, int, tuple, tuple]:
    """(resize shortest side, crop, mean, std) of a transformers CLIP image processor."""
    def get(obj, key):
        if obj is None:
            return None
        if isinstance(obj, dict):
            return obj.get(key)
        return getattr(obj, key, None)

    size = ip.size
    if not isinstance(size, (int, type(None))):
        size = get(size, "shortest_edge") or get(size, "height")
    crop = ip.crop_size if isinstance(ip.crop_size, (int, type(None))) else get(ip.crop_size, "height")
    size = int(size or 224)
    return size, int(crop or size), tuple(ip.image_mean or CLIP_MEAN), tuple(ip.image_std or CLIP_STD)


_BACKBONES: dict[tuple, object] = {}


def _cache_key(*parts) -> tuple:
    return tuple(str(p) if isinstance(p, torch.device) else p for p in parts)


def _norm_path(path: str | None) -> str | None:
    if path is None:
        return None
    expanded = os.path.expanduser(str(path))
    return os.path.abspath(expanded) if os.path.exists(expanded) else str(path)


def load_hf_clip(model_src: str, processor_src: str | None, device, dtype, what: str, how: str) -> HFClip:
    """Load (once per process) a transformers CLIPModel from a hub id or a save_pretrained folder, and its
    processor (tokenizer + image geometry) from `processor_src` (default: the model's source)."""
    processor_src = processor_src or model_src
    key = _cache_key("hf_clip", _norm_path(model_src), _norm_path(processor_src), torch.device(device), dtype)
    if key in _BACKBONES:
        return _BACKBONES[key]
    from transformers import AutoProcessor, CLIPModel

    try:
        model = CLIPModel.from_pretrained(model_src)
    except (OSError, ValueError) as e:
        raise RewardWeightsError(f"{what}: could not load the CLIP model from {model_src!r} ({type(e).__name__}: {e}). "
                                 f"How to obtain it: {how}") from e
    try:
        proc = AutoProcessor.from_pretrained(processor_src)
    except (OSError, ValueError) as e:
        raise RewardWeightsError(f"{what}: could not load the CLIP processor from {processor_src!r} "
                                 f"({type(e).__name__}: {e}). How to obtain it: {how}") from e
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    clip = HFClip(model, proc.tokenizer, *_processor_geometry(proc.image_processor))
    _BACKBONES[key] = clip
    return clip


PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json")
"""Any of these in a folder means it holds a processor (transformers 4.x writes preprocessor_config.json,
5.x processor_config.json)."""


def _has_processor(path: str | None) -> bool:
    return path is not None and any(os.path.isfile(os.path.join(os.path.expanduser(path), f)) for f in PROCESSOR_FILES)


class PickScoreReward(RewardModel):
    """PickScore (Kirstain et al. 2023, arXiv 2305.01569): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human
    preferences. r = logit_scale * cos(img, txt) / 26 (Flow-GRPO's training scale; logit_scale = 100, so
    x26 gives the raw PickScore of the papers, ~21-24 on SD3.5-M).

    Weights: transformers `yuvalkirstain/PickScore_v1` (model) + `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`
    (processor), as in the PickScore README and Flow-GRPO. Code MIT (github.com/yuvalkirstain/PickScore);
    check the model cards for the weights' terms. Path: None (hub ids, from the HF cache) or a folder holding
    CLIPModel.save_pretrained output; its own processor is used when the folder has one (PROCESSOR_FILES),
    else the LAION processor."""

    name = "pickscore"

    def __init__(self, path: str | None, device="cpu", dtype=torch.float32):
        super().__init__(device, dtype)
        model_src = path or PICKSCORE_MODEL
        proc_src = path if _has_processor(path) else PICKSCORE_PROCESSOR
        how = (f"`hf download {PICKSCORE_MODEL}` and "
               f"`hf download {PICKSCORE_PROCESSOR} --include '*.json' --include '*.txt'` "
               "(older hubs: `huggingface-cli download ...`) on a machine with internet, then run with the same HF_HOME, "
               "or pass a folder saved with CLIPModel/CLIPProcessor.save_pretrained as the pickscore path")
        self.clip = load_hf_clip(model_src, proc_src, device, dtype, f"reward 'pickscore' (path {path!r})", how)

    def score(self, images, prompts):
        img = self.clip.image_embeds(images)
        txt = self._cached_text(prompts, self.clip.text_embeds)
        return self.clip.model.logit_scale.exp().float() * cosine_rows(img, txt) / PICKSCORE_DIVISOR


class CLIPScoreReward(RewardModel):
    """CLIPScore (Hessel et al. 2021, arXiv 2104.08718): `scale` * max(cos(img, txt), 0) with CLIP ViT-L/14.
    Default scale 100 (the "100 * cos" reported by papers and torchmetrics; Hessel's w = 2.5 is scale 250;
    Flow-GRPO's training reward is 100 * cos / 30, i.e. a MultiReward weight of 1/30, without the clip at 0).

    Weights: transformers `openai/clip-vit-large-patch14` (MIT, github.com/openai/CLIP) or a save_pretrained
    folder."""

    name = "clipscore"
    scale = 100.0

    def __init__(self, path: str | None, device="cpu", dtype=torch.float32):
        super().__init__(device, dtype)
        how = (f"`{HF_CLIP_L14_CMD}` on a machine with internet (same HF_HOME at run time), "
               "or pass a folder saved with CLIPModel/CLIPProcessor.save_pretrained")
        self.clip = load_hf_clip(path or CLIP_L14, None, device, dtype, f"reward 'clipscore' (path {path!r})", how)

    def score(self, images, prompts):
        cos = cosine_rows(self.clip.image_embeds(images), self._cached_text(prompts, self.clip.text_embeds))
        return self.scale * cos.clamp(min=0)


class AestheticMLP(nn.Module):
    """The LAION "improved aesthetic predictor" head (github.com/christophschuhmann/improved-aesthetic-predictor):
    Linear(d, 1024) -> Dropout -> Linear(1024, 128) -> Dropout -> Linear(128, 64) -> Dropout -> Linear(64, 16)
    -> Linear(16, 1), with no activations (as released). Module names match the released state dict
    (`layers.0/2/4/6/7`). d = 768 for CLIP ViT-L/14."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_state_dict_file(file: str) -> dict[str, torch.Tensor]:
    """A tensor state dict from .safetensors, or from .pt/.pth/.bin with torch.load(weights_only=True) (never
    unpickles arbitrary objects). A {"state_dict": ...} wrapper is unwrapped; a "module." prefix stripped."""
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(file)
    else:
        sd = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{file}: not a tensor state dict")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _first_existing(folder: str, names: Sequence[str]) -> str | None:
    for n in names:
        f = os.path.join(folder, n)
        if os.path.isfile(f):
            return f
    return None


class AestheticReward(RewardModel):
    """LAION aesthetic predictor v2 ("improved aesthetic predictor", sac+logos+ava1-l14-linearMSE): the MLP
    above on the L2-normalised CLIP ViT-L/14 image embedding; ~1-10 (mean human rating scale of AVA/SAC).
    As ddpo-pytorch and Flow-GRPO: transformers `openai/clip-vit-large-patch14`, embedding / ||embedding||.

    Path: a folder holding the MLP weights (`aesthetic_mlp.safetensors` or `sac+logos+ava1-l14-linearMSE.pth`)
    and, optionally, the CLIP model (a save_pretrained folder: config.json + weights + processor files;
    otherwise `openai/clip-vit-large-patch14` from the HF cache), or the MLP file itself. Weights: the MLP from
    the GitHub repository above (check its licence; Flow-GRPO ships a copy in its assets), CLIP MIT."""

    name = "aesthetic"
    mlp_files = ("aesthetic_mlp.safetensors", "sac+logos+ava1-l14-linearMSE.safetensors", AESTHETIC_FILE)

    def __init__(self, path: str | None, device="cpu", dtype=torch.float32):
        super().__init__(device, dtype)
        how = (f"`wget -O {AESTHETIC_FILE} '{AESTHETIC_URL}'` into a folder and pass the folder (or the file) as the "
               f"aesthetic path; the CLIP backbone: `{HF_CLIP_L14_CMD}`")
        what = f"reward 'aesthetic' (path {path!r})"
        if path is None:
            raise RewardWeightsError(f"{what}: the aesthetic MLP has no default location. How to obtain it: {how}")
        p = os.path.expanduser(path)
        if os.path.isdir(p):
            mlp_file = _first_existing(p, self.mlp_files)
            clip_src = p if os.path.isfile(os.path.join(p, "config.json")) else CLIP_L14
        else:
            mlp_file, clip_src = (p if os.path.isfile(p) else None), CLIP_L14
        if mlp_file is None:
            raise RewardWeightsError(f"{what}: no MLP weights found (looked for {p!r} or {list(self.mlp_files)} "
                                     f"inside it). How to obtain them: {how}")
        sd = load_state_dict_file(mlp_file)
        self.mlp = AestheticMLP(sd["layers.0.weight"].shape[1])
        self.mlp.load_state_dict(sd)
        self.mlp = self.mlp.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.clip = load_hf_clip(clip_src, None, device, dtype, what, how)

    def score(self, images, prompts=None):
        emb = F.normalize(self.clip.image_embeds(images).float(), dim=-1)
        return self.mlp(emb.to(self.clip.dtype)).squeeze(-1).float()


@contextlib.contextmanager
def _drop_root_log_records(*fragments: str):
    """Silence root-logger records containing any of `fragments` (open_clip warns "initialized randomly" when
    the architecture is built before its weights are loaded)."""
    class _Drop(logging.Filter):
        def filter(self, record):
            return not any(f in record.getMessage() for f in fragments)

    flt, root = _Drop(), logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


class HPSv21Reward(RewardModel):
    """HPSv2.1 (Wu et al. 2023, arXiv 2306.09341): an open_clip ViT-H/14 fine-tuned on human preference pairs;
    r = cos(img, txt) (the diagonal of image_features @ text_features.T with normalised features; no logit
    scale), ~0.25-0.35.

    The architecture is built from open_clip's ViT-H-14 config and the whole model's weights come from
    `HPS_v2.1_compressed.pt` (HF `xswu/HPSv2`, Apache-2.0 per github.com/tgxs002/HPSv2), so no LAION
    checkpoint is downloaded first. Image transform: open_clip's eval transform (resize shortest side 224,
    bicubic; centre crop; OpenAI CLIP mean/std). Path: None (hf_hub_download from the HF cache), the .pt /
    .safetensors file, or a folder with that file and optionally an `open_clip_config.json`
    ({"model_cfg": ..., "preprocess_cfg": ...}, the hub layout of open_clip models) that replaces ViT-H-14."""

    name = "hpsv21"
    weight_files = ("HPS_v2.1_compressed.safetensors", HPS_FILE, "open_clip_model.safetensors",
                    "open_clip_pytorch_model.bin")

    def __init__(self, path: str | None, device="cpu", dtype=torch.float32):
        super().__init__(device, dtype)
        import open_clip

        how = (f"`hf download {HPS_REPO} {HPS_FILE}` on a machine with internet (same HF_HOME at run time), "
               "or pass the downloaded file (or its folder) as the hpsv21 path")
        what = f"reward 'hpsv21' (path {path!r})"
        arch = HPS_ARCH
        if path is None:
            try:
                from huggingface_hub import hf_hub_download

                file = hf_hub_download(HPS_REPO, HPS_FILE)
            except Exception as e:  # offline and not cached, or no network: same remedy
                raise RewardWeightsError(f"{what}: {HPS_REPO}/{HPS_FILE} is not in the HF cache "
                                         f"({type(e).__name__}: {e}). How to obtain it: {how}") from e
        else:
            p = os.path.expanduser(path)
            if os.path.isdir(p):
                file = _first_existing(p, self.weight_files)
                if os.path.isfile(os.path.join(p, "open_clip_config.json")):
                    arch = "local-dir:" + os.path.abspath(p)
            else:
                file = p if os.path.isfile(p) else None
            if file is None:
                raise RewardWeightsError(f"{what}: no weights at {p!r} (looked for {list(self.weight_files)} in a "
                                         f"folder). How to obtain them: {how}")
        with _drop_root_log_records("no CLIP weights found", "initialized randomly"):  # we load them just below
            model = open_clip.create_model(arch, pretrained=None, load_weights=False, device="cpu")
        open_clip.load_checkpoint(model, file, strict=True, weights_only=True)
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.size = size if isinstance(size, int) else int(size[0])
        self.mean, self.std = tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD))

    def _text(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts).to(self.device))

    def score(self, images, prompts):
        px = clip_preprocess(images, self.size, self.mean, self.std).to(self.dtype)
        return cosine_rows(self.model.encode_image(px), self._cached_text(prompts, self._text))


class JPEGCompressibilityReward(RewardModel):
    """JPEG compressibility (DDPO, Black et al. 2023): r = -(size in kB of the image saved as JPEG at quality
    95 by PIL), after round(255 x) quantisation. Weight-free, not differentiable, CPU-bound. Flow-GRPO's
    `jpeg_compressibility` is this / 500 (a MultiReward weight of 1/500)."""

    name = "jpeg"
    quality = 95

    def score(self, images, prompts=None):
        return -jpeg_size_kb(images, self.quality).to(images.device)


_LOADERS: dict[str, Callable[..., RewardModel]] = {
    "pickscore": PickScoreReward, "hpsv21": HPSv21Reward, "clipscore": CLIPScoreReward, "aesthetic": AestheticReward,
}
_REWARD_CACHE: dict[tuple, RewardModel] = {}


def load_reward(name: str, path: str | None, device: str | torch.device = "cpu", dtype=torch.float32) -> RewardModel:
    """The reward model `name` (one of REWARDS) from `path` (None = its default hub location), cached per
    process: the same (name, path, device, dtype) returns the same object."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
    if name == "jpeg" and path is not None:
        raise ValueError(f"reward 'jpeg' has no weights, but a path was given: {path!r}")
    key = _cache_key(name, _norm_path(path), torch.device(device), dtype)
    if key not in _REWARD_CACHE:
        model = JPEGCompressibilityReward(device, dtype) if name == "jpeg" else _LOADERS[name](path, device, dtype)
        _REWARD_CACHE[key] = model
    return _REWARD_CACHE[key]


def clear_caches() -> None:
    """Forget every cached reward model and backbone (tests; freeing memory)."""
    _REWARD_CACHE.clear()
    _BACKBONES.clear()


def weighted_sum(heads: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum_k w_k * r_k over the weighted heads, in float32, with no per-head normalisation (Flow-GRPO's
    multi_score)."""
    names = list(weights)
    total = torch.zeros_like(heads[names[0]], dtype=torch.float32)
    for n in names:
        total = total + float(weights[n]) * heads[n].float()
    return total


class MultiReward:
    """Weighted sum of reward heads; every head is returned (and so logged as reward/<name>).

    weights: {name: w}; a head with w = 0 is computed and logged but does not enter "reward" (a monitor).
    paths: {name: path or None}; names absent mean None (default location); keys that are not weighted heads
    are ignored, so one {name: path} dict (e.g. build_tiny_reward_models') can serve rewards and features.
    batch_size: images per forward of each head."""

    def __init__(self, weights: dict[str, float], paths: dict[str, str | None], device="cpu", dtype=torch.float32,
                 batch_size: int = 32):
        if not weights:
            raise ValueError("MultiReward: weights is empty; give at least one reward head")
        unknown = sorted(set(weights) - REWARDS)
        if unknown:
            raise ValueError(f"MultiReward: unknown reward(s) {unknown} in weights; known: {sorted(REWARDS)}")
        for n, w in weights.items():
            if not math.isfinite(float(w)):
                raise ValueError(f"MultiReward: weight of {n!r} is {w}; must be finite")
        if int(batch_size) < 1:
            raise ValueError(f"MultiReward: batch_size = {batch_size}; must be >= 1")
        self.weights = {n: float(w) for n, w in weights.items()}
        self.batch_size = int(batch_size)
        self.models = {n: load_reward(n, (paths or {}).get(n), device, dtype) for n in self.weights}

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        _check_batch(images, prompts)
        prompts, bs = list(prompts), self.batch_size
        heads = {}
        for n, m in self.models.items():
            parts = [m(images[i:i + bs], prompts[i:i + bs]) for i in range(0, images.shape[0], bs)]
            heads[n] = torch.cat(parts) if parts else torch.zeros(0, device=images.device)
        return {"reward": weighted_sum(heads, self.weights), **heads}


__all__ = [
    "REWARDS", "RewardWeightsError", "RewardModel", "MultiReward", "load_reward", "clear_caches", "weighted_sum",
    "resize_shortest_side", "center_crop", "normalize", "clip_preprocess", "cosine_rows", "quantize_uint8",
    "jpeg_size_kb", "load_state_dict_file", "load_hf_clip", "HFClip", "AestheticMLP",
]
