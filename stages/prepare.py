"""prepare: MNLI -> dev split, labelled seed set, unlabelled pool (+ its oracle labels kept apart), test split.

The pool's labels go to a separate file that only active selection reads, as the oracle that
"annotates" what it picks; nothing else may train on them. The dev split (held out of the training pool before anything
else is drawn) is what decisions read; the test split (validation_matched) is only reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from stages._cli import run
from stages._determinism import seed_everything
from stages._io import UNLABELLED, DataError, read_pairs, validate_pairs, write_metrics, write_pairs
from stages._params import DataParams, load_params

_FORMATS = (".parquet", ".jsonl", ".tsv")


def _local_split(directory: Path, split: str) -> Path:
    for suffix in _FORMATS:
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: no file for split {split!r} (looked for {split}{{{','.join(_FORMATS)}}})")


def load_mnli(data: DataParams) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(train, eval, where they came from) from `data.local_dir` if set, else from the hub."""
    if data.local_dir:
        directory = Path(data.local_dir)
        if not directory.is_dir():
            raise DataError(f"{directory}: data.local_dir does not exist (set it to null to use the hub)")
        train_path = _local_split(directory, data.train_split)
        eval_path = _local_split(directory, data.eval_split)
        return read_pairs(train_path), read_pairs(eval_path), str(directory)
    from datasets import load_dataset  # the hub path; needs network

    frames = []
    for split in (data.train_split, data.eval_split):
        ds = load_dataset(data.hub_id, data.hub_config, split=split)
        source = f"hub:{data.hub_id}/{data.hub_config}/{split}"
        frames.append(validate_pairs(ds.to_pandas(), source))
    return frames[0], frames[1], f"hub:{data.hub_id}/{data.hub_config}"


def _label_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()}


def prepare(
    train: pd.DataFrame, evaluation: pd.DataFrame, data: DataParams, seed: int
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Split deterministically by seed. Returns frames seed/pool/oracle/dev/test and metrics.

    The dev split is drawn first, so no later choice (seed set, pool, budget) can reach it: it is
    what every decision reads. `test` is the evaluation split (validation_matched), only reported.
    `row_id` is the pair's row in its source file: the key per-example predictions are paired on
    across runs and commits.
    """
    keep = ["premise", "hypothesis", "label"]
    train = train[keep].reset_index(drop=True).rename_axis("row_id").reset_index()
    train = train.drop_duplicates(subset=["premise", "hypothesis"]).reset_index(drop=True)
    shuffled = train.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    labelable = len(shuffled) - data.dev_size
    pool_size = data.pool_size or labelable - data.seed_size
    if data.dev_size + data.seed_size + pool_size > len(shuffled) or pool_size <= 0:
        raise DataError(
            f"data.dev_size ({data.dev_size}) + data.seed_size ({data.seed_size}) + data.pool_size "
            f"({data.pool_size or 'the rest'}) exceed the {len(shuffled)} distinct training pairs; lower them in params.yaml"
        )
    dev = shuffled.iloc[: data.dev_size].sort_values("row_id").assign(source="gold", weight=1.0)
    rest = shuffled.iloc[data.dev_size :].reset_index(drop=True)
    seed_set = rest.iloc[: data.seed_size].drop(columns="row_id").assign(source="gold", weight=1.0)
    pool_rows = rest.iloc[data.seed_size : data.seed_size + pool_size].drop(columns="row_id").reset_index(drop=True)
    pool_rows.insert(0, "pool_id", range(len(pool_rows)))
    oracle = pool_rows[["pool_id", "label"]]
    pool = pool_rows.assign(label=UNLABELLED, source="pool", weight=1.0)

    test = evaluation[keep].reset_index(drop=True).rename_axis("row_id").reset_index()
    if data.eval_size and data.eval_size < len(test):
        test = test.sample(n=data.eval_size, random_state=seed).sort_values("row_id")
    test = test.reset_index(drop=True).assign(source="gold", weight=1.0)

    frames = {
        "seed": seed_set.reset_index(drop=True), "pool": pool, "oracle": oracle,
        "dev": dev.reset_index(drop=True), "test": test,
    }
    metrics = {
        "train_pairs_available": len(shuffled),
        "dev_rows": len(dev),
        "seed_rows": len(seed_set),
        "pool_rows": len(pool),
        "test_rows": len(test),
        "seed_label_counts": _label_counts(seed_set),
        "dev_label_counts": _label_counts(dev),
        "test_label_counts": _label_counts(test),
    }
    return frames, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", required=True, help="writes seed/pool/oracle/dev/test.parquet here")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run_info = seed_everything(params.seed, params.threads)
    train, evaluation, origin = load_mnli(params.data)
    frames, metrics = prepare(train, evaluation, params.data, params.seed)
    metrics["source"] = origin
    for name, frame in frames.items():
        write_pairs(frame, Path(args.out_dir) / f"{name}.parquet")
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(f"prepare: {metrics['seed_rows']} seed, {metrics['pool_rows']} pool, "
          f"{metrics['dev_rows']} dev, {metrics['test_rows']} test rows from {origin}")


if __name__ == "__main__":
    run(main)
