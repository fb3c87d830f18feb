"""The shapes world's task reward: the alignment axis.

    r = w_judge * J + w_size * area + w_center * centring

J is the judge's score: 'partial' = mean correctness over the attributes the prompt names (a free
attribute is not scored), 'all' = 1 iff every named attribute is right and an object exists.
area = object pixels / image pixels (0 with no object); centring = max(0, 1 - |c - (0.5, 0.5)| / 0.5).

Why a preference term: the judge alone is nearly flat where the base model already draws the right
colours, and it is indifferent to free attributes, position and size -- many settings score equally.
The size term plays the part of a PickScore-like aesthetic bias (people prefer big, clear subjects):
it can be satisfied by many different images, but pushes every prompt towards one mode (large,
hence central, objects). That is the collapse the suite studies; see docs/shapes_world.md.

Heads beside 'reward' (not part of it): 'judge', 'judge_all', 'size' (= area), 'center' (= centring),
'object' (1 iff the judge found an object), and the judged object position 'pos_x', 'pos_y' (centroid /
image side, in [0, 1]; 0.5 where no object was found -- read 'object' to tell). The geometry heads let a
method see judge-level position and size (the positive control baselines/oracle_spread.py).
"""

from __future__ import annotations

import torch

from . import world


def shapes_reward(images: torch.Tensor, prompts: list[world.Prompt], judge: str = "partial", w_judge: float = 1.0,
                  w_size: float = 2.0, w_center: float = 0.0) -> dict[str, torch.Tensor]:
    """Reward heads (B,) for images in [0, 1]; key 'reward' is the weighted total."""
    v = world.judge(images)
    c = world.correctness(prompts, v)
    named = torch.tensor([[p.fg is not None, p.shape is not None, p.bg is not None] for p in prompts], dtype=torch.float32)
    hits = torch.stack([c["fg"], c["shape"], c["bg"]], 1) * named
    partial = hits.sum(1) / named.sum(1)
    j = partial if judge == "partial" else c["all"]
    centre = torch.stack([v.cx, v.cy], 1) - 0.5
    centring = torch.nan_to_num((1 - centre.norm(dim=1) / 0.5).clamp(min=0), nan=0.0)
    total = w_judge * j + w_size * v.area + w_center * centring
    pos_x, pos_y = (torch.nan_to_num(t, nan=0.5) for t in (v.cx, v.cy))
    return {"reward": total, "judge": partial, "judge_all": c["all"], "size": v.area, "center": centring,
            "object": c["object"], "pos_x": pos_x, "pos_y": pos_y}
