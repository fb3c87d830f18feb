"""What the evaluation's measures say about a shapes-world model, with the eval sampler (prints figures).

    python benchmarks/measures.py [--model drift/worlds/shapes/assets/base] [--num-prompts 29] [--seeds 8]
                                  [--out benchmarks/results/measures_base.json]

1. Per-attribute accuracy of the judge on the model's eval images (held-out prompts, the run's fixed eval
   noise, ODE with eval.num_steps and sample.cfg): for each attribute, over the images whose prompt names it
   (a free attribute is not scored), and 'all' (every named attribute right and an object), overall and
   per prompt kind; and the judged shape (with the mean bounding-box fill ratio) for each shape asked for.
2. Does the held-out feature net measure diversity? Within each prompt, over every pair of images that both
   hold an object: Pearson r between the pair's feature distance (1 - cos) and its judge-level geometry
   distance ||(dx, dy, d sqrt(area))||, for both feature nets, over all such pairs and over the pairs in which
   the judge reads the same colour, shape and background (only geometry differs); and across prompts, Pearson r between the
   per-prompt diversities of the two nets and the judge-level spreads (position_std, size_std).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drift.config import make_config  # noqa: E402
from drift.diversity import pairwise_distance  # noqa: E402
from drift.evaluate import eval_noise, evaluate  # noqa: E402
from drift.worlds import make_world  # noqa: E402
from drift.worlds.shapes import world as shapes  # noqa: E402


def pearson(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    ok = torch.isfinite(a) & torch.isfinite(b)
    return round(float(torch.corrcoef(torch.stack([a[ok], b[ok]]))[0, 1]), 4)


def attribute_accuracy(prompts: list, images: torch.Tensor) -> dict:
    """{kind or 'overall': {attribute: accuracy over the images whose prompt names it, 'all': ..., 'n': images}}."""
    p, s = images.shape[:2]
    rep = [pr for pr in prompts for _ in range(s)]
    c = shapes.correctness(rep, shapes.judge(images.flatten(0, 1)))
    out = {}
    for kind in ("overall", "full", "free_fg", "free_shape", "free_bg"):
        rows = torch.tensor([kind == "overall" or pr.kind == kind for pr in rep])
        if not rows.any():
            continue
        acc = {}
        for attr in ("fg", "shape", "bg"):
            named = rows & torch.tensor([getattr(pr, attr) is not None for pr in rep])
            if named.any():
                acc[attr] = round(float(c[attr][named].mean()), 4)
        acc["object"] = round(float(c["object"][rows].mean()), 4)
        acc["all"] = round(float(c["all"][rows].mean()), 4)
        acc["n"] = int(rows.sum())
        out[kind] = acc
    return out


def shape_confusion(prompts: list, images: torch.Tensor) -> dict:
    """For the images whose prompt names a shape: {wanted shape: {judged shape or 'none': count, 'fill_mean': ...}}."""
    p, s = images.shape[:2]
    rep = [pr for pr in prompts for _ in range(s)]
    v = shapes.judge(images.flatten(0, 1))
    out = {}
    for want in shapes.SHAPES:
        rows = torch.tensor([pr.shape == want for pr in rep])
        if not rows.any():
            continue
        got = v.shape[rows]
        row = {(shapes.SHAPES[g] if g >= 0 else "none"): int((got == g).sum()) for g in (-1, 0, 1, 2)}
        fill = v.fill[rows][got >= 0]
        row["fill_mean"] = round(float(fill.mean()), 3) if len(fill) else float("nan")
        out[want] = row
    return out


def pair_correlations(world, images: torch.Tensor) -> dict:
    """Within-prompt pairs (both with an object): r(feature distance, judge-level geometry distance)."""
    p, s = images.shape[:2]
    flat = images.flatten(0, 1)
    v = shapes.judge(flat)
    z = torch.stack([v.cx, v.cy, v.area.sqrt()], 1).view(p, s, 3)
    has = v.has_object.view(p, s)
    iu = torch.triu_indices(s, s, 1)
    geo = torch.cdist(z.double(), z.double())[:, iu[0], iu[1]]
    ok = (has.unsqueeze(-1) & has.unsqueeze(-2))[:, iu[0], iu[1]]
    same = ok.clone()  # ... and the judge reads the same colour, shape and background in both: only geometry differs
    for t in (v.fg, v.shape, v.bg):
        t = t.view(p, s)
        same &= (t.unsqueeze(-1) == t.unsqueeze(-2))[:, iu[0], iu[1]]
    out = {"pairs": int(ok.sum()), "pairs_same_attributes": int(same.sum())}
    for name, net in (("features", world.features), ("heldout", world.heldout_features)):
        d = pairwise_distance(net.embed(flat).view(p, s, -1))[:, iu[0], iu[1]]
        out[f"r_{name}_vs_geometry"] = pearson(d[ok], geo[ok])
        out[f"r_{name}_vs_geometry_same_attributes"] = pearson(d[same], geo[same])
    return out


def sampler_check(world, seeds: int) -> int:
    ps = [p for p in shapes.prompt_split("eval") if p.shape == "square"]
    noise = eval_noise(world, len(ps), seeds)
    for steps, cfg in ((20, 3.0), (50, 3.0), (20, 6.0)):
        _, images = evaluate(world, ps, noise, steps, cfg, 0.0)
        v = shapes.judge(images.flatten(0, 1))
        ok = v.shape >= 0
        print(json.dumps({"ode_steps": steps, "cfg": cfg, "images": len(v.shape), "judged_square": int((v.shape == 1).sum()),
                          "judged_circle": int((v.shape == 0).sum()), "fill_mean": round(float(v.fill[ok].mean()), 3)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="base model folder (default: the committed one)")
    ap.add_argument("--num-prompts", type=int, default=29)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--out", default="", help="also write the figures to this JSON file")
    ap.add_argument("--sampler-check", action="store_true", help="only: the judged shape of the eval prompts that ask "
                    "for a square, with 20 and 50 ODE steps and CFG 3 and 6 (is a wrong shape the model's or the sampler's?)")
    a = ap.parse_args(argv)
    cfg = make_config([f"model.path={a.model}"] if a.model else [])
    world = make_world(cfg)
    if a.sampler_check:
        return sampler_check(world, a.seeds)
    prompts = world.eval_prompts(a.num_prompts)
    t0, per = time.time(), {}
    m, images = evaluate(world, prompts, eval_noise(world, len(prompts), a.seeds), cfg.eval.num_steps, cfg.sample.cfg,
                         cfg.sample.shift, micro_batch=cfg.sample.micro_batch, per_prompt=per)
    res = {
        "model": cfg.model.path, "prompts": len(prompts), "seeds": a.seeds, "eval_steps": cfg.eval.num_steps,
        "cfg": cfg.sample.cfg, "sample_seconds": round(time.time() - t0, 1),
        "accuracy": attribute_accuracy(prompts, images),
        "shape_confusion": shape_confusion(prompts, images),
        "eval": {k: round(v, 4) for k, v in m.items()},
        "pairs": pair_correlations(world, images),
        "across_prompts": {
            "r_features_vs_heldout": pearson(per["eval/diversity"], per["eval/diversity/heldout"]),
            "r_heldout_vs_position_std": pearson(per["eval/diversity/heldout"], per["eval/diversity/position_std"]),
            "r_heldout_vs_size_std": pearson(per["eval/diversity/heldout"], per["eval/diversity/size_std"]),
            "r_features_vs_position_std": pearson(per["eval/diversity"], per["eval/diversity/position_std"]),
            "r_features_vs_size_std": pearson(per["eval/diversity"], per["eval/diversity/size_std"]),
        },
    }
    print(json.dumps(res, indent=1))
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
