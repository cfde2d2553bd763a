"""The synergy controller's search: a constrained multi-objective Optuna study over the recipe.

Each trial is a set of knob values (params.yaml `controller.search.knobs`: label budget and
strategy, augmentation fractions, pruning ratio, student layers, distillation steps, int8
backend ...). A `runner` turns (overrides, seed) into a `Measurement`; in the project it is one
`dvc exp run -S ...` (pipeline/controller.py), in the tests a fake. This module decides; it
imports no Prefect and runs no DVC.

- Objectives (dev only): deployed accuracy, speed-up at batch 32 and at batch 1, size ratio
  (higher is better), labelled fraction (lower). Optuna's TPE sampler keeps the Pareto front.
- Constraints: params.yaml's targets, as the distances `pipeline.targets.margins` gives
  (<= 0 met), set on the trial with `Trial.set_constraint`. Accuracy is held against the
  teacher's dev accuracy pinned over seeds (pipeline.reference), never against this trial's.
- Multi-fidelity: a trial first runs with a fraction of the distillation steps. Size, speed and
  labels do not depend on those steps, so a cheap run that misses them, or whose accuracy is
  further than `promote_slack_pts` beyond the target, is PRUNED without the full run.
- Noise: a trial whose full run claims the accuracy target is rerun at `confirm_seeds` more seeds.
  It meets the accuracy constraint only when the mean over its seeds does and the paired test of
  its deployed model against its own teachers, on the same dev examples over all seeds, does not
  show a loss beyond the allowed points ("hurt"). Only such trials can be recommended, and
  between two of them an accuracy lead within noise does not count.
- Teacher reuse: one trial in `teacher_every` samples the knobs the teacher depends on; the
  others keep the incumbent's values (Optuna's PartialFixedSampler), so DVC's run-cache restores
  the teacher and only pruning onwards reruns.
- Durable: the study lives in a journal file (controller/study.log, committed). A trial left
  RUNNING by a killed controller is marked FAIL on the next start and queued again with the same
  values (the run-cache makes its finished stages free); a trial whose run fails is FAIL and the
  study goes on.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from pipeline.dag import upstream
from pipeline.measure import Measurement, pack, unpack
from pipeline.reference import Reference
from pipeline.search_space import Scalar, SearchParams
from pipeline.stats import paired_bootstrap, verdict
from pipeline.targets import Targets, margins

STORAGE = Path("controller") / "study.log"
STUDY_NAME = "sec"
# (objective, direction), in the order the study stores its values.
OBJECTIVES = (("accuracy", "maximize"), ("speedup", "maximize"), ("speedup_b1", "maximize"),
              ("size_ratio", "maximize"), ("labelled_fraction", "minimize"))
FIDELITY_KEY = "distill.max_steps"
# A trial whose mean accuracy meets the target but whose paired test says "hurt": infeasible by
# this much, so that Optuna counts it as a miss.
UNCONFIRMED = 1e-6


class TrialRunError(RuntimeError):
    """One run of a trial failed (its `dvc exp run`, or reading what it left): the trial is FAIL."""


@dataclass(frozen=True)
class RunRequest:
    trial: int
    name: str  # the DVC experiment name
    overrides: dict[str, Scalar | None]  # every knob, plus seed and distill.max_steps (None: the profile's value)
    seed: int
    fidelity: str  # "cheap" | "full" | "confirm"


Runner = Callable[[RunRequest], Measurement]


@dataclass(frozen=True)
class Setup:
    """What the search needs besides the study: the space, the targets, the pinned reference, and
    the repository's current values (`base`: every knob and distill.max_steps, profile-resolved)."""

    space: SearchParams
    targets: Targets
    reference: Reference
    base: Mapping[str, Scalar]
    seed: int
    # Keys params.yaml leaves null (the profile's value applies). A trial whose value equals the
    # profile's writes null back, so its params, and therefore its DVC run-cache key, are those
    # of the committed run: the baseline trial restores every stage instead of retraining.
    from_profile: frozenset[str] = frozenset()

    @property
    def teacher_knobs(self) -> list[str]:
        """Knobs of stages the teacher is trained from (upstream of fine_tune in dvc.yaml)."""
        sections = set(upstream("fine_tune"))
        return [key for key in self.space.knobs if key.split(".", 1)[0] in sections]

    def full_steps(self, params: Mapping[str, Scalar]) -> int:
        return int(params.get(FIDELITY_KEY, self.base[FIDELITY_KEY]))

    def cheap_steps(self, params: Mapping[str, Scalar]) -> int | None:
        """The first pass's distillation steps; None when there is no cheaper pass (epochs-based
        distillation, max_steps -1, or a fraction that rounds to the full steps)."""
        full = self.full_steps(params)
        cheap = max(1, round(full * self.space.cheap_fraction))
        return cheap if 0 < full and cheap < full else None


def base_values(params_path: str | Path, space: SearchParams) -> tuple[dict[str, Scalar], int]:
    """The repository's current value of every knob and of distill.max_steps (the profile's where
    params.yaml says null), and its seed; a knob that names no param is refused, naming the file."""
    from stages._params import load_params

    params = load_params(params_path)
    values: dict[str, Scalar] = {}
    for key in [*space.knobs, FIDELITY_KEY]:
        node: object = params
        for part in key.split("."):
            if not hasattr(node, part):
                raise ValueError(f"{params_path}: controller.search.knobs names {key!r}, which is no param of the pipeline")
            node = getattr(node, part)
        values[key] = node
    return values, params.seed


# ---------------------------------------------------------------------------------------------
# The study and its storage.


def sampler(space: SearchParams, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """TPE, seeded with `sampler_seed` + the trials the study already has: a study continued after
    a stop must not replay the random draws of its first start (the same seed twice made the first
    default-profile study sample one configuration twice), and the same file still gives the same
    draws on every machine."""
    return optuna.samplers.TPESampler(seed=space.sampler_seed + trials_so_far, n_startup_trials=space.startup_trials)


def open_study(path: str | Path, space: SearchParams) -> optuna.Study:
    """Create or continue the study in the journal file `path`."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    try:  # load first: create_study(load_if_exists=True) would append a failed creation to the file each start
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage, sampler=sampler(space))
    except KeyError:
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler(space),
                                    directions=[d for _, d in OBJECTIVES])
    if [d.name.lower() for d in study.directions] != [d for _, d in OBJECTIVES]:
        raise ValueError(f"{path}: study {STUDY_NAME!r} has other objectives than {OBJECTIVES}; move the file away")
    if not study.metric_names:
        with warnings.catch_warnings():  # stable in use since Optuna 3.2, still flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([name for name, _ in OBJECTIVES])
    if "tag" not in study.user_attrs:  # experiment names stay unique if the file is ever started afresh
        study.set_user_attr("tag", time.strftime("%Y%m%d%H%M%S"))
    return study


def profile_keys(params_path: str | Path, keys: list[str]) -> frozenset[str]:
    """Which of `keys` params.yaml sets to null (the profile's value applies)."""
    import yaml

    raw = yaml.safe_load(Path(params_path).read_text())
    null = set()
    for key in keys:
        node = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            null.add(key)
    return frozenset(null)


def pin_profile_keys(study: optuna.Study, keys: frozenset[str]) -> frozenset[str]:
    """`profile_keys` as the study first saw them (later trials rewrite the workspace's params.yaml)."""
    if "from_profile" not in study.user_attrs:
        study.set_user_attr("from_profile", sorted(keys))
    return frozenset(study.user_attrs["from_profile"])


def pin_base(study: optuna.Study, base: Mapping[str, Scalar], seed: int) -> tuple[dict[str, Scalar], int]:
    """The repository's values when the study started, kept in the study: every `dvc exp run`
    rewrites the workspace's params.yaml, so reading it again on a later start would take the
    last trial (or a confirmation seed) for the baseline."""
    if "base" not in study.user_attrs:
        study.set_user_attr("base", dict(base))
        study.set_user_attr("seed", int(seed))
    pinned = dict(study.user_attrs["base"])
    missing = [key for key in base if key not in pinned]
    if missing:  # a knob added to the space since: its value now, which the earlier trials ran with
        pinned.update({key: base[key] for key in missing})
        study.set_user_attr("base", pinned)
    return pinned, int(study.user_attrs["seed"])


def recover_interrupted(study: optuna.Study, log: Callable[[str], None] = print) -> list[int]:
    """Trials left RUNNING by a controller that was killed: FAIL, and queued again with the same
    values. One controller at a time runs a study (its `dvc exp run`s share one workspace)."""
    retried = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = Trial(study, frozen._trial_id)
        trial.set_user_attr("error", "interrupted: the controller stopped during this trial")
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(dict(frozen.params), user_attrs={"retry_of": frozen.number})
        retried.append(frozen.number)
        log(f"trial {frozen.number} was interrupted: recorded as FAIL and queued again")
    return retried


def shortfall(trial: FrozenTrial, targets: Targets) -> float:
    """How far a completed trial is from meeting every target: the sum over targets of its miss as a
    share of the target (0.5 points over a 1-point drop -> 0.5, 9x for 12x -> 0.25); 0 when it meets all."""
    scale = {"accuracy": targets.max_accuracy_drop_pts or 1.0, "size": targets.min_size_ratio,
             "latency": targets.min_speedup, "latency_b1": targets.min_speedup_b1 or 1.0,
             "data": targets.max_labelled_fraction}
    return sum(max(0.0, d) / (scale.get(name) or 1.0) for name, d in trial.constraints.items())


def nearest(trials: list[FrozenTrial], targets: Targets) -> FrozenTrial | None:
    """The completed trial with the smallest `shortfall` (then the more accurate, the earlier)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.constraints]
    if not complete:
        return None
    return min(complete, key=lambda t: (shortfall(t, targets), -t.values[0], t.number))


def incumbent(trials: list[FrozenTrial], targets: Targets) -> FrozenTrial | None:
    """The trial whose teacher knobs the next compression-only trials keep: the recommended one,
    else the `nearest` to meeting every target."""
    chosen = recommend(trials, targets)
    return chosen if chosen is not None else nearest(trials, targets)


def ask(study: optuna.Study, setup: Setup, base_sampler: optuna.samplers.BaseSampler) -> tuple[Trial, dict]:
    """The next trial and its knob values. A queued trial (a retry, the baseline) keeps its values;
    otherwise the teacher's knobs are sampled on every `teacher_every`-th trial and held at the
    incumbent's (or the repository's) values in between."""
    trials = study.get_trials(deepcopy=False)
    number = len(trials)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    teacher_turn = setup.space.teacher_every == 1 or (number % setup.space.teacher_every == 0 and number > 0)
    fixed: dict[str, Scalar] = {}
    if not waiting and not teacher_turn:
        best = incumbent(trials, setup.targets)
        source = best.params if best is not None else setup.base
        fixed = {key: source[key] for key in setup.teacher_knobs if key in source
                 and setup.space.knobs[key].contains(source[key])}
    with warnings.catch_warnings():  # stable in use since Optuna 2.4, still flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.PartialFixedSampler(fixed, base_sampler) if fixed else base_sampler
    trial = study.ask()
    params = {key: knob.suggest(trial, key) for key, knob in setup.space.knobs.items()}
    trial.set_user_attr("teacher_knobs", "held" if fixed else "sampled")
    return trial, params


def enqueue(study: optuna.Study, space: SearchParams, values: Mapping[str, Scalar]) -> dict[str, Scalar]:
    """Queue a configuration to try next (`sec controller --enqueue KEY=VALUE ...`): a person's
    guess joins the study as a trial like the others. Knobs left out are sampled; a key that is no
    knob, or a value outside its knob's range, is refused with the key."""
    for key, value in values.items():
        if key not in space.knobs:
            raise ValueError(f"--enqueue {key}: not a knob of controller.search.knobs ({', '.join(space.knobs)})")
        if not space.knobs[key].contains(value):
            raise ValueError(f"--enqueue {key}={value!r}: outside the knob's space {space.knobs[key].model_dump(exclude_none=True)}")
    study.enqueue_trial(dict(values), user_attrs={"enqueued": True})
    return dict(values)


def enqueue_baseline(study: optuna.Study, setup: Setup, log: Callable[[str], None] = print) -> bool:
    """An empty study starts with the repository's own recipe, when the space contains it: the
    run-cache makes it nearly free, and it is the point every other trial is read against."""
    if study.trials:
        return False
    base = {key: setup.base[key] for key in setup.space.knobs}
    outside = [key for key, knob in setup.space.knobs.items() if not knob.contains(base[key])]
    if outside:
        log(f"the repository's values of {outside} are outside the search space: no baseline trial")
        return False
    study.enqueue_trial(base, user_attrs={"baseline": True})
    return True


# ---------------------------------------------------------------------------------------------
# One trial.


def overrides(setup: Setup, params: Mapping[str, Scalar], seed: int, steps: int) -> dict[str, Scalar | None]:
    """Every knob, the seed and the distillation steps: each `dvc exp run` sets all of them, so a
    trial never inherits a value the previous trial left in the workspace's params.yaml. A value
    that is the profile's where params.yaml says null is written as null (`Setup.from_profile`)."""
    # Float steps come back from Optuna as 0.6000000000000001: written as 0.6.
    tidy = {key: round(value, 10) if isinstance(value, float) else value for key, value in params.items()}
    chosen = {**tidy, FIDELITY_KEY: steps}
    chosen = {key: None if key in setup.from_profile and value == setup.base.get(key) else value
              for key, value in chosen.items()}
    return {**chosen, "seed": seed}


def record(trial: Trial, key: str, m: Measurement, name: str) -> None:
    """A run's dev numbers and per-example correctness, in the study's storage."""
    trial.set_user_attr(key, {
        "experiment": name, "accuracy": m.accuracy, "teacher_accuracy": m.teacher_accuracy,
        "size_ratio": m.size_ratio, "speedup": m.speedup, "speedup_b1": m.speedup_b1,
        "labelled_fraction": m.labelled_fraction, "size_mb": m.size_mb, "latency_ms_b32": m.latency_ms_b32,
        "latency_ms_b1": m.latency_ms_b1, "rows": m.rows, "n": int(m.deployed_correct.size),
        "deployed_correct": pack(m.deployed_correct), "teacher_correct": pack(m.teacher_correct),
    })


def distances(targets: Targets, reference: Reference, m: Measurement | Mapping) -> dict[str, float | None]:
    get = (lambda k: m[k]) if isinstance(m, Mapping) else (lambda k: getattr(m, k))
    return margins(targets, accuracy_drop_pts=reference.accuracy_drop_pts(get("accuracy")), size_ratio=get("size_ratio"),
                   speedup=get("speedup"), speedup_b1=get("speedup_b1"), labelled_fraction=get("labelled_fraction"))


def promotion_refused(setup: Setup, cheap: Measurement) -> str | None:
    """Why a cheap run cannot win (None: promote it to the full steps)."""
    gap = distances(setup.targets, setup.reference, cheap)
    fixed = [name for name in ("size", "latency", "latency_b1", "data") if gap[name] is not None and gap[name] > 0]
    if fixed:
        return f"misses {', '.join(fixed)}, which more distillation steps do not change"
    if gap["accuracy"] > setup.space.promote_slack_pts:
        return (f"dev accuracy {gap['accuracy'] + setup.targets.max_accuracy_drop_pts:.2f} points below the reference, "
                f"more than the target + {setup.space.promote_slack_pts} points of slack for the cheap steps")
    return None


def confirm(runs: list[Measurement], reference: Reference, targets: Targets, resamples: int = 10_000) -> dict:
    """Is the accuracy target met over these seeds? Mean dev accuracy against the pinned reference,
    and the paired bootstrap (within seed) of deployed minus own teacher on the same dev examples:
    "hurt" when the whole interval lies below -max_accuracy_drop_pts."""
    if len({m.rows for m in runs}) != 1:
        raise ValueError("the seeds' dev predictions cover different rows: cannot pair them")
    mean = float(np.mean([m.accuracy for m in runs]))
    drop = reference.accuracy_drop_pts(mean)
    groups = np.concatenate([np.full(m.deployed_correct.size, i) for i, m in enumerate(runs)])
    teacher = np.concatenate([m.teacher_correct for m in runs]).astype(float)
    deployed = np.concatenate([m.deployed_correct for m in runs]).astype(float)
    diff, low, high = paired_bootstrap(teacher, deployed, resamples=resamples, groups=groups if len(runs) > 1 else None)
    allowed = targets.max_accuracy_drop_pts / 100
    shown = verdict(low + allowed, high + allowed)
    return {"seeds": len(runs), "mean_accuracy": mean, "drop_pts": drop,
            "vs_own_teacher_pts": [round(100 * v, 4) for v in (diff, low, high)], "verdict": shown,
            "confirmed": drop <= targets.max_accuracy_drop_pts and shown != "hurt"}


def aggregate(runs: list[Measurement]) -> dict[str, float | None]:
    """Objective values over a trial's seeds (means; one seed: that run's)."""
    def mean(values):
        return None if any(v is None for v in values) else float(np.mean(values))

    return {name: mean([getattr(m, name) for m in runs]) for name, _ in OBJECTIVES}


def run_trial(study: optuna.Study, trial: Trial, params: dict, setup: Setup, runner: Runner,
              log: Callable[[str], None] = print) -> TrialState:
    """Cheap pass, promotion, full run, confirmation over seeds; tells the study the outcome."""
    tag = study.user_attrs.get("tag", "s")
    prefix = f"sec-{tag}-t{trial.number}"

    def run(fidelity: str, seed: int, steps: int) -> Measurement:
        name = f"{prefix}-{fidelity}" + (f"-s{seed}" if fidelity == "confirm" else "")
        try:
            measured = runner(RunRequest(trial.number, name, overrides(setup, params, seed, steps), seed, fidelity))
        except Exception as err:  # any failure of the run itself: this trial fails, the study goes on
            raise TrialRunError(f"{name}: {type(err).__name__}: {err}"[-2000:]) from err
        record(trial, f"run:{fidelity}:{seed}", measured, name)
        return measured

    try:
        cheap_steps = setup.cheap_steps(params)
        if cheap_steps is not None:
            cheap = run("cheap", setup.seed, cheap_steps)
            refused = promotion_refused(setup, cheap)
            if refused:
                trial.set_user_attr("pruned", refused)
                study.tell(trial, state=TrialState.PRUNED)
                log(f"trial {trial.number} pruned after {cheap_steps} distillation steps: {refused}")
                return TrialState.PRUNED
        runs = [run("full", setup.seed, setup.full_steps(params))]
        gap = distances(setup.targets, setup.reference, runs[0])
        if gap["accuracy"] <= 0:  # claims the accuracy target: confirm over more seeds
            for extra in range(1, setup.space.confirm_seeds + 1):
                runs.append(run("confirm", setup.seed + extra, setup.full_steps(params)))
            confirmation = confirm(runs, setup.reference, setup.targets)
            trial.set_user_attr("confirmation", confirmation)
        values = aggregate(runs)
        if values["speedup_b1"] is None:
            raise TrialRunError("no batch-1 latency in metrics/evaluate_timing.json: it is an objective")
        gap = distances(setup.targets, setup.reference, values)
        if len(runs) > 1 and not confirmation["confirmed"]:
            gap["accuracy"] = max(gap["accuracy"], UNCONFIRMED)
        for name, distance in gap.items():
            if distance is not None:
                trial.set_constraint(name, distance)
        study.tell(trial, [values[name] for name, _ in OBJECTIVES])
        log(f"trial {trial.number}: {describe(values, gap)}")
        return TrialState.COMPLETE
    except TrialRunError as err:
        trial.set_user_attr("error", str(err))
        study.tell(trial, state=TrialState.FAIL)
        log(f"trial {trial.number} FAILED: {err}")
        return TrialState.FAIL


def describe(values: Mapping[str, float | None], gap: Mapping[str, float | None]) -> str:
    missed = [name for name, d in gap.items() if d is not None and d > 0]
    return (f"dev accuracy {100 * values['accuracy']:.2f} %, {values['size_ratio']:.2f}x smaller, "
            f"{values['speedup']:.2f}x / {values['speedup_b1']:.2f}x faster (b32 / b1), "
            f"labels {100 * values['labelled_fraction']:.1f} %; " + (f"misses {', '.join(missed)}" if missed else "meets every target"))


def search(study: optuna.Study, setup: Setup, runner: Runner, trials: int,
           log: Callable[[str], None] = print) -> list[TrialState]:
    """Add `trials` trials to the study (after recovering interrupted ones); returns their states."""
    recover_interrupted(study, log)
    enqueue_baseline(study, setup, log)
    base_sampler = sampler(setup.space, len(study.get_trials(deepcopy=False)))
    states = []
    for _ in range(trials):
        trial, params = ask(study, setup, base_sampler)
        states.append(run_trial(study, trial, params, setup, runner, log))
    study.sampler = base_sampler
    return states


# ---------------------------------------------------------------------------------------------
# The recommendation.


def _seed_runs(trial: FrozenTrial) -> dict[int, dict]:
    runs = {}
    for key, value in trial.user_attrs.items():
        parts = key.split(":")
        if len(parts) == 3 and parts[0] == "run" and parts[1] in ("full", "confirm"):
            runs[int(parts[2])] = value
    return runs


def correctness(trial: FrozenTrial) -> dict[int, np.ndarray]:
    """Seed -> the deployed model's dev correctness (full-steps runs only)."""
    return {seed: unpack(run["deployed_correct"], run["n"]) for seed, run in _seed_runs(trial).items()}


def paired_verdict(a: FrozenTrial, b: FrozenTrial) -> str:
    """B against A on dev accuracy, paired on the same examples over the seeds both ran."""
    ca, cb = correctness(a), correctness(b)
    seeds = sorted(set(ca) & set(cb))
    if not seeds:
        return "not shown"
    rows_a, rows_b = _seed_runs(a), _seed_runs(b)
    if any(rows_a[s]["rows"] != rows_b[s]["rows"] for s in seeds):
        raise ValueError(f"trials {a.number} and {b.number} were scored on different dev rows")
    groups = np.concatenate([np.full(ca[s].size, i) for i, s in enumerate(seeds)])
    _, low, high = paired_bootstrap(np.concatenate([ca[s] for s in seeds]).astype(float),
                                    np.concatenate([cb[s] for s in seeds]).astype(float),
                                    groups=groups if len(seeds) > 1 else None)
    return verdict(low, high)


def feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and bool(trial.constraints) and all(v <= 0 for v in trial.constraints.values())


def confirmed(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("confirmation", {}).get("confirmed"))


def headroom(trial: FrozenTrial, targets: Targets) -> float:
    """How far past its compression targets a trial is: the smallest of measured / target."""
    values = dict(zip([name for name, _ in OBJECTIVES], trial.values))
    ratios = [values["size_ratio"] / targets.min_size_ratio]
    if targets.min_speedup > 0:
        ratios.append(values["speedup"] / targets.min_speedup)
    if targets.min_speedup_b1:
        ratios.append(values["speedup_b1"] / targets.min_speedup_b1)
    return min(ratios)


def recommend(trials: list[FrozenTrial], targets: Targets) -> FrozenTrial | None:
    """The trial to deploy: feasible and confirmed over seeds; among those, the ones whose dev
    accuracy is not worse beyond noise than the most accurate one's (a lead within noise is not
    progress), and of those the one furthest past its compression targets, then fewest labels."""
    eligible = [t for t in trials if feasible(t) and confirmed(t)]
    if not eligible:
        return None
    best = max(eligible, key=lambda t: (t.values[0], -t.number))
    tied = [t for t in eligible if t is best or paired_verdict(best, t) != "hurt"]
    return max(tied, key=lambda t: (headroom(t, targets), -t.values[4], -t.number))


def closest_to_targets(trials: list[FrozenTrial]) -> dict[str, tuple[int, float]]:
    """Target -> (trial, distance) of the completed trial nearest to meeting it (or furthest inside)."""
    out: dict[str, tuple[int, float]] = {}
    for trial in trials:
        if trial.state != TrialState.COMPLETE:
            continue
        for name, distance in trial.constraints.items():
            if name not in out or distance < out[name][1]:
                out[name] = (trial.number, distance)
    return out
