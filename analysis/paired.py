"""Pure statistics over seeds: t-intervals, seed sizing, the smallest resolvable gain, equal points per front,
the A/A seed split and the prompt/seed resampling weights (docs/analysis.md §11 has the same formulas).

Nothing here reads files or prints; an undefined quantity is None (or NaN in arrays).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st


def t_quantile(p: float, df: int) -> float:
    """t_{p, df}: the p-quantile of Student's t with ``df`` degrees of freedom (scipy.stats.t.ppf)."""
    return float(_st.t.ppf(p, df))


def t_interval(x, level: float = 0.95) -> dict:
    """Mean and two-sided t-interval of the finite values of ``x`` (one value per seed):

        mean = (1/n) sum x_i,  s = sqrt(sum (x_i - mean)^2 / (n - 1)),  SE = s / sqrt(n),
        CI = mean -+ t_{(1+level)/2, n-1} SE.

    Returns {'n', 'mean', 'sd', 'se', 'half_width', 'ci'}; sd/se/half_width/ci are None when n < 2 and
    mean is None when n = 0.
    """
    v = np.asarray(x, dtype=float).ravel()
    v = v[np.isfinite(v)]
    n = len(v)
    out: dict = {"n": n, "mean": float(v.mean()) if n else None, "sd": None, "se": None, "half_width": None, "ci": None}
    if n >= 2:
        sd = float(v.std(ddof=1))
        se = sd / math.sqrt(n)
        h = t_quantile((1 + level) / 2, n - 1) * se
        out.update(sd=sd, se=se, half_width=h, ci=[out["mean"] - h, out["mean"] + h])
    return out


def excludes_zero(ci: list | tuple | None) -> bool | None:
    """True iff the interval [lo, hi] lies strictly on one side of 0; None without an interval."""
    if not ci:
        return None
    return bool(ci[0] > 0 or ci[1] < 0)


def seeds_needed(sigma: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Seeds per arm for a paired two-sided test of an effect ``delta`` with per-seed SD ``sigma``:

        n = ceil((z_{1-alpha/2} + z_{power})^2 sigma^2 / delta^2)

    (normal approximation; with alpha = 0.05 and power = 0.8 the factor is (1.95996 + 0.84162)^2 = 7.849).
    None when sigma or delta is undefined or delta = 0.
    """
    if sigma is None or delta is None or not np.isfinite(sigma) or not np.isfinite(delta) or delta == 0:
        return None
    z = _st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)
    return max(1, int(math.ceil(z * z * sigma * sigma / (delta * delta) - 1e-12)))


def resolvable_gain(sd: float | None, n: int, level: float = 0.95) -> float | None:
    """The smallest |mean| whose t-interval over ``n`` seeds excludes 0, for a per-seed SD ``sd``:

        h = t_{(1+level)/2, n-1} sd / sqrt(n)

    (the half-width of the interval). None for n < 2 or an undefined sd.
    """
    if sd is None or not np.isfinite(sd) or n < 2:
        return None
    return t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)


def detectable_gain(sd: float | None, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The effect found with probability ``power`` by n seeds (``seeds_needed`` solved for delta):

        delta = (z_{1-alpha/2} + z_{power}) sd / sqrt(n)

    None for n < 1 or an undefined sd.
    """
    if sd is None or not np.isfinite(sd) or n < 1:
        return None
    return float((_st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)) * sd / math.sqrt(n))


def aa_split(seeds) -> list[tuple[int, int]]:
    """The A/A pairs of one arm's seeds: sorted, the first half against the second half, the i-th of each
    paired, (s_i, s_{i+h}) for i < h = floor(n/2); with an odd count the last seed is left out."""
    s = sorted(int(x) for x in seeds)
    h = len(s) // 2
    return [(s[i], s[i + h]) for i in range(h)]


def equal_points(points: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` of the (k, 2) (alignment, diversity) points, deterministically: the points ranked by
    (alignment, diversity, index), then the ranks round(linspace(0, k-1, n)); so the lowest- and the
    highest-alignment points are always kept and the kept ones spread evenly over the alignment ranks.
    All indices (in rank order) when n >= k."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    k = len(p)
    order = np.lexsort((np.arange(k), p[:, 1], p[:, 0]))
    if n >= k:
        return order
    if n <= 0:
        return np.zeros(0, dtype=int)
    ranks = np.unique(np.round(np.linspace(0, k - 1, n)).astype(int))
    return order[ranks]


def draw_counts(n: int, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap draw of n items with replacement, as counts c (n,), sum c = n: item i is drawn c_i times."""
    return np.bincount(rng.integers(0, n, size=n), minlength=n)


def weighted_mean(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Row-wise mean under bootstrap counts: (values @ c) / sum c for values (m, n) and counts (n,)."""
    return np.asarray(values, dtype=float) @ counts / counts.sum()
