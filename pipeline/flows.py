"""Prefect flows over the DVC pipeline. Prefect orchestrates; DVC decides what is stale.

Each task runs one DVC stage as `dvc repro --single-item <stage>` in a subprocess (the DVC Python
API changes the working directory and is not safe across concurrent tasks) and streams its output
into Prefect's logs. Tasks never cache results: a changed params.yaml must always reach DVC.
Retries happen only on DVC's repository lock (another DVC command was running), the one failure a
retry can fix; a stage's own error fails its task at once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline._dvc_env import LOCK_MARKERS, project_env
from pipeline.decide import STAGE_ORDER
from stages._params import parse_params

# Stages that put a model on the accelerator when there is one.
GPU_STAGES = {"active_select", "fine_tune", "prune", "distill", "evaluate"}


def gpu_limit_name() -> str | None:
    """The global concurrency limit GPU stages take a slot of (env SEC_GPU_LIMIT, e.g. "gpu-0").

    One limit per GPU with limit 1 means two GPU stages never share a device; set the limit higher
    to share on purpose. Unset (laptops, CI), no slot is taken.
    """
    return os.environ.get("SEC_GPU_LIMIT") or None


class DvcCommandError(RuntimeError):
    def __init__(self, cmd: list[str], returncode: int, tail: str):
        self.lock_busy = any(marker in tail for marker in LOCK_MARKERS)
        super().__init__(f"{' '.join(cmd)} exited {returncode}:\n{tail}")


PROGRESS = re.compile(r"\d+%\|")  # a tqdm bar
PROGRESS_EVERY_S = 15.0


def run_streaming(cmd: list[str], cwd: str | Path, log) -> str:
    """Run `cmd`, forward its output lines to `log`, return the output; raise DvcCommandError.

    Progress bars are forwarded at most every PROGRESS_EVERY_S seconds (and when they reach
    100%), so a training run shows its progress without flooding Prefect's log store.
    """
    lines: list[str] = []
    last_progress = 0.0
    with subprocess.Popen(cmd, cwd=cwd, env=project_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            # tqdm redraws with carriage returns; keep the last state of each line.
            line = raw.rstrip("\n").split("\r")[-1]
            if not line.strip():
                continue
            if PROGRESS.search(line):
                now = time.monotonic()
                if now - last_progress < PROGRESS_EVERY_S and "100%|" not in line:
                    continue
                last_progress = now
            lines.append(line)
            log(line)
    if proc.returncode != 0:
        raise DvcCommandError(cmd, proc.returncode, "\n".join(lines[-30:]))
    return "\n".join(lines)


def retry_only_when_dvc_is_locked(task, task_run, state) -> bool:
    try:
        state.result()
    except DvcCommandError as err:
        return err.lock_busy
    except Exception:
        return False
    return False


@task(name="dvc-stage", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=10,
      retry_condition_fn=retry_only_when_dvc_is_locked, task_run_name="{stage}")
def run_stage(stage: str, repo: str = ".") -> str:
    """One DVC stage; DVC skips it when its deps, params and outs are unchanged."""
    logger = get_run_logger()
    cmd = ["dvc", "repro", "--single-item", stage]
    limit = gpu_limit_name() if stage in GPU_STAGES else None
    if limit:
        from prefect.concurrency.sync import concurrency

        logger.info("waiting for a slot of the GPU concurrency limit %r", limit)
        with concurrency(limit, occupy=1, strict=True):
            output = run_streaming(cmd, repo, logger.info)
    else:
        output = run_streaming(cmd, repo, logger.info)
    skipped = "didn't change, skipping" in output
    logger.info("stage %s %s", stage, "was up to date (skipped by DVC)" if skipped else "ran")
    return "skipped" if skipped else "ran"


def apply_overrides(raw: dict, overrides: dict[str, object]) -> dict:
    """Set dotted keys (e.g. {"prune.ratio": 0.5}) in a params mapping; returns a new mapping."""
    updated = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        node = updated
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise KeyError(f"params.yaml has no section {part!r} (from override {dotted!r})")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"params.yaml has no key {dotted!r}")
        node[leaf] = value
    return updated


@task(name="apply-params", cache_policy=NO_CACHE)
def write_params(overrides: dict[str, object], profile: str | None, repo: str = ".") -> dict:
    """Validate, then write, the overrides into params.yaml; invalid ones change nothing."""
    path = Path(repo) / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    overrides = {**({"profile": profile} if profile else {}), **overrides}
    updated = apply_overrides(raw, overrides)  # "profile" is a top-level key like any other
    parse_params(updated, str(path))
    if updated != raw:
        path.write_text(yaml.safe_dump(updated, sort_keys=False))
    return overrides


def metrics_table(repo: str | Path = ".") -> str:
    report = Path(repo) / "reports" / "report.md"
    return report.read_text() if report.is_file() else "(no report yet)"


@task(name="publish-metrics", cache_policy=NO_CACHE)
def publish_metrics(repo: str = ".") -> dict:
    """The report as a Prefect markdown artifact, and an event the controller's trigger listens to."""
    from prefect.events import emit_event

    metrics = json.loads((Path(repo) / "metrics" / "evaluate.json").read_text())
    create_markdown_artifact(key="sec-metrics", markdown=metrics_table(repo), description="SEC pipeline metrics")
    deployed = metrics["models"].get("quantized", {})
    emit_event(
        event="sec.metrics.evaluated",
        resource={"prefect.resource.id": f"sec-pipeline.{Path(repo).resolve().name}"},
        payload={k: deployed.get(k) for k in ("accuracy", "accuracy_delta_pts", "size_ratio", "speedup")},
    )
    return metrics


@flow(name="sec-pipeline", log_prints=True)
def sec_pipeline(overrides: dict[str, object] | None = None, profile: str | None = None, repo: str = ".") -> dict:
    """The DVC pipeline, one task per stage in DAG order; returns evaluate's metrics."""
    if overrides or profile:
        write_params(overrides or {}, profile, repo)
    for stage in STAGE_ORDER:
        run_stage(stage, repo)
    return publish_metrics(repo)
