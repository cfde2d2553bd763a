"""pipeline/stats.py against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.stats import mcnemar_exact, mean_ci, paired_bootstrap, verdict


def _correct(only_a: int, only_b: int, both: int = 0, neither: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (1, 6, 0.125),  # 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8/128
        (6, 1, 0.125),  # symmetric
        (0, 5, 0.0625),  # 2 * 1/32
        (3, 3, 1.0),  # 2 * 42/64 > 1, capped
        (2, 8, 0.109375),  # 2 * (1 + 10 + 45) / 1024
        (0, 0, 1.0),  # no discordant pairs: nothing to test
    ],
)
def test_mcnemar_exact_hand_values(only_a, only_b, expected):
    a, b = _correct(only_a, only_b, both=5, neither=3)  # concordant pairs must not matter
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_exact_large_counts_stay_finite_and_small():
    a, b = _correct(4000, 4400)
    p = mcnemar_exact(a, b)
    assert 0 < p < 0.001


def test_mean_ci_matches_hand_t_interval():
    # df = 2 has a closed-form t quantile: t = (2p - 1) / sqrt(2 p (1 - p)), p = 0.975 -> 4.3027.
    t975 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    mean, low, high = mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1
    assert mean == pytest.approx(2.0)
    assert low == pytest.approx(2.0 - t975 / math.sqrt(3))
    assert high == pytest.approx(2.0 + t975 / math.sqrt(3))


def test_mean_ci_df1_and_confidence():
    # df = 1 is Cauchy: t_{0.975} = tan(pi * 0.475) = 12.706; 90%: tan(pi * 0.45) = 6.3138.
    mean, low, high = mean_ci([60.0, 62.0])  # mean 61, sd sqrt(2), se 1
    assert (mean, high - mean) == pytest.approx((61.0, math.tan(math.pi * 0.475)))
    _, low90, high90 = mean_ci([60.0, 62.0], confidence=0.9)
    assert high90 - 61.0 == pytest.approx(math.tan(math.pi * 0.45))
    assert low == pytest.approx(61.0 - math.tan(math.pi * 0.475))


def test_mean_ci_single_value_has_no_interval():
    mean, low, high = mean_ci([0.61])
    assert mean == 0.61 and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError):
        mean_ci([])


def _clear_difference(n: int = 2000, seed: int = 1):
    rng = np.random.default_rng(seed)
    a = (rng.random(n) < 0.5).astype(float)
    b = a.copy()
    # b sets 25% of examples right and 5% wrong, else copies a: P(b right) = 0.25 + 0.70 * 0.5 = 0.60,
    # so the true difference is 0.10; a and b agree on most examples (correlated).
    u = rng.random(n)
    b[u < 0.25] = 1.0
    b[(u >= 0.25) & (u < 0.30)] = 0.0
    return a, b


def test_paired_bootstrap_contains_true_difference_and_excludes_zero():
    a, b = _clear_difference()
    diff, low, high = paired_bootstrap(a, b, resamples=2000, seed=0)
    assert diff == pytest.approx(b.mean() - a.mean())
    assert 0 < low < diff < high
    assert low < 0.10 < high
    # Paired: width ~ 2 * 1.96 * sd(b - a) / sqrt(n). Resampling a and b independently would
    # ignore their correlation and come out about 1.6x wider here.
    expected_half = 1.96 * np.std(b - a) / math.sqrt(a.size)
    assert (high - low) / 2 == pytest.approx(expected_half, rel=0.1)
    assert verdict(low, high) == "helped"
    assert verdict(*[-x for x in (high, low)]) == "hurt"


def test_paired_bootstrap_identical_models_give_zero_interval():
    a, _ = _clear_difference()
    assert paired_bootstrap(a, a.copy(), resamples=500) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_is_deterministic_for_a_seed():
    a, b = _clear_difference(n=700)
    # 5,000 resamples x 700 examples spans several index chunks.
    first = paired_bootstrap(a, b, resamples=5000, seed=3)
    assert paired_bootstrap(a, b, resamples=5000, seed=3) == first
    assert paired_bootstrap(a, b, resamples=5000, seed=4) != first


def test_paired_bootstrap_groups_resample_within_each_group():
    # Group 0: b beats a on every example (diff 1); group 1: identical (diff 0). Resampling within
    # groups keeps 50/50 group sizes, so every resample's pooled diff is exactly 0.5.
    n = 200
    a = np.zeros(2 * n)
    b = np.concatenate([np.ones(n), np.zeros(n)])
    groups = np.repeat([0, 1], n)
    assert paired_bootstrap(a, b, resamples=1000, groups=groups) == pytest.approx((0.5, 0.5, 0.5))
    # Without strata the group sizes vary from resample to resample, so the interval has width.
    _, low, high = paired_bootstrap(a, b, resamples=1000)
    assert high - low > 0.05
    # Interleaved, unsorted group ids work the same way.
    order = np.random.default_rng(0).permutation(2 * n)
    assert paired_bootstrap(a[order], b[order], resamples=300, groups=groups[order]) == pytest.approx((0.5, 0.5, 0.5))


def test_paired_bootstrap_other_statistic():
    a = np.arange(101, dtype=float)
    b = a + 3.0
    assert paired_bootstrap(a, b, np.median, resamples=200) == pytest.approx((3.0, 3.0, 3.0))


def test_paired_bootstrap_rejects_bad_inputs():
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros(3), np.zeros(3), groups=np.zeros(2))


@pytest.mark.parametrize(
    ("low", "high", "word"),
    [
        (0.001, 0.5, "helped"),
        (0.0, 0.5, "not shown"),  # touching zero is not a shown gain
        (-0.5, 0.0, "not shown"),
        (-0.5, -0.001, "hurt"),
        (-0.1, 0.1, "not shown"),
        (math.nan, math.nan, "not shown"),
    ],
)
def test_verdict_boundaries(low, high, word):
    assert verdict(low, high) == word
