"""Iterative pool-based selection on fixed embeddings: a light classifier, a strategy, rounds.

Vysogorets & Gopal 2024 (arXiv 2402.15613): with a good pretrained representation, active learning
needs no transformer training in the loop. Each round fits a logistic regression on every label
bought so far (seconds), lets a scikit-activeml strategy buy `round_size` more pool pairs, and
repeats until the budget is spent; the teacher is fine-tuned once, afterwards, on the result.

Strategies (scikit-activeml, no hand-written query code):
  margin, entropy     uncertainty sampling of the in-loop classifier
  badge               k-means++ on the classifier's gradient embeddings (uncertain *and* diverse)
  coreset             greedy k-centre on the features (diverse, no classifier)
  typiclust           the most typical pair of each new k-means cluster (cold start)

Outlier-aware options. `outliers: density` (information density, Settles & Craven 2008): an
uncertainty strategy's utility is multiplied by each pair's typicality (TypiClust's: the inverse
mean distance to its k nearest pairs), so a small far-off cluster of odd pairs, however uncertain,
is not bought. `outliers: datamap` (Snijders et al. 2023, arXiv 2302.06976, after
Swayamdipta et al.'s data maps): a bought pair whose gold label the in-loop classifier keeps
getting wrong across rounds, with a low probability, is hard to learn ("collective outliers" of a
multi-source pool); a pool pair most of whose nearest labelled neighbours are such pairs is not
bought any more (badge, coreset, typiclust), or an uncertainty strategy's utility for it is
scaled by the share of its neighbours that are not hard. The
data map reads bought labels only: nothing of the pool's oracle is looked at before purchase.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

STRATEGIES = ("margin", "entropy", "badge", "coreset", "typiclust")
UNCERTAINTY = ("margin", "entropy")
OUTLIER_MODES = ("none", "density", "datamap")
# Decimals kept of a classifier probability before it ranks anything (another CPU's last bits).
PROB_DECIMALS = 4
# Cosine similarity at or above which two pairs count as near-duplicates (reported, not acted on).
NEAR_DUPLICATE = 0.95


class SelectionError(ValueError):
    """A selection setting that cannot work; the message names the param."""


@dataclass
class RoundsConfig:
    strategy: str
    budget: int
    round_size: int
    seed: int
    outliers: str = "none"
    # datamap: a labelled pair is hard when its mean gold-label probability over >= `hard_rounds`
    # rounds is below `hard_threshold` (near chance for 3 classes: never learnt).
    hard_threshold: float = 0.4
    hard_rounds: int = 2
    neighbours: int = 20  # k of the hard share (labelled neighbours) and of typicality (all pairs)
    hard_share: float = 0.5
    density_beta: float = 1.0  # density: the exponent of typicality in the utility
    # Pool pairs a round's strategy looks at (a random subset of the unbought; 0 = all).
    candidates: int = 0
    regularization: float = 1.0  # logistic regression's C
    classes: int = 3


@dataclass
class RoundsResult:
    order: np.ndarray  # (budget,) pool positions in purchase order
    rounds: list[dict] = field(default_factory=list)
    hard_labelled: np.ndarray | None = None  # positions (labelled-then-bought numbering) flagged hard


def check_config(cfg: RoundsConfig, pool_size: int) -> None:
    if cfg.strategy not in STRATEGIES:
        raise SelectionError(f"active_select.strategy {cfg.strategy!r} is not an in-loop strategy; "
                             f"expected one of {list(STRATEGIES)} (or random / all)")
    if cfg.outliers not in OUTLIER_MODES:
        raise SelectionError(f"active_select.outliers {cfg.outliers!r}: expected one of {list(OUTLIER_MODES)}")
    if cfg.round_size <= 0:
        raise SelectionError(f"active_select.round_size must be > 0 (got {cfg.round_size})")
    if cfg.budget > pool_size:
        raise SelectionError(f"active_select.budget ({cfg.budget}) exceeds the pool ({pool_size} rows)")
    if cfg.budget < 0:
        raise SelectionError(f"active_select.budget must be >= 0 (got {cfg.budget})")


def make_classifier(seed: int, classes: int = 3, regularization: float = 1.0):
    """The in-loop classifier: standardised features -> logistic regression, as scikit-activeml
    wraps it (unbought rows carry the label NaN and are left out of the fit)."""
    from skactiveml.classifier import SklearnClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lr = LogisticRegression(C=regularization, max_iter=300)
    return SklearnClassifier(make_pipeline(StandardScaler(), lr), classes=np.arange(classes),
                             missing_label=np.nan, random_state=seed)


def _strategy(cfg: RoundsConfig):
    from skactiveml import pool

    rs = cfg.seed
    return {
        "margin": lambda: pool.UncertaintySampling(method="margin_sampling", random_state=rs),
        "entropy": lambda: pool.UncertaintySampling(method="entropy", random_state=rs),
        "badge": lambda: pool.Badge(random_state=rs),
        "coreset": lambda: pool.CoreSet(random_state=rs),
        "typiclust": lambda: pool.TypiClust(random_state=rs),
    }[cfg.strategy]()


def _needs_classifier(strategy: str) -> bool:
    return strategy in ("margin", "entropy", "badge")


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def _cosine_blocks(queries: np.ndarray, keys: np.ndarray, chunk: int):
    """(start, cosine similarities (chunk, m)) of query rows start.. against every key row, so no
    (q, m) matrix is ever whole."""
    kn = _normalised(keys)
    for start in range(0, len(queries), chunk):
        yield start, _normalised(queries[start:start + chunk]) @ kn.T


def nearest_keys(queries: np.ndarray, keys: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Indices (q, min(k, m)) of each query row's k most cosine-similar key rows (any order)."""
    k = min(k, len(keys))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start, sims in _cosine_blocks(queries, keys, chunk):
        out[start:start + len(sims)] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return out


def typicality(x: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """TypiClust's typicality of each row (n,): 1 / mean distance to its k nearest other rows,
    scaled so the median is 1. A small cluster far from the bulk (collective outliers) scores
    low even when it is tight, as long as k exceeds its size."""
    norms = (x.astype(np.float64) ** 2).sum(axis=1)
    mean_distance = np.empty(len(x))
    for start in range(0, len(x), chunk):
        q = x[start:start + chunk]
        d2 = np.clip(norms[start:start + chunk, None] + norms[None, :] - 2.0 * (q @ x.T), 0, None)  # (chunk, n)
        d2[np.arange(len(q)), np.arange(start, start + len(q))] = np.inf  # not its own neighbour
        nearest = np.partition(d2, k - 1, axis=1)[:, :k]
        mean_distance[start:start + chunk] = np.sqrt(nearest).mean(axis=1)
    typical = 1.0 / np.clip(mean_distance, 1e-12, None)
    return typical / np.median(typical)


def nearest_similarity(queries: np.ndarray, keys: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each query row to its nearest key row, and that key's index.

    queries (q, k), keys (m, k) -> (q,), (q,).
    """
    if len(keys) == 0:
        return np.full(len(queries), -np.inf), np.full(len(queries), -1)
    best = np.empty(len(queries), dtype=np.float32)
    where = np.empty(len(queries), dtype=np.int64)
    for start, sims in _cosine_blocks(queries, keys, chunk):
        rows = slice(start, start + len(sims))
        where[rows] = sims.argmax(axis=1)
        best[rows] = sims[np.arange(len(sims)), where[rows]]
    return best, where


def _hard_labelled(history: list[np.ndarray], n_labelled: int, cfg: RoundsConfig) -> np.ndarray:
    """Boolean (n_labelled,): pairs whose mean gold-label probability over the rounds since they
    were bought (at least hard_rounds of them) is below hard_threshold: the classifier never learns them.

    history[r]: the gold-label probability of each pair labelled at round r (later rounds are longer).
    """
    sums = np.zeros(n_labelled)
    counts = np.zeros(n_labelled)
    for probs in history:
        sums[: len(probs)] += probs
        counts[: len(probs)] += 1
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)
    return (counts >= cfg.hard_rounds) & (mean < cfg.hard_threshold)


def select_in_rounds(
    x_labelled: np.ndarray, y_labelled: np.ndarray, x_pool: np.ndarray, oracle: np.ndarray, cfg: RoundsConfig,
    *, pool_groups: np.ndarray | None = None, progress=None,
) -> RoundsResult:
    """Buy `cfg.budget` pool pairs in rounds.

    x_labelled (n_l, k), y_labelled (n_l,) ints: the seed set; x_pool (n_p, k); oracle (n_p,): the
    labels a purchase reveals (read for bought positions only). pool_groups (n_p,): a source name per
    pool pair, for the per-round report. Returns the purchase order and one record per round.
    """
    check_config(cfg, len(x_pool))
    n_l, n_p = len(x_labelled), len(x_pool)
    x_all = np.concatenate([x_labelled, x_pool]).astype(np.float32)  # (n_l + n_p, k)
    y_all = np.concatenate([np.asarray(y_labelled, dtype=float), np.full(n_p, np.nan)])  # nan = unbought
    bought: list[int] = []  # pool positions in purchase order
    excluded = np.zeros(n_p, dtype=bool)
    history: list[np.ndarray] = []
    hard = np.zeros(n_l, dtype=bool)
    rounds: list[dict] = []
    clf = make_classifier(cfg.seed, cfg.classes, cfg.regularization) if _needs_classifier(cfg.strategy) or cfg.outliers == "datamap" else None
    strategy = _strategy(cfg)
    rng = np.random.default_rng(cfg.seed)
    density = None
    if cfg.outliers == "density":
        if cfg.strategy not in UNCERTAINTY:
            raise SelectionError(f"active_select.outliers 'density' weighs an uncertainty strategy's utility "
                                 f"({list(UNCERTAINTY)}); {cfg.strategy!r} has none to weigh")
        # Information density (Settles & Craven 2008): utility x typicality^beta, on the whole pool.
        density = np.round(typicality(x_all, cfg.neighbours) ** cfg.density_beta, PROB_DECIMALS)  # (n_l + n_p,)
    r = 0
    while len(bought) < cfg.budget:
        started = time.perf_counter()
        size = min(cfg.round_size, cfg.budget - len(bought))
        labelled_rows = np.concatenate([np.arange(n_l), n_l + np.asarray(bought, dtype=np.int64)])
        record: dict = {"round": r, "labelled_before": int(len(labelled_rows))}
        weight = None
        if clf is not None:
            clf.fit(x_all, y_all)
            if cfg.outliers == "datamap":
                probs = np.round(clf.predict_proba(x_all[labelled_rows]), PROB_DECIMALS)  # (labelled, classes)
                history.append(probs[np.arange(len(labelled_rows)), y_all[labelled_rows].astype(int)])
                hard = _hard_labelled(history, len(labelled_rows), cfg)
                in_hard_neighbourhood = np.zeros(n_p, dtype=bool)
                if hard.any():
                    # The share of hard pairs among a pool pair's labelled neighbours (n_p,): an
                    # uncertainty strategy's utility is scaled by (1 - share); the others skip the
                    # pairs where it reaches hard_share.
                    neighbours = nearest_keys(x_pool, x_all[labelled_rows], cfg.neighbours)  # (n_p, k)
                    hard_share = hard[neighbours].mean(axis=1)
                    in_hard_neighbourhood = (hard_share >= cfg.hard_share) & np.isnan(y_all[n_l:])
                    if cfg.strategy in UNCERTAINTY:
                        weight = np.concatenate([np.zeros(n_l), 1.0 - hard_share])
                    else:
                        excluded = in_hard_neighbourhood
                record.update(hard_labelled=int(hard.sum()), excluded_pool=int(excluded.sum()),
                              hard_neighbourhood_pool=int(in_hard_neighbourhood.sum()))
        open_pos = np.flatnonzero(np.isnan(y_all[n_l:]) & ~excluded)
        if len(open_pos) < size:  # the exclusions ate the pool: buy from what is left unbought
            open_pos = np.flatnonzero(np.isnan(y_all[n_l:]))
            record["exclusion_lifted"] = True
        if cfg.candidates and len(open_pos) > cfg.candidates:
            open_pos = np.sort(rng.choice(open_pos, size=cfg.candidates, replace=False))
        candidates = n_l + open_pos  # indices into x_all
        kwargs = {"clf": clf, "fit_clf": False} if _needs_classifier(cfg.strategy) else {}
        if density is not None:
            weight = density
        if cfg.strategy in UNCERTAINTY and weight is not None:
            kwargs["utility_weight"] = weight
        picked = np.asarray(strategy.query(x_all, y_all, candidates=candidates, batch_size=size, **kwargs),
                            dtype=np.int64) - n_l  # pool positions
        y_all[n_l + picked] = oracle[picked]
        record.update(_round_report(picked, oracle, x_pool, x_all[labelled_rows], pool_groups, cfg.classes))
        bought.extend(picked.tolist())
        record.update(bought=len(picked), labelled_after=int(n_l + len(bought)),
                      seconds=round(time.perf_counter() - started, 2))
        rounds.append(record)
        if progress is not None:
            progress(record)
        r += 1
    return RoundsResult(order=np.asarray(bought, dtype=np.int64), rounds=rounds,
                        hard_labelled=np.flatnonzero(hard) if cfg.outliers == "datamap" else None)


def _round_report(picked: np.ndarray, oracle: np.ndarray, x_pool: np.ndarray, x_before: np.ndarray,
                  groups: np.ndarray | None, classes: int) -> dict:
    """What one round bought: by class, by source, and how many picks are near-duplicates of a pair
    labelled before the round or of another pick of the same round."""
    x = x_pool[picked]
    before, _ = nearest_similarity(x, x_before)
    within = np.full(len(picked), -np.inf)
    if len(picked) > 1:
        xn = _normalised(x)
        sims = xn @ xn.T  # (picked, picked): a round is at most a few thousand pairs
        np.fill_diagonal(sims, -np.inf)
        within = sims.max(axis=1)
    report = {
        "by_class": {str(c): int((oracle[picked] == c).sum()) for c in range(classes)},
        "near_duplicates": int(((before >= NEAR_DUPLICATE) | (within >= NEAR_DUPLICATE)).sum()),
    }
    if groups is not None:
        names, counts = np.unique(groups[picked], return_counts=True)
        report["by_source"] = {str(n): int(c) for n, c in zip(names, counts)}
    return report
