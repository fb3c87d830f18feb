"""Diversity measures shared by every world: feature-space distances, per-sample group diversity and
the Vendi score. A feature network maps images (B, 3, H, W) in [0, 1] to unit-norm embeddings (B, D);
distance = 1 - cos (as DreamSim)."""

from __future__ import annotations

from typing import Protocol

import torch


class FeatureNet(Protocol):
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> unit-norm embeddings (B, D)."""


def pairwise_distance(emb: torch.Tensor) -> torch.Tensor:
    """1 - cos between unit-norm embeddings: (..., N, D) -> (..., N, N)."""
    return (1 - emb @ emb.transpose(-1, -2)).clamp(min=0)


def per_sample_diversity(emb: torch.Tensor) -> torch.Tensor:
    """d_i = 1/(G-1) sum_{j != i} dist(e_i, e_j) within each group: (P, G, D) -> (P, G) (DIVER's form)."""
    g = emb.shape[-2]
    if g < 2:
        raise ValueError(f"per_sample_diversity needs groups of >= 2, got {g}")
    return pairwise_distance(emb).sum(-1) / (g - 1)


def mean_pairwise_distance(emb: torch.Tensor) -> torch.Tensor:
    """Mean over i != j of dist(e_i, e_j) per group: (P, G, D) -> (P,)."""
    return per_sample_diversity(emb).mean(-1)


def vendi_score(emb: torch.Tensor) -> torch.Tensor:
    """Vendi score exp(-sum_i l_i log l_i), l = eigenvalues of K / n, K_ij = cos(e_i, e_j) (Friedman & Dieng 2022).

    (P, G, D) -> (P,). Ranges from 1 (all identical) to G (all orthogonal).
    """
    k = emb.double() @ emb.double().transpose(-1, -2)
    n = emb.shape[-2]
    lam = torch.linalg.eigvalsh(k / n).clamp(min=0)
    ent = -(torch.where(lam > 0, lam * torch.log(lam), torch.zeros_like(lam))).sum(-1)
    return torch.exp(ent).float()
