"""prepare: MNLI -> dev split, labelled seed set, unlabelled pool (+ its oracle labels kept apart), test split.

The pool's labels go to a separate file that only active selection reads, as the oracle that
"annotates" what it picks; nothing else may train on them. The dev split (held out of the training pool before anything
else is drawn) is what decisions read; the test split (validation_matched) is only reported.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from stages._cli import run
from stages._determinism import seed_everything
from stages._io import UNLABELLED, DataError, read_pairs, validate_pairs, write_metrics, write_pairs
from stages._params import DataParams, load_params

_FORMATS = (".parquet", ".jsonl", ".tsv")


def _local_split(directory: Path, split: str) -> Path:
    """A split name (a file `<split>.<ext>` in `directory`) or a path to a file, as given."""
    given = Path(split)
    if given.suffix.lower() in _FORMATS and given.is_file():
        return given
    for suffix in _FORMATS:
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: no file for split {split!r} (looked for {split}{{{','.join(_FORMATS)}}})")


def load_mnli(data: DataParams) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, str]:
    """({training split: its pairs}, eval pairs, where they came from): `data.local_dir` if set, else the hub."""
    if data.local_dir:
        directory = Path(data.local_dir)
        if not directory.is_dir():
            raise DataError(f"{directory}: data.local_dir does not exist (set it to null to use the hub)")
        trains = {split: read_pairs(_local_split(directory, split)) for split in data.train_splits}
        return trains, read_pairs(_local_split(directory, data.eval_split)), str(directory)
    from datasets import load_dataset  # the hub path; needs network

    frames = {}
    for split in (*data.train_splits, data.eval_split):
        ds = load_dataset(data.hub_id, data.hub_config, split=split)
        frames[split] = validate_pairs(ds.to_pandas(), f"hub:{data.hub_id}/{data.hub_config}/{split}")
    evaluation = frames.pop(data.eval_split)
    return frames, evaluation, f"hub:{data.hub_id}/{data.hub_config}"


def _label_counts(frame: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()}


_NOT_WORD = re.compile(r"[^0-9a-z]+")


def pair_key(premise: pd.Series, hypothesis: pd.Series) -> pd.Series:
    """A pair's text with case, punctuation and spacing removed: the same pair written with other
    spacing or quotes (train_20k.parquet was detokenized) gets the same key."""
    def norm(text: pd.Series) -> pd.Series:
        return text.str.lower().map(lambda t: _NOT_WORD.sub(" ", t).strip())

    return norm(premise) + " || " + norm(hypothesis)


def combine_training(trains: dict[str, pd.DataFrame], test: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Every training file's pairs in one frame, minus repeats and minus pairs of the test split.

    `row_id` numbers the pairs of all files in the order given (file after file, each in its own
    row order), so it stays the key per-example predictions are paired on; `split` names the file.
    A pair in two files, or twice in one, is kept once (its first occurrence); a pair that is also
    in the test split is dropped, so no training or dev pair is a test pair. Both counts are reported.
    """
    keep = ["premise", "hypothesis", "label"]
    frames = [frame[keep].assign(split=name) for name, frame in trains.items()]
    train = pd.concat(frames, ignore_index=True).rename_axis("row_id").reset_index()
    key = pair_key(train["premise"], train["hypothesis"])
    repeated = key.duplicated()
    in_test = key.isin(set(pair_key(test["premise"], test["hypothesis"])))
    report = {
        "train_pairs_read": {name: len(frame) for name, frame in trains.items()},
        "removed_repeated_pairs": int(repeated.sum()),
        "removed_test_pairs": int((in_test & ~repeated).sum()),
    }
    return train[~repeated & ~in_test].reset_index(drop=True), report


def prepare(
    trains: dict[str, pd.DataFrame] | pd.DataFrame, evaluation: pd.DataFrame, data: DataParams, seed: int
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Split deterministically by seed. Returns frames seed/pool/oracle/dev/test/pool_origin and metrics.

    `trains`: the training files' pairs by split name (one frame: a single split named "train").
    The dev split is drawn first, from `data.dev_from` (all training files when null), so no later
    choice (seed set, pool, budget) can reach it: it is what every decision reads. `test` is the
    evaluation split (validation_matched), only reported. `data.split_seed` (null: `seed`) draws
    the split, so the seeds of a study can vary training while dev, seed set and pool stay put.
    `row_id` is the pair's row in the training files (see combine_training) or the test file: the
    key per-example predictions are paired on across runs and commits.
    """
    if isinstance(trains, pd.DataFrame):
        trains = {"train": trains}
    split_seed = seed if data.split_seed is None else data.split_seed
    test = evaluation[["premise", "hypothesis", "label"]].reset_index(drop=True).rename_axis("row_id").reset_index()
    train, removed = combine_training(trains, test)
    dev_from = data.dev_from or list(trains)
    unknown = [name for name in dev_from if name not in trains]
    if unknown:
        raise DataError(f"data.dev_from names {unknown}, which are not in data.train_splits {list(trains)}")
    shuffled = train.sample(frac=1.0, random_state=split_seed).reset_index(drop=True)
    # Dev first, from its files only; then the rest (every file, dev's leftovers included).
    eligible = shuffled["split"].isin(dev_from)
    if data.dev_size > int(eligible.sum()):
        raise DataError(f"data.dev_size ({data.dev_size}) exceeds the {int(eligible.sum())} distinct pairs of "
                        f"data.dev_from {dev_from}; lower it in params.yaml")
    dev_index = shuffled.index[eligible][: data.dev_size]
    rest = shuffled.drop(index=dev_index).reset_index(drop=True)
    labelable = len(rest)
    pool_size = data.pool_size or labelable - data.seed_size
    if data.seed_size + pool_size > labelable or pool_size <= 0:
        raise DataError(
            f"data.dev_size ({data.dev_size}) + data.seed_size ({data.seed_size}) + data.pool_size "
            f"({data.pool_size or 'the rest'}) exceed the {len(shuffled)} distinct training pairs; lower them in params.yaml"
        )
    dev = shuffled.loc[dev_index].sort_values("row_id").drop(columns="split").assign(source="gold", weight=1.0)
    seed_set = rest.iloc[: data.seed_size].drop(columns=["row_id", "split"]).assign(source="gold", weight=1.0)
    pool_rows = rest.iloc[data.seed_size : data.seed_size + pool_size].drop(columns=["row_id"]).reset_index(drop=True)
    pool_rows.insert(0, "pool_id", range(len(pool_rows)))
    # Which training file each pool pair came from: active_select reports its purchases by source.
    pool_origin = pool_rows[["pool_id", "split"]].rename(columns={"split": "origin"})
    pool_rows = pool_rows.drop(columns="split")
    oracle = pool_rows[["pool_id", "label"]]
    pool = pool_rows.assign(label=UNLABELLED, source="pool", weight=1.0)

    if data.eval_size and data.eval_size < len(test):
        test = test.sample(n=data.eval_size, random_state=split_seed).sort_values("row_id")
    test = test.reset_index(drop=True).assign(source="gold", weight=1.0)

    frames = {
        "seed": seed_set.reset_index(drop=True), "pool": pool, "oracle": oracle,
        "dev": dev.reset_index(drop=True), "test": test, "pool_origin": pool_origin,
    }
    metrics = {
        **removed,
        "train_pairs_available": len(shuffled),
        "train_pairs_by_split": {str(k): int(v) for k, v in shuffled["split"].value_counts().sort_index().items()},
        "dev_from": dev_from,
        "split_seed": split_seed,
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
    parser.add_argument("--out-dir", required=True, help="writes seed/pool/oracle/dev/test/pool_origin.parquet here")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run_info = seed_everything(params.seed, params.threads)
    trains, evaluation, origin = load_mnli(params.data)
    frames, metrics = prepare(trains, evaluation, params.data, params.seed)
    metrics["source"] = origin
    for name, frame in frames.items():
        write_pairs(frame, Path(args.out_dir) / f"{name}.parquet")
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(f"prepare: {metrics['seed_rows']} seed, {metrics['pool_rows']} pool, "
          f"{metrics['dev_rows']} dev, {metrics['test_rows']} test rows from {origin} "
          f"({metrics['removed_repeated_pairs']} repeated and {metrics['removed_test_pairs']} test pairs removed)")


if __name__ == "__main__":
    run(main)
