"""Pretrain the shapes world's base model from scratch (rectified flow, pixel space).

    python -m drift.worlds.shapes.pretrain --out drift/worlds/shapes/assets/base --steps 9000

Recipe: random prompts of every kind (half of them paraphrased), procedurally rendered targets,
x_t = (1 - t) x0 + t noise with logit-normal t, loss = ||v_theta - (noise - x0)||^2, 10 % caption
dropout (the empty prompt is the CFG null), AdamW with warm-up and cosine decay, EMA of weights.
The EMA weights are saved (fp16 safetensors via ``save_pretrained``) with a JSON card that records
the recipe, seeds, wall time, the judge's accuracy on the model's own samples and file hashes.
Deterministic given --seed (on CPU, same torch build).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import sys
import time

import torch
from tqdm import tqdm

from . import world
from .model import build_model, save_text_encoder


from ...checkpoint import sha256_file as sha256_of  # noqa: E402  (one implementation, re-exported)


@torch.no_grad()
def sample_images(tokenizer, text, transformer, prompts: list[str], seed: int, steps: int = 20,
                  cfg: float = 3.0, shift: float = 1.0, batch: int = 128) -> torch.Tensor:
    """ODE samples in [0, 1] for the given prompt texts (used for the card's quality figures)."""
    from ...sde import ode_step, sigma_schedule

    sigmas = sigma_schedule(steps, shift)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        n = len(chunk)
        h, p = text(tokenizer(chunk + [""] * n))
        x = torch.randn(n, 3, world.IMAGE_SIZE, world.IMAGE_SIZE, generator=g)
        for j in range(steps):
            s = sigmas[j].item()
            t = torch.full((2 * n,), 1000 * s)
            v = transformer(torch.cat([x, x]), h, p, t, return_dict=False)[0]
            vc, vu = v[:n], v[n:]
            x = ode_step(vu + cfg * (vc - vu), x, s, sigmas[j + 1].item())
        out.append(((x + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def judge_accuracy(prompts: list[world.Prompt], images: torch.Tensor) -> dict[str, float]:
    c = world.correctness(prompts, world.judge(images))
    return {k: round(float(v.mean()), 4) for k, v in c.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="drift/worlds/shapes/assets/base", help="output folder")
    ap.add_argument("--steps", type=int, default=9000, help="optimiser steps")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--snapshot-every", type=int, default=1000, help="also write the EMA model every N steps")
    ap.add_argument("--eval-samples", type=int, default=512)
    ap.add_argument("--init", default="", help="start from this model folder's weights (a continuation run, to "
                    "measure what longer pretraining buys; the optimiser state starts fresh) instead of from scratch")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tokenizer, text, transformer = build_model(args.seed)
    if args.init:
        from .model import load_pretrained

        _, text_init, tr_init = load_pretrained(args.init)
        text.load_state_dict({k: v.float() for k, v in text_init.state_dict().items()})
        transformer.load_state_dict({k: v.float() for k, v in tr_init.state_dict().items()})
    params = list(text.parameters()) + list(transformer.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ema_text, ema_tr = copy.deepcopy(text).eval(), copy.deepcopy(transformer).eval()
    ema_params = list(ema_text.parameters()) + list(ema_tr.parameters())
    prompts = world.all_prompts()
    rng = random.Random(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        q = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * q)))

    def save(folder: str) -> None:
        half = copy.deepcopy(ema_tr).half()  # a copy: rounding the live EMA would change training
        half.save_pretrained(os.path.join(folder, "transformer"), safe_serialization=True)
        save_text_encoder(os.path.join(folder, "text_encoder"), tokenizer, ema_text)

    t0 = time.time()
    losses = []
    bar = tqdm(range(args.steps), desc="pretrain", mininterval=5)
    for step in bar:
        chosen = [prompts[rng.randrange(len(prompts))] for _ in range(args.batch)]
        texts = [p.paraphrase(rng) if rng.random() < 0.5 else str(p) for p in chosen]
        texts = ["" if rng.random() < 0.1 else t for t in texts]
        x0 = world.render(world.sample_scenes(chosen, g)) * 2 - 1
        noise = torch.randn(x0.shape, generator=g)
        t = torch.sigmoid(torch.randn(args.batch, generator=g))
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        h, p = text(tokenizer(texts))
        v = transformer(xt, h, p, 1000 * t, return_dict=False)[0]
        loss = ((v - (noise - x0)) ** 2).mean()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema_params, params):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if args.snapshot_every and (step + 1) % args.snapshot_every == 0 and step + 1 < args.steps:
            save(os.path.join(args.out + "_snapshots", f"step{step + 1}"))
    train_s = time.time() - t0

    save(args.out)
    # Quality on the model's own samples: every prompt, fixed seeds.
    eval_prompts = [prompts[i % len(prompts)] for i in range(args.eval_samples)]
    ts = time.time()
    imgs = sample_images(tokenizer, ema_text, ema_tr, [str(p) for p in eval_prompts], seed=1234)
    sample_s = time.time() - ts
    acc = judge_accuracy(eval_prompts, imgs)
    files = {}
    for root, _, names in os.walk(args.out):
        for n in sorted(names):
            if n != "card.json":
                pth = os.path.join(root, n)
                files[os.path.relpath(pth, args.out)] = {"bytes": os.path.getsize(pth), "sha256": sha256_of(pth)}
    card = {
        "what": "shapes-world base model: word-level text encoder + SD3Transformer2DModel in pixel space",
        "recipe": {"command": "python -m drift.worlds.shapes.pretrain " + " ".join(sys.argv[1:] if argv is None else argv), **vars(args),
                   "objective": "rectified flow, v = noise - x0, logit-normal t, 10% caption dropout",
                   "paraphrase_prob": 0.5, "saved": "EMA weights, fp16"},
        "params": {"transformer": sum(p.numel() for p in transformer.parameters()),
                   "text_encoder": sum(p.numel() for p in text.parameters())},
        "train_seconds": round(train_s, 1),
        "final_loss_mean_last_200": round(sum(losses[-200:]) / len(losses[-200:]), 5),
        "quality": {"sampler": "ODE, 20 steps, CFG 3, shift 1", "n_samples": len(eval_prompts),
                    "judge_accuracy": acc, "sample_seconds": round(sample_s, 2)},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "files": files,
    }
    with open(os.path.join(args.out, "card.json"), "w") as f:
        json.dump(card, f, indent=1)
    print(json.dumps({"judge_accuracy": acc, "train_seconds": card["train_seconds"]}))


if __name__ == "__main__":
    main()
