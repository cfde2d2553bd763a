"""The grid fanned out over Prefect workers: one experiment per flow run, in its own workspace.

`experiment_run` (deployment `sec-experiment`, prefect.yaml) is one DVC experiment on whichever
worker of the pool takes it: a clone of the project's git remote at the requested commit under the
worker checkout's ignored scratch directory, `dvc pull --run-cache` from the shared DVC remote,
`dvc exp run -n <name> -S ...` holding a slot of the host's GPU concurrency limit, then `dvc exp
push --run-cache` (outputs, run-cache, experiment ref). The user's checkout is never touched; the
workspace is removed afterwards (a killed attempt leaves it, so the same host resumes from its
training checkpoints).

`grid_fanout` (`sec grid --workers`) runs in the main checkout: it pulls the experiments already
pushed (`dvc exp pull`), submits each missing grid cell as its own flow run (`run_deployment`,
timeout 0: no waiting in line), waits for them all, pulls again and writes the grid tables from
`dvc exp show`, whichever host ran each cell. A failed cell is reported with its log tail and the
others go on; a crashed one (its worker died) is just missing next time. Every decision (missing
cells, names, idempotency keys, commands) is in pipeline/fanout_plan.py, which imports no Prefect.
Prefect only orchestrates: it queues, places, limits and shows; DVC decides what is stale.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline import fanout_plan as plan
from pipeline._dvc_env import project_env
from pipeline.fanout_plan import Cell, FanoutError, Remotes
from pipeline.flows import DvcCommandError, gpu_slot, run_streaming
from pipeline.grid import data_dir_args, exp_show, read_params, repo_grid, stage_summary
from pipeline.grid_tables import collect

DEPLOYMENT = "sec-experiment/sec-experiment"
# Flow runs report a heartbeat every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (`sec worker` sets
# 30); a run silent for this long lost its process (host or worker killed) and is marked Crashed by
# the automation below, so the grid waiting on it moves on and a rerun makes a new attempt.
SILENT_AFTER_S = 90
CRASH_AUTOMATION = "sec-crash-silent-flow-runs"


# ---------------------------------------------------------------------------------------------
# One experiment on a worker.


@task(name="workspace", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=15)
def prepare_workspace(cell: Cell, remotes: Remotes, workspace: Path, cache_dir: Path) -> str:
    """A checkout of the cell's commit from the git remote, the shared DVC remote as default and the
    host's DVC cache; retried, as clones and fetches fail on flaky networks."""
    logger = get_run_logger()
    reuse = (workspace / ".git").is_dir()
    if reuse:
        logger.info("reusing %s, left by an earlier attempt (its checkpoints resume training)", workspace)
    workspace.parent.mkdir(parents=True, exist_ok=True)
    *get, checkout = plan.clone_commands(remotes.git, workspace, cell.commit, reuse)
    for cmd in get:
        run_streaming(cmd, workspace.parent, logger.info)
    try:
        run_streaming(checkout, workspace.parent, logger.info)
    except DvcCommandError as err:
        raise FanoutError(f"commit {cell.commit} is not on the git remote {remotes.git}: push it first") from err
    for cmd in plan.dvc_setup_commands(remotes.dvc, cache_dir):
        run_streaming(cmd, workspace, logger.info)
    # `dvc exp run` commits the experiment: a worker host without a git identity still must.
    if subprocess.run(["git", "-C", str(workspace), "config", "user.email"], capture_output=True).returncode != 0:
        for key, value in (("user.name", "sec worker"), ("user.email", f"sec-worker@{socket.gethostname()}")):
            subprocess.run(["git", "-C", str(workspace), "config", key, value], check=True)
    return str(workspace)


@task(name="dvc-pull", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=15)
def pull_inputs(workspace: Path) -> None:
    """Outputs of the commit and the run-cache from the shared remote: a stage any host finished is
    restored, not trained again."""
    run_streaming(plan.PULL_COMMAND, workspace, get_run_logger().info)


@task(name="dvc-exp-run", cache_policy=NO_CACHE, task_run_name="{cell.name}")
def run_experiment(cell: Cell, workspace: Path, extra: list[str]) -> str:
    """`dvc exp run` holding a slot of this host's GPU limit; not retried (a stage's own error is
    the cell's result). After a failure the run-cache of the stages that finished is still pushed."""
    logger = get_run_logger()
    try:
        with gpu_slot(True, logger.info):
            return run_streaming(plan.exp_run_command(cell, extra), workspace, logger.info)
    except DvcCommandError:
        subprocess.run(plan.RUN_CACHE_PUSH, cwd=workspace, env=project_env(), capture_output=True)
        raise


@task(name="dvc-exp-push", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=15)
def push_results(cell: Cell, workspace: Path) -> None:
    for cmd in plan.push_commands(cell):
        run_streaming(cmd, workspace, get_run_logger().info)


def _tag_with_worker(worker: str) -> None:
    """Tag this flow run `worker:<name>`: the UI and the grid's summary show where each cell ran."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=[*(flow_run.tags or []), f"worker:{worker}"])


def _evaluated(workspace: Path) -> dict[str, dict]:
    out = {}
    for stem in ("evaluate_teacher", "evaluate"):
        path = workspace / "metrics" / f"{stem}.json"
        if path.is_file():
            out[stem] = json.loads(path.read_text())
    return out


@flow(name="sec-experiment", log_prints=True)
def experiment_run(name: str, commit: str, overrides: list[str] | None = None, target: str | None = None,
                   git_remote: str | None = None, dvc_remote: str | None = None, scratch: str | None = None) -> dict:
    """One DVC experiment `name` at `commit` (`-S` `overrides`, up to `target`) in a workspace of its
    own under the worker's scratch directory; pushes it and publishes its metrics as an artifact.

    Runs in the worker's checkout (prefect.yaml's pull step): its relative data path and, when the
    remotes are not given, its git and DVC remotes are used.
    """
    logger = get_run_logger()
    checkout = Path.cwd()
    worker = os.environ.get("PREFECT__WORKER_NAME") or socket.gethostname()
    _tag_with_worker(worker)
    remotes = (Remotes(git_remote, dvc_remote) if git_remote and dvc_remote
               else plan.project_remotes(checkout, git_remote, dvc_remote))
    cell = Cell(name, commit, tuple(overrides or ()), target)
    scratch_dir = Path(scratch or os.environ.get("SEC_SCRATCH") or checkout / plan.SCRATCH_DIR)
    workspace = plan.workspace_dir(scratch_dir, name)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    try:  # a second attempt of the cell on this host must not share the workspace
        lock = FileLock(str(scratch_dir / f"{name}.lock"), timeout=5)
        lock.acquire()
    except Timeout as err:
        raise FanoutError(f"{workspace}: another flow run of {name} is running on this host") from err
    try:
        logger.info("experiment %s at %s on worker %s in %s", name, commit[:8], worker, workspace)
        prepare_workspace(cell, remotes, workspace, scratch_dir / "dvc-cache")
        pull_inputs(workspace)
        # A relative data path in params.yaml is relative to the worker's checkout, not the workspace.
        extra = data_dir_args(read_params(workspace), checkout)[1::2]
        try:
            output = run_experiment(cell, workspace, extra)
        except DvcCommandError:
            shutil.rmtree(workspace, ignore_errors=True)  # bad params: nothing to resume
            raise
        push_results(cell, workspace)
        ran = stage_summary(output)["ran"]
        create_markdown_artifact(key=plan.artifact_key(name), description=f"experiment {name}: metrics",
                                 markdown=plan.metrics_markdown(cell, worker, _evaluated(workspace), ran))
        shutil.rmtree(workspace, ignore_errors=True)
        return {"name": name, "worker": worker, "stages_run": ran}
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------
# The grid: submit the missing cells, wait, gather.


def _git(args: list[str], repo: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise FanoutError(f"`git {' '.join(args)}` in {repo} exited {result.returncode}: {result.stderr.strip()}")
    return result


def require_pushed(repo: Path, git_remote: str, commit: str) -> None:
    """Workers clone `commit` from the git remote: it must be reachable from one of the remote's refs."""
    tips = [line.split()[0] for line in _git(["ls-remote", git_remote], repo).stdout.splitlines() if line.strip()]
    if not any(_git(["merge-base", "--is-ancestor", commit, tip], repo, check=False).returncode == 0 for tip in tips):
        raise FanoutError(f"commit {commit[:8]} is not on the git remote {git_remote}: `git push` it first "
                          "(workers clone it from there)")


@task(name="dvc-exp-pull", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=10)
def gather(repo: Path, remotes: Remotes, with_cache: bool, experiments: tuple[str, ...] = ()) -> None:
    """`dvc exp pull`: `experiments` (default: every one pushed on this commit), whichever host ran
    them (with their outputs from the shared DVC remote: the tables pair the cells' predictions)."""
    listing = subprocess.run(["dvc", "remote", "list"], cwd=repo, capture_output=True, text=True,
                             env=project_env()).stdout
    for cmd in plan.gather_commands(remotes, listing, repo, with_cache, experiments):
        run_streaming(cmd, repo, get_run_logger().info)


def _earlier_runs(client, deployment_id, run_name: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
    )


@task(name="submit", cache_policy=NO_CACHE, task_run_name="{cell.name}")
def submit_cell(cell: Cell, remotes: Remotes, deployment: str = DEPLOYMENT, tag: str = "sec-grid") -> str:
    """The cell's live flow run if another submission made one, else a new attempt (timeout 0:
    queued on the pool, not awaited here). Returns the flow run id."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    name = plan.flow_run_name(cell)
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        earlier = _earlier_runs(client, dep.id, name)
    action, value = plan.attempt_plan(r.state_type.value if r.state_type else "SCHEDULED" for r in earlier)
    if action == "wait":
        logger.info("%s: flow run %s is already %s; waiting on it", cell.name, earlier[value].id, earlier[value].state_type)
        return str(earlier[value].id)
    run = run_deployment(deployment, parameters=cell.parameters(remotes), flow_run_name=name, timeout=0,
                         idempotency_key=plan.idempotency_key(cell, value), tags=[tag])
    logger.info("%s: submitted flow run %s (attempt %d)", cell.name, run.id, value + 1)
    return str(run.id)


def wait_for_runs(run_ids: dict[str, str], poll_s: float, timeout_s: float | None, log) -> list[dict]:
    """Poll the flow runs until every one is final; one row per cell: name, state, worker, message."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    started, rows = time.monotonic(), {}
    with get_client(sync_client=True) as client:
        while len(rows) < len(run_ids):
            for name, run_id in run_ids.items():
                if name in rows:
                    continue
                run = client.read_flow_run(UUID(run_id))
                if run.state and run.state.is_final():
                    worker = next((t.split(":", 1)[1] for t in run.tags if t.startswith("worker:")), None)
                    rows[name] = {"name": name, "state": run.state.type.value, "worker": worker,
                                  "message": run.state.message or ""}
                    log(f"[{len(rows)}/{len(run_ids)}] {name}: {run.state.type.value.lower()} on {worker or '?'}"
                        + ("" if run.state.is_completed() else f"\n{run.state.message}"))
            if len(rows) < len(run_ids):
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    left = sorted(set(run_ids) - set(rows))
                    raise FanoutError(f"cells still running after {timeout_s:.0f} s: {', '.join(left)} (they go on; "
                                      "rerun the grid to gather them)")
                time.sleep(poll_s)
    return [rows[name] for name in run_ids]


def fanout_target(repo: str | Path, git_remote: str | None = None, dvc_remote: str | None = None) -> tuple[Path, Remotes, str]:
    """(checkout, remotes, commit) for runs on the pool: the remotes from the project's config, and
    HEAD, which must be on the git remote (workers clone it from there)."""
    root = Path(repo).resolve()
    remotes = plan.project_remotes(root, git_remote, dvc_remote)
    commit = _git(["rev-parse", "HEAD"], root).stdout.strip()
    require_pushed(root, remotes.git, commit)
    if _git(["status", "--porcelain", "--untracked-files=no"], root).stdout.strip():
        get_run_logger().warning("uncommitted changes in %s are not part of the runs: workers run commit %s",
                                 root, commit[:8])
    return root, remotes, commit


def experiment_on_worker(name: str, overrides: list[str], root: Path, remotes: Remotes, commit: str,
                         deployment: str = DEPLOYMENT, poll_s: float = 10.0) -> str:
    """One experiment (a controller trial's run) as a `sec-experiment` flow run on the pool: submit,
    wait, `dvc exp pull` it into `root` with its outputs; returns its commit. Raises FanoutError
    with the run's message when it did not complete."""
    logger = get_run_logger()
    cell = Cell(name, commit, tuple(overrides))
    ensure_crash_automation()
    row = wait_for_runs({name: submit_cell(cell, remotes, deployment, tag="sec-controller")}, poll_s, None,
                        logger.info)[0]
    if row["state"] != "COMPLETED":
        raise FanoutError(f"{name}: {row['state'].lower()} on worker {row['worker'] or '?'}: {row['message']}")
    gather(root, remotes, with_cache=True, experiments=(name,))  # this run only, not the study's earlier ones
    rev = next((r["rev"] for r in collect(exp_show(root)) if r["name"] == name and not r["is_baseline"]), None)
    if rev is None:
        raise FanoutError(f"{name}: completed on worker {row['worker']}, but `dvc exp pull {remotes.git}` did not "
                          f"bring it to {root} (is it on commit {commit[:8]}?)")
    return rev


def ensure_crash_automation() -> None:
    """Prefect's recipe for flow runs whose process died (no heartbeat for SILENT_AFTER_S): mark them
    Crashed. Created once per server; without it a killed worker's cell would stay Running."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    with get_client(sync_client=True) as client:
        if client.read_automations_by_name(CRASH_AUTOMATION):
            return
        client.create_automation(AutomationCore.model_validate({
            "name": CRASH_AUTOMATION,
            "description": "Flow runs that stopped sending heartbeats lost their process: mark them Crashed.",
            "trigger": {
                "type": "event", "posture": "Proactive",
                "after": ["prefect.flow-run.heartbeat"],
                "expect": ["prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                           "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"],
                "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
                "for_each": ["prefect.resource.id"], "threshold": 1, "within": SILENT_AFTER_S,
            },
            "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                         "message": f"no heartbeat for {SILENT_AFTER_S} s: the worker or its host died"}],
        }))


@flow(name="sec-grid-fanout", log_prints=True)
def grid_fanout(repo: str = ".", only: list[str] | None = None, profile: str | None = None, seeds: int | None = None,
                budgets: list[int] | None = None, full: bool = False, git_remote: str | None = None,
                dvc_remote: str | None = None, deployment: str = DEPLOYMENT, out_dir: str = "reports/grid",
                poll_s: float = 10.0, timeout_s: float | None = None) -> dict:
    """Submit every missing cell of the grid at HEAD as its own flow run, wait, gather, write tables."""
    from pipeline.grid_paired import dvc_loader
    from pipeline.grid_tables import write_all

    logger = get_run_logger()
    root, remotes, commit = fanout_target(repo, git_remote, dvc_remote)
    gather(root, remotes, with_cache=False)
    cells = plan.grid_cells(root, commit, only, profile, budgets, seeds, full)
    todo = plan.missing_cells(cells, collect(exp_show(root)))
    logger.info("%d cell(s), %d already done, %d to run", len(cells), len(cells) - len(todo), len(todo))
    rows: list[dict] = []
    if todo:
        ensure_crash_automation()
        run_ids = {cell.name: submit_cell(cell, remotes, deployment) for cell in todo}
        rows = wait_for_runs(run_ids, poll_s, timeout_s, logger.info)
        gather(root, remotes, with_cache=True)
        create_markdown_artifact(key="sec-grid-cells", markdown=plan.cells_markdown(rows),
                                 description=f"grid cells run at {commit[:8]}: state and worker")
    records = collect(exp_show(root))
    written = write_all(records, out_dir if Path(out_dir).is_absolute() else root / out_dir,
                        grid=repo_grid(root, profile, budgets)[1], load=dvc_loader(str(root)), log=logger.info)
    tables_md = next((p for p in written if Path(p).name == "tables.md"), None)
    if tables_md:
        create_markdown_artifact(key="sec-grid-tables", markdown=Path(tables_md).read_text(),
                                 description=f"the grid's tables at {commit[:8]}")
    failed = [r["name"] for r in rows if r["state"] != "COMPLETED"]
    missing = [c.name for c in plan.missing_cells(cells, records)]
    return {"commit": commit, "cells": [c.name for c in cells], "submitted": [c.name for c in todo],
            "runs": rows, "failed": failed, "missing": missing, "tables": [str(p) for p in written]}
