"""The synergy controller: a Prefect flow that closes SEC's loop over the DVC pipeline.

Each iteration (a subflow run in the UI) is one DVC experiment: `dvc exp run -S key=value ...`
with the changes the previous decision asked for, so DVC reruns exactly the stages downstream of
the most upstream change and `dvc exp show` lists every iteration. After each run the pure
`pipeline.decide.decide` reads the metrics and the targets in params.yaml's `controller` section,
and says what to change next or why to stop. Every decision, with its reason and the metrics
behind it, is appended to `controller/decisions.jsonl`, tracked by DVC (`dvc add`) at the end.
The loop is bounded by `controller.max_iterations`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from pipeline.decide import Knobs, State, Targets, decide
from pipeline.flows import publish_metrics, run_streaming
from stages._params import load_params

DECISIONS = Path("controller") / "decisions.jsonl"


class ControllerTargets(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_accuracy_drop_pts: float = Field(default=1.0, ge=0)
    min_size_ratio: float = Field(default=3.0, ge=1)
    min_speedup: float = Field(default=1.5, ge=0)
    max_labelled_fraction: float = Field(default=0.5, gt=0, le=1)


class ControllerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_iterations: int = Field(default=3, ge=0, le=20)
    tolerance: float = Field(default=1e-3, ge=0)
    lambda1: float = Field(default=1.0, ge=0)
    lambda2: float = Field(default=1.0, ge=0)
    deployed_model: str = "quantized"
    targets: ControllerTargets = ControllerTargets()


def load_controller_params(repo: str | Path = ".") -> ControllerParams:
    raw = yaml.safe_load((Path(repo) / "params.yaml").read_text()) or {}
    return ControllerParams.model_validate(raw.get("controller") or {})


def labelled_fraction(repo: str | Path) -> float:
    """Labelled pairs bought (seed + oracle picks) over all pairs the run could have labelled."""
    repo = Path(repo)
    prepared = json.loads((repo / "metrics" / "prepare.json").read_text())
    selected = json.loads((repo / "metrics" / "active_select.json").read_text())
    return selected["labelled_rows"] / (prepared["seed_rows"] + prepared["pool_rows"])


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


@task(name="dvc-exp-run", cache_policy=NO_CACHE)
def dvc_exp_run(changes: dict[str, object], name: str, repo: str) -> str:
    logger = get_run_logger()
    cmd = ["dvc", "exp", "run", "--name", name]
    for key, value in changes.items():
        cmd += ["-S", f"{key}={override_value(value)}"]
    return run_streaming(cmd, repo, logger.info)


def override_value(value: object) -> str:
    """A value in DVC's `-S` (Hydra) grammar: JSON for scalars, `{key: value}` for mappings
    (Hydra rejects quoted keys)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


@flow(name="sec-controller-iteration", flow_run_name="iteration-{iteration}")
def controller_iteration(iteration: int, changes: dict[str, object], name: str, repo: str = ".") -> dict:
    """One experiment: apply `changes`, let DVC rerun what they invalidate, return the metrics."""
    output = dvc_exp_run(changes, name, repo)
    metrics = publish_metrics(repo)
    ran = [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]
    return {"metrics": metrics, "stages_run": ran}


def append_decision(record: dict, repo: str | Path) -> None:
    path = Path(repo) / DECISIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write(json.dumps(record, sort_keys=True) + "\n")


def previous_decisions(repo: str | Path) -> list[str]:
    path = Path(repo) / DECISIONS
    return path.read_text().splitlines() if path.is_file() else []


@flow(name="sec-controller", log_prints=True)
def sec_controller(max_iterations: int | None = None, repo: str = ".") -> list[dict]:
    """Run → measure → decide, until targets are met, the objective stops improving, or the bound."""
    logger = get_run_logger()
    cfg = load_controller_params(repo)
    bound = cfg.max_iterations if max_iterations is None else max_iterations
    targets = Targets(**cfg.targets.model_dump())
    state = State(max_iterations=bound, lambda1=cfg.lambda1, lambda2=cfg.lambda2, tolerance=cfg.tolerance)
    tag = time.strftime("%Y%m%d-%H%M%S")
    history = previous_decisions(repo)
    changes: dict[str, object] = {}
    records: list[dict] = []
    best_name = None
    for iteration in range(bound + 1):
        name = f"sec-ctl-{tag}-{iteration}"
        result = controller_iteration(iteration, changes, name, repo)
        deployed = result["metrics"]["models"][cfg.deployed_model]
        fraction = labelled_fraction(repo)
        decision = decide(deployed, fraction, current_knobs(repo), targets, state)
        record = {
            "iteration": iteration, "experiment": name, "applied": changes, "stages_run": result["stages_run"],
            "metrics": {k: deployed.get(k) for k in ("accuracy", "accuracy_delta_pts", "size_ratio", "speedup", "cross_entropy")},
            "labelled_fraction": round(fraction, 4), "objective": decision.objective, "misses": decision.misses,
            "decision": decision.changes, "first_stage": decision.first_stage, "reason": decision.reason,
            "stop": decision.stop, "lambda1": decision.lambda1, "lambda2": decision.lambda2,
        }
        append_decision(record, repo)
        records.append(record)
        logger.info("iteration %d: %s", iteration, decision.reason)
        if decision.improved:
            best_name = name
            state_best = (deployed["cross_entropy"], fraction, deployed["size_ratio"])
        else:
            state_best = state.best
        if decision.stop:
            break
        changes = decision.changes
        state = State(iteration=iteration + 1, max_iterations=bound, lambda1=decision.lambda1,
                      lambda2=decision.lambda2, best=state_best, tolerance=cfg.tolerance)
    if best_name and records[-1]["experiment"] != best_name:
        logger.info("restoring the best iteration's experiment %s", best_name)
        run_streaming(["dvc", "exp", "apply", best_name], repo, logger.info)
    # `exp apply` may restore an older copy of the log: write the whole history back after it.
    log = Path(repo) / DECISIONS
    log.write_text("".join(line + "\n" for line in history) + "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    run_streaming(["dvc", "add", "-q", str(DECISIONS)], repo, logger.info)
    return records
