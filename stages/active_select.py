"""active_select: spend the labelling budget on the pool pairs the current model is least sure of.

An acquisition model (the teacher's pretrained encoder, fine-tuned briefly on the seed set) scores
every unlabelled pool pair; the `budget` highest-scoring pairs are "annotated" from the oracle file
and join the seed set. `random` picks uniformly and is the baseline active selection must beat;
`all` labels the whole pool (the all-labels baseline the data target is measured against).
The rest of the pool stays unlabelled: distillation uses it as a transfer set (soft labels only).
With `pseudo_size` > 0 the acquisition model also pseudo-labels the unpicked pairs it is surest of
(semi-supervised self-training); they join the labelled file as source "pseudo" with a lower
loss weight, and do not count as labelled examples.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stages._cli import run
from stages._determinism import seed_everything
from stages._device import pick_device, resolve_precision
from stages._inference import predict_logits, softmax
from stages._io import DataError, read_pairs, write_metrics, write_pairs
from stages._models import load_pretrained_classifier
from stages._params import ActiveSelectParams, load_params
from stages._training import TrainConfig, checkpoint_dir_for, train


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
    rest_probs = probs[rest["row"].to_numpy()]  # (len(rest), 3)
    confidence = rest_probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")[:size]
    chosen = rest.iloc[order].assign(
        label=rest_probs[order].argmax(axis=1).astype("int64"), source="pseudo", weight=weight, score=confidence[order]
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


def pick(
    seed_set: pd.DataFrame, pool: pd.DataFrame, oracle: pd.DataFrame, scores: np.ndarray, budget: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top-`budget` pool rows by score get their oracle label -> (labelled, still unlabelled)."""
    if budget > len(pool):
        raise DataError(f"active_select.budget ({budget}) exceeds the pool ({len(pool)} rows)")
    if not pool["pool_id"].isin(oracle["pool_id"]).all():
        raise DataError("oracle.parquet lacks labels for some pool_id values")
    pool = pool.assign(score=scores)
    order = np.argsort(-scores, kind="stable")
    picked = pool.iloc[order[:budget]]
    rest = pool.iloc[order[budget:]].sort_values("pool_id")
    labels = oracle.set_index("pool_id")["label"]
    picked = picked.assign(label=labels.loc[picked["pool_id"]].to_numpy(), source="oracle")
    labelled = pd.concat([seed_set.assign(score=np.nan), picked.drop(columns="pool_id")], ignore_index=True)
    return labelled, rest.reset_index(drop=True)


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
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    started = time.perf_counter()
    metrics: dict = {"strategy": params.strategy, "budget": params.budget, "pool_rows": len(pool)}
    probs = None
    budget = len(pool) if params.strategy == "all" else params.budget
    needs_model = params.strategy in ("entropy", "margin") or params.pseudo_size > 0
    if params.strategy in ("random", "all"):
        scores = uncertainty(np.zeros((len(pool), 3)), "random", seed)
    if needs_model:
        model, tokenizer = load_pretrained_classifier(teacher, seed=seed)
        cfg = TrainConfig(
            epochs=params.acquisition_epochs,
            batch_size=params.batch_size,
            learning_rate=params.learning_rate,
            seed=seed,
            max_length=max_length,
            precision=precision,
        )
        metrics["acquisition"] = train(model, tokenizer, seed_set, cfg, checkpoint_dir=checkpoint_dir, device=device)
        probs = score_pool(model, tokenizer, pool, max_length=max_length)  # (len(pool), 3)
        if params.strategy in ("entropy", "margin"):
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
        mean_score_picked=float(picked_scores.mean()) if len(picked_scores) else 0.0,
        mean_score_pool=float(np.mean(scores)) if len(scores) else 0.0,
        picked_label_counts={
            str(k): int(v) for k, v in labelled.loc[labelled["source"] == "oracle", "label"].value_counts().sort_index().items()
        },
        seconds=round(time.perf_counter() - started, 1),
    )
    return labelled, rest, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", required=True, help="directory with seed/pool/oracle.parquet")
    parser.add_argument("--out-dir", required=True, help="writes labelled.parquet and unlabelled.parquet")
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
    job = {"active_select": params.active_select.model_dump(), "model": params.model.model_dump(), "seed": params.seed,
           "precision": precision}
    labelled, rest, metrics = active_select(
        seed_set, pool, oracle, params.active_select,
        teacher=params.model.teacher, max_length=params.model.max_length, seed=params.seed,
        checkpoint_dir=checkpoint_dir_for("active_select", job, [prepared / "seed.parquet"]),
        device=device, precision=precision,
    )
    write_pairs(labelled, Path(args.out_dir) / "labelled.parquet")
    write_pairs(rest, Path(args.out_dir) / "unlabelled.parquet")
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(f"active_select ({params.active_select.strategy}): {metrics['labelled_rows']} labelled rows")


if __name__ == "__main__":
    run(main)
