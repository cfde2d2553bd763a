"""active_select: spend the labelling budget on the pool pairs the current model is least sure of.

An acquisition model (the teacher's pretrained encoder, fine-tuned briefly on the seed set) scores
every unlabelled pool pair; the `budget` highest-scoring pairs are "annotated" from the oracle file
and join the seed set. `random` picks uniformly and is the baseline active selection must beat;
`all` labels the whole pool (the all-labels baseline the data target is measured against).
The rest of the pool stays unlabelled: distillation uses it as a transfer set (soft labels only).
With `candidates` > 0 only a random subset of the pool of that size is scored (and picked from):
scoring every pair of a 26k-pair pool with the fp32 model takes minutes on a 2-core CPU.
The acquisition model is scored on dev after training and stops the stage below
`active_select.min_dev_accuracy` (stages._health). Stored scores are rounded (SCORE_DECIMALS), so
that the same picks made on another CPU, whose scores differ in the 8th digit, give the same files.
With `pseudo_size` > 0 the acquisition model also pseudo-labels the unpicked pairs it is surest of
(semi-supervised self-training); they join the labelled file as source "pseudo" with a lower
loss weight, and do not count as labelled examples.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from stages._cli import run
from stages._determinism import seed_everything
from stages._device import pick_device, resolve_precision
from stages._health import dev_health
from stages._inference import predict_logits, softmax
from stages._io import DataError, read_pairs, write_metrics, write_pairs
from stages._models import load_pretrained_classifier, save_model
from stages._params import ActiveSelectParams, load_params
from stages._training import TrainConfig, checkpoint_dir_for, train

# Decimals kept of a stored acquisition score or pseudo-label confidence: enough to rank, few enough
# that another CPU's last-bit differences round to the same value (and the same data hash).
SCORE_DECIMALS = 4


def candidate_positions(pool_size: int, candidates: int, seed: int) -> np.ndarray:
    """Sorted positions of the pool rows to score: all of them, or `candidates` drawn with `seed`."""
    if candidates <= 0 or candidates >= pool_size:
        return np.arange(pool_size)
    return np.sort(np.random.default_rng(seed).choice(pool_size, size=candidates, replace=False))


def uncertainty(probs: np.ndarray, strategy: str, seed: int) -> np.ndarray:
    """Higher = more worth labelling. probs (n, c) -> scores (n,)."""
    if strategy == "entropy":
        return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)
    if strategy == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])  # small margin between the two best = unsure
    if strategy == "random":
        return np.random.default_rng(seed).random(len(probs))
    raise ValueError(f"unknown strategy {strategy!r}")


def pseudo_label(rest: pd.DataFrame, probs: np.ndarray, size: int, weight: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The `size` rows of `rest` with the most confident prediction get it as a label.

    rest: unpicked pool rows, `row` = their position in the pool; probs (len(pool), 3).
    Returns (pseudo-labelled rows, still unlabelled rows).
    """
    if size == 0 or len(rest) == 0:
        return rest.iloc[:0].assign(label=pd.Series(dtype="int64"), source="pseudo"), rest
    rest_probs = probs[rest["row"].to_numpy()]  # (len(rest), 3); NaN rows were not scored
    scored = ~np.isnan(rest_probs).any(axis=1)
    confidence = np.where(scored, np.nan_to_num(rest_probs).max(axis=1), -1.0)
    order = np.argsort(-confidence, kind="stable")[: min(size, int(scored.sum()))]
    chosen = rest.iloc[order].assign(
        label=rest_probs[order].argmax(axis=1).astype("int64"), source="pseudo", weight=weight,
        score=np.round(confidence[order], SCORE_DECIMALS),
    )
    remaining = rest.drop(index=rest.index[order]).reset_index(drop=True)
    return chosen.reset_index(drop=True), remaining


def score_pool(model, tokenizer, pool: pd.DataFrame, *, max_length: int) -> np.ndarray:
    """Class probabilities of every pool pair, shape (len(pool), 3), row i = pool row i.

    Runs wherever the model is (after training, the Trainer's device); what acquisition scoring
    and pseudo-labelling both read.
    """
    logits = predict_logits(
        model, tokenizer, pool["premise"].tolist(), pool["hypothesis"].tolist(),
        batch_size=64, max_length=max_length, desc="score pool",
    )
    return softmax(logits)


def check_budget(budget: int, pool_rows: int) -> None:
    if budget > pool_rows:
        raise DataError(f"active_select.budget ({budget}) exceeds the pool ({pool_rows} rows)")


def pick(
    seed_set: pd.DataFrame, pool: pd.DataFrame, oracle: pd.DataFrame, scores: np.ndarray, budget: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-`budget` pool rows by score get their oracle label -> (labelled, still unlabelled)."""
    check_budget(budget, len(pool))
    if not pool["pool_id"].isin(oracle["pool_id"]).all():
        raise DataError("oracle.parquet lacks labels for some pool_id values")
    if budget > int(np.isfinite(scores).sum()):
        raise DataError(f"active_select.budget ({budget}) exceeds the {int(np.isfinite(scores).sum())} scored pool "
                        "rows (active_select.candidates); raise candidates or lower the budget")
    scores = np.round(scores, SCORE_DECIMALS)
    pool = pool.assign(score=scores)
    # Unscored rows (NaN, outside the candidates) sort last; ties keep pool order (stable).
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    picked = pool.iloc[order[:budget]]
    rest = pool.iloc[order[budget:]].sort_values("pool_id")
    labels = oracle.set_index("pool_id")["label"]
    picked = picked.assign(label=labels.loc[picked["pool_id"]].to_numpy(), source="oracle")
    labelled = pd.concat([seed_set.assign(score=np.nan), picked.drop(columns="pool_id")], ignore_index=True)
    return labelled, rest.reset_index(drop=True)


def embedding_scores(seed_set: pd.DataFrame, pool: pd.DataFrame, oracle: pd.DataFrame, params: ActiveSelectParams, *,
                     teacher: str, max_length: int, seed: int, budget: int,
                     pool_origin: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Scores (len(pool),) from iterative selection on pretrained embeddings: the k-th purchase
    scores budget - k (exact integers, so pick's rounding keeps the order), the unbought NaN."""
    from stages._active_rounds import RoundsConfig, select_in_rounds
    from stages._embeddings import embed_pairs, load_encoder

    started = time.perf_counter()
    encoder, tokenizer = load_encoder(teacher)
    x_seed = embed_pairs(encoder, tokenizer, seed_set, features="pair", max_length=max_length, desc="embed seed set")
    x_pool = embed_pairs(encoder, tokenizer, pool, features="pair", max_length=max_length, desc="embed pool")
    embedded = time.perf_counter()
    labels = oracle.set_index("pool_id")["label"].loc[pool["pool_id"]].to_numpy()  # read for bought rows only
    cfg = RoundsConfig(strategy=params.strategy, budget=budget, round_size=params.round_size, seed=seed,
                       outliers=params.outliers, hard_threshold=params.hard_threshold, candidates=params.candidates)

    def show(record: dict) -> None:
        print(f"active_select round {record['round']}: {record['labelled_after']} labelled "
              f"({record['seconds']} s; by class {record['by_class']})", flush=True)

    result = select_in_rounds(x_seed, seed_set["label"].to_numpy(), x_pool, labels, cfg, pool_groups=pool_origin,
                              progress=show)
    scores = np.full(len(pool), np.nan)
    scores[result.order] = budget - np.arange(len(result.order), dtype=float)
    return scores, {"kind": "embedding", "features": "pair", "embedding_seconds": round(embedded - started, 1),
                    "rounds_seconds": round(time.perf_counter() - embedded, 1), "rounds": result.rounds,
                    "hard_labelled": None if result.hard_labelled is None else int(len(result.hard_labelled))}


def active_select(
    seed_set: pd.DataFrame,
    pool: pd.DataFrame,
    oracle: pd.DataFrame,
    params: ActiveSelectParams,
    *,
    teacher: str,
    max_length: int,
    seed: int,
    checkpoint_dir: str | Path,
    device=None,
    precision: str = "fp32",
    pooling: str = "auto",
    dev: pd.DataFrame | None = None,
    on_model: Callable[[object, object], None] | None = None,
    pool_origin: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """`dev`: scores the acquisition model on it (raises ModelDidNotLearnError below the floor).
    `on_model(model, tokenizer)`: called with the acquisition model once trained and checked
    (main saves it there when `keep_model` is set). `pool_origin` (len(pool),): each pool pair's
    source file, for the per-round report of acquisition "embedding"."""
    started = time.perf_counter()
    metrics: dict = {"strategy": params.strategy, "budget": params.budget, "pool_rows": len(pool)}
    probs = None
    budget = len(pool) if params.strategy == "all" else params.budget
    in_rounds = params.acquisition == "embedding" and params.strategy not in ("random", "all")
    check_budget(budget, len(pool))  # before minutes of embedding or training, not after
    one_shot = params.strategy in ("entropy", "margin") and not in_rounds
    needs_model = one_shot or params.pseudo_size > 0 or params.keep_model
    if params.strategy in ("random", "all"):
        scores = uncertainty(np.zeros((len(pool), 3)), "random", seed)
    if in_rounds:
        scores, metrics["acquisition"] = embedding_scores(
            seed_set, pool, oracle, params, teacher=teacher, max_length=max_length, seed=seed, budget=budget,
            pool_origin=pool_origin)
    if needs_model:
        model, tokenizer = load_pretrained_classifier(teacher, seed=seed, pooling=pooling)
        cfg = TrainConfig(
            epochs=params.acquisition_epochs,
            batch_size=params.batch_size,
            learning_rate=params.learning_rate,
            head_learning_rate=params.head_learning_rate,
            seed=seed,
            max_length=max_length,
            precision=precision,
        )
        metrics["acquisition"] = train(model, tokenizer, seed_set, cfg, checkpoint_dir=checkpoint_dir, device=device)
        if dev is not None:
            metrics["acquisition"]["health"] = dev_health(
                model, tokenizer, dev, stage="active_select (acquisition model)", section="active_select",
                min_accuracy=params.min_dev_accuracy, max_length=max_length)
        if on_model is not None:
            on_model(model, tokenizer)
    if needs_model and (one_shot or params.pseudo_size > 0):
        # Scoring the pool is for picking and pseudo-labels; a model kept only for generate skips it.
        scored = candidate_positions(len(pool), params.candidates, seed)
        probs = np.full((len(pool), 3), np.nan)
        probs[scored] = score_pool(model, tokenizer, pool.iloc[scored], max_length=max_length)  # (len(pool), 3)
        metrics["scored_rows"] = int(len(scored))
        if one_shot:
            scores = uncertainty(probs, params.strategy, seed)
    labelled, rest = pick(seed_set, pool, oracle, scores, budget)
    picked_scores = labelled["score"].dropna()
    gold_rows = len(labelled)
    if probs is not None and params.pseudo_size > 0:
        position = pd.Series(np.arange(len(pool)), index=pool["pool_id"].to_numpy())
        pseudo, rest = pseudo_label(
            rest.assign(row=position.loc[rest["pool_id"]].to_numpy()), probs, params.pseudo_size, params.pseudo_weight
        )
        pseudo_correct = None
        if len(pseudo):
            truth = oracle.set_index("pool_id")["label"].loc[pseudo["pool_id"]].to_numpy()
            # Measured, never used for training: how often a pseudo label matches the oracle's.
            pseudo_correct = float((truth == pseudo["label"].to_numpy()).mean())
        labelled = pd.concat([labelled, pseudo.drop(columns=["pool_id", "row"])], ignore_index=True)
        rest = rest.drop(columns="row")
        metrics.update(pseudo_rows=len(pseudo), pseudo_label_accuracy=pseudo_correct)
    else:
        metrics.update(pseudo_rows=0, pseudo_label_accuracy=None)
    metrics.update(
        labelled_rows=gold_rows,
        label_fraction=round(gold_rows / (len(seed_set) + len(pool)), 4),
        unlabelled_rows=len(rest),
        mean_score_picked=round(float(picked_scores.mean()), 6) if len(picked_scores) else 0.0,
        mean_score_pool=round(float(np.nanmean(scores)), 6) if np.isfinite(scores).any() else 0.0,
        picked_label_counts={
            str(k): int(v) for k, v in labelled.loc[labelled["source"] == "oracle", "label"].value_counts().sort_index().items()
        },
        seconds=round(time.perf_counter() - started, 1),
    )
    return labelled, rest, metrics


def _keeper(directory: Path, params) -> Callable[[object, object], None]:
    def keep(model, tokenizer) -> None:
        save_model(model, tokenizer, directory, {"stage": "active_select", "parent": params.model.teacher,
                                                  "params": {"active_select": params.active_select.model_dump()}})
    return keep


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="directory with seed/pool/oracle.parquet")
    parser.add_argument("--out-dir", required=True,
                        help="writes labelled.parquet and unlabelled.parquet (and acquisition/ with keep_model)")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    device = pick_device(params.device)
    run_info = seed_everything(params.seed, params.threads, device)
    precision = resolve_precision(params.train.precision, device)
    prepared = Path(args.prepared)
    seed_set = read_pairs(prepared / "seed.parquet")
    pool = read_pairs(prepared / "pool.parquet", allow_unlabelled=True)
    oracle = pd.read_parquet(prepared / "oracle.parquet")
    dev = read_pairs(prepared / "dev.parquet")
    origin_file = prepared / "pool_origin.parquet"
    pool_origin = None
    if origin_file.exists():
        origin = pd.read_parquet(origin_file).set_index("pool_id")["origin"]
        pool_origin = origin.reindex(pool["pool_id"]).fillna("unknown").astype(str).to_numpy()
    job = {"active_select": params.active_select.model_dump(), "model": params.model.model_dump(), "seed": params.seed,
           "precision": precision}
    labelled, rest, metrics = active_select(
        seed_set, pool, oracle, params.active_select,
        teacher=params.model.teacher, max_length=params.model.max_length, seed=params.seed,
        checkpoint_dir=checkpoint_dir_for("active_select", job, [prepared / "seed.parquet"]),
        device=device, precision=precision, pooling=params.model.pooling, dev=dev,
        on_model=_keeper(Path(args.out_dir) / "acquisition", params) if params.active_select.keep_model else None,
        pool_origin=pool_origin,
    )
    write_pairs(labelled, Path(args.out_dir) / "labelled.parquet")
    write_pairs(rest, Path(args.out_dir) / "unlabelled.parquet")
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(f"active_select ({params.active_select.strategy}): {metrics['labelled_rows']} labelled rows")


if __name__ == "__main__":
    run(main)
