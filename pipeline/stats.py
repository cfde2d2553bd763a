"""Small statistics for comparing models: t intervals over seeds, paired bootstrap, exact McNemar.

Pure numpy (scipy only for the Student-t quantile), no Prefect, no DVC, so the grid, the controller
and `sec compare` can all import it. The DEV split decides; these functions do not care which split
they are given, the callers must.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# Bound on the number of indices drawn at once (resamples x examples), ~16 MB of int64 per chunk:
# 10,000 resamples over 10,000 examples would otherwise be an 800 MB index matrix.
_CHUNK_ELEMENTS = 2_000_000


def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t  # scipy comes with scikit-learn; imported here so the rest works without it

    return float(t.ppf(q, df))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval over seeds; a single value gives (v, nan, nan)."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("mean_ci: no values")
    if not 0 < confidence < 1:
        raise ValueError(f"mean_ci: confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan
    half = _t_quantile(0.5 + confidence / 2, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def _resample_indices(rng: np.random.Generator, strata: list[np.ndarray], count: int, n: int) -> np.ndarray:
    """(count, n) indices: each row resamples every stratum with replacement within itself."""
    if len(strata) == 1 and strata[0].size == n:
        return rng.integers(0, n, size=(count, n))
    parts = [members[rng.integers(0, members.size, size=(count, members.size))] for members in strata]
    return np.concatenate(parts, axis=1)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    statistic: Callable = np.mean,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    groups: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """(diff, low, high) of statistic(b) - statistic(a) over per-example values a, b (same
    examples, same order). groups: optional stratum id per example (e.g. the seed when pooling
    seeds): resampling is done within each group. Seeded, deterministic.

    `statistic` is called as statistic(x) on the full 1-D sample and as statistic(x, axis=1) on a
    (resamples, n) matrix, so it must reduce along `axis` (np.mean, np.median do). The same
    resampled indices are used for a and b: that pairing is what makes the interval narrow when
    the two models agree on most examples. The interval is the percentile interval of the diffs.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired_bootstrap: a and b must be 1-D of equal length, got {a.shape} and {b.shape}")
    n = a.size
    if n == 0:
        raise ValueError("paired_bootstrap: no examples")
    if resamples < 1:
        raise ValueError(f"paired_bootstrap: resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"paired_bootstrap: confidence must be in (0, 1), got {confidence}")
    if groups is None:
        strata = [np.arange(n)]
    else:
        groups = np.asarray(groups)
        if groups.shape != a.shape:
            raise ValueError(f"paired_bootstrap: groups has shape {groups.shape}, expected {a.shape}")
        strata = [np.flatnonzero(groups == g) for g in np.unique(groups)]

    diff = float(statistic(b) - statistic(a))
    rng = np.random.default_rng(seed)
    # Chunk size depends only on n, so a given (seed, n) always draws the same indices.
    chunk = max(1, _CHUNK_ELEMENTS // n)
    diffs = np.empty(resamples, dtype=float)
    for start in range(0, resamples, chunk):
        count = min(chunk, resamples - start)
        idx = _resample_indices(rng, strata, count, n)
        diffs[start : start + count] = statistic(b[idx], axis=1) - statistic(a[idx], axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return diff, float(low), float(high)


def _binomial_half_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, one rounding at the end)."""
    total, term = 0, 1  # term = C(n, i)
    for i in range(k + 1):
        total += term
        term = term * (n - i) // (i + 1)
    return total / (1 << n)  # int / int is correctly rounded even for huge n


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value (binomial test on the discordant pairs)."""
    a_correct = np.asarray(a_correct, dtype=bool)
    b_correct = np.asarray(b_correct, dtype=bool)
    if a_correct.shape != b_correct.shape:
        raise ValueError(f"mcnemar_exact: shapes differ: {a_correct.shape} vs {b_correct.shape}")
    only_a = int(np.sum(a_correct & ~b_correct))
    only_b = int(np.sum(~a_correct & b_correct))
    n = only_a + only_b
    if n == 0:
        return 1.0
    # Binomial(n, 1/2) is symmetric, so the two-sided p is twice the smaller tail (capped at 1).
    return min(1.0, 2.0 * _binomial_half_cdf(min(only_a, only_b), n))


def verdict(low: float, high: float) -> str:
    """'helped' if low > 0, 'hurt' if high < 0, else 'not shown'."""
    if low > 0:
        return "helped"
    if high < 0:
        return "hurt"
    return "not shown"  # includes a NaN bound: no interval, nothing shown
