"""The project's targets and the controller's settings: params.yaml's `controller` section.

The one place the targets are read from (the controller, scripts/benchmark.py and the report all
call `load_targets`), so they cannot disagree. Prefect-free and DVC-free: a script can import it.
The targets have no defaults in code on purpose: a second copy here would be the disagreement
this module exists to end.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipeline.search_space import SearchParams


class Targets(BaseModel):
    """What a deployed model must reach. Accuracy is judged on the DEV split against the teacher's
    dev accuracy pinned in controller/reference.json (pipeline.reference), a mean over seeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_accuracy_drop_pts: float = Field(ge=0)  # accuracy points below the teacher, at most
    min_size_ratio: float = Field(ge=1)  # teacher size / deployed size, at least
    min_speedup: float = Field(ge=0)  # teacher latency / deployed latency at batch 32, at least
    # Batch-1 p50 latency ratio, at least; null: no batch-1 target.
    min_speedup_b1: float | None = Field(default=None, ge=0)
    max_labelled_fraction: float = Field(gt=0, le=1)  # labelled pairs / pairs available, at most


def margins(targets: Targets, *, accuracy_drop_pts: float, size_ratio: float, speedup: float,
            speedup_b1: float | None = None, labelled_fraction: float | None = None) -> dict[str, float | None]:
    """Each target -> how far the measurement is from it: <= 0 met (the distance inside), > 0
    missed (the shortfall), None not judged (no such target, or nothing measured for it), in the
    order accuracy, size, latency, latency_b1, data.

    The one place a measurement is held against a target. `judge` is the yes/no view of it;
    the search hands the distances to Optuna as constraints (<= 0 feasible is Optuna's
    convention too), so it learns how far a trial missed, not only that it did.
    """
    def at_most(value: float | None, bound: float | None) -> float | None:
        return None if value is None or bound is None else value - bound

    def at_least(value: float | None, bound: float | None) -> float | None:
        return None if value is None or bound is None else bound - value

    return {
        "accuracy": at_most(accuracy_drop_pts, targets.max_accuracy_drop_pts),
        "size": at_least(size_ratio, targets.min_size_ratio),
        "latency": at_least(speedup, targets.min_speedup),
        "latency_b1": at_least(speedup_b1, targets.min_speedup_b1),
        "data": at_most(labelled_fraction, targets.max_labelled_fraction),
    }


def judge(targets: Targets, *, accuracy_drop_pts: float, size_ratio: float, speedup: float,
          speedup_b1: float | None = None, labelled_fraction: float | None = None) -> dict[str, bool | None]:
    """Each target -> met (True), missed (False) or not judged (None: no such target, or nothing
    measured for it, e.g. a timing file without batch-1 latency), in `margins`' order.

    The controller's search and scripts/benchmark.py both call it (or `margins`, which it reads).
    A value exactly at its target meets it (the difference of two floats is <= 0 exactly when
    the first is <= the second).
    """
    distance = margins(targets, accuracy_drop_pts=accuracy_drop_pts, size_ratio=size_ratio, speedup=speedup,
                       speedup_b1=speedup_b1, labelled_fraction=labelled_fraction)
    return {name: None if value is None else value <= 0 for name, value in distance.items()}


class ControllerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The evaluated model the targets judge; null: the one evaluate.json names `deployed`
    # (quantize.backend: torch -> quantized, onnxruntime -> onnx_int8).
    deployed_model: str | None = None
    targets: Targets
    # The search over the recipe (pipeline/search_space.py); absent: the targets alone are read
    # (scripts/benchmark.py, the report), and `sec controller` refuses to search.
    search: SearchParams | None = None


class TargetsError(ValueError):
    """params.yaml's controller section is missing or invalid; the message names the file."""


def load_controller_params(params_path: str | Path = "params.yaml") -> ControllerParams:
    path = Path(params_path)
    raw = yaml.safe_load(path.read_text()) or {}
    section = raw.get("controller")
    if not isinstance(section, dict):
        raise TargetsError(f"{path}: no `controller` section (it holds the targets)")
    try:
        return ControllerParams.model_validate(section)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise TargetsError(f"{path}: invalid `controller` section:\n{err}") from None


def load_targets(params_path: str | Path = "params.yaml") -> Targets:
    """params.yaml's `controller.targets`."""
    return load_controller_params(params_path).targets


def deployed_name(configured: str | None, evaluate: dict) -> str:
    """The deployed model's name in evaluate.json: the configured one, else what evaluate recorded."""
    return configured or evaluate.get("deployed", "quantized")
