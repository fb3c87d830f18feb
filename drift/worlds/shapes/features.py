"""The shapes world's feature networks (its "DreamSim"), and the script that trains them.

    python -m drift.worlds.shapes.features --out drift/worlds/shapes/assets/features
    python -m drift.worlds.shapes.features --objective denoise --seed 1 --out drift/worlds/shapes/assets/features_heldout

Two networks, one interface (images (B, 3, 32, 32) in [0, 1] -> unit-norm embeddings; distance = 1 - cos):

* ``features`` (objective ``scene_distance``): the network behind ``model.features``, used by the diversity
  bonuses of the methods and by ``eval/diversity``. Described below.
* ``features_heldout`` (objective ``denoise``, another seed, another architecture and augmentation set): a
  denoising autoencoder whose unit-norm bottleneck is the embedding. It is used by evaluation only
  (``eval/diversity/heldout``); no method sees it, so no method can optimise it directly.

The ``scene_distance`` network:

A small CNN maps an image (B, 3, 32, 32) in [0, 1] to an L2-normalised 32-d embedding. It is
trained on ground-truth renders so that the cosine distance between two embeddings matches a
ground-truth scene distance (as DreamSim is trained to match human similarity judgements):

    d*(i, j) = min(1, 0.3 [fg_i != fg_j] + 0.3 [shape_i != shape_j] + 0.2 [bg_i != bg_j]
                      + 0.8 ||c_i - c_j|| + 1.5 |s_i - s_j|)

with c the object centre and s the half-size, both divided by the image side. The nuisance terms
(position, size) make within-prompt variety visible: a pure classifier embedding would map every
image of one prompt to nearly the same point. Batches hold 4 scenes per prompt so that
within-prompt pairs are well represented; inputs are augmented (noise, blur, colour jitter) so that
imperfect generated images embed sensibly.

The ``denoise`` network: an encoder maps a corrupted render to a 32-d vector e = normalise(f(x~)); a
decoder reconstructs the clean render from e alone; loss = mean squared error to the clean render. The
corruption (``corrupt``) is another set than the first network's: strong Gaussian pixel noise, random
4x4 cut-outs filled with noise, per-image contrast changes and a quantisation to few grey levels, no
blur. Nothing in its objective names a scene attribute: whatever it encodes (colours, position, size,
shape) it encodes because the pixels need it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from . import world

EMBED_DIM = 32


class ShapesFeatureNet(nn.Module):
    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.GELU(),  # 16
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GELU(),  # 8
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GELU(),  # 4
            nn.Flatten(), nn.Linear(64 * 16, 128), nn.GELU(), nn.Linear(128, dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, 32, 32) in [0, 1] -> unit-norm embeddings (B, dim)."""
        return F.normalize(self.net(images * 2 - 1), dim=-1)


def scene_distance(s: world.SceneBatch) -> torch.Tensor:
    """Ground-truth distance d*(i, j) (B, B) of the module docstring."""
    n = float(world.IMAGE_SIZE)
    neq = lambda a: (a.view(-1, 1) != a.view(1, -1)).float()  # noqa: E731
    c = torch.stack([s.cx, s.cy], 1) / n
    d = 0.3 * neq(s.fg) + 0.3 * neq(s.shape) + 0.2 * neq(s.bg)
    d = d + 0.8 * torch.cdist(c, c) + 1.5 * (s.half.view(-1, 1) - s.half.view(1, -1)).abs() / n
    return d.clamp(max=1.0)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    blur = torch.rand(b, generator=g) < 0.5
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k.view(-1, 1) * k.view(1, -1)).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
        xb = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k2, groups=3)
        x = x.clone()
        x[blur] = xb
    x = x * (1 + 0.1 * (torch.rand(b, 3, 1, 1, generator=g) - 0.5)) + 0.05 * (torch.rand(b, 3, 1, 1, generator=g) - 0.5)
    x = x + torch.rand(b, 1, 1, 1, generator=g) * 0.08 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def corrupt(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The held-out network's input corruption (module docstring): noise, cut-outs, contrast, quantisation."""
    b, _, h, w = x.shape
    x = 0.5 + (x - 0.5) * (0.6 + 0.6 * torch.rand(b, 1, 1, 1, generator=g))  # contrast
    x = x + torch.rand(b, 1, 1, 1, generator=g) * 0.2 * torch.randn(x.shape, generator=g)
    for _ in range(2):  # two 4x4 cut-outs per image, filled with noise
        cy = torch.randint(0, h - 4, (b,), generator=g)
        cx = torch.randint(0, w - 4, (b,), generator=g)
        ys = (torch.arange(h).view(1, -1, 1) - cy.view(-1, 1, 1)).clamp(min=-1)
        xs = (torch.arange(w).view(1, 1, -1) - cx.view(-1, 1, 1)).clamp(min=-1)
        hole = ((ys >= 0) & (ys < 4) & (xs >= 0) & (xs < 4)).unsqueeze(1)
        x = torch.where(hole, torch.rand(x.shape, generator=g), x)
    levels = torch.where(torch.rand(b, 1, 1, 1, generator=g) < 0.3, 4.0, 255.0)
    x = torch.round(x.clamp(0, 1) * levels) / levels
    return x.clamp(0, 1)


class DenoisingAutoencoder(nn.Module):
    """The held-out network: encoder -> unit-norm bottleneck (the embedding) -> decoder (training only)."""

    def __init__(self, dim: int = EMBED_DIM):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 24, 4, stride=2, padding=1), nn.SiLU(),  # 16
            nn.Conv2d(24, 48, 4, stride=2, padding=1), nn.SiLU(),  # 8
            nn.Conv2d(48, 96, 4, stride=2, padding=1), nn.SiLU(),  # 4
            nn.Flatten(), nn.Linear(96 * 16, dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(dim, 96 * 16), nn.SiLU(), nn.Unflatten(1, (96, 4, 4)),
            nn.ConvTranspose2d(96, 48, 4, stride=2, padding=1), nn.SiLU(),  # 8
            nn.ConvTranspose2d(48, 24, 4, stride=2, padding=1), nn.SiLU(),  # 16
            nn.ConvTranspose2d(24, 3, 4, stride=2, padding=1), nn.Sigmoid(),  # 32
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, 32, 32) in [0, 1] -> unit-norm embeddings (B, dim)."""
        return F.normalize(self.encoder(images * 2 - 1), dim=-1)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self(images))


OBJECTIVES = {"scene_distance": ShapesFeatureNet, "denoise": DenoisingAutoencoder}
"""config.json's "objective" -> the network class (a config.json without it is the first network's)."""


def load_features(path: str) -> nn.Module:
    """The feature network of a folder (model.safetensors + config.json), in eval mode."""
    from safetensors.torch import load_file

    file = os.path.join(path, "model.safetensors")
    if not os.path.exists(file):
        raise FileNotFoundError(f"feature network {file!r} not found; train it with `python -m drift.worlds.shapes.features`")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    objective = cfg.get("objective", "scene_distance")
    if objective not in OBJECTIVES:
        raise ValueError(f"{path}/config.json: objective={objective!r}; must be one of {sorted(OBJECTIVES)}")
    net = OBJECTIVES[objective](cfg["dim"])
    net.load_state_dict({k: v.float() for k, v in load_file(file).items()})
    return net.eval()


@torch.no_grad()
def quality_report(net: ShapesFeatureNet, seed: int = 99) -> dict[str, float]:
    """Within-prompt vs across-prompt distances and the fit to the ground-truth distance."""
    prompts = world.all_prompts()
    g = torch.Generator().manual_seed(seed)
    chosen = [prompts[i] for i in torch.randint(0, len(prompts), (64,), generator=g).tolist() for _ in range(8)]
    scenes = world.sample_scenes(chosen, g)
    e = net(world.render(scenes))
    d = 1 - e @ e.T
    target = scene_distance(scenes)
    same = torch.tensor([[a == b for b in chosen] for a in chosen]) & ~torch.eye(len(chosen), dtype=torch.bool)
    diff = torch.tensor([[a != b for b in chosen] for a in chosen])
    off = ~torch.eye(len(chosen), dtype=torch.bool)
    corr = torch.corrcoef(torch.stack([d[off], target[off]]))[0, 1]
    return {
        "mean_distance_within_prompt": round(float(d[same].mean()), 4),
        "mean_distance_across_prompts": round(float(d[diff].mean()), 4),
        "pearson_r_vs_scene_distance": round(float(corr), 4),
        "mae_vs_scene_distance": round(float((d[off] - target[off]).abs().mean()), 4),
    }


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file

    from .pretrain import sha256_of

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="drift/worlds/shapes/assets/features")
    ap.add_argument("--objective", default="scene_distance", choices=sorted(OBJECTIVES))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--prompts-per-batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    net = OBJECTIVES[args.objective]()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    prompts = world.all_prompts()
    t0 = time.time()
    bar = tqdm(range(args.steps), desc=f"features ({args.objective})", mininterval=5)
    for step in bar:
        idx = torch.randint(0, len(prompts), (args.prompts_per_batch,), generator=g).tolist()
        chosen = [prompts[i] for i in idx for _ in range(4)]
        scenes = world.sample_scenes(chosen, g)
        clean = world.render(scenes)
        if args.objective == "denoise":
            loss = F.mse_loss(net.reconstruct(corrupt(clean, g)), clean)
        else:
            e = net(augment(clean, g))
            loss = F.smooth_l1_loss(1 - e @ e.T, scene_distance(scenes), beta=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    train_s = time.time() - t0
    os.makedirs(args.out, exist_ok=True)
    file = os.path.join(args.out, "model.safetensors")
    save_file({k: v.detach().half().contiguous() for k, v in net.state_dict().items()}, file)
    config = {"dim": EMBED_DIM} if args.objective == "scene_distance" else {"dim": EMBED_DIM, "objective": args.objective}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f)
    net = load_features(args.out)  # report on the weights as saved (fp16)
    what = {"scene_distance": "shapes-world diversity feature network: CNN -> unit 32-d embedding; distance = 1 - cos",
            "denoise": "shapes-world held-out (evaluation-only) feature network: denoising autoencoder, unit 32-d "
                       "bottleneck as the embedding; distance = 1 - cos"}[args.objective]
    objective = {"scene_distance": "smooth-L1 between 1 - cos(e_i, e_j) and the scene distance d*(i, j)",
                 "denoise": "MSE between decoder(normalise(encoder(corrupt(x)))) and the clean render x"}[args.objective]
    card = {
        "what": what,
        "recipe": {"command": "python -m drift.worlds.shapes.features " + " ".join(sys.argv[1:] if argv is None else argv), **vars(args),
                   "objective": objective},
        "params": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(train_s, 1),
        "final_loss": round(loss.item(), 5),
        "quality": quality_report(net),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "files": {n: {"bytes": os.path.getsize(os.path.join(args.out, n)), "sha256": sha256_of(os.path.join(args.out, n))}
                  for n in ("model.safetensors", "config.json")},
    }
    with open(os.path.join(args.out, "card.json"), "w") as f:
        json.dump(card, f, indent=1)
    print(json.dumps(card["quality"]))


if __name__ == "__main__":
    main()
