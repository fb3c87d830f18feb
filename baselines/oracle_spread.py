"""The positive control: Flow-GRPO plus an oracle bonus on the within-group spread of judge-level geometry.

Not a published method: an arm built so that it has more diversity at equal alignment by construction,
for the benchmark to prove it can resolve a diversity gain that is known to exist (docs/methods.md,
oracle_spread). It reads the shapes world's judge (the reward heads 'pos_x', 'pos_y', 'size', 'object',
'judge_all'), not a feature network, and it is scored by ``eval/diversity/heldout`` -- a measure it is not
rewarded on.

Differs from Flow-GRPO by: 1. reward shaping. Per group, for each kept sample i with an object,
z_i = (pos_x_i, pos_y_i, w_size * sqrt(size_i)) (judged centroid in [0, 1] and the object's side relative
to the image's) and

    b_i = 1/(n - 1) * sum_{j != i, object_j} ||z_i - z_j||_2        (n = the group's samples with an object)
    r'_i = r_i + alpha * b_i

b_i = 0 for a sample without an object or in a group with fewer than two; with ``correct_only`` the bonus is
paid only to samples whose every named attribute is right (b_i * judge_all_i). The group-relative
advantages are then computed from r' as in Flow-GRPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from drift.contract import Hooks, MethodSpec, ShapeInput
from drift.errors import check

GEOMETRY_HEADS = ("pos_x", "pos_y", "size", "object", "judge_all")
"""The reward heads the bonus reads (the shapes world's judge; drift/worlds/shapes/reward.py)."""


@dataclass
class Options:
    alpha: float = 1.0
    """Weight of the spread bonus b_i (the knob swept for this arm's front)."""
    size_weight: float = 1.0
    """w_size: weight of the size coordinate sqrt(area) against the two position coordinates."""
    correct_only: bool = False
    """Pay the bonus only to samples the judge finds entirely right (judge_all = 1)."""

    def __post_init__(self):
        check(self.alpha >= 0, "oracle_spread.alpha", self.alpha, "must be >= 0")
        check(self.size_weight >= 0, "oracle_spread.size_weight", self.size_weight, "must be >= 0")


def geometry_spread(pos_x: torch.Tensor, pos_y: torch.Tensor, size: torch.Tensor, has_object: torch.Tensor,
                    size_weight: float = 1.0) -> torch.Tensor:
    """b_i = 1/(n - 1) sum_{j != i, object_j} ||z_i - z_j||, z = (pos_x, pos_y, size_weight * sqrt(size)).

    All inputs (P, G); ``has_object`` in {0, 1}. Returns (P, G), 0 where object_i = 0 or n < 2."""
    z = torch.stack([pos_x.float(), pos_y.float(), size_weight * size.float().clamp(min=0).sqrt()], -1)
    obj = has_object.float() > 0.5
    d = torch.cdist(z.double(), z.double()).float()  # (P, G, G), zero diagonal
    pair = obj.unsqueeze(-1) & obj.unsqueeze(-2)
    n = obj.sum(-1, keepdim=True).float()
    b = (d * pair).sum(-1) / (n - 1).clamp(min=1)
    return torch.where(obj & (n >= 2), b, torch.zeros_like(b))


def check_heads(heads: dict | None) -> dict:
    missing = [h for h in GEOMETRY_HEADS if heads is None or h not in heads]
    if missing:
        raise ValueError(f"method=oracle_spread: the world's reward heads lack {missing} (it needs the judge-level "
                         f"geometry heads {list(GEOMETRY_HEADS)}, which only the shapes world has)")
    return heads


def build(o: Options) -> Hooks:
    def shape(inp: ShapeInput):
        h = check_heads(inp.heads)
        b = geometry_spread(h["pos_x"], h["pos_y"], h["size"], h["object"], o.size_weight)
        if o.correct_only:
            b = b * h["judge_all"].float()
        return inp.rewards + o.alpha * b, {"oracle/spread_mean": float(b.mean()),
                                           "oracle/bonus_mean": float(o.alpha * b.mean())}

    return Hooks(shape_rewards=shape)


def validate(cfg) -> None:
    check(cfg.model.world == "shapes", "model.world", cfg.model.world,
          "method=oracle_spread needs judge-level position and size, which only the 'shapes' world's reward heads have")


SPEC = MethodSpec(name="oracle_spread", options_cls=Options, build=build, validate_fn=validate,
                  summary="positive control: Flow-GRPO + a bonus on the judge-level spread of position and size")
