"""The one place that reads and writes datasets and metrics.

Dataset contract (Parquet, one row per pair):
  premise: str, hypothesis: str,
  label: int (0 entailment, 1 neutral, 2 contradiction; -1 unlabelled),
  source: str (gold, oracle, synonym, backtranslation, pseudo, ...),
  weight: float (per-example loss weight).
Stages only append rows or columns they own. Every write is atomic (temp file + rename) so a killed
stage never leaves a half-written output for DVC or the next stage to pick up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

LABEL_NAMES = ("entailment", "neutral", "contradiction")
UNLABELLED = -1
PAIR_COLUMNS = ("premise", "hypothesis")
# GLUE TSV files name the columns differently and spell labels out.
_GLUE_TSV_COLUMNS = {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"}


class DataError(ValueError):
    """A dataset file is missing, empty or malformed; the message names the file and row."""


class ModelError(RuntimeError):  # a missing model *package* is one too; stages._models raises it
    """A model could not be resolved or loaded; the message says how to fix it."""


class MissingPackageError(RuntimeError):
    """A system or model package the stage needs is absent; the message gives the install command."""


def _read_any(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=True)
        if suffix == ".tsv":
            df = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False)
            return df.rename(columns=_GLUE_TSV_COLUMNS)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: cannot be read as {suffix[1:]}: {err}") from None
    raise DataError(f"{path}: unsupported format {suffix!r} (use .parquet, .jsonl or .tsv)")


def _normalise_labels(df: pd.DataFrame, path: Path, allow_unlabelled: bool) -> pd.Series:
    """Map labels to ints 0..2 (-1 allowed for unlabelled rows); names the first bad row."""
    allowed = {0, 1, 2} | ({UNLABELLED} if allow_unlabelled else set())
    by_name = {name: i for i, name in enumerate(LABEL_NAMES)}
    out = []
    for row, value in enumerate(df["label"].tolist()):
        label = value
        if isinstance(value, str):
            label = by_name.get(value.strip().lower(), value)
            if isinstance(label, str) and label.lstrip("-").isdigit():
                label = int(label)
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        if not isinstance(label, int) or isinstance(label, bool) or label not in allowed:
            raise DataError(
                f"{path}: row {row}: unknown label {value!r} "
                f"(expected one of {sorted(allowed)} or {list(LABEL_NAMES)})"
            )
        out.append(label)
    return pd.Series(out, index=df.index, dtype="int64")


def validate_pairs(
    df: pd.DataFrame,
    source: str | Path,
    *,
    require_label: bool = True,
    allow_unlabelled: bool = False,
    allow_empty: bool = False,
) -> pd.DataFrame:
    """Check the dataset contract; return a copy with normalised dtypes and default columns."""
    path = Path(source)
    needed = list(PAIR_COLUMNS) + (["label"] if require_label else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    if len(df) == 0 and not allow_empty:
        raise DataError(f"{path}: no rows")
    df = df.reset_index(drop=True).copy()
    for col in PAIR_COLUMNS:
        bad = df[col].map(lambda v: not isinstance(v, str))
        if bad.any():
            row = int(bad.idxmax())
            raise DataError(f"{path}: row {row}: column {col!r} is {df[col][row]!r}, expected text")
    if "label" in df.columns:
        df["label"] = _normalise_labels(df, path, allow_unlabelled)
    if "source" not in df.columns:
        df["source"] = "gold"
    if "weight" not in df.columns:
        df["weight"] = 1.0
    df["weight"] = df["weight"].astype("float64")
    return df


def read_pairs(
    path: str | Path, *, require_label: bool = True, allow_unlabelled: bool = False, allow_empty: bool = False
) -> pd.DataFrame:
    """`allow_empty`: for files that are legitimately empty, e.g. the unlabelled rest of a pool
    that the all-labels baseline labelled completely."""
    path = Path(path)
    return validate_pairs(
        _read_any(path), path, require_label=require_label, allow_unlabelled=allow_unlabelled, allow_empty=allow_empty
    )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success move it into place, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write text or bytes through atomic_path: a reader (DVC, a browser) never sees a torn file."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


def write_pairs(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.reset_index(drop=True).to_parquet(tmp, index=False)


def write_json(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return json.loads(path.read_text())


def _json_default(value):
    # numpy scalars and paths show up in metrics dicts.
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_metrics(metrics: dict, path: str | Path) -> None:
    write_json(metrics, path)
