"""Tiny RANDOM reward and feature models, written offline in the exact on-disk layouts the real loaders read
(drift/worlds/sd3/rewards.py, features.py), so that tests and the GPU check go through the same code as real
weights. Their outputs are meaningless; only shapes, dtypes, determinism and the code paths are real.

    python -m drift.worlds.sd3.tiny_rewards --out /tmp/tiny_rewards      # prints {name: path}

| name | layout written | loader |
|---|---|---|
| pickscore | transformers CLIPModel + CLIPProcessor (save_pretrained), logit_scale = 100 | CLIPModel / AutoProcessor.from_pretrained |
| clipscore, clip | the same layout (one folder, another seed) | idem |
| aesthetic | CLIP folder as above + `sac+logos+ava1-l14-linearMSE.pth` (torch.save of the MLP state dict) | idem + torch.load(weights_only=True) |
| hpsv21 | `open_clip_config.json` + `HPS_v2.1_compressed.pt` ({"state_dict": ...}, as released) | open_clip.create_model("local-dir:...") + open_clip.load_checkpoint |
| dino | transformers Dinov2Model (save_pretrained) | AutoModel.from_pretrained |
| dreamsim | a DreamSim cache dir for `open_clip_vitb32`: `open_clip_vitb32_pretrain.pth.tar` + `open_clip_vitb32_single_lora/` (peft adapter) | dreamsim.dreamsim(pretrained=True, cache_dir=...) |

Tokenizers are the real CLIP BPE (49,408 tokens) built from open_clip's bundled `bpe_simple_vocab_16e6.txt.gz`;
nothing touches the network.

DreamSim size limit: every DreamSim model type is a fixed ViT-B (`vit_base` in the dreamsim package, 87.8M
parameters, 335 MB in fp32) and the package builds it at that size whatever the checkpoint says; no smaller
supported model_type exists. The checkpoint written here is nevertheless ~1 MB: every >= 2-D tensor is an
overlapping strided view (all strides 1, a Hankel-like pattern) of one shared 64K-float random pool, and
torch.save stores views by their shared storage. torch.load(weights_only=True) rebuilds the views and
load_state_dict copies them into the full-size model, so the load path is exactly the real one. What is not
reduced is the in-memory model (~350 MB) and its compute (ViT-B/32 at 224 px), so the tests embed only a
handful of images with it.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from .rewards import CLIP_MEAN, CLIP_STD, AESTHETIC_FILE, HPS_FILE, AestheticMLP

TINY_CLIP_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
TINY_CLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
                        patch_size=32)
TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
DREAMSIM_TYPE = "open_clip_vitb32"
DREAMSIM_LORA = dict(r=16, lora_alpha=0.5, lora_dropout=0.3, bias="none", target_modules=["qkv"])
"""The LoRA settings of the released DreamSim single-model adapters (dreamsim's own training config)."""


def clip_bpe_tokenizer(model_max_length: int = 77):
    """The real CLIP BPE tokenizer (transformers CLIPTokenizer, 49,408 tokens) from open_clip's bundled vocab:
    256 byte symbols, the same with '</w>', 48,894 merges, then <|startoftext|> and <|endoftext|>. Ids equal
    open_clip's SimpleTokenizer's. Built from vocab.json + merges.txt files (written to a temporary folder),
    the constructor form shared by transformers 4.x and 5.x."""
    import gzip
    import tempfile

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [m.split() for m in lines[1:49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as d:
        vocab_file, merges_file = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump({t: i for i, t in enumerate(vocab)}, f)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        return CLIPTokenizer(vocab_file, merges_file, model_max_length=model_max_length)


def _save_tiny_clip(out: str, seed: int, tokenizer, logit_scale: float = 100.0) -> str:
    """A random transformers CLIPModel (2 layers x 32 wide per tower, projection 32, 224 px / patch 32) and a
    CLIPProcessor with CLIP's real image settings (shortest side 224, crop 224, OpenAI mean/std)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=TINY_CLIP_TEXT, vision_config=TINY_CLIP_VISION, projection_dim=32,
                     logit_scale_init_value=float(torch.tensor(logit_scale).log()))
    model = CLIPModel(cfg).eval()
    model.save_pretrained(out)
    ip = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                            image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3)
    CLIPProcessor(image_processor=ip, tokenizer=tokenizer).save_pretrained(out)
    return out


def _save_tiny_hps(out: str, seed: int) -> str:
    """open_clip_config.json (the hub layout of open_clip models) + HPS_v2.1_compressed.pt ({"state_dict"})."""
    import open_clip

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": TINY_OPEN_CLIP,
                   "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
                                      "resize_mode": "shortest"}}, f, indent=1)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(TINY_OPEN_CLIP)))
    torch.save({"state_dict": model.state_dict()}, os.path.join(out, HPS_FILE))
    return out


def _save_tiny_aesthetic(out: str, seed: int, tokenizer) -> str:
    """The CLIP folder + the LAION MLP (real 1024-128-64-16-1 head on the tiny 32-d embedding) as a .pth."""
    _save_tiny_clip(out, seed, tokenizer)
    torch.manual_seed(seed + 1)
    torch.save(AestheticMLP(TINY_CLIP_VISION["hidden_size"]).state_dict(), os.path.join(out, AESTHETIC_FILE))
    return out


def _save_tiny_dino(out: str, seed: int) -> str:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                       image_size=224)
    Dinov2Model(cfg).eval().save_pretrained(out)
    return out


def strided_random_state(state: dict[str, torch.Tensor], seed: int, std: float = 0.02,
                         pool_size: int = 1 << 16) -> dict[str, torch.Tensor]:
    """Replace every >= 2-D tensor of `state` by a random view of one shared pool: t[i, j, ...] =
    pool[offset + i + j + ...] with pool ~ N(0, std^2), so torch.save writes the pool once. 1-D tensors (norms,
    biases) are kept as they are."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(pool_size, generator=g) * std
    out = {}
    for k, t in state.items():
        if t.ndim < 2:
            out[k] = t.detach().clone()
            continue
        span = sum(s - 1 for s in t.shape) + 1
        if span > pool_size:
            raise ValueError(f"{k}: span {span} exceeds the pool ({pool_size})")
        off = int(torch.randint(0, pool_size - span + 1, (1,), generator=g))
        out[k] = pool.as_strided(tuple(t.shape), (1,) * t.ndim, off)
    return out


def _save_tiny_dreamsim(out: str, seed: int) -> str:
    """A DreamSim cache dir for open_clip_vitb32 (see the module docstring for the size limit)."""
    from dreamsim import PerceptualModel
    from dreamsim.config import dreamsim_args
    from dreamsim.feature_extraction.vision_transformer import vit_base
    from peft import LoraConfig, get_peft_model

    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    vit = vit_base(patch_size=32)
    vit.pos_drop = torch.nn.LayerNorm(vit.embed_dim)  # open_clip's ln_pre, as dreamsim's loader expects
    state = strided_random_state(vit.state_dict(), seed)
    state["proj"] = strided_random_state({"proj": torch.empty(vit.embed_dim, 512)}, seed + 1)["proj"]
    torch.save({"state_dict": state}, os.path.join(out, f"{DREAMSIM_TYPE}_pretrain.pth.tar"))
    del vit, state
    # the LoRA adapter, saved by peft exactly as dreamsim loads it; lora_B made non-zero so it is not a no-op
    model = PerceptualModel(**dreamsim_args["model_config"][DREAMSIM_TYPE], device="cpu", load_dir=out,
                            normalize_embeds=True)
    model = get_peft_model(model, LoraConfig(**DREAMSIM_LORA))
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    model.save_pretrained(os.path.join(out, f"{DREAMSIM_TYPE}_single_lora"))
    return out


def build_tiny_reward_models(out_dir: str, dreamsim: bool = True) -> dict[str, str]:
    """Write every tiny reward and feature model under out_dir; returns {name: path} for the reward names
    (pickscore, hpsv21, clipscore, aesthetic) and the feature names (clip, dino, dreamsim). `jpeg` needs no
    weights and is absent. dreamsim=False skips the ~350 MB-in-memory DreamSim build (see the module doc)."""
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tok = clip_bpe_tokenizer()
    paths = {
        "pickscore": _save_tiny_clip(os.path.join(out_dir, "pickscore"), 1, tok),
        "clipscore": _save_tiny_clip(os.path.join(out_dir, "clipscore"), 2, tok),
        "aesthetic": _save_tiny_aesthetic(os.path.join(out_dir, "aesthetic"), 3, tok),
        "hpsv21": _save_tiny_hps(os.path.join(out_dir, "hpsv21"), 4),
        "dino": _save_tiny_dino(os.path.join(out_dir, "dino"), 5),
    }
    paths["clip"] = paths["clipscore"]
    if dreamsim:
        paths["dreamsim"] = _save_tiny_dreamsim(os.path.join(out_dir, "dreamsim"), 6)
    with open(os.path.join(out_dir, "paths.json"), "w") as f:
        json.dump(paths, f, indent=1)
    return paths


def measure_cost(paths: dict[str, str], device: str = "cpu", batch: int = 8, px: int = 512, arch: bool = False,
                 repeats: int = 3) -> dict[str, object]:
    """Milliseconds per image of every reward head and feature net through the real loaders on the tiny models
    (batch images of px x px; bf16 on CUDA, fp32 on the CPU), and with arch=True of the real architectures with
    random weights (compute only: ViT-H/14 of PickScore/HPSv2.1, CLIP ViT-L/14 of CLIPScore/aesthetic/clip,
    DINOv2-base, one DreamSim ViT-B/16 tower). Text encoders are timed per distinct prompt (they run once per
    prompt thanks to the cache)."""
    import time

    from . import features as feat
    from . import rewards as rw

    dt = torch.bfloat16 if device.startswith("cuda") else torch.float32
    res: dict[str, object] = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                              "batch": batch, "px": px, "dtype": str(dt).replace("torch.", ""),
                              "threads": torch.get_num_threads()}

    def ms(fn, per=batch):
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return round((time.perf_counter() - t) / repeats / per * 1000, 3)

    x = torch.rand(batch, 3, px, px, generator=torch.Generator().manual_seed(0)).to(device)
    prompts = [f"a photo of object number {i // 8}" for i in range(batch)]
    with torch.no_grad():
        for n in sorted(rw.REWARDS):
            r = rw.load_reward(n, paths.get(n), device, dt)
            res[f"tiny/{n}"] = ms(lambda: r(x, prompts))
        for n in sorted(feat.FEATURES):
            if n in paths:
                f = feat.load_features(n, paths[n], device, dt, batch_size=batch)
                res[f"tiny/feature_{n}"] = ms(lambda: f.embed(x))
        res["preprocess/clip_224"] = ms(lambda: rw.clip_preprocess(x))
        if arch:
            import open_clip
            from dreamsim.feature_extraction.vision_transformer import vit_base
            from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

            with torch.device(device):
                h14 = open_clip.create_model("ViT-H-14", pretrained=None, device=device).to(dt).eval()
            res["arch/ViT-H-14_image"] = ms(lambda: h14.encode_image(rw.clip_preprocess(x).to(dt)))
            tok = open_clip.get_tokenizer("ViT-H-14")(prompts).to(device)
            res["arch/ViT-H-14_text_per_prompt"] = ms(lambda: h14.encode_text(tok))
            del h14
            with torch.device(device):
                l14 = CLIPModel(CLIPConfig(
                    text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                     num_hidden_layers=12),
                    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                       num_hidden_layers=24, patch_size=14, image_size=224),
                    projection_dim=768)).to(dt).eval()
            clip = rw.HFClip(l14, None, 224, 224, rw.CLIP_MEAN, rw.CLIP_STD)
            res["arch/CLIP-L14_image"] = ms(lambda: clip.image_embeds(x))
            del l14, clip
            with torch.device(device):
                dino = Dinov2Model(Dinov2Config()).to(dt).eval()  # the default config is DINOv2-base
            res["arch/DINOv2-base_image"] = ms(lambda: dino(
                pixel_values=rw.normalize(feat.resize_center(x, 224), rw.IMAGENET_MEAN, rw.IMAGENET_STD).to(dt)))
            del dino
            with torch.device(device):
                vit = vit_base(patch_size=16).eval()
            ctx = torch.autocast("cuda", dtype=dt) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
            with ctx:
                res["arch/DreamSim_ViT-B16_tower_image"] = ms(lambda: vit(feat.resize_center(x, 224)))
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write tiny random reward/feature models (offline); optionally time them.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-dreamsim", action="store_true")
    ap.add_argument("--bench", metavar="DEVICE", help="then print ms/image of every head and feature net on DEVICE")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--arch", action="store_true", help="with --bench: also the real architectures (random weights)")
    args = ap.parse_args(argv)
    paths = build_tiny_reward_models(args.out, dreamsim=not args.no_dreamsim)
    print(json.dumps(paths, indent=1))
    if args.bench:
        print(json.dumps(measure_cost(paths, args.bench, args.batch, arch=args.arch)))


if __name__ == "__main__":
    main()
