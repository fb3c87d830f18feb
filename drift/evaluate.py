"""Evaluation on held-out prompts with fixed noise (ODE): alignment and diversity.

alignment = mean task reward over every eval image;
diversity = mean over prompts of the mean pairwise feature distance (1 - cos) among that prompt's
            images (intra-prompt, as DRIFT and DiverseGRPO measure it), with the world's feature net (the one
            the diversity methods' bonuses use);
diversity/heldout = the same with the world's held-out feature net (another seed and objective, which no
            method sees: the primary diversity measure for judging methods); absent where the world has none;
plus the Vendi score per prompt, every reward head and the world's own metrics (for the shapes world:
judge-level position/size spread, free-attribute entropy, no-object rate, total variation).

Every one of these scalars is a mean over prompts; ``eval_metrics`` also returns its per-prompt values
(one list per key, in the prompts' order), which drift.train writes to RunDir.eval_per_prompt(step).
"""

from __future__ import annotations

import torch

from .components.cads import CADS_DEFAULTS, anneal_cond, draw_noise_like
from .diversity import mean_pairwise_distance, vendi_score
from .sampling import sample_trajectories

EVAL_NOISE_SEEDS = {"test": 2026, "validation": 4242}
"""The fixed evaluation noise per eval.split: the same for every run, method and seed; tuning (validation)
never sees the judging (test) noise."""
EVAL_NOISE_SEED = EVAL_NOISE_SEEDS["test"]
EVAL_CADS_SEED = 2027  # eval.conditioning='cads': the same conditioning noise for every run, method and seed
CONDITIONINGS = ("clean", "cads")


def eval_noise(world, num_prompts: int, seeds: int, split: str = "test") -> torch.Tensor:
    """The initial noise (num_prompts, seeds, *latent_shape) of the evaluation on ``split`` (EVAL_NOISE_SEEDS)."""
    g = torch.Generator().manual_seed(EVAL_NOISE_SEEDS[split])
    return torch.randn(num_prompts, seeds, *world.latent_shape, generator=g)


@torch.no_grad()
def evaluate(world, prompts: list, noise: torch.Tensor, num_steps: int, cfg: float, shift: float,
             batch: int = 256, micro_batch: int = 0, conditioning: str = "clean",
             per_prompt: dict | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """Returns (metrics with keys 'eval/...', images (P, S, 3, H, W)). ``micro_batch``: rows per transformer
    call (sample.micro_batch; 0 = each batch of ``batch`` in one call). ``conditioning`` (eval.conditioning):
    'clean', or 'cads' = the conditional branch annealed per step (drift.components.cads.anneal_cond with CADS's
    defaults) with one noise per (prompt, seed) from a fixed generator (cads_eval_noise), whatever the method.
    ``per_prompt``: a dict to fill with every metric's per-prompt values ({key: [P floats]}, ``eval_metrics``),
    or None."""
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning={conditioning!r}: must be one of {CONDITIONINGS}")
    p, s = noise.shape[:2]
    texts = [world.prompt_text(pr) for pr in prompts for _ in range(s)]
    flat_noise = noise.flatten(0, 1)
    sigmas = world.sigma_schedule(num_steps, shift)
    g = torch.Generator().manual_seed(0)  # unused at noise level 0
    cads_noise = cads_eval_noise(world.encode(texts[:1]), len(texts)) if conditioning == "cads" else None
    images = []
    for i in range(0, len(texts), batch):
        cond = world.encode(texts[i : i + batch])
        uncond = world.encode([""] * len(cond))
        step_cond = None
        if cads_noise is not None:
            n_i = cads_noise.index(slice(i, i + len(cond)))
            step_cond = lambda c, j, T, n_i=n_i: anneal_cond(c, n_i, j, T, **CADS_DEFAULTS)  # noqa: E731
        tr = sample_trajectories(world, cond, uncond, flat_noise[i : i + batch], sigmas, 0.0, cfg, g, micro_batch=micro_batch,
                                 step_cond=step_cond)
        images.append(tr.images)
    images = torch.cat(images)
    images = images.view(p, s, *images.shape[1:])
    metrics, per = eval_metrics(world, images, prompts)
    if per_prompt is not None:
        per_prompt.update(per)
    return metrics, images


def eval_metrics(world, images: torch.Tensor, prompts: list) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(scalars, per-prompt values) of the module docstring's metrics for images (P, S, 3, H, W) of P prompts.

    Scalars: 'eval/alignment' = mean reward over the P*S images; 'eval/diversity[/heldout]' = mean over prompts
    of the mean pairwise 1 - cos distance; 'eval/diversity/vendi' = mean over prompts of the Vendi score;
    'eval/reward/<head>' = mean of every other reward head; 'eval/<key>' = the world's eval_extras.
    Per prompt: the same keys, each a list of P values (the mean over that prompt's S images, or that prompt's
    diversity / Vendi / world metric)."""
    p, s = images.shape[:2]
    flat = images.flatten(0, 1)
    heads = world.reward(flat, [pr for pr in prompts for _ in range(s)])
    feats = world.features.embed(flat).view(p, s, -1)
    div, vendi = mean_pairwise_distance(feats), vendi_score(feats)
    metrics = {
        "eval/alignment": float(heads["reward"].mean()),
        "eval/diversity": float(div.mean()),
        "eval/diversity/vendi": float(vendi.mean()),
    }
    per = {"eval/alignment": heads["reward"].float().view(p, s).mean(1), "eval/diversity": div, "eval/diversity/vendi": vendi}
    if world.heldout_features is not None:
        heldout = mean_pairwise_distance(world.heldout_features.embed(flat).view(p, s, -1))
        metrics["eval/diversity/heldout"] = float(heldout.mean())
        per["eval/diversity/heldout"] = heldout
    for k, v in heads.items():
        if k != "reward":
            metrics[f"eval/reward/{k}"] = float(v.float().mean())
            per[f"eval/reward/{k}"] = v.float().view(p, s).mean(1)
    metrics.update({f"eval/{k}": v for k, v in world.eval_extras(images, prompts).items()})
    per_prompt = {k: [float(x) for x in v.tolist()] for k, v in per.items()}
    per_prompt.update({f"eval/{k}": [float(x) for x in v] for k, v in world.eval_extras_per_prompt(images, prompts).items()})
    return metrics, per_prompt


def cads_eval_noise(example, rows: int):
    """The evaluation's CADS noise: one N(0, I) draw per image row, shaped like the conditioning ``example``
    (one row), from the fixed generator EVAL_CADS_SEED; drawn at once, so it does not depend on the batching."""
    from .worlds.types import Cond

    g = torch.Generator().manual_seed(EVAL_CADS_SEED)
    return draw_noise_like(Cond(example.hidden.expand(rows, *example.hidden.shape[1:]),
                                example.pooled.expand(rows, *example.pooled.shape[1:])), g)


def prompts_from_file(world, path: str) -> list:
    """The world's prompts for the texts of a prompt file (drift/prompts.py formats). The shapes world needs its
    canonical prompt texts (its reward judges the named attributes); an unknown text is refused by line."""
    from .config import ConfigError
    from .prompts import read_prompt_file

    texts = [e.text if hasattr(e, "text") else str(e) for e in read_prompt_file(path)]
    if world.name != "shapes":
        return texts
    from .worlds.shapes import world as shapes

    known = {str(p): p for p in shapes.all_prompts()}
    bad = [t for t in texts if t not in known]
    if bad:
        raise ConfigError(f"--prompts={path!r}: {len(bad)} text(s) are not shapes-world prompts, e.g. {bad[0]!r} "
                          f"(the shapes world scores its canonical prompts, e.g. {next(iter(known))!r})")
    return [known[t] for t in texts]


def main(argv: list[str] | None = None) -> int:
    """python -m drift.evaluate RUN_DIR|EXPORT_DIR [--prompts FILE] [--num-prompts N] [--seeds S] [--steps N]
    [--out DIR] [--set key=value ...]: the suite's evaluation (every reward head = alignment, intra-prompt
    diversity, Vendi, the world's metrics) of a trained policy on the run's eval prompts or a prompt file, with the
    run's fixed evaluation noise; writes <out>/eval.json and a sample grid, prints the metrics."""
    import argparse
    import json
    import os
    import sys

    from .config import ConfigError
    from .export import load_policy
    from .viz import save_grid

    ap = argparse.ArgumentParser(prog="python -m drift.evaluate", description=main.__doc__)
    ap.add_argument("source", help="a run directory or an export folder (python -m drift.export)")
    ap.add_argument("--prompts", default=None, help="prompt file (default: the run's eval prompts)")
    ap.add_argument("--num-prompts", type=int, default=None, help="first N prompts (default: eval.num_prompts)")
    ap.add_argument("--seeds", type=int, default=None, help="images per prompt (default: eval.seeds)")
    ap.add_argument("--steps", type=int, default=None, help="ODE steps (default: eval.num_steps)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step of a run directory (default: the newest)")
    ap.add_argument("--out", default=None, help="output folder (default SOURCE/evaluation)")
    ap.add_argument("--set", action="append", default=[], help="a config override, e.g. sd3.device=cuda")
    a = ap.parse_args(argv)
    try:
        for n in ("num_prompts", "seeds", "steps"):
            v = getattr(a, n)
            if v is not None and v < (2 if n == "seeds" else 1):
                raise ConfigError(f"--{n.replace('_', '-')}={v}: must be >= {2 if n == 'seeds' else 1}")
        cfg, world, info = load_policy(a.source, a.step, overrides=a.set)
        n = a.num_prompts or cfg.eval.num_prompts
        prompts = prompts_from_file(world, a.prompts)[:n] if a.prompts else world.eval_prompts(n, cfg.eval.split)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds, steps = a.seeds or cfg.eval.seeds, a.steps or cfg.eval.num_steps
    m, imgs = evaluate(world, prompts, eval_noise(world, len(prompts), seeds, cfg.eval.split), steps, cfg.sample.cfg,
                       cfg.sample.shift, micro_batch=cfg.sample.micro_batch, conditioning=cfg.eval.conditioning)
    out = a.out or os.path.join(a.source, "evaluation")
    os.makedirs(out, exist_ok=True)
    rows = min(len(prompts), cfg.eval.grid_prompts)
    save_grid(imgs[:rows], os.path.join(out, "grid.png"), [world.prompt_text(p) for p in prompts[:rows]],
              f"{info['source']}: {len(prompts)} prompts x {seeds} seeds")
    res = {"source": info["source"], "prompts": a.prompts or "the run's eval prompts", "num_prompts": len(prompts),
           "seeds": seeds, "steps": steps, "metrics": m}
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
