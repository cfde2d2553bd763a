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
from contextlib import contextmanager
from pathlib import Path

import yaml
from filelock import FileLock
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from pipeline._dvc_env import LOCK_MARKERS, project_env
from pipeline.dag import GPU_STAGES, STAGE_ORDER
from pipeline.targets import deployed_name
from stages._io import atomic_path
from stages._params import parse_params


def gpu_limit_name() -> str | None:
    """The global concurrency limit GPU stages take a slot of (env SEC_GPU_LIMIT, e.g. "gpu-0").

    One limit per GPU with limit 1 means two GPU stages never share a device; set the limit higher
    to share on purpose. Unset (laptops, CI), no slot is taken.
    """
    return os.environ.get("SEC_GPU_LIMIT") or None


@contextmanager
def gpu_slot(needs_gpu: bool, log):
    """Hold one slot of the GPU concurrency limit (gpu_limit_name) while the body runs, when the
    work needs a GPU and a limit is set; otherwise run it at once."""
    limit = gpu_limit_name() if needs_gpu else None
    if not limit:
        yield
        return
    from prefect.concurrency.sync import concurrency

    log(f"waiting for a slot of the GPU concurrency limit {limit!r}")
    with concurrency(limit, occupy=1, strict=True):
        yield


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
    with gpu_slot(stage in GPU_STAGES, logger.info):
        output = run_streaming(cmd, repo, logger.info)
    skipped = "didn't change, skipping" in output
    logger.info("stage %s %s", stage, "was up to date (skipped by DVC)" if skipped else "ran")
    return "skipped" if skipped else "ran"


def set_dotted(node: dict, dotted: str, value: object) -> None:
    """Set one dotted key (e.g. "prune.ratio") in a params mapping, in place; unknown keys raise."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise KeyError(f"params.yaml has no section {part!r} (from override {dotted!r})")
        node = node[part]
    if leaf not in node:
        raise KeyError(f"params.yaml has no key {dotted!r}")
    node[leaf] = value


def apply_overrides(raw: dict, overrides: dict[str, object]) -> dict:
    """Set dotted keys (e.g. {"prune.ratio": 0.5}) in a params mapping; returns a new mapping."""
    updated = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        set_dotted(updated, dotted, value)
    return updated


def _round_trip_yaml():
    """ruamel.yaml in round-trip mode (a DVC dependency): keeps the user's comments, key order
    and flow lists, and writes None as `null` as the file spells it (ruamel's default is empty)."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # never fold a long line the user wrote on one
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def _flow_style(value: object) -> object:
    """Mappings and lists set by an override go in as `{a: 1}` / `[a, b]`: a block mapping put where
    a scalar and its comment were would push the comment onto a line of its own."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, dict):
        node = CommentedMap({k: _flow_style(v) for k, v in value.items()})
    elif isinstance(value, (list, tuple)):
        node = CommentedSeq([_flow_style(v) for v in value])
    else:
        return value
    node.fa.set_flow_style()
    return node


def _dump_yaml(rt, doc, stream) -> None:  # one seam, so a test can fail a write halfway
    rt.dump(doc, stream)


def params_lock_path(path: Path) -> Path:
    """The lock every params.yaml writer takes: in DVC's own scratch directory (.dvc/tmp, which
    DVC's .gitignore covers) when the file sits in a DVC repository, else a dot-file beside it."""
    dvc_tmp = path.parent / ".dvc" / "tmp"
    if dvc_tmp.parent.is_dir():
        dvc_tmp.mkdir(exist_ok=True)
        return dvc_tmp / f"{path.name}.lock"
    return path.parent / f".{path.name}.lock"


PARAMS_LOCK_TIMEOUT_S = 120.0


def update_params_file(path: str | Path, overrides: dict[str, object]) -> bool:
    """Validate `overrides` against the whole params file, then write them into it.

    Under a file lock (read, change, write: two flows writing at once both land), atomically
    (a temp file moved into place: a crash mid-write leaves the old file), and as a round-trip
    edit (the user's comments and layout survive). Invalid overrides change nothing.
    Returns whether the file changed.
    """
    path = Path(path)
    with FileLock(str(params_lock_path(path)), timeout=PARAMS_LOCK_TIMEOUT_S):
        text = path.read_text()
        raw = yaml.safe_load(text)
        updated = apply_overrides(raw, overrides)
        parse_params(updated, str(path))
        if updated == raw:
            return False
        rt = _round_trip_yaml()
        doc = rt.load(text)
        for dotted, value in overrides.items():
            set_dotted(doc, dotted, _flow_style(value))
        with atomic_path(path) as tmp:
            with tmp.open("w") as stream:
                _dump_yaml(rt, doc, stream)
            tmp.chmod(path.stat().st_mode & 0o777)  # keep the file's permissions
    return True


@task(name="apply-params", cache_policy=NO_CACHE)
def write_params(overrides: dict[str, object], profile: str | None, repo: str = ".") -> dict:
    """Validate, then write, the overrides into params.yaml; invalid ones change nothing."""
    overrides = {**({"profile": profile} if profile else {}), **overrides}  # "profile" is a top-level key like any other
    update_params_file(Path(repo) / "params.yaml", overrides)
    return overrides


def metrics_table(repo: str | Path = ".") -> str:
    report = Path(repo) / "reports" / "report.md"
    return report.read_text() if report.is_file() else "(no report yet)"


METRICS_EVENT = "sec.metrics.evaluated"
# Resource label saying who ran the pipeline. The controller's trigger in prefect.yaml matches only
# `pipeline`: the controller's own iterations publish with `controller`, so they never wake it again.
ORIGIN_LABEL = "sec.origin"
PIPELINE_ORIGIN = "pipeline"
CONTROLLER_ORIGIN = "controller"


def metrics_event(repo: str | Path, origin: str, deployed: str | None = None) -> dict:
    """The event publish_metrics emits: name, resource and a payload of DEV numbers (the test
    split only reports; an event may wake a controller, which must not see test numbers)."""
    repo = Path(repo)
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    timing_path = repo / "metrics" / "evaluate_timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    deployed = deployed_name(deployed, metrics)
    model = metrics.get("models", {}).get(deployed, {})
    dev = model.get("dev", {})
    return {
        "event": METRICS_EVENT,
        "resource": {"prefect.resource.id": f"sec-pipeline.{repo.resolve().name}", ORIGIN_LABEL: origin},
        "payload": {
            "model": deployed, "split": "dev",
            "accuracy": dev.get("accuracy"), "accuracy_delta_pts": dev.get("accuracy_delta_pts"),
            "size_ratio": model.get("size_ratio"),
            "speedup": timing.get("models", {}).get(deployed, {}).get("speedup"),
            "speedup_b1_p50": timing.get("models", {}).get(deployed, {}).get("speedup_b1_p50"),
        },
    }


@task(name="publish-metrics", cache_policy=NO_CACHE)
def publish_metrics(repo: str = ".", origin: str = PIPELINE_ORIGIN) -> dict:
    """The report as a Prefect markdown artifact, and an event the controller's trigger listens to
    (when `origin` is the pipeline's). Returns evaluate.json."""
    metrics = json.loads((Path(repo) / "metrics" / "evaluate.json").read_text())
    create_markdown_artifact(key="sec-metrics", markdown=metrics_table(repo), description="SEC pipeline metrics")
    emit_event(**metrics_event(repo, origin))
    return metrics


@flow(name="sec-pipeline", log_prints=True)
def sec_pipeline(overrides: dict[str, object] | None = None, profile: str | None = None, repo: str = ".") -> dict:
    """The DVC pipeline, one task per stage in DAG order; returns evaluate's metrics."""
    if overrides or profile:
        write_params(overrides or {}, profile, repo)
    for stage in STAGE_ORDER:
        run_stage(stage, repo)
    return publish_metrics(repo)
