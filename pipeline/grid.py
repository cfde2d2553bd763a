"""The ablation grid as DVC experiments, and the paper-style tables written from `dvc exp show`.

Every grid variant is one DVC experiment, `dvc exp run --queue -n grid-<slug> -S key=value ...`,
relative to the params.yaml of the current commit (the baseline). `dvc queue start -j 1` runs them
one at a time in temporary workspaces; the tables are then built from `dvc exp show --json` alone,
so `python -m pipeline.grid tables` rewrites them at any time without re-running anything.

    python -m pipeline.grid list                      # the variants for the selected profile
    python -m pipeline.grid queue [--only NAME ...]   # queue them (finished ones are skipped)
    python -m pipeline.grid run --out-dir reports/grid [--only NAME ...]
    python -m pipeline.grid tables --out-dir reports/grid

The variants (GRID is the cpu profile's grid; `grid_for(profile)` builds any profile's):
  all-labels              every pool pair labelled, no augmentation: the teacher baseline
  random, active          random / entropy selection at the profile's budget, no augmentation
  active+synonym          + synonym augmentation (the profile's fraction), no back-translation
  active+backtranslation  + back-translation, no synonym augmentation
  active+pseudo           + pseudo-labelled pool pairs, no augmentation
  sec                     no overrides: the default params (active + synonym + back-translation
                          + pruning + distillation + quantization). The compression ablation rows
                          (+pruning, +distillation, +quantization) are its evaluate.json models.
  random@N, active@N      the label-fraction curve (no augmentation); a budget equal to the
                          profile's is the `random` / `active` row itself and is not queued twice.

Data-only variants (those feeding only Tables 2 and 4) reproduce up to the `evaluate_teacher`
stage when dvc.yaml has it (`--full` runs the whole pipeline for them too); all-labels and sec
run everything. Tables read the teacher from evaluate_teacher.json, else evaluate.json.

Re-running: `queue` / `run` skip a variant whose experiment already succeeded on this baseline
(nothing runs; the tables are rewritten in seconds). A failed one is queued again. `--rerun`
removes the finished experiments and queues them again: DVC restores from its run-cache every
stage whose deps, params and command are unchanged, except stages with a `cache: false` output
that is not a metric or plot (fine_tune, prune and distill's dvclive directories, evaluate's
plots/report, report_plots), which DVC never saves to the run-cache (DVC 3.x,
dvc/stage/__init__.py: `run_cache=not no_cache_outs`) and so reruns; their cheap successors
(quantize, evaluate_teacher) are then restored again when the rerun gives identical outputs.
Experiments start from the current commit (the baseline) plus any uncommitted workspace
changes, which `dvc exp run --queue` stashes into each queued experiment: commit first.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from pipeline._dvc_env import LOCK_MARKERS, project_env
from stages._profiles import PROFILES

EXP_PREFIX = "grid-"
TABLES = ("main", "data", "compression", "curve")
TABLE_FILES = {
    "main": "table1_main",
    "data": "table2_data",
    "compression": "table3_compression",
    "curve": "table4_label_fraction",
}
FRACTION_FILE = "accuracy_vs_label_fraction.json"
NOT_RUN = "not run"
# Stages whose `seconds` make up training time (prepare has none; evaluate is not training).
TEACHER_STAGES = ("active_select", "augment", "back_translate", "fine_tune")
DEPLOY_STAGES = (*TEACHER_STAGES, "prune", "distill", "quantize")
COMPRESSION_ROWS = (
    ("teacher", "teacher"),
    ("+pruning", "pruned"),
    ("+distillation", "distilled"),
    ("+quantization", "quantized"),
)

# Profile-dependent sizes. curve_budgets: pool pairs labelled for the label-fraction curve. cpu has
# 1,000 seed + 8,830 pool pairs, so 2000 / 4000 / 5880 give 30.5 / 50.9 / 70.0 % of the 9,830
# labels; gpu assumes the offline pairs too (2,000 seed + 7,830 pool: 30.5 / 50.9 / 71.2 %); tiny has
# 24 seed + 36 pool pairs (6 / 12 -> 50 / 60 %). pseudo_size: pool pairs pseudo-labelled in
# `active+pseudo`, at most the pool left after the profile's budget. matched_steps: the optimizer
# steps of the all-labels teacher (cpu: 9,830 rows / batch 16 = 615 a epoch, 2 epochs), given to the
# largest active budget in `active@N+steps` so fewer labels do not also mean fewer steps (None: no
# such row).
PROFILE_SETTINGS: dict[str, dict] = {
    "cpu": {"pseudo_size": 2000, "curve_budgets": (2000, 4000, 5880), "matched_steps": 1230},
    "gpu": {"pseudo_size": 1500, "curve_budgets": (1000, 3000, 5000), "matched_steps": None},
    "tiny": {"pseudo_size": 12, "curve_budgets": (6, 12), "matched_steps": None},
}

# Data-only variants (Tables 2 and 4) need the teacher alone: they reproduce up to this stage.
TEACHER_TARGET = "evaluate_teacher"
NO_AUGMENTATION = {"augment.fraction": 0, "back_translate.fraction": 0}


class GridError(RuntimeError):
    """A grid command failed; the message names the experiment and what to look at."""


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: dict[str, object] = field(default_factory=dict)
    tables: tuple[str, ...] = ()
    parent: str | None = None  # the row a data component is judged against in Table 2

    @property
    def exp_name(self) -> str:
        return EXP_PREFIX + slug(self.name)

    @property
    def teacher_only(self) -> bool:
        """Needs only its teacher (Tables 1, 2, 4 read the teacher's quality; Table 1's size and speed
        ratios come from the `sec` run, which times its teacher of the same architecture in one
        process with the deployed model): the compression stages can be skipped."""
        return bool(self.tables) and "compression" not in self.tables

    @property
    def strategy(self) -> str:
        return str(self.overrides.get("active_select.strategy", "entropy"))


def slug(name: str) -> str:
    """A git-ref-safe experiment suffix: `active+synonym` -> `active-synonym`, `random@2000` -> `random-b2000`."""
    text = name.lower().replace("@", "-b").replace("+", "-")
    text = re.sub(r"[^a-z0-9-]+", "-", text)
    return re.sub(r"-{2,}", "-", text).strip("-")


def grid_for(
    profile: str = "cpu", *, budgets: Sequence[int] | None = None, default_budget: int | None = None
) -> list[Variant]:
    """The ordered grid for `profile`; `default_budget` is the budget random/active run at (None: the profile's)."""
    if profile not in PROFILE_SETTINGS:
        raise GridError(f"unknown profile {profile!r}; expected one of {sorted(PROFILE_SETTINGS)}")
    settings = PROFILE_SETTINGS[profile]
    if default_budget is None:
        default_budget = PROFILES[profile]["active_select"]["budget"]
    at_budget = {"active_select.budget": None}  # null: the profile's budget (or params.yaml's value)
    variants = [
        Variant(
            "all-labels",
            "every pool pair labelled, no augmentation (the teacher baseline)",
            {"active_select.strategy": "all", **NO_AUGMENTATION},
            ("main", "data", "curve"),
        ),
        Variant(
            "random",
            "random selection at the profile's budget, no augmentation",
            {"active_select.strategy": "random", **at_budget, **NO_AUGMENTATION},
            ("data", "curve"),
        ),
        Variant(
            "active",
            "entropy (active) selection at the profile's budget, no augmentation",
            {"active_select.strategy": "entropy", **at_budget, **NO_AUGMENTATION},
            ("data", "curve"),
            parent="random",
        ),
        Variant(
            "active+synonym",
            "active + synonym augmentation (the profile's fraction)",
            {"active_select.strategy": "entropy", "augment.fraction": None, "back_translate.fraction": 0},
            ("data",),
            parent="active",
        ),
        Variant(
            "active+backtranslation",
            "active + back-translation (the profile's fraction)",
            {"active_select.strategy": "entropy", "augment.fraction": 0, "back_translate.fraction": None},
            ("data",),
            parent="active",
        ),
        Variant(
            "active+pseudo",
            f"active + {settings['pseudo_size']} pseudo-labelled pool pairs, no augmentation",
            {
                "active_select.strategy": "entropy",
                **NO_AUGMENTATION,
                "active_select.pseudo_size": settings["pseudo_size"],
            },
            ("data",),
            parent="active",
        ),
        Variant(
            "sec",
            "default params: active + synonym + back-translation, pruned, distilled, quantized",
            {},
            ("main", "data", "compression"),
            parent="active+synonym",
        ),
    ]
    for strategy, label in (("random", "random"), ("entropy", "active")):
        for budget in budgets if budgets is not None else settings["curve_budgets"]:
            if budget == default_budget:
                continue  # the `random` / `active` row is this point
            variants.append(
                Variant(
                    f"{label}@{budget}",
                    f"{label} selection of {budget} pool pairs, no augmentation",
                    {"active_select.strategy": strategy, "active_select.budget": int(budget), **NO_AUGMENTATION},
                    ("curve",),
                )
            )
    if settings["matched_steps"]:
        budget = max(budgets if budgets is not None else settings["curve_budgets"])
        variants.append(
            Variant(
                f"active@{budget}+steps",
                f"active selection of {budget} pool pairs trained for the all-labels teacher's "
                f"{settings['matched_steps']} optimizer steps, no augmentation",
                {
                    "active_select.strategy": "entropy", "active_select.budget": int(budget), **NO_AUGMENTATION,
                    "fine_tune.max_steps": settings["matched_steps"],
                },
                ("data",),
            )
        )
    return variants


GRID: list[Variant] = grid_for("cpu")


def select(variants: Sequence[Variant], only: Iterable[str] | None) -> list[Variant]:
    """The variants named in `only` (name, experiment name, slug or a table: main|data|compression|curve)."""
    if not only:
        return list(variants)
    wanted = set()
    for item in only:
        key = item.strip()
        matches = [v for v in variants if key in (v.name, v.exp_name, slug(v.name)) or key in v.tables]
        if not matches:
            known = ", ".join(v.name for v in variants)
            raise GridError(f"unknown grid variant {key!r}; known: {known} (or a table: {', '.join(TABLES)})")
        wanted.update(v.name for v in matches)
    return [v for v in variants if v.name in wanted]


# --------------------------------------------------------------------------------------------
# Running: queue, start, wait.


def say(message: str) -> None:
    print(message, flush=True)




def dvc(
    args: Sequence[str], repo: str | Path = ".", check: bool = True, lock_retries: int = 3
) -> subprocess.CompletedProcess:
    """Run a DVC command; retry a few times while another DVC command holds the repository lock."""
    cmd = ["dvc", *args]
    for attempt in range(lock_retries + 1):
        result = subprocess.run(cmd, cwd=repo, env=project_env(), capture_output=True, text=True)
        busy = result.returncode != 0 and any(m in result.stdout + result.stderr for m in LOCK_MARKERS)
        if not busy or attempt == lock_retries:
            break
        time.sleep(10)
    if busy:
        raise GridError(
            f"`{' '.join(cmd)}`: another DVC command (a `dvc repro`?) holds the repository lock; run the grid after it"
        )
    if check and result.returncode != 0:
        tail = (result.stdout + result.stderr).strip()[-3000:]
        raise GridError(f"`{' '.join(cmd)}` exited {result.returncode}:\n{tail}")
    return result


def _format_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if (
        isinstance(value, str)
        and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value)
        and value not in ("true", "false", "null")
    ):
        return value
    return json.dumps(value)


def _has_key(params: dict, dotted: str) -> bool:
    node: object = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def set_args(variant: Variant, params: dict, profile: str | None = None) -> list[str]:
    """`-S` arguments for `variant` against the raw params.yaml `params`.

    A key params.yaml does not have yet (a param the stage accepts with a default) is appended
    with Hydra's `+key=value`; a plain `key=value` on a missing key makes DVC refuse the run.
    """
    args: list[str] = []
    if profile and params.get("profile") != profile:
        args += ["-S", f"profile={profile}"]
    for key, value in variant.overrides.items():
        prefix = "" if _has_key(params, key) else "+"
        args += ["-S", f"{prefix}{key}={_format_value(value)}"]
    return args


def queue_command(variant: Variant, params: dict, profile: str | None = None, target: str | None = None) -> list[str]:
    """The `dvc exp run --queue` command; `target`: reproduce only up to this stage."""
    cmd = ["dvc", "exp", "run", "--queue", "-n", variant.exp_name, *set_args(variant, params, profile)]
    return cmd + [target] if target else cmd


def pipeline_stages(repo: str | Path = ".") -> set[str]:
    path = Path(repo) / "dvc.yaml"
    return set((yaml.safe_load(path.read_text()) or {}).get("stages") or {}) if path.is_file() else set()


def target_for(variant: Variant, stages: set[str], full: bool = False) -> str | None:
    """A data-only variant stops at the teacher's evaluation when the pipeline has that stage."""
    return TEACHER_TARGET if variant.teacher_only and not full and TEACHER_TARGET in stages else None


def read_params(repo: str | Path = ".") -> dict:
    path = Path(repo) / "params.yaml"
    if not path.is_file():
        raise GridError(f"{path}: not found (run the grid from the repository root or pass --repo)")
    return yaml.safe_load(path.read_text()) or {}


def repo_grid(
    repo: str | Path = ".", profile: str | None = None, budgets: Sequence[int] | None = None
) -> tuple[str, list[Variant]]:
    """(profile, grid) for the repository's params.yaml, `profile` overriding its `profile` key."""
    params = read_params(repo)
    profile = profile or params.get("profile") or "cpu"
    default_budget = (params.get("active_select") or {}).get("budget") if params.get("profile") == profile else None
    return profile, grid_for(profile, budgets=budgets, default_budget=default_budget)


# Experiments of the last commits count: committing the tables (or docs) after a grid run must not
# hide the grid from its own tables. Stage code changes show in dvc.lock, which every commit carries.
HISTORY_COMMITS = 20


def exp_show(repo: str | Path = ".") -> list:
    return json.loads(dvc(["exp", "show", "--json", "-n", str(HISTORY_COMMITS)], repo).stdout or "[]")


@dataclass
class Task:
    id: str
    name: str
    status: str  # Queued | Running | Success | Failed | ...
    seconds: float | None = None  # wall time from Running to done, as seen by `wait`


_STATUS_WORDS = {"Queued", "Running", "Success", "Failed", "Unknown", "Revoked"}


def parse_queue_status(text: str) -> tuple[list[Task], int | None]:
    """`dvc queue status` -> (tasks, active workers)."""
    tasks = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and re.fullmatch(r"[0-9a-f]{7,40}", parts[0]) and parts[-1] in _STATUS_WORDS:
            tasks.append(Task(parts[0], parts[1], parts[-1]))
    match = re.search(r"Worker status:\s*(\d+) active", text)
    return tasks, int(match.group(1)) if match else None


def queue_status(repo: str | Path = ".") -> tuple[list[Task], int | None]:
    return parse_queue_status(dvc(["queue", "status"], repo).stdout)


def queue(
    names: Iterable[str] | None = None,
    profile: str | None = None,
    *,
    repo: str | Path = ".",
    budgets: Sequence[int] | None = None,
    rerun: bool = False,
    full: bool = False,
    log: Callable[[str], None] = say,
) -> list[Variant]:
    """Queue the selected variants as DVC experiments; returns the variants queued.

    A variant whose experiment already succeeded on this baseline is skipped (`rerun`: removed and
    queued again); one already queued or running is left alone; a failed one is queued again.
    Variants that feed only Tables 2 and 4 stop at the `evaluate_teacher` stage unless `full`.
    """
    params = read_params(repo)
    profile, grid = repo_grid(repo, profile, budgets)
    chosen = select(grid, names)
    existing = {r["name"]: r["state"] for r in collect(exp_show(repo)) if not r["is_baseline"]}
    stages = pipeline_stages(repo)
    todo = []
    for variant in chosen:
        state = existing.get(variant.exp_name)
        if state in ("queued", "running"):
            log(f"{variant.exp_name}: already {state}; not queued again")
            continue
        if state == "success":
            if not rerun:
                log(f"{variant.exp_name}: already done on this baseline; skipped (--rerun to run it again)")
                continue
            dvc(["exp", "remove", variant.exp_name], repo)
        elif state == "failed":
            dvc(["queue", "remove", variant.exp_name], repo, check=False)
        todo.append(variant)
    for variant in todo:
        cmd = queue_command(variant, params, profile, target_for(variant, stages, full))
        result = dvc(cmd[1:], repo, check=False)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip()[-2000:]
            raise GridError(f"queueing {variant.exp_name} ({variant.name}) failed: `{' '.join(cmd)}`\n{tail}")
        log(f"queued {variant.exp_name}: {' '.join(cmd[6:]) or '(default params)'}")
    return todo


def _task_log(repo: str | Path, task_id: str) -> str:
    """The executor log of a running task (DVC keeps it under .dvc/tmp/exps/run/<task id>/)."""
    paths = glob.glob(str(Path(repo) / ".dvc" / "tmp" / "exps" / "run" / f"{task_id}*" / "*.out"))
    try:
        return Path(paths[0]).read_text(errors="replace") if paths else ""
    except OSError:
        return ""


def stage_summary(log_text: str) -> dict[str, list[str]]:
    """Which stages an experiment ran, restored from the run-cache, or found unchanged."""
    return {
        "ran": re.findall(r"Running stage '([\w-]+)'", log_text),
        "restored": re.findall(r"Stage '([\w-]+)' is cached - skipping run", log_text),
        "unchanged": re.findall(r"Stage '([\w-]+)' didn't change, skipping", log_text),
    }


def start_queue(repo: str | Path = ".", jobs: int = 1) -> None:
    """`dvc queue start`: its worker outlives the command and inherits its stdout/stderr, so the output
    goes to a file, never to a pipe (reading a pipe would block until the whole queue is done)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        code = subprocess.call(
            ["dvc", "queue", "start", "-j", str(jobs)],
            cwd=repo,
            env=project_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if code != 0:
            out.seek(0)
            raise GridError(f"`dvc queue start -j {jobs}` exited {code}:\n{out.read()[-3000:]}")


def _current_stage(log_text: str) -> str | None:
    events = re.findall(r"(?:Running stage|Stage) '([\w-]+)'", log_text)
    return events[-1] if events else None


def wait(
    task_ids: Iterable[str],
    repo: str | Path = ".",
    *,
    poll_s: float = 15.0,
    timeout_s: float | None = None,
    jobs: int = 1,
    log: Callable[[str], None] = say,
) -> dict[str, Task]:
    """Wait until every task in `task_ids` has finished; log state changes and the running stage."""
    watch = set(task_ids)
    if not watch:
        return {}
    started = time.monotonic()
    seen: dict[str, str] = {}
    stages: dict[str, str | None] = {}
    run_start: dict[str, float] = {}
    idle_polls = 0
    final: dict[str, Task] = {}
    names: dict[str, str] = {}
    while True:
        tasks, active = queue_status(repo)
        ours = {t.id: t for t in tasks if t.id in watch}
        for task_id in watch - set(ours):  # gone from the queue: treat as finished, state unknown
            final.setdefault(task_id, Task(task_id, names.get(task_id, task_id), "Unknown"))
        done = sum(1 for t in ours.values() if t.status not in ("Queued", "Running")) + len(watch - set(ours))
        for task in ours.values():
            names[task.id] = task.name
            if seen.get(task.id) != task.status:
                seen[task.id] = task.status
                if task.status == "Running":
                    run_start[task.id] = time.monotonic()
                took = (
                    f" after {_minutes(time.monotonic() - run_start[task.id])}"
                    if task.id in run_start and task.status != "Running"
                    else ""
                )
                log(
                    f"[{done}/{len(watch)} done, {_minutes(time.monotonic() - started)}] {task.name}: {task.status.lower()}{took}"
                )
            if task.status == "Running":
                stage = _current_stage(_task_log(repo, task.id))
                if stage and stages.get(task.id) != stage:
                    stages[task.id] = stage
                    log(f"    {task.name}: stage {stage}")
            if task.status not in ("Queued", "Running") and task.id not in final:
                if task.id in run_start:
                    task.seconds = round(time.monotonic() - run_start[task.id], 1)
                final[task.id] = task
        if len(final) >= len(watch):
            return final
        waiting = [t for t in ours.values() if t.status == "Queued"]
        running = [t for t in ours.values() if t.status == "Running"]
        idle_polls = idle_polls + 1 if waiting and not running and active == 0 else 0
        if idle_polls >= 3:  # queued work but no worker (it exited or died): start one again
            log("no queue worker is running; starting one")
            start_queue(repo, jobs)
            idle_polls = 0
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            left = ", ".join(f"{t.name} ({t.status.lower()})" for t in waiting + running)
            raise GridError(
                f"grid still running after {_minutes(timeout_s)}: {left}. The queue keeps going in the "
                "background: `dvc queue status`, `dvc queue logs NAME`, `dvc queue stop` to stop it."
            )
        time.sleep(poll_s)


def _minutes(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def run(
    names: Iterable[str] | None = None,
    profile: str | None = None,
    *,
    repo: str | Path = ".",
    out_dir: str | Path = "reports/grid",
    budgets: Sequence[int] | None = None,
    rerun: bool = False,
    full: bool = False,
    jobs: int = 1,
    poll_s: float = 15.0,
    timeout_s: float | None = None,
    log: Callable[[str], None] = say,
) -> dict:
    """Queue, start the queue worker, wait, report failures, write the tables; returns a summary."""
    started = time.monotonic()
    before = {t.id for t in queue_status(repo)[0]}
    variants = queue(names, profile, repo=repo, budgets=budgets, rerun=rerun, full=full, log=log)
    wanted = {v.exp_name for v in variants}
    tasks, _ = queue_status(repo)
    # New tasks of ours, plus ours still pending from an earlier call (e.g. a `queue` before `run`).
    _, grid = repo_grid(repo, profile, budgets)
    ours = {v.exp_name for v in select(grid, names)}
    watch = {
        t.id
        for t in tasks
        if (t.id not in before and t.name in wanted) or (t.name in ours and t.status in ("Queued", "Running"))
    }
    summary: dict = {"queued": sorted(wanted), "experiments": {}, "failed": []}
    if watch:
        start_queue(repo, jobs)
        log(f"started the queue: {len(watch)} experiment(s), {jobs} at a time")
        final = wait(watch, repo, poll_s=poll_s, timeout_s=timeout_s, jobs=jobs, log=log)
        for task in final.values():
            logs = dvc(["queue", "logs", task.id], repo, check=False)
            text = logs.stdout + logs.stderr
            summary["experiments"][task.name] = {"status": task.status, "seconds": task.seconds, **stage_summary(text)}
            if task.status != "Success":
                summary["failed"].append(task.name)
                tail = "\n".join(text.strip().splitlines()[-30:])
                log(f"FAILED {task.name} (task {task.id}); last lines of `dvc queue logs {task.id}`:\n{tail}")
        for name, info in sorted(summary["experiments"].items()):
            took = f" in {_minutes(info['seconds'])}" if info["seconds"] is not None else ""
            log(
                f"{name}: {info['status'].lower()}{took}; stages run: {', '.join(info['ran']) or '-'}; "
                f"restored from run-cache: {', '.join(info['restored']) or '-'}"
            )
    else:
        log("nothing to run: every selected experiment is done (--rerun to run them again)")
    records = collect(exp_show(repo))
    written = write_all(records, out_dir, grid=grid)
    summary["tables"] = [str(p) for p in written]
    summary["seconds"] = round(time.monotonic() - started, 1)
    log(f"grid done in {_minutes(summary['seconds'])}; tables in {out_dir}")
    return summary


# --------------------------------------------------------------------------------------------
# Collecting `dvc exp show --json`.


def _flatten(value: object, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(sub, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def _record(rev_entry: dict, *, name: str, baseline: str, is_baseline: bool, state: str) -> dict:
    data = rev_entry.get("data") or {}
    params: dict = {}
    for path, content in (data.get("params") or {}).items():
        if isinstance(content, dict) and "data" in content:
            _flatten(content["data"], "" if path == "params.yaml" else f"{path}:", params)
    metrics: dict = {}
    for path, content in (data.get("metrics") or {}).items():
        if isinstance(content, dict) and "data" in content:
            _flatten(content["data"], Path(path).stem, metrics)
    error = rev_entry.get("error")
    return {
        "name": name,
        "rev": rev_entry.get("rev"),
        "baseline": baseline,
        "is_baseline": is_baseline,
        "state": state,
        "timestamp": data.get("timestamp"),
        "error": error.get("msg") if isinstance(error, dict) else error,
        "params": params,
        "metrics": metrics,
    }


def collect(exp_show_json: str | bytes | list) -> list[dict]:
    """`dvc exp show --json` (text or parsed) -> one flat record per baseline and experiment.

    DVC 3.x's format: a list of baselines (the first is "workspace", skipped), each
    {rev, name, data: {timestamp, params: {file: {data}}, metrics: {file: {data | error}}},
    experiments: [{name, executor: {state, local: {log, returncode, ...}} | null, revs: [{rev, name,
    error, data}]}]}. A record is {name, rev, baseline, is_baseline, state (baseline | queued |
    running | success | failed), timestamp, error, params: {dotted key: value},
    metrics: {"<file stem>.<dotted key>": value}}, e.g. metrics["evaluate.models.teacher.accuracy"].
    """
    data = json.loads(exp_show_json) if isinstance(exp_show_json, (str, bytes)) else exp_show_json
    records = []
    for entry in data or []:
        if entry.get("rev") == "workspace":
            continue
        baseline = entry.get("rev")
        records.append(
            _record(
                entry,
                name=entry.get("name") or str(baseline)[:7],
                baseline=baseline,
                is_baseline=True,
                state="baseline",
            )
        )
        for exp in entry.get("experiments") or []:
            revs = exp.get("revs") or []
            if not revs:
                continue
            head = revs[0]
            executor = exp.get("executor") or {}
            state = str(executor.get("state") or "").lower()
            if head.get("error"):
                state = "failed"
            elif not state:
                state = "success"  # finished long ago: the executor info is gone
            name = exp.get("name") or head.get("name") or str(head.get("rev"))[:7]
            records.append(_record(head, name=name, baseline=baseline, is_baseline=False, state=state))
    return records


# --------------------------------------------------------------------------------------------
# Tables.

PUBLISHED = [
    # Reference points from the literature: never measured here, never mixed into measured rows.
    {
        "system": "SEC paper (MNLI): BERT-base teacher",
        "size_mb": 420.0,
        "latency_ms_b32": 150.0,
        "note": "SEC paper: 420 MB, 150 ms per batch",
    },
    {
        "system": "SEC paper (MNLI): SEC model",
        "size_mb": 136.0,
        "latency_ms_b32": 80.0,
        "size_ratio_x": round(420 / 136, 2),
        "speedup_x": round(150 / 80, 2),
        "accuracy_delta_pts": 1.7,
        "data_saved_pct": 30.0,
        "note": "SEC paper: 420 -> 136 MB, 150 -> 80 ms per batch, +1.7 accuracy points with 30 % less labelled data",
    },
    {
        "system": "TinyBERT-4",
        "size_ratio_x": 7.5,
        "speedup_x": 9.4,
        "accuracy_delta_pts": -2.0,
        "note": "7.5x smaller, 9.4x faster than BERT-base, about -2 points on MNLI",
    },
    {
        "system": "oBERT",
        "speedup_x": 10.0,
        "note": "10x CPU speed-up at under 2 points accuracy loss (a bound, so no delta is given)",
    },
    {
        "system": "NNI pruning (BERT-base, MNLI)",
        "speedup_x": 2.87,
        "accuracy_delta_pts": -0.71,
        "note": "NNI pruning tutorial: movement + Taylor pruning, 85.1M -> 24.1M encoder params, x2.87 (A100, batch 128)",
    },
]

MAIN_COLUMNS = [
    "source",
    "system",
    "experiment",
    "status",
    "labelled_examples",
    "label_fraction_pct",
    "train_minutes",
    "size_mb",
    "latency_ms_b32",
    "accuracy_pct",
    "macro_f1_pct",
    "perplexity",
    "size_ratio_x",
    "speedup_x",
    "accuracy_delta_pts",
    "data_saved_pct",
    "note",
]
DATA_COLUMNS = [
    "variant",
    "experiment",
    "status",
    "description",
    "labelled_examples",
    "label_fraction_pct",
    "pseudo_rows",
    "train_rows",
    "fine_tune_minutes",
    "accuracy_pct",
    "macro_f1_pct",
    "perplexity",
    "accuracy_delta_pts",
    "macro_f1_delta_pts",
    "parent",
    "delta_vs_parent_pts",
    "helped",
]
COMPRESSION_COLUMNS = [
    "step",
    "model",
    "experiment",
    "status",
    "params",
    "params_ratio",
    "size_mb",
    "size_ratio_x",
    "latency_ms_b32",
    "speedup_x",
    "accuracy_pct",
    "macro_f1_pct",
    "perplexity",
    "accuracy_delta_pts",
]
CURVE_COLUMNS = [
    "variant",
    "experiment",
    "status",
    "strategy",
    "budget",
    "labelled_examples",
    "label_fraction_pct",
    "accuracy_pct",
    "macro_f1_pct",
    "accuracy_delta_pts",
]

CAPTIONS = {
    "main": "Table 1. Main result: the all-labels teacher against the SEC deployed model (the quantized model of the "
    "`sec` experiment). Accuracy deltas and data saved are against the all-labels teacher. Size and speed "
    "ratios are the `sec` run's, measured against its own teacher (the same architecture and size) in one process; "
    "the all-labels row's latency is that teacher's. Training time is the sum of the stages' `seconds`. Rows "
    "marked `published` are numbers quoted from the literature (their own models, data and hardware), not measured here.",
    "data": "Table 2. Data-efficiency ablation: each data variant's teacher (before compression). Deltas are accuracy "
    "/ macro-F1 points against the all-labels teacher; `helped` compares a row with its parent row (one seed).",
    "compression": "Table 3. Compression ablation, all from the `sec` experiment's evaluate.json: each step adds one "
    "compression to the one above. Ratios and deltas are against that experiment's teacher.",
    "curve": "Table 4. Active against random selection across label fractions (no augmentation), with the all-labels "
    "point; the delta is against the all-labels teacher.",
}


def _num(value) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _metric(record: dict | None, key: str) -> float:
    return _num((record or {}).get("metrics", {}).get(key))


def _pct(value: float) -> float:
    return value * 100 if not math.isnan(value) else math.nan


def _round(value: float, digits: int = 2) -> float:
    return round(value, digits) if not math.isnan(value) else math.nan


def label_fraction(record: dict | None) -> float:
    """Labelled (gold) pairs over all pairs the run could have labelled (seed + pool)."""
    value = _metric(record, "active_select.label_fraction")
    if not math.isnan(value):
        return value
    labelled = _metric(record, "active_select.labelled_rows")
    total = _metric(record, "prepare.seed_rows") + _metric(record, "prepare.pool_rows")
    return labelled / total if total and not math.isnan(total) else math.nan


def teacher_metric(record: dict | None, key: str) -> float:
    """A teacher quality metric: the teacher-only evaluation, else evaluate.json's teacher (same model, same data)."""
    value = _metric(record, f"{TEACHER_TARGET}.models.teacher.{key}")
    return value if not math.isnan(value) else _metric(record, f"evaluate.models.teacher.{key}")


def train_minutes(record: dict | None, stages: Sequence[str]) -> float:
    values = [_metric(record, f"{stage}.seconds") for stage in stages]
    known = [v for v in values if not math.isnan(v)]
    return sum(known) / 60 if known else math.nan


def _by_name(records: Sequence[dict]) -> dict[str, dict]:
    """Experiments by name; with duplicates (several baselines), the newest."""
    out: dict[str, dict] = {}
    for rec in records:
        if rec.get("is_baseline"):
            continue
        old = out.get(rec["name"])
        if old is None or str(rec.get("timestamp") or "") >= str(old.get("timestamp") or ""):
            out[rec["name"]] = rec
    return out


def _status(record: dict | None) -> str:
    if record is None:
        return NOT_RUN
    state = record.get("state")
    return "ok" if state in ("success", "baseline") else str(state)


def _usable(record: dict | None) -> dict | None:
    return record if record is not None and record.get("state") in ("success", "baseline") else None


def _sec_record(found: dict[str, dict], records: Sequence[dict], variant: Variant) -> tuple[dict | None, str]:
    """The `sec` experiment, or else the baseline commit's own metrics (the default params, committed)."""
    rec = found.get(variant.exp_name)
    if rec is not None:
        return rec, variant.exp_name
    for base in records:
        if base.get("is_baseline") and not math.isnan(_metric(base, "evaluate.models.quantized.accuracy")):
            return base, f"baseline {base['name']} ({str(base['rev'])[:7]})"
    return None, variant.exp_name


def _profile_of(records: Sequence[dict]) -> str:
    for rec in records:
        profile = rec.get("params", {}).get("profile")
        if profile in PROFILE_SETTINGS:
            return profile
    return "cpu"


def _default_budget(records: Sequence[dict], profile: str) -> int | None:
    for rec in records:
        if rec.get("is_baseline") and rec.get("params", {}).get("profile") == profile:
            budget = rec["params"].get("active_select.budget")
            if budget is not None:
                return int(budget)
    return None


def tables(records: Sequence[dict], grid: Sequence[Variant] | None = None) -> dict[str, pd.DataFrame]:
    """The four paper tables, keyed main | data | compression | curve; absent experiments say "not run"."""
    if grid is None:
        profile = _profile_of(records)
        grid = grid_for(profile, default_budget=_default_budget(records, profile))
    variants = {v.name: v for v in grid}
    found = _by_name(records)

    def rec_of(name: str) -> tuple[dict | None, str, str]:
        variant = variants.get(name) or next(v for v in grid_for("cpu") if v.name == name)
        if name == "sec":
            rec, label = _sec_record(found, records, variant)
        else:
            rec, label = found.get(variant.exp_name), variant.exp_name
        return _usable(rec), label, _status(rec)

    all_rec, all_exp, all_status = rec_of("all-labels")
    all_acc = teacher_metric(all_rec, "accuracy")
    all_f1 = teacher_metric(all_rec, "macro_f1")

    # Table 1 ----------------------------------------------------------------------------------
    sec_rec, sec_exp, sec_status = rec_of("sec")
    all_labels = _metric(all_rec, "active_select.labelled_rows")
    main_rows = []
    for system, rec, exp, status, model, stages in (
        ("All-labels teacher", all_rec, all_exp, all_status, "teacher", TEACHER_STAGES),
        ("SEC deployed (quantized)", sec_rec, sec_exp, sec_status, "quantized", DEPLOY_STAGES),
    ):
        if model == "teacher":
            # Quality from its own (teacher-only) evaluation; latency is the architecture's, timed
            # in the `sec` run (same model class and shape, same process as the deployed model).
            size, acc = teacher_metric(rec, "size_mb"), teacher_metric(rec, "accuracy")
            latency = _metric(sec_rec, "evaluate.models.teacher.latency_ms_b32")
            size_ratio = speedup = 1.0 if rec is not None else math.nan
            f1, ppl = teacher_metric(rec, "macro_f1"), teacher_metric(rec, "perplexity")
        else:
            size = _metric(rec, f"evaluate.models.{model}.size_mb")
            latency = _metric(rec, f"evaluate.models.{model}.latency_ms_b32")
            acc = _metric(rec, f"evaluate.models.{model}.accuracy")
            size_ratio = _metric(rec, f"evaluate.models.{model}.size_ratio")
            speedup = _metric(rec, f"evaluate.models.{model}.speedup")
            f1 = _metric(rec, f"evaluate.models.{model}.macro_f1")
            ppl = _metric(rec, f"evaluate.models.{model}.perplexity")
        labelled = _metric(rec, "active_select.labelled_rows")
        main_rows.append(
            {
                "source": "measured",
                "system": system,
                "experiment": exp,
                "status": status,
                "labelled_examples": labelled,
                "label_fraction_pct": _round(_pct(label_fraction(rec))),
                "train_minutes": _round(train_minutes(rec, stages)),
                "size_mb": _round(size, 3),
                "latency_ms_b32": _round(latency),
                "accuracy_pct": _round(_pct(acc)),
                "macro_f1_pct": _round(_pct(f1)),
                "perplexity": _round(ppl, 3),
                "size_ratio_x": _round(size_ratio, 3),
                "speedup_x": _round(speedup, 3),
                "accuracy_delta_pts": _round(_pct(acc - all_acc)),
                "data_saved_pct": _round(_pct(1 - labelled / all_labels)) if all_labels else math.nan,
                "note": "" if rec is not None else f"{exp}: {status}",
            }
        )
    for ref in PUBLISHED:
        main_rows.append({"source": "published", "experiment": "", "status": "published", **ref})
    main = pd.DataFrame(main_rows).reindex(columns=MAIN_COLUMNS)

    # Table 2 ----------------------------------------------------------------------------------
    data_rows = []
    accuracy_of: dict[str, float] = {}
    for variant in (v for v in grid if "data" in v.tables):
        rec, exp, status = rec_of(variant.name)
        acc = teacher_metric(rec, "accuracy")
        accuracy_of[variant.name] = acc
        f1 = teacher_metric(rec, "macro_f1")
        pseudo = _metric(rec, "active_select.pseudo_rows")
        if rec is not None and math.isnan(pseudo):
            pseudo = 0.0  # written before pseudo-labelling existed
        data_rows.append(
            {
                "variant": variant.name,
                "experiment": exp,
                "status": status,
                "description": variant.description,
                "labelled_examples": _metric(rec, "active_select.labelled_rows"),
                "label_fraction_pct": _round(_pct(label_fraction(rec))),
                "pseudo_rows": pseudo,
                "train_rows": _metric(rec, "fine_tune.train_rows"),
                "fine_tune_minutes": _round(_metric(rec, "fine_tune.seconds") / 60),
                "accuracy_pct": _round(_pct(acc)),
                "macro_f1_pct": _round(_pct(f1)),
                "perplexity": _round(teacher_metric(rec, "perplexity"), 3),
                "accuracy_delta_pts": _round(_pct(acc - all_acc)),
                "macro_f1_delta_pts": _round(_pct(f1 - all_f1)),
                "parent": variant.parent or "",
            }
        )
    for row in data_rows:
        parent = row["parent"]
        if not parent:
            row["delta_vs_parent_pts"], row["helped"] = math.nan, ""
            continue
        delta = _pct(accuracy_of.get(row["variant"], math.nan) - accuracy_of.get(parent, math.nan))
        row["delta_vs_parent_pts"] = _round(delta)
        row["helped"] = "n/a" if math.isnan(delta) else "yes" if delta > 0 else "no" if delta < 0 else "tie"
    data = pd.DataFrame(data_rows).reindex(columns=DATA_COLUMNS)

    # Table 3 ----------------------------------------------------------------------------------
    comp_rows = []
    for step, model in COMPRESSION_ROWS:
        key = f"evaluate.models.{model}"
        comp_rows.append(
            {
                "step": step,
                "model": model,
                "experiment": sec_exp,
                "status": sec_status,
                "params": _metric(sec_rec, f"{key}.params"),
                "params_ratio": _metric(sec_rec, f"{key}.params_ratio"),
                "size_mb": _round(_metric(sec_rec, f"{key}.size_mb"), 3),
                "size_ratio_x": _metric(sec_rec, f"{key}.size_ratio"),
                "latency_ms_b32": _round(_metric(sec_rec, f"{key}.latency_ms_b32")),
                "speedup_x": _metric(sec_rec, f"{key}.speedup"),
                "accuracy_pct": _round(_pct(_metric(sec_rec, f"{key}.accuracy"))),
                "macro_f1_pct": _round(_pct(_metric(sec_rec, f"{key}.macro_f1"))),
                "perplexity": _round(_metric(sec_rec, f"{key}.perplexity"), 3),
                "accuracy_delta_pts": _metric(sec_rec, f"{key}.accuracy_delta_pts"),
            }
        )
    compression = pd.DataFrame(comp_rows).reindex(columns=COMPRESSION_COLUMNS)

    # Table 4 ----------------------------------------------------------------------------------
    curve_rows = []
    for variant in (v for v in grid if "curve" in v.tables):
        rec, exp, status = rec_of(variant.name)
        strategy = {"entropy": "active", "margin": "active (margin)", "all": "all-labels"}.get(
            variant.strategy, variant.strategy
        )
        budget = _metric(rec, "active_select.budget")
        if variant.strategy == "all":
            budget = _metric(rec, "active_select.pool_rows")
        elif math.isnan(budget):
            planned = variant.overrides.get("active_select.budget")
            budget = _num(planned) if planned is not None else math.nan
        acc = teacher_metric(rec, "accuracy")
        curve_rows.append(
            {
                "variant": variant.name,
                "experiment": exp,
                "status": status,
                "strategy": strategy,
                "budget": budget,
                "labelled_examples": _metric(rec, "active_select.labelled_rows"),
                "label_fraction_pct": _round(_pct(label_fraction(rec))),
                "accuracy_pct": _round(_pct(acc)),
                "macro_f1_pct": _round(_pct(teacher_metric(rec, "macro_f1"))),
                "accuracy_delta_pts": _round(_pct(acc - all_acc)),
            }
        )
    order = {"random": 0, "active": 1, "active (margin)": 2, "all-labels": 3}
    curve_rows.sort(key=lambda r: (order.get(r["strategy"], 9), math.inf if math.isnan(r["budget"]) else r["budget"]))
    curve = pd.DataFrame(curve_rows).reindex(columns=CURVE_COLUMNS)

    return {"main": main, "data": data, "compression": compression, "curve": curve}


def fraction_rows(records: Sequence[dict], grid: Sequence[Variant] | None = None) -> list[dict]:
    """Points for an accuracy-vs-label-fraction plot: {strategy, label_fraction (0..1), accuracy (%)}."""
    curve = tables(records, grid)["curve"]
    rows = []
    for row in curve.itertuples(index=False):
        if row.status != "ok" or math.isnan(row.label_fraction_pct) or math.isnan(row.accuracy_pct):
            continue
        rows.append(
            {
                "strategy": row.strategy,
                "label_fraction": round(row.label_fraction_pct / 100, 4),
                "accuracy": round(float(row.accuracy_pct), 2),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Writing.


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


INT_COLUMNS = {"labelled_examples", "pseudo_rows", "train_rows", "params", "budget"}


def _cell(value, column: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value).replace("|", "\\|") or " "
    if column in INT_COLUMNS:
        return f"{int(round(value)):,}"
    return f"{value:.2f}"


def to_markdown(frame: pd.DataFrame) -> str:
    columns = [str(c) for c in frame.columns]
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| " + " | ".join(_cell(v, c) for v, c in zip(row, columns)) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def markdown(frames: dict[str, pd.DataFrame], title: str = "Ablation grid") -> str:
    parts = [
        f"# {title}",
        "",
        "Built by `python -m pipeline.grid tables` from `dvc exp show --json`; `not run` marks a grid "
        "experiment that does not exist on this baseline (run `scripts/grid.sh --only NAME`).",
        "",
    ]
    for key in TABLES:
        if key not in frames:
            continue
        frame = frames[key]
        parts += [f"## {CAPTIONS[key]}", ""]
        if key == "main":
            measured = frame[frame["source"] == "measured"].drop(columns=["source"])
            published = frame[frame["source"] == "published"].drop(columns=["source", "experiment", "status"])
            published = published.loc[:, published.notna().any() | published.columns.isin(["system", "note"])]
            parts += [
                "Measured here:",
                "",
                to_markdown(measured),
                "",
                "Published reference points (not measured here):",
                "",
                to_markdown(published),
                "",
            ]
        else:
            parts += [to_markdown(frame), ""]
    return "\n".join(parts)


def write_tables(frames: dict[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """tables.md (all tables with captions) and one CSV per table, each written atomically."""
    out = Path(out_dir)
    written = []
    for key, frame in frames.items():
        path = out / f"{TABLE_FILES.get(key, key)}.csv"
        _atomic_write(path, frame.to_csv(index=False))
        written.append(path)
    path = out / "tables.md"
    _atomic_write(path, markdown(frames))
    written.append(path)
    return written


def write_fraction_rows(records: Sequence[dict], path: str | Path, grid: Sequence[Variant] | None = None) -> Path:
    path = Path(path)
    _atomic_write(path, json.dumps(fraction_rows(records, grid), indent=2) + "\n")
    return path


def tradeoff_rows(records: Sequence[dict], grid: Sequence[Variant] | None = None) -> list[dict]:
    """Accuracy / size / latency of every model the full-pipeline runs measured, for the Pareto plots.

    Teacher-only grid experiments are left out: they carry the baseline's evaluate.json.
    """
    teacher_only = {v.exp_name for v in (grid or GRID) if v.teacher_only}
    rows = []
    for rec in records:
        if _usable(rec) is None or rec["name"] in teacher_only:
            continue
        for model in ("teacher", "pruned", "distilled", "quantized"):
            acc = _metric(rec, f"evaluate.models.{model}.accuracy")
            size = _metric(rec, f"evaluate.models.{model}.size_mb")
            latency = _metric(rec, f"evaluate.models.{model}.latency_ms_b32")
            if any(math.isnan(v) for v in (acc, size, latency)):
                continue
            rows.append({"model": model, "experiment": rec["name"], "accuracy": _round(_pct(acc)),
                         "size_mb": size, "latency_ms": latency})
    return rows


VERDICT_ROWS = {"active+synonym": "synonym", "active+backtranslation": "backtranslation", "active+pseudo": "pseudo"}


def verdicts(data_table: pd.DataFrame) -> dict[str, bool]:
    """component -> whether adding it raised the teacher's accuracy over its parent row (Table 2).

    Components whose rows did not run are left out. The controller reads this file
    (pipeline.controller.grid_verdicts) and turns down what did not help.
    """
    out = {}
    for _, row in data_table.iterrows():
        component = VERDICT_ROWS.get(row["variant"])
        if component and row["helped"] in ("yes", "no", "tie"):
            out[component] = row["helped"] == "yes"
    return out


def write_all(records: Sequence[dict], out_dir: str | Path, grid: Sequence[Variant] | None = None) -> list[Path]:
    """Tables (markdown + CSV), verdicts.json, the label-fraction rows and the PNGs under out_dir/plots."""
    from pipeline.plots import write_pngs

    frames = tables(records, grid)
    written = write_tables(frames, out_dir)
    verdict_path = Path(out_dir) / "verdicts.json"
    _atomic_write(verdict_path, json.dumps(verdicts(frames["data"]), indent=2, sort_keys=True) + "\n")
    written.append(verdict_path)
    written.append(write_fraction_rows(records, Path(out_dir) / FRACTION_FILE, grid))
    rows = tradeoff_rows(records, grid)
    if rows:
        written += write_pngs(rows, fraction_rows(records, grid), Path(out_dir) / "plots")
    return written


# --------------------------------------------------------------------------------------------
# Command line.


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.grid", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, selecting=True):
        p.add_argument("--repo", default=".", help="the DVC repository (default: the current directory)")
        p.add_argument("--profile", choices=sorted(PROFILE_SETTINGS), help="default: params.yaml's profile")
        p.add_argument("--budgets", type=int, nargs="+", help="label-fraction curve budgets (default: the profile's)")
        if selecting:
            p.add_argument(
                "--only", nargs="+", metavar="NAME", help="variants (or tables: main data compression curve)"
            )

    common(sub.add_parser("list", help="print the grid"))
    p = sub.add_parser("queue", help="queue the grid's experiments")
    common(p)
    p.add_argument("--rerun", action="store_true", help="queue experiments that already succeeded again")
    p.add_argument("--full", action="store_true", help="run the whole pipeline for data-only variants too")
    p = sub.add_parser("run", help="queue, run and wait for the grid, then write the tables")
    common(p)
    p.add_argument("--rerun", action="store_true", help="run experiments that already succeeded again")
    p.add_argument("--full", action="store_true", help="run the whole pipeline for data-only variants too")
    p.add_argument("--out-dir", default="reports/grid")
    p.add_argument("--jobs", type=int, default=1, help="experiments at a time (default 1)")
    p.add_argument("--poll", type=float, default=15.0, help="seconds between queue polls")
    p.add_argument("--timeout", type=float, help="give up waiting after this many seconds (the queue keeps running)")
    p = sub.add_parser("tables", help="write the tables from the current `dvc exp show --json`")
    common(p, selecting=False)
    p.add_argument("--out-dir", default="reports/grid")
    p.add_argument("--json", type=Path, help="read a saved `dvc exp show --json` instead of calling dvc")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            profile, grid = repo_grid(args.repo, args.profile, args.budgets)
            stages = pipeline_stages(args.repo)
            print(f"profile {profile}: variant, experiment, tables, last stage, params set")
            for v in select(grid, args.only):
                sets = " ".join(f"{k}={_format_value(val)}" for k, val in v.overrides.items()) or "(default params)"
                last = target_for(v, stages) or "all"
                print(f"{v.name:<24} {v.exp_name:<30} {','.join(v.tables):<22} {last:<17} {sets}")
            return 0
        if args.command == "queue":
            queue(args.only, args.profile, repo=args.repo, budgets=args.budgets, rerun=args.rerun, full=args.full)
            print("start it with `dvc queue start -j 1`; follow it with `dvc queue status`")
            return 0
        if args.command == "run":
            summary = run(
                args.only,
                args.profile,
                repo=args.repo,
                out_dir=args.out_dir,
                budgets=args.budgets,
                rerun=args.rerun,
                full=args.full,
                jobs=args.jobs,
                poll_s=args.poll,
                timeout_s=args.timeout,
            )
            return 1 if summary["failed"] else 0
        if args.command == "tables":
            shown = json.loads(args.json.read_text()) if args.json else exp_show(args.repo)
            records = collect(shown)
            grid = None
            if args.profile or args.budgets:
                grid = grid_for(args.profile or _profile_of(records), budgets=args.budgets)
            for path in write_all(records, args.out_dir, grid):
                print(f"wrote {path}")
            return 0
    except GridError as err:
        print(f"grid: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
