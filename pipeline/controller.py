"""The synergy controller: a Prefect flow that closes SEC's loop over the DVC pipeline.

Each iteration (a subflow run in the UI) is one DVC experiment: `dvc exp run -S key=value ...`
with the changes the previous decision asked for, so DVC reruns exactly the stages downstream of
the most upstream change and `dvc exp show` lists every iteration. After each run the controller
reads the DEV metrics (never the test split's), compares the deployed model's dev predictions with
the best accepted iteration's (paired bootstrap), and the pure `pipeline.decide.decide` says what
to change next or why to stop. The accuracy target is judged against a reference pinned at
iteration 0, which the loop's own data decisions cannot move.

Every decision, with its reason, the metrics, the pinned reference and the paired comparison
behind it, is appended to `controller/decisions.jsonl` (a git-tracked text log).
At the end, or when an iteration fails, the best accepted experiment is left applied.
The loop is bounded by `controller.max_iterations`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline._dvc_env import override_value
from pipeline.compare import prediction_file
from pipeline.decide import Best, Comparison, Decision, Knobs, Measured, Reference, State, decide, measured_from_metrics
from pipeline.flows import CONTROLLER_ORIGIN, publish_metrics, run_streaming
from pipeline.stats import paired_bootstrap, verdict
from pipeline.targets import ControllerParams, deployed_name, load_controller_params
from stages._io import atomic_path
from stages._params import load_params

DECISIONS = Path("controller") / "decisions.jsonl"


def labelled_fraction(repo: str | Path) -> float:
    """Labelled pairs bought (seed + oracle picks) over all pairs the run could have labelled."""
    repo = Path(repo)
    prepared = json.loads((repo / "metrics" / "prepare.json").read_text())
    selected = json.loads((repo / "metrics" / "active_select.json").read_text())
    return selected["labelled_rows"] / (prepared["seed_rows"] + prepared["pool_rows"])


def read_deployed(repo: str | Path, configured: str | None) -> str:
    """The deployed model's name: controller.deployed_model, else the one evaluate.json records."""
    return deployed_name(configured, json.loads((Path(repo) / "metrics" / "evaluate.json").read_text()))


def read_measured(repo: str | Path, deployed: str) -> Measured:
    """This iteration's DEV measurements: evaluate.json (dev metrics, sizes) and
    evaluate_timing.json (speedups)."""
    repo = Path(repo)
    evaluate = json.loads((repo / "metrics" / "evaluate.json").read_text())
    timing = json.loads((repo / "metrics" / "evaluate_timing.json").read_text())
    return measured_from_metrics(evaluate, timing, deployed, labelled_fraction(repo))


def dev_predictions_path(repo: str | Path, deployed: str) -> Path:
    return Path(repo) / prediction_file(deployed, "dev")


def read_dev_correct(repo: str | Path, deployed: str) -> pd.Series:
    """The deployed model's dev correctness (0/1) per example, indexed by row_id."""
    path = dev_predictions_path(repo, deployed)
    frame = pd.read_parquet(path, columns=["row_id", "label", "pred"])
    if frame["row_id"].duplicated().any():
        raise ValueError(f"{path}: duplicate row_id")
    frame = frame.sort_values("row_id")
    return pd.Series((frame["pred"].to_numpy() == frame["label"].to_numpy()).astype(np.float64),
                     index=frame["row_id"].to_numpy(), name="correct")


def compare_dev(best: pd.Series, candidate: pd.Series, against: str) -> Comparison:
    """Paired bootstrap of dev accuracy, candidate minus best, over the same dev examples."""
    if not best.index.equals(candidate.index):
        # The dev split is made by `prepare`, which no controller knob touches: a different set
        # of rows means something else changed the data, and a comparison would be meaningless.
        raise ValueError(f"the dev predictions of {against} and of this iteration cover different rows; "
                         "cannot compare them example by example")
    diff, low, high = paired_bootstrap(best.to_numpy(), candidate.to_numpy())
    return Comparison(diff=float(diff), low=float(low), high=float(high), verdict=verdict(low, high),
                      against=against, rows=len(best))


def current_knobs(repo: str | Path) -> Knobs:
    params = load_params(Path(repo) / "params.yaml")
    helped = grid_verdicts(repo)
    return Knobs(prune_ratio=params.prune.ratio, selection_budget=params.active_select.budget,
                 augment_fraction=params.augment.fraction, sparsity_weight=params.fine_tune.sparsity_weight,
                 augment_weight=params.augment.weight, backtranslate_weight=params.back_translate.weight,
                 backtranslate_fraction=params.back_translate.fraction,
                 augment_helped=helped.get("synonym"), backtranslate_helped=helped.get("backtranslation"))


def grid_verdicts(repo: str | Path) -> dict[str, bool]:
    """What the ablation grid measured (reports/grid/verdicts.json, written by pipeline.grid):
    component -> whether it raised the teacher's accuracy. Empty when the grid has not run."""
    path = Path(repo) / "reports" / "grid" / "verdicts.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def exp_run_command(changes: dict[str, object], name: str) -> list[str]:
    cmd = ["dvc", "exp", "run", "--name", name]
    for key, value in changes.items():
        cmd += ["-S", f"{key}={override_value(value)}"]
    return cmd


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def append_decision(record: dict, repo: str | Path) -> None:
    path = Path(repo) / DECISIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write(json.dumps(record, sort_keys=True) + "\n")


def previous_decisions(repo: str | Path) -> list[str]:
    path = Path(repo) / DECISIONS
    return path.read_text().splitlines() if path.is_file() else []


def decision_record(iteration: int, name: str, changes: dict, ran: list[str], measured: Measured, reference: Reference,
                    comparison: Comparison | None, decision: Decision, cfg: ControllerParams, deployed: str) -> dict:
    """One line of the decision log: what ran, what was measured (dev), against what, and why."""
    return {
        "iteration": iteration, "experiment": name, "applied": changes, "stages_run": ran,
        "split": "dev", "deployed_model": deployed,
        "metrics": {
            "accuracy": measured.accuracy, "cross_entropy": measured.cross_entropy,
            "class_accuracy": dict(measured.class_accuracy), "teacher_accuracy": measured.teacher_accuracy,
            "size_ratio": measured.size_ratio, "speedup": measured.speedup,
        },
        "labelled_fraction": round(measured.labelled_fraction, 4),
        "reference": {**asdict(reference), "accuracy_floor": round(reference.accuracy_floor(cfg.targets), 6),
                      "pinned_at": "iteration 0"},
        "accuracy_drop_pts": decision.accuracy_drop_pts,
        "comparison": asdict(comparison) if comparison else None,
        "targets": cfg.targets.model_dump(),
        "objective": decision.objective, "misses": decision.misses, "improved": decision.improved,
        "decision": decision.changes, "first_stage": decision.first_stage, "reason": decision.reason,
        "stop": decision.stop, "lambda1": decision.lambda1, "lambda2": decision.lambda2,
    }


@dataclass
class _Accepted:
    """The best accepted iteration: its experiment, its summary for decide, its dev correctness.
    The correctness is kept in memory: the next `dvc exp run` overwrites the predictions file."""

    name: str
    best: Best
    correct: pd.Series


def control(repo: str | Path, cfg: ControllerParams, bound: int, tag: str,
            run_iteration: Callable[[int, dict[str, object], str], list[str]],
            dvc: Callable[[list[str]], str], log: Callable[[str], None] = print) -> list[dict]:
    """The loop without Prefect: run → measure → compare → decide, until a decision stops it.

    run_iteration(iteration, changes, name) runs one experiment and returns the stages it ran;
    dvc(cmd) runs any other DVC command. At the end, and when anything in the loop fails, the best
    accepted experiment is applied and the decision log written; a failure is
    then re-raised.
    """
    repo = Path(repo)
    history = previous_decisions(repo)
    records: list[dict] = []
    state = State(max_iterations=bound, lambda1=cfg.lambda1, lambda2=cfg.lambda2, tolerance=cfg.tolerance)
    changes: dict[str, object] = {}
    reference: Reference | None = None
    accepted: _Accepted | None = None
    iteration, name = 0, ""
    try:
        for iteration in range(bound + 1):
            name = f"sec-ctl-{tag}-{iteration}"
            ran = run_iteration(iteration, changes, name)
            deployed = read_deployed(repo, cfg.deployed_model)
            measured = read_measured(repo, deployed)
            correct = read_dev_correct(repo, deployed)
            if reference is None:
                reference = Reference.pin(measured)
            comparison = compare_dev(accepted.correct, correct, accepted.name) if accepted else None
            decision = decide(measured, current_knobs(repo), cfg.targets, state, reference, comparison)
            record = decision_record(iteration, name, changes, ran, measured, reference, comparison, decision, cfg, deployed)
            append_decision(record, repo)
            records.append(record)
            log(f"iteration {iteration}: {decision.reason}")
            if decision.improved:
                accepted = _Accepted(name, Best.of(measured, met_targets=not decision.misses), correct)
            if decision.stop:
                break
            changes = decision.changes
            state = State(iteration=iteration + 1, max_iterations=bound, lambda1=decision.lambda1,
                          lambda2=decision.lambda2, best=accepted.best if accepted else None, tolerance=cfg.tolerance)
    except Exception as err:
        restored = accepted.name if accepted else None
        records.append({
            "iteration": iteration, "experiment": name, "applied": changes, "stop": True, "failed": True,
            "error": f"{type(err).__name__}: {err}"[-2000:], "restored": restored,
            "reference": asdict(reference) if reference else None,
            "reason": f"iteration failed; {'restored ' + restored if restored else 'no accepted iteration to restore'}",
        })
        log(f"iteration {iteration} failed ({type(err).__name__}); restoring {restored or 'nothing'} and recording the log")
        try:
            _finish(repo, history, records, restored, dvc, log)
        except Exception as finish_err:  # the iteration's own error is the one to raise
            log(f"while recovering: {type(finish_err).__name__}: {finish_err}")
        raise
    last = records[-1]["experiment"] if records else None
    _finish(repo, history, records, accepted.name if accepted and accepted.name != last else None, dvc, log)
    return records


def _finish(repo: Path, history: list[str], records: list[dict], restore: str | None,
            dvc: Callable[[list[str]], str], log: Callable[[str], None]) -> None:
    """Apply `restore` (when given), then write the whole log back. A failing apply does not stop
    the log from being recorded; it is raised afterwards. The log is a small text file tracked by
    git, not DVC: a DVC-tracked log missing from a fresh clone's cache made `dvc exp apply` fail."""
    apply_error: Exception | None = None
    if restore:
        log(f"restoring the best accepted iteration's experiment {restore}")
        try:
            dvc(["dvc", "exp", "apply", restore])
        except Exception as err:  # still record the log below; the caller sees this error
            apply_error = err
    # `exp apply` may restore an older copy of the log: write the whole history back after it.
    with atomic_path(repo / DECISIONS) as tmp:
        tmp.write_text("".join(line + "\n" for line in history)
                       + "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    if apply_error is not None:
        raise apply_error


@task(name="dvc-exp-run", cache_policy=NO_CACHE)
def dvc_exp_run(changes: dict[str, object], name: str, repo: str) -> str:
    logger = get_run_logger()
    return run_streaming(exp_run_command(changes, name), repo, logger.info)


@flow(name="sec-controller-iteration", flow_run_name="iteration-{iteration}")
def controller_iteration(iteration: int, changes: dict[str, object], name: str, repo: str = ".") -> dict:
    """One experiment: apply `changes`, let DVC rerun what they invalidate, publish the metrics.

    Published with the controller's origin label, which the sec-controller trigger does not
    match: the controller's own runs must not start it again.
    """
    output = dvc_exp_run(changes, name, repo)
    publish_metrics(repo, origin=CONTROLLER_ORIGIN)
    return {"stages_run": stages_run(output)}


@flow(name="sec-controller", log_prints=True)
def sec_controller(max_iterations: int | None = None, repo: str = ".") -> list[dict]:
    """Run → measure → decide, until targets are met, an iteration is not accepted, or the bound."""
    logger = get_run_logger()
    cfg = load_controller_params(Path(repo) / "params.yaml")
    bound = cfg.max_iterations if max_iterations is None else max_iterations
    return control(
        repo, cfg, bound, time.strftime("%Y%m%d-%H%M%S"),
        run_iteration=lambda i, changes, name: controller_iteration(i, changes, name, repo)["stages_run"],
        dvc=lambda cmd: run_streaming(cmd, repo, logger.info),
        log=logger.info,
    )
