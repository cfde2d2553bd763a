"""What one pipeline run measured, as the controller's search reads it: DEV numbers only.

`measurement(evaluate, timing, ...)` is pure (the contract's metrics/evaluate.json and
metrics/evaluate_timing.json in, a `Measurement` out); `read_measurement(repo)` reads those files
and the dev predictions of the deployed model and of the teacher after a `dvc exp run`;
`read_measurement_at(repo, rev)` reads the same files at an experiment's commit (a run made on
another host and fetched with `dvc exp pull`), without checking it out. Nothing
here looks at a `test` key or a test prediction file: the test split reports, it never chooses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.compare import prediction_file
from pipeline.targets import deployed_name


@dataclass(frozen=True)
class Measurement:
    """One run (one trial at one fidelity and seed) of the deployed model, on dev."""

    accuracy: float  # deployed model, dev, 0..1
    teacher_accuracy: float  # this run's teacher, dev, 0..1 (recorded; the target uses the pinned reference)
    size_ratio: float  # teacher size / deployed size
    speedup: float  # teacher / deployed latency at batch 32 (evaluate's interleaved repeats)
    speedup_b1: float | None  # the same at batch 1, p50; None when not timed
    labelled_fraction: float  # labelled pairs / pairs available
    size_mb: float
    latency_ms_b32: float
    latency_ms_b1: float | None
    # Per dev example, sorted by row_id: is the deployed model / the teacher right? Kept so that
    # trials and seeds can be paired example by example (pipeline.stats.paired_bootstrap).
    deployed_correct: np.ndarray
    teacher_correct: np.ndarray
    rows: str  # digest of the dev row_ids: pairs only runs scored on the same examples


def measurement(evaluate: dict, timing: dict, deployed: str, labelled_fraction: float,
                deployed_correct: np.ndarray, teacher_correct: np.ndarray, rows: str) -> Measurement:
    """Reads `models.<name>.dev`, the model's size and the timing file's speedups; never `test`."""
    model = evaluate["models"][deployed]
    timed = timing["models"][deployed]
    return Measurement(
        accuracy=float(model["dev"]["accuracy"]),
        teacher_accuracy=float(evaluate["models"]["teacher"]["dev"]["accuracy"]),
        size_ratio=float(model["size_ratio"]),
        speedup=float(timed["speedup"]),
        speedup_b1=float(timed["speedup_b1_p50"]) if "speedup_b1_p50" in timed else None,
        labelled_fraction=float(labelled_fraction),
        size_mb=float(model["size_mb"]),
        latency_ms_b32=float(timed["latency_ms_b32"]),
        latency_ms_b1=float(timed["latency_ms_b1_p50"]) if "latency_ms_b1_p50" in timed else None,
        deployed_correct=np.asarray(deployed_correct, dtype=bool),
        teacher_correct=np.asarray(teacher_correct, dtype=bool),
        rows=rows,
    )


def labelled_fraction(repo: str | Path) -> float:
    """Labelled pairs bought (seed + oracle picks) over all pairs the run could have labelled."""
    repo = Path(repo)
    prepared = json.loads((repo / "metrics" / "prepare.json").read_text())
    selected = json.loads((repo / "metrics" / "active_select.json").read_text())
    return selected["labelled_rows"] / (prepared["seed_rows"] + prepared["pool_rows"])


def rows_digest(row_ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(row_ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def dev_correct(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(row_ids sorted, correct per row) of one dev predictions file."""
    frame = pd.read_parquet(path, columns=["row_id", "label", "pred"])
    if frame["row_id"].duplicated().any():
        raise ValueError(f"{path}: duplicate row_id")
    frame = frame.sort_values("row_id")
    return frame["row_id"].to_numpy(), frame["pred"].to_numpy() == frame["label"].to_numpy()


def read_measurement(repo: str | Path, configured_deployed: str | None = None) -> Measurement:
    """The measurement a finished run left in `repo` (metrics/ and the dev predictions)."""
    repo = Path(repo)
    evaluate = json.loads((repo / "metrics" / "evaluate.json").read_text())
    timing = json.loads((repo / "metrics" / "evaluate_timing.json").read_text())
    deployed = deployed_name(configured_deployed, evaluate)
    rows, deployed_ok = dev_correct(repo / prediction_file(deployed, "dev"))
    teacher_rows, teacher_ok = dev_correct(repo / prediction_file("teacher", "dev", "evaluate_teacher"))
    if not np.array_equal(rows, teacher_rows):
        raise ValueError(f"{repo}: the deployed model's and the teacher's dev predictions cover different rows")
    return measurement(evaluate, timing, deployed, labelled_fraction(repo), deployed_ok, teacher_ok, rows_digest(rows))


METRIC_FILES = ("metrics/evaluate.json", "metrics/evaluate_timing.json", "metrics/prepare.json",
                "metrics/active_select.json")


def read_measurement_at(repo: str | Path, rev: str, configured_deployed: str | None = None) -> Measurement:
    """`read_measurement` of the run at commit `rev` of `repo` (git-tracked metrics and DVC-tracked
    predictions, read through dvc.api from the local DVC cache): the files are copied to a
    temporary directory in the layout read_measurement expects."""
    import dvc.api
    from dvc.exceptions import DvcException

    def copy(path: str, into: Path) -> None:
        target = into / path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with dvc.api.open(path, repo=str(repo), rev=rev, mode="rb") as handle:
                target.write_bytes(handle.read())
        except (FileNotFoundError, DvcException) as err:  # PathMissingError: absent, or not in the cache
            raise FileNotFoundError(f"{path} at {rev[:10]} in {repo}: not there, or its data is not in the "
                                    "local DVC cache (`dvc exp pull <git remote> <experiment>` fetches it)") from err

    with tempfile.TemporaryDirectory(prefix="sec-measure-") as tmp:
        into = Path(tmp)
        for path in METRIC_FILES:
            copy(path, into)
        deployed = deployed_name(configured_deployed, json.loads((into / METRIC_FILES[0]).read_text()))
        for path in (prediction_file(deployed, "dev"), prediction_file("teacher", "dev", "evaluate_teacher")):
            copy(str(path), into)
        return read_measurement(into, configured_deployed)


def pack(correct: np.ndarray) -> str:
    """A 0/1 vector as text for the study's storage (2,000 dev rows: 336 characters)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode()


def unpack(text: str, length: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:length].astype(bool)
