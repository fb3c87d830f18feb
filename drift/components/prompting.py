"""DRIFT component 2 (prompting): stochastic variations of the conditioning of each sample.

'embed': Gaussian noise on the text conditioning, scaled to the prompt's own embedding size:
    h'_i = h + s_t * rms(h) * eps_i,   p'_i = p + s_t * rms(p) * eps'_i,   eps ~ N(0, I)
with s_t = scale * schedule(t) (annealed to 0 by default: variation early, the plain prompt late).
'paraphrase': each sample is conditioned on a random paraphrase of its prompt (``world.paraphrase``: the
shapes world's synonyms and templates, the SD3 world's sd3.paraphrases file), with probability s_t; the rest keep
the original text.
'both': paraphrase, then embedding noise. The reward is always computed on the original prompt.
'cads': condition annealing within each trajectory (drift/components/cads.py), not a per-iteration variation.
"""

from __future__ import annotations

import random

import torch

from ..worlds.types import Cond

KINDS = ("none", "cads", "embed", "paraphrase", "both")


def embed_noise(cond: Cond, scale: float, generator: torch.Generator) -> Cond:
    """Add scale * rms * N(0, I) noise to token states and pooled embedding, per sample."""
    if scale == 0:
        return cond
    def noisy(x: torch.Tensor) -> torch.Tensor:
        rms = x.pow(2).mean(dim=tuple(range(1, x.ndim)), keepdim=True).sqrt()
        return x + scale * rms * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return Cond(noisy(cond.hidden), noisy(cond.pooled))


def paraphrase_texts(prompts: list, texts: list[str], paraphrase, prob: float, generator: torch.Generator) -> list[str]:
    """Each text replaced by paraphrase(prompt, rng) with probability ``prob`` (rng drawn from generator)."""
    if paraphrase is None:
        raise ValueError("prompt variation 'paraphrase' needs a world that offers paraphrases (world.paraphrase is None)")
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    rng = random.Random(seed)
    return [paraphrase(p, rng) if rng.random() < prob else t for p, t in zip(prompts, texts)]
