"""Images from a trained policy (a run directory's EMA weights, or an export folder).

    python -m drift.generate RUN_DIR|EXPORT_DIR --prompt "a red cat" [--prompt ...] --seeds 0,1,2 [--out DIR]
        [--steps N] [--cfg W] [--set sd3.device=cuda ...]

Each (prompt, seed) is one ODE sample (noise level 0) from the seed's own N(0, I) noise, with the run's
evaluation settings (eval.num_steps, sample.cfg, sample.shift) unless --steps / --cfg are given. Writes
<out>/<prompt index>_<seed>.png and <out>/generate.json (prompts, seeds, settings, source); prints the folder.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

from .config import ConfigError
from .export import load_policy
from .sampling import sample_trajectories


def seed_noise(latent_shape: tuple, seeds: list[int]) -> torch.Tensor:
    """(len(seeds), *latent_shape): one standard normal draw per seed from torch.Generator().manual_seed(seed)."""
    return torch.stack([torch.randn(*latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def generate(world, texts: list[str], noise: torch.Tensor, num_steps: int, cfg: float, shift: float,
             micro_batch: int = 0) -> torch.Tensor:
    """Images (len(texts), 3, H, W) in [0, 1]: the ODE from ``noise`` (one row per text) under the world's policy."""
    sigmas = world.sigma_schedule(num_steps, shift)
    cond, uncond = world.encode(texts), world.encode([""] * len(texts))
    return sample_trajectories(world, cond, uncond, noise, sigmas, 0.0, cfg, torch.Generator(), micro_batch=micro_batch).images


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m drift.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a run directory or an export folder (python -m drift.export)")
    ap.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    ap.add_argument("--seeds", default="0", help="comma-separated noise seeds (default 0)")
    ap.add_argument("--out", default=None, help="output folder (default SOURCE/generated)")
    ap.add_argument("--steps", type=int, default=None, help="ODE steps (default: the run's eval.num_steps)")
    ap.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the run's sample.cfg)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step of a run directory (default: the newest)")
    ap.add_argument("--set", action="append", default=[], help="a config override, e.g. sd3.device=cuda (repeatable)")
    a = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds={a.seeds!r}: must be comma-separated integers", file=sys.stderr)
        return 2
    if not seeds or (a.steps is not None and a.steps < 1) or (a.cfg is not None and a.cfg < 1):
        print("error: --seeds needs at least one seed, --steps >= 1, --cfg >= 1", file=sys.stderr)
        return 2
    try:
        cfg, world, info = load_policy(a.source, a.step, overrides=a.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    steps, w = a.steps or cfg.eval.num_steps, a.cfg or cfg.sample.cfg
    out = a.out or os.path.join(a.source, "generated")
    os.makedirs(out, exist_ok=True)
    texts = [p for p in a.prompt for _ in seeds]
    noise = seed_noise(world.latent_shape, seeds).repeat(len(a.prompt), *([1] * len(world.latent_shape)))
    images = generate(world, texts, noise, steps, w, cfg.sample.shift, cfg.sample.micro_batch)
    files = []
    for i, img in enumerate(images):
        name = f"{i // len(seeds):03d}_{seeds[i % len(seeds)]}.png"
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(np.ascontiguousarray(arr)).save(os.path.join(out, name))
        files.append(name)
    with open(os.path.join(out, "generate.json"), "w") as f:
        json.dump({"source": info["source"], "prompts": a.prompt, "seeds": seeds, "steps": steps, "cfg": w,
                   "shift": cfg.sample.shift, "files": files}, f, indent=1)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
