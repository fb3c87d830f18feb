"""Coefficient schedules over training: a factor in [0, 1] as a function of the iteration."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def schedule_factor(kind: str, iteration: int, total: int) -> float:
    """'constant' -> 1; 'linear' -> 1 - q; 'cosine' -> (1 + cos(pi q)) / 2, with q = iteration / total."""
    q = min(max(iteration / max(total, 1), 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return 1.0 - q
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * q))
    raise ValueError(f"schedule={kind!r}: must be one of {SCHEDULES}")
