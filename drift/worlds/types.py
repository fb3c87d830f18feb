"""The types a world hands to the engine and the methods: text conditioning (``Cond``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Cond:
    """Text conditioning: token states (B, L, D) and pooled embedding (B, P)."""

    hidden: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def index(self, idx) -> "Cond":
        return Cond(self.hidden[idx], self.pooled[idx])

    def repeat_interleave(self, k: int) -> "Cond":
        return Cond(self.hidden.repeat_interleave(k, 0), self.pooled.repeat_interleave(k, 0))

    @staticmethod
    def cat(items: list["Cond"]) -> "Cond":
        return Cond(torch.cat([c.hidden for c in items]), torch.cat([c.pooled for c in items]))
