"""Iterative selection on fixed embeddings (stages._active_rounds), on toy sets with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from stages._active_rounds import RoundsConfig, SelectionError, nearest_similarity, select_in_rounds


def blobs(counts: dict[int, int], centres: np.ndarray, rng, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([centres[c] + spread * rng.standard_normal((n, centres.shape[1])) for c, n in counts.items()])
    y = np.concatenate([np.full(n, c) for c, n in counts.items()])
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def rare_class():
    """Class 2 is 3 % of the pool and sits between the other two: random buys it rarely."""
    rng = np.random.default_rng(0)
    centres = np.zeros((3, 8))
    centres[0, 0], centres[1, 0], centres[2, 0] = -3.0, 3.0, 0.0
    centres[2, 1] = 2.5
    x_seed, y_seed = blobs({0: 20, 1: 20, 2: 4}, centres, rng)
    x_pool, y_pool = blobs({0: 970, 1: 970, 2: 60}, centres, rng)
    return x_seed, y_seed, x_pool, y_pool


def share_of(picks: np.ndarray, y: np.ndarray, label: int) -> float:
    return float((y[picks] == label).mean())


@pytest.mark.parametrize("strategy", ["margin", "entropy", "badge"])
def test_uncertainty_strategies_find_the_rare_class_region(rare_class, strategy):
    x_seed, y_seed, x_pool, y_pool = rare_class
    cfg = RoundsConfig(strategy=strategy, budget=120, round_size=30, seed=1)
    result = select_in_rounds(x_seed, y_seed, x_pool, y_pool, cfg)
    assert len(result.order) == 120 and len(set(result.order.tolist())) == 120
    # Random would buy 3 % of class 2 (about 4 of 120); the strategies buy along its borders.
    assert share_of(result.order, y_pool, 2) >= 0.15, share_of(result.order, y_pool, 2)
    assert [r["bought"] for r in result.rounds] == [30, 30, 30, 30]
    assert sum(result.rounds[0]["by_class"].values()) == 30


def test_the_same_seed_gives_the_same_picks_and_another_seed_others(rare_class):
    x_seed, y_seed, x_pool, y_pool = rare_class
    runs = [select_in_rounds(x_seed, y_seed, x_pool, y_pool,
                             RoundsConfig(strategy="badge", budget=60, round_size=20, seed=s)).order for s in (3, 3, 4)]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def outliers_on_the_boundary(rng, count: int):
    """Two classes split along dimension 0; `count` outliers with random labels sit on the
    boundary but far off along dimension 3, which the classes do not use: the classifier is unsure
    of them (margin buys them), and their neighbourhood is empty (they are not typical)."""
    centres = np.array([[-2.0, 0, 0, 0], [2.0, 0, 0, 0]])
    x_seed, y_seed = blobs({0: 20, 1: 20}, centres, rng)
    x_pool, y_pool = blobs({0: 1000, 1: 1000}, centres, rng)
    odd = np.array([0, 0, 0, 4.0]) + 0.1 * rng.standard_normal((count, 4))
    x_pool = np.concatenate([x_pool, odd]).astype(np.float32)
    y_pool = np.concatenate([y_pool, rng.integers(0, 2, count)])
    return x_seed, y_seed, x_pool, y_pool, np.arange(len(x_pool)) >= len(x_pool) - count


def test_density_weighting_avoids_a_cluster_of_mislabelled_outliers():
    x_seed, y_seed, x_pool, y_pool, odd = outliers_on_the_boundary(np.random.default_rng(5), 12)
    bought = {}
    for outliers in ("none", "density"):
        cfg = RoundsConfig(strategy="margin", budget=60, round_size=20, seed=0, outliers=outliers, classes=2,
                           neighbours=25)
        bought[outliers] = int(odd[select_in_rounds(x_seed, y_seed, x_pool, y_pool, cfg).order].sum())
    assert bought["none"] >= 6, bought  # margin alone buys most of the outliers
    assert bought["density"] == 0, bought


def test_the_data_map_flags_the_pairs_it_cannot_learn():
    """A noise cluster (random labels) where three classes meet: the bought pairs flagged hard are
    nearly all from it."""
    rng = np.random.default_rng(5)
    centres = np.array([[-3, -1.7, 0, 0], [3, -1.7, 0, 0], [0, 3.4, 0, 0.0]])
    x_seed, y_seed = blobs({0: 30, 1: 30, 2: 30}, centres, rng)
    x_pool, y_pool = blobs({0: 800, 1: 800, 2: 800}, centres, rng)
    noise = 0.3 * rng.standard_normal((300, 4)).astype(np.float32)
    x_pool = np.concatenate([x_pool, noise]).astype(np.float32)
    y_pool = np.concatenate([y_pool, rng.integers(0, 3, 300)])
    cfg = RoundsConfig(strategy="margin", budget=150, round_size=30, seed=0, outliers="datamap")
    result = select_in_rounds(x_seed, y_seed, x_pool, y_pool, cfg)
    labelled_is_noise = np.concatenate([np.zeros(len(x_seed), bool), result.order >= 2400])
    flagged = result.hard_labelled
    assert len(flagged) >= 20 and result.rounds[-1]["hard_labelled"] == len(flagged)
    assert labelled_is_noise[flagged].mean() >= 0.9
    assert result.rounds[0]["hard_labelled"] == 0  # no pair has two rounds of history yet


def test_density_needs_an_uncertainty_strategy(rare_class):
    x_seed, y_seed, x_pool, y_pool = rare_class
    with pytest.raises(SelectionError, match="density"):
        select_in_rounds(x_seed, y_seed, x_pool, y_pool,
                         RoundsConfig(strategy="coreset", budget=10, round_size=5, seed=0, outliers="density"))


def test_rounds_report_sources_and_near_duplicates():
    rng = np.random.default_rng(2)
    x_seed = rng.standard_normal((10, 6)).astype(np.float32)
    y_seed = np.arange(10) % 3
    base = rng.standard_normal((40, 6)).astype(np.float32)
    x_pool = np.concatenate([base, base])  # every pool pair has an exact twin
    y_pool = np.concatenate([np.arange(40) % 3] * 2)
    groups = np.array(["train"] * 40 + ["train_20k"] * 40)
    result = select_in_rounds(x_seed, y_seed, x_pool, y_pool,
                              RoundsConfig(strategy="coreset", budget=80, round_size=80, seed=0), pool_groups=groups)
    only = result.rounds[0]
    assert only["by_source"] == {"train": 40, "train_20k": 40}
    assert only["near_duplicates"] == 80


def test_nearest_similarity_finds_the_nearest_key():
    keys = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    sims, where = nearest_similarity(np.array([[0.9, 0.1], [0.1, 2.0]], dtype=np.float32), keys, chunk=1)
    assert where.tolist() == [0, 1]
    assert sims[1] == pytest.approx(2.0 / np.hypot(0.1, 2.0), rel=1e-5)


@pytest.mark.parametrize(("change", "named"), [
    ({"strategy": "uncertainty"}, "active_select.strategy"),
    ({"budget": 10_000}, "active_select.budget"),
    ({"round_size": 0}, "active_select.round_size"),
    ({"outliers": "drop"}, "active_select.outliers"),
])
def test_bad_settings_fail_with_the_param_named(rare_class, change, named):
    x_seed, y_seed, x_pool, y_pool = rare_class
    cfg = RoundsConfig(**{"strategy": "margin", "budget": 10, "round_size": 5, "seed": 0, **change})
    with pytest.raises(SelectionError, match=named):
        select_in_rounds(x_seed, y_seed, x_pool, y_pool, cfg)


@pytest.mark.parametrize(("change", "field"), [
    ({"strategy": "uncertainty"}, "strategy"),
    ({"round_size": 0}, "round_size"),
    ({"strategy": "badge", "acquisition": "finetune"}, "acquisition: embedding"),
])
def test_params_reject_bad_active_select_settings(change, field):
    from pydantic import ValidationError

    from stages._params import ActiveSelectParams

    base = {"budget": 10, "acquisition_epochs": 1.0, "batch_size": 8, "learning_rate": 1e-4,
            "acquisition": "embedding", "strategy": "margin"}
    with pytest.raises(ValidationError, match=field):
        ActiveSelectParams(**{**base, **change})
