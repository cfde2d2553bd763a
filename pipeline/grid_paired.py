"""Paired comparisons between grid rows on per-example predictions, pooled over seeds.

A grid row's runs differ only in `seed`; two rows compared at the same seed share the dev and test
rows (prepare draws them from the seed), so the comparison is paired: the seeds both rows ran are
pooled, the bootstrap resampling within each seed, with an exact McNemar test on the same pairs
(pipeline.compare.compare_predictions, the same computation as `sec compare`). The DEV split
decides (Table 2's `helped`, verdicts.json); the TEST split is only reported (the claims table
gives both).

Prediction files are DVC outputs of each experiment, read at the experiment's commit through a
`Loader` (`dvc_loader(repo)` in use; tests inject frames), so nothing here runs a stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pandas as pd

from pipeline.compare import SPLITS, compare_predictions, prediction_file, read_at_rev
from pipeline.grid_variants import TEACHER_TARGET

# (record, split, model) -> that run's per-example predictions (row_id, label, pred, prob_*); None
# when the run has no such file. May raise with a message saying why it cannot be read.
Loader = Callable[[Mapping, str, str], "pd.DataFrame | None"]
# Deterministic intervals: the same predictions always give the same table.
BOOTSTRAP_SEED = 0
RESAMPLES = 10_000


def prediction_path(model: str, split: str) -> str:
    """Where a run's predictions live: the teacher's from its own evaluation (present in teacher-only
    and full runs alike), the compressed models' from `evaluate`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return prediction_file(model, split, TEACHER_TARGET if model == "teacher" else "evaluate")


def dvc_loader(repo: str = ".") -> Loader:
    """A Loader reading each file at the experiment's commit from the repository's DVC cache
    (pipeline.compare.read_at_rev); each (commit, file) is read once."""
    cache: dict[tuple[str, str], pd.DataFrame | None] = {}

    def load(record: Mapping, split: str, model: str = "teacher") -> pd.DataFrame | None:
        rev = record.get("rev")
        if not rev:
            return None
        path = prediction_path(model, split)
        key = (str(rev), path)
        if key not in cache:
            cache[key] = read_at_rev(path, str(rev), repo)
        return cache[key]

    return load


def _empty(split: str, note: str) -> dict:
    return {"split": split, "seeds": [], "examples": 0, "baseline_accuracy_pct": math.nan,
            "variant_accuracy_pct": math.nan, "diff_pts": math.nan, "low_pts": math.nan,
            "high_pts": math.nan, "p_mcnemar": math.nan, "verdict": "n/a", "note": note}  # fmt: skip


def compare_runs(
    baseline: Mapping[int, Mapping],
    variant: Mapping[int, Mapping],
    split: str,
    load: Loader,
    *,
    baseline_model: str = "teacher",
    variant_model: str = "teacher",
) -> dict:
    """Paired comparison of `variant` against `baseline` ({seed: record} each) on `split`.

    Returns {"split", "seeds": [seeds paired], "examples", "baseline_accuracy_pct",
    "variant_accuracy_pct", "diff_pts", "low_pts", "high_pts", "p_mcnemar", "verdict", "note"}:
    variant minus baseline accuracy in points over the pooled pairs, its 95 % paired-bootstrap
    interval (resampled within seeds) and the verdict helped | hurt | not shown. A seed whose
    predictions one side lacks is left out (the note says which); with none left: verdict "n/a".
    """
    common = sorted(set(baseline) & set(variant))
    if not common:
        return _empty(split, "no seed ran both rows")
    a_frames, b_frames, seeds, problems = [], [], [], []
    for seed in common:
        try:
            frame_a = load(baseline[seed], split, baseline_model)
            frame_b = load(variant[seed], split, variant_model)
        except Exception as err:  # noqa: BLE001 - a run that cannot be read is reported, not fatal
            problems.append(f"s{seed}: {err}")
            continue
        if frame_a is None or frame_b is None:
            problems.append(f"s{seed}: no {split} predictions")
            continue
        a_frames.append(frame_a)
        b_frames.append(frame_b)
        seeds.append(seed)
    if not seeds:
        return _empty(split, "; ".join(problems))
    try:
        result = compare_predictions(a_frames, b_frames, resamples=RESAMPLES, seed=BOOTSTRAP_SEED)
    except Exception as err:  # noqa: BLE001 - e.g. different rows at one seed: no pairing
        return _empty(split, "; ".join([*problems, str(err)]))
    acc = result["metrics"]["accuracy"]
    return {
        "split": split,
        "seeds": seeds,
        "examples": int(result["rows"]),
        "baseline_accuracy_pct": acc["a"] * 100,
        "variant_accuracy_pct": acc["b"] * 100,
        "diff_pts": acc["diff"] * 100,
        "low_pts": acc["low"] * 100,
        "high_pts": acc["high"] * 100,
        "p_mcnemar": acc["mcnemar_p"],
        "verdict": acc["verdict"],
        "note": "; ".join(problems),
    }
