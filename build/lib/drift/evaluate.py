"""Evaluation on held-out prompts with fixed noise (ODE): alignment and diversity.

alignment = mean task reward over every eval image;
diversity = mean over prompts of the mean pairwise feature distance (1 - cos) among that prompt's
            images (intra-prompt, as DRIFT and DiverseGRPO measure it);
plus the Vendi score per prompt, every reward head and the world's own metrics (for the shapes world:
judge-level position/size spread, free-attribute entropy, no-object rate, total variation).
"""

from __future__ import annotations

import torch

from .diversity import mean_pairwise_distance, vendi_score
from .sampling import sample_trajectories

EVAL_NOISE_SEED = 2026  # the same eval noise for every run, method and seed


def eval_noise(world, num_prompts: int, seeds: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(EVAL_NOISE_SEED)
    return torch.randn(num_prompts, seeds, *world.latent_shape, generator=g)


@torch.no_grad()
def evaluate(world, prompts: list, noise: torch.Tensor, num_steps: int, cfg: float, shift: float,
             batch: int = 256) -> tuple[dict[str, float], torch.Tensor]:
    """Returns (metrics with keys 'eval/...', images (P, S, 3, H, W))."""
    p, s = noise.shape[:2]
    texts = [world.prompt_text(pr) for pr in prompts for _ in range(s)]
    flat_noise = noise.flatten(0, 1)
    sigmas = world.sigma_schedule(num_steps, shift)
    g = torch.Generator().manual_seed(0)  # unused at noise level 0
    images = []
    for i in range(0, len(texts), batch):
        cond = world.encode(texts[i : i + batch])
        uncond = world.encode([""] * len(cond))
        tr = sample_trajectories(world, cond, uncond, flat_noise[i : i + batch], sigmas, 0.0, cfg, g)
        images.append(tr.images)
    images = torch.cat(images)
    prompts_rep = [pr for pr in prompts for _ in range(s)]
    heads = world.reward(images, prompts_rep)
    feats = world.features.embed(images).view(p, s, -1)
    metrics = {
        "eval/alignment": float(heads["reward"].mean()),
        "eval/diversity": float(mean_pairwise_distance(feats).mean()),
        "eval/diversity/vendi": float(vendi_score(feats).mean()),
    }
    metrics.update({f"eval/reward/{k}": float(v.float().mean()) for k, v in heads.items() if k != "reward"})
    images = images.view(p, s, *images.shape[1:])
    metrics.update({f"eval/{k}": v for k, v in world.eval_extras(images, prompts).items()})
    return metrics, images
