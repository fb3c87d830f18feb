"""Pure definitions for alignment-diversity fronts (docs/analysis.md has the same formulas and a worked example).

Both axes are higher-is-better: a = alignment (mean task reward), d = diversity. A *front* is an array
F of shape (k, 2) holding the columns (a, d), sorted by a ascending; on a front d is then strictly
descending. Nothing here reads files or prints: undefined quantities are NaN/None and come with a
message, so the caller can say why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INTERPS = ("staircase", "linear")


# ------------------------------------------------------------------------------------------------
# Fronts
# ------------------------------------------------------------------------------------------------
def _check_points(a: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, d = np.asarray(a, dtype=float).ravel(), np.asarray(d, dtype=float).ravel()
    assert a.shape == d.shape, f"alignment {a.shape} and diversity {d.shape} must have the same length"
    bad = ~(np.isfinite(a) & np.isfinite(d))
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(a)} points have a non-finite alignment or diversity; "
                         "drop them first (the loaders do, with a warning naming each)")
    return a, d


def pareto_indices(a: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points, ordered by alignment ascending.

    Point i is dominated iff some j has a_j >= a_i and d_j >= d_i with at least one inequality strict.
    Of several identical points only the first (lowest index) is kept. Sweep: order by (a desc, d desc,
    index asc); a point is non-dominated iff its d exceeds the best d of every point before it.
    """
    a, d = _check_points(a, d)
    if len(a) == 0:
        return np.zeros(0, dtype=int)
    order = np.lexsort((np.arange(len(a)), -d, -a))
    keep, best = [], -np.inf
    for i in order:
        if d[i] > best:
            keep.append(i)
            best = d[i]
    return np.asarray(keep[::-1], dtype=int)


def pareto_front(a: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The front F (k, 2) = non-dominated (a, d) points, a ascending (so d strictly descending)."""
    idx = pareto_indices(a, d)
    a, d = np.asarray(a, dtype=float).ravel(), np.asarray(d, dtype=float).ravel()
    return np.stack([a[idx], d[idx]], axis=1) if len(idx) else np.zeros((0, 2))


def _envelope(x: np.ndarray, y: np.ndarray, levels: np.ndarray, interp: str) -> np.ndarray:
    """Best y reached at x >= level, for x strictly increasing and y strictly decreasing (a front).

    staircase: Y(l) = max{y_i : x_i >= l} = y at the first x_i >= l; NaN for l > max x.
    linear:    Y(l) = y_0 for l <= x_0; straight lines between consecutive points on [x_0, x_k];
               NaN for l > max x.
    """
    if interp not in INTERPS:
        raise ValueError(f"interp={interp!r}: must be one of {INTERPS}")
    levels = np.asarray(levels, dtype=float)
    out = np.full(levels.shape, np.nan)
    if len(x) == 0:
        return out
    inside = levels <= x[-1]
    idx = np.searchsorted(x, levels[inside], side="left")
    out[inside] = y[idx]
    if interp == "linear":
        mid = inside & (levels >= x[0])
        out[mid] = np.interp(levels[mid], x, y)
    return out


def diversity_at(front: np.ndarray, a: np.ndarray | float, interp: str = "staircase") -> np.ndarray:
    """D_M(a): the best diversity the front reaches at alignment >= a.

    staircase (default, conservative): D(a) = max{d_i : a_i >= a} -- only what a checkpoint reached.
    linear: D(a) = d_i + (d_{i+1} - d_i)(a - a_i)/(a_{i+1} - a_i) for a_i <= a <= a_{i+1}; D(a) = d_0 for
    a <= a_0 (as the staircase). Both are NaN (undefined) for a > max a_i.
    """
    return _envelope(front[:, 0], front[:, 1], np.asarray(a, dtype=float), interp)


def alignment_at(front: np.ndarray, d: np.ndarray | float, interp: str = "staircase") -> np.ndarray:
    """A_M(d): the best alignment the front reaches at diversity >= d (D_M with the axes swapped).

    staircase (default): A(d) = max{a_i : d_i >= d}.
    linear: straight lines between consecutive front points in (d, a); A(d) = max a_i for d <= min d_i.
    Both are NaN (undefined) for d > max d_i.
    """
    rev = front[::-1]  # d ascending, a descending
    return _envelope(rev[:, 1], rev[:, 0], np.asarray(d, dtype=float), interp)


def overlap(x_m: np.ndarray, x_b: np.ndarray) -> tuple[float, float] | None:
    """The interval both fronts cover on one axis: [max(min x_M, min x_B), min(max x_M, max x_B)].

    None when it is empty (lo > hi) or a front is empty.
    """
    if len(x_m) == 0 or len(x_b) == 0:
        return None
    lo, hi = max(np.min(x_m), np.min(x_b)), min(np.max(x_m), np.max(x_b))
    return (float(lo), float(hi)) if lo <= hi else None


def relative_gain(y_m: np.ndarray, y_b: np.ndarray, zero: float = 0.0) -> np.ndarray:
    """g = (y_M - z) / (y_B - z) - 1, elementwise; NaN where y_B - z <= 0 (the ratio's sign is meaningless).

    z = 0 gives the plain relative gain y_M / y_B - 1; z = a0 (the base model's alignment) gives the
    gain relative to the base model, (A_M - a0)/(A_B - a0) - 1 ("how much more of the improvement").
    """
    y_m, y_b = np.asarray(y_m, dtype=float), np.asarray(y_b, dtype=float)
    den = y_b - zero
    out = np.full(np.broadcast(y_m, y_b).shape, np.nan)
    ok = np.isfinite(y_m) & np.isfinite(den) & (den > 0)
    out[ok] = (y_m[ok] - zero) / den[ok] - 1.0
    return out


@dataclass
class Gain:
    """A gain of method M over baseline B evaluated on a grid of levels over the fronts' overlap."""

    interval: tuple[float, float] | None  # overlap [lo, hi] on the matched axis; None = no overlap
    levels: np.ndarray  # (n,) matched levels (alignment levels for a diversity gain, and vice versa)
    values: np.ndarray  # (n,) gain per level, NaN where undefined
    min: float | None
    max: float | None
    mean: float | None
    messages: list[str] = field(default_factory=list)

    @property
    def defined(self) -> bool:
        return self.mean is not None


def gain_at_equal(front_m: np.ndarray, front_b: np.ndarray, matched: str, interp: str = "staircase",
                  n_levels: int = 21, zero: float = 0.0, levels: np.ndarray | None = None) -> Gain:
    """Gain of M over B at equal ``matched`` ('alignment' or 'diversity').

    matched='alignment' (diversity gain at equivalent alignment): g(a) = D_M(a)/D_B(a) - 1.
    matched='diversity' (alignment gain at equivalent diversity):   g(d) = (A_M(d) - z)/(A_B(d) - z) - 1,
    with z = 0 (plain) or z = a0 (relative to the base model).
    Levels: ``n_levels`` equally spaced values over the overlap [max(min_M, min_B), min(max_M, max_B)]
    of the two fronts on the matched axis (one level if the overlap is a single value), unless
    ``levels`` is given. Summary: min, max and mean of g over the levels where it is defined.
    """
    assert matched in ("alignment", "diversity"), f"matched={matched!r}: must be 'alignment' or 'diversity'"
    col = 0 if matched == "alignment" else 1
    msgs: list[str] = []
    if len(front_m) == 0 or len(front_b) == 0:
        return Gain(None, np.zeros(0), np.zeros(0), None, None, None, ["a front is empty"])
    interval = overlap(front_m[:, col], front_b[:, col])
    if levels is None:
        if interval is None:
            rm = (front_m[:, col].min(), front_m[:, col].max())
            rb = (front_b[:, col].min(), front_b[:, col].max())
            return Gain(None, np.zeros(0), np.zeros(0), None, None, None,
                        [f"no overlap in {matched}: the method's front covers [{rm[0]:.4g}, {rm[1]:.4g}] and the "
                         f"baseline's [{rb[0]:.4g}, {rb[1]:.4g}]; the gain at equal {matched} is undefined"])
        lo, hi = interval
        levels = np.array([lo]) if lo == hi else np.linspace(lo, hi, n_levels)
        if lo == hi:
            msgs.append(f"the fronts overlap in a single {matched} value ({lo:.4g}): the gain is evaluated at one level")
    f = diversity_at if matched == "alignment" else alignment_at
    y_m, y_b = f(front_m, levels, interp), f(front_b, levels, interp)
    values = relative_gain(y_m, y_b, zero)
    bad = np.isfinite(y_b) & ~np.isfinite(values)
    if bad.any():
        what = "baseline value" if zero == 0 else "baseline value minus the base model's"
        msgs.append(f"undefined at {int(bad.sum())} of {len(levels)} levels where the {what} is <= 0")
    ok = np.isfinite(values)
    if not ok.any():
        msgs.append("the gain is undefined at every level")
        return Gain(interval, levels, values, None, None, None, msgs)
    v = values[ok]
    return Gain(interval, levels, values, float(v.min()), float(v.max()), float(v.mean()), msgs)


# ------------------------------------------------------------------------------------------------
# Dominance and hypervolume
# ------------------------------------------------------------------------------------------------
def dominated_mask(points: np.ndarray, by: np.ndarray) -> np.ndarray:
    """mask_i = some q in ``by`` has q_a >= p_a and q_d >= p_d with one inequality strict (p = points[i])."""
    if len(points) == 0 or len(by) == 0:
        return np.zeros(len(points), dtype=bool)
    ge = (by[None, :, 0] >= points[:, None, 0]) & (by[None, :, 1] >= points[:, None, 1])
    gt = (by[None, :, 0] > points[:, None, 0]) | (by[None, :, 1] > points[:, None, 1])
    return (ge & gt).any(axis=1)


def dominance_share(front_m: np.ndarray, front_b: np.ndarray) -> float:
    """Share of B's front points dominated by M's front: |{b in F_B : some m in F_M dominates b}| / |F_B|.

    Point-based, so it does not depend on the interpolation. NaN if F_B is empty.
    """
    if len(front_b) == 0:
        return float("nan")
    return float(dominated_mask(front_b, front_m).mean())


def hypervolume(front: np.ndarray, ref: tuple[float, float]) -> float:
    """Area dominated by the front and above the reference point r = (r_a, r_d):

    HV = area of the union over i of [r_a, a_i] x [r_d, d_i]
       = sum_i (a_i - max(a_{i-1}, r_a)) (d_i - r_d) over the points with a_i > r_a and d_i > r_d,
    taken in alignment-ascending order (a_0 := r_a). 0 for an empty front or one that never beats r.
    """
    r_a, r_d = float(ref[0]), float(ref[1])
    p = front[(front[:, 0] > r_a) & (front[:, 1] > r_d)] if len(front) else front
    if len(p) == 0:
        return 0.0
    prev = np.concatenate([[r_a], p[:-1, 0]])
    return float(np.sum((p[:, 0] - prev) * (p[:, 1] - r_d)))


# ------------------------------------------------------------------------------------------------
# Uncertainty
# ------------------------------------------------------------------------------------------------
def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval [q_{(1-level)/2}, q_{(1+level)/2}] of the defined (finite) samples.

    None when fewer than 2 samples are defined.
    """
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if len(s) < 2:
        return None
    lo, hi = np.percentile(s, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def resample_runs(strata: list[list[int]], rng: np.random.Generator) -> list[int]:
    """One bootstrap draw: within each stratum (a method's runs of one configuration) draw as many runs
    as it holds, uniformly with replacement. Returns the drawn run indices (with repeats)."""
    out: list[int] = []
    for s in strata:
        out.extend(np.asarray(s)[rng.integers(0, len(s), size=len(s))].tolist())
    return out
