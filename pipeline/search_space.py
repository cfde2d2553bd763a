"""The controller's search space and settings: params.yaml's `controller.search`, validated.

No DVC stage reads the `controller` section (stages._params passes it through), so editing the
space reruns nothing. Each knob is a dotted params key that `dvc exp run -S` can set, with either
`choices` or a numeric range (`low`, `high`, optional `step` or `log`). Optuna is imported only
where a trial is suggested: scripts/benchmark.py reads the targets through this module's parent
and should not pay for it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scalar = bool | int | float | str


class Knob(BaseModel):
    """One searched params key: a categorical `choices` list, or a range low..high."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    choices: list[Scalar] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = Field(default=None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Knob:
        ranged = self.low is not None or self.high is not None
        if (self.choices is None) == (not ranged):
            raise ValueError("give either `choices` or `low` and `high`")
        if self.choices is not None and not self.choices:
            raise ValueError("`choices` is empty")
        if ranged:
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError(f"need low <= high, got low={self.low} high={self.high}")
            if self.log and (self.step is not None or self.low <= 0):
                raise ValueError("a log range needs low > 0 and no step")
        return self

    @property
    def is_int(self) -> bool:
        """A range of whole numbers (a budget, a step count): suggested as int, written as int."""
        return self.choices is None and all(
            v is None or float(v).is_integer() for v in (self.low, self.high, self.step)) and not self.log

    def suggest(self, trial: Any, key: str) -> Scalar:
        if self.choices is not None:
            return trial.suggest_categorical(key, self.choices)
        if self.is_int:
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: object) -> bool:
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return abs(steps - round(steps)) < 1e-9


class SearchParams(BaseModel):
    """How `sec controller` searches (docs/controller.md explains each choice)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    trials: int = Field(default=8, ge=0)  # trials one `sec controller` run adds to the study
    sampler_seed: int = 0
    startup_trials: int = Field(default=4, ge=1)  # TPE samples at random until this many trials finished
    # One trial in `teacher_every` samples the knobs the teacher depends on (the stages upstream of
    # fine_tune in dvc.yaml); the others keep the incumbent's, so DVC's run-cache hands them the
    # teacher it already trained and only pruning onwards reruns. 1: every trial samples all knobs.
    teacher_every: int = Field(default=3, ge=1)
    # Extra seeds (seed+1, seed+2, ...) a trial that claims the accuracy target is rerun with
    # before it can be recommended: the paired test is over all its seeds.
    confirm_seeds: int = Field(default=2, ge=1)
    # Multi-fidelity: every trial first runs with distill.max_steps x cheap_fraction; it is promoted
    # to the full steps only when it meets every target that distillation steps cannot change
    # (size, speed, labels) and its dev drop is within the target + promote_slack_pts.
    cheap_fraction: float = Field(default=0.25, gt=0, le=1)
    promote_slack_pts: float = Field(default=3.0, ge=0)
    knobs: dict[str, Knob]

    @model_validator(mode="after")
    def _knob_keys(self) -> SearchParams:
        if not self.knobs:
            raise ValueError("`knobs` is empty: nothing to search")
        for key in self.knobs:
            if "." not in key or key.split(".", 1)[0] in ("controller", "grid"):
                raise ValueError(f"knob {key!r}: expected a dotted key of a stage's params section, e.g. prune.ratio")
        if "seed" in self.knobs:
            raise ValueError("`seed` is not a knob: the search varies it only to confirm a trial")
        return self
