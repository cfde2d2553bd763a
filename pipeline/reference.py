"""The accuracy reference the search holds every trial against: the teacher's DEV accuracy as a
mean over seeds, pinned in controller/reference.json (committed).

Only `sec controller --pin-reference RUN [RUN ...]` writes it, from runs of the pipeline that
differ only in `seed`; the search reads it and never moves it. A reference re-pinned on each
controller run (what the old rule table did, from one seed) lets successive runs ratchet the
accuracy floor down; a reference from one seed moves by the seed spread (1.65 points over five
seeds here, reports/teacher_seeds.md), more than the 1-point target.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.stats import mean_ci
from pipeline.teacher_seeds import load_seed
from stages._io import write_json

REFERENCE = Path("controller") / "reference.json"


class ReferenceError(ValueError):
    """controller/reference.json is missing or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class Reference:
    teacher_dev_accuracy: float  # mean over `seeds`, 0..1
    seeds: list[int]
    values: list[float]  # each seed's teacher dev accuracy, 0..1
    low: float | None = None  # Student-t 95 % interval of the mean (None with one seed)
    high: float | None = None
    runs: list[str] | None = None

    def accuracy_drop_pts(self, accuracy: float) -> float:
        # Rounded so that float noise (0.60 - 0.59 = 0.01000...02) cannot turn a met target into a miss.
        return round((self.teacher_dev_accuracy - accuracy) * 100, 6)


def pin(runs: list[str | Path]) -> Reference:
    """The reference from run directories (each ran the pipeline at least to evaluate_teacher)."""
    if not runs:
        raise ReferenceError("--pin-reference needs at least one run directory (ideally 3+ seeds)")
    seeds = [load_seed(run) for run in runs]
    ids = [s["seed"] for s in seeds]
    if len(set(ids)) != len(ids):
        raise ReferenceError(f"the runs repeat a seed ({ids}): a mean over seeds needs distinct seeds")
    values = [s["dev_pct"] / 100 for s in seeds]
    mean, low, high = mean_ci(values)
    finite = len(values) > 1
    return Reference(mean, ids, values, low if finite else None, high if finite else None, [str(r) for r in runs])


def save(reference: Reference, repo: str | Path = ".") -> Path:
    path = Path(repo) / REFERENCE
    write_json(asdict(reference), path)
    return path


def load(repo: str | Path = ".") -> Reference:
    path = Path(repo) / REFERENCE
    if not path.is_file():
        raise ReferenceError(f"{path}: missing. Pin the teacher's dev accuracy over seeds first: "
                             "sec controller --pin-reference RUN [RUN ...]")
    try:
        raw = json.loads(path.read_text())
        reference = Reference(**raw)
        float(reference.teacher_dev_accuracy)
    except (ValueError, TypeError) as err:
        raise ReferenceError(f"{path}: not a reference ({err}); pin it again with sec controller --pin-reference") from None
    if not 0 < reference.teacher_dev_accuracy <= 1:
        raise ReferenceError(f"{path}: teacher_dev_accuracy must be in (0, 1], got {reference.teacher_dev_accuracy}")
    return reference
