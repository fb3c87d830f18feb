"""DRIFT component 1 (sampling): keep a reward-concentrated subset of each oversampled group.

Each rule maps rewards (P, K) of K = oversample * G candidates to indices (P, G) of the kept ones.
Non-finite rewards count as the worst outliers and are dropped first. "High" / "low" outliers are the
dropped candidates above / below the kept subset's reward range.
"""

from __future__ import annotations

import torch

RULES = ("densest", "trim", "zband")


def _finite_sorted(r: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Order of one group's candidates by reward, non-finite last; and the count of finite ones."""
    ok = torch.isfinite(r)
    key = torch.where(ok, r, torch.full_like(r, float("inf")))
    return torch.sort(key, stable=True).indices, int(ok.sum())


def _windowed(r: torch.Tensor, g: int, start) -> torch.Tensor:
    """Per group: sort (non-finite last); keep the G consecutive sorted candidates beginning at
    ``start(sorted_finite_rewards, n_finite, g)``; with <= G finite rewards keep the G best-ranked."""
    out = []
    for row in r:
        order, n = _finite_sorted(row)
        i = 0 if n <= g else start(row[order[:n]], n, g)
        out.append(order[i : i + g])
    return torch.stack(out)


def _densest_start(s: torch.Tensor, n: int, g: int) -> int:
    widths = s[g - 1 :] - s[: n - g + 1]
    centre = (n - g) / 2
    return min(range(len(widths)), key=lambda i: (round(float(widths[i]), 12), abs(i - centre)))


def select_densest(r: torch.Tensor, g: int) -> torch.Tensor:
    """Densest window: among the sorted rewards, the G consecutive ones with the smallest range
    r_(i+G-1) - r_(i) (ties -> the window nearest the median). Drops outliers on either side."""
    return _windowed(r, g, _densest_start)


def select_trim(r: torch.Tensor, g: int) -> torch.Tensor:
    """Symmetric trimming: drop floor((K-G)/2) highest and the rest lowest (non-finite first)."""
    return _windowed(r, g, lambda s, n, g: n - g - (n - g) // 2)


def select_zband(r: torch.Tensor, g: int) -> torch.Tensor:
    """z-score band: keep the G candidates with the smallest |z| = |r - mean| / std (the mean and std
    of the group's finite rewards). Candidates outside |z| <= band are the ones a band filter would drop;
    keeping exactly G keeps group sizes equal."""
    out = []
    for row in r:
        ok = torch.isfinite(row)
        mean = row[ok].mean() if ok.any() else torch.tensor(0.0)
        dist = torch.where(ok, (row - mean).abs(), torch.full_like(row, float("inf")))
        out.append(torch.sort(torch.sort(dist, stable=True).indices[:g]).values)
    return torch.stack(out)


def select(rule: str, r: torch.Tensor, g: int) -> torch.Tensor:
    if g > r.shape[1]:
        raise ValueError(f"subset of G={g} from only {r.shape[1]} candidates")
    fn = {"densest": select_densest, "trim": select_trim, "zband": select_zband}.get(rule)
    if fn is None:
        raise ValueError(f"subset rule {rule!r}: must be one of {RULES}")
    return fn(r, g)


def outlier_stats(r: torch.Tensor, idx: torch.Tensor, band: float) -> dict[str, float]:
    """How many candidates were dropped above / below the kept range, non-finite, and outside |z| <= band."""
    kept = r.gather(1, idx)
    lo = torch.nan_to_num(kept, nan=float("inf"), posinf=float("inf")).min(1, keepdim=True).values
    hi = torch.nan_to_num(kept, nan=float("-inf"), neginf=float("-inf")).max(1, keepdim=True).values
    mask = torch.ones_like(r, dtype=torch.bool)
    mask.scatter_(1, idx, False)
    fin = torch.isfinite(r)
    ok_r = torch.where(fin, r, torch.zeros_like(r))
    n = fin.sum(1, keepdim=True).clamp(min=1)
    mean = ok_r.sum(1, keepdim=True) / n
    std = torch.sqrt((torch.where(fin, r - mean, torch.zeros_like(r)) ** 2).sum(1, keepdim=True) / n)
    outside = fin & ((r - mean).abs() > band * (std + 1e-8))
    p = r.shape[0]
    return {
        "drift/dropped_high": float((mask & fin & (r > hi)).sum()) / p,
        "drift/dropped_low": float((mask & fin & (r < lo)).sum()) / p,
        "drift/dropped_nonfinite": float((mask & ~fin).sum()) / p,
        "drift/outside_band": float(outside.sum()) / p,
        "drift/kept_reward_std": float(torch.nan_to_num(kept, nan=0.0).std(1, unbiased=False).mean()),
    }
