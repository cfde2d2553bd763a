"""The ablation grid as DVC experiments, and the paper-style tables written from `dvc exp show`.

Every grid run is one DVC experiment, `dvc exp run --queue -n grid-<slug>-s<seed> -S seed=<seed>
-S key=value ...`, relative to the params.yaml of the current commit (the baseline). Seeds are an
axis: the rows that carry a claim run at `grid.seeds` seeds (params.yaml; `--seeds N` overrides),
the params.yaml seed and the next ones; the other rows at the params.yaml seed (pipeline.grid_variants).
`dvc queue start -j 1` runs them one at a time in temporary workspaces; the tables are then built
from `dvc exp show --json` and the experiments' prediction files, so `python -m pipeline.grid
tables` rewrites them at any time without re-running anything.

    python -m pipeline.grid list [--seeds N]          # the runs for the selected profile
    python -m pipeline.grid queue [--only NAME ...]   # queue them (finished ones are skipped)
    python -m pipeline.grid run --out-dir reports/grid [--only NAME ...] [--seeds N]
    python -m pipeline.grid tables --out-dir reports/grid

The variants are defined in pipeline.grid_variants, the tables built in pipeline.grid_tables and
the paired dev/test comparisons (Table 2's verdicts, the claims) in pipeline.grid_paired.

Data-only variants (those feeding only Tables 2 and 4) reproduce up to the `evaluate_teacher`
stage when dvc.yaml has it (`--full` runs the whole pipeline for them too); sec runs everything.
Tables read the teacher from evaluate_teacher.json, else evaluate.json.

Re-running: `queue` / `run` skip a run whose experiment already succeeded (nothing runs; the tables
are rewritten in seconds), so raising `--seeds` queues only the new seeds. A failed one is queued
again. `--rerun` removes the finished experiments and queues them again: DVC restores from its
run-cache every stage whose deps, params and command are unchanged. Only evaluate and report_plots
(a `cache: false` report.md and PNGs, which keep a stage out of the run-cache) always rerun; the
training stages declare their dvclive curves as `cache: false` plots and metrics, which do not.
Experiments start from the current commit (the baseline) plus any uncommitted workspace
changes, which `dvc exp run --queue` stashes into each queued experiment: commit first.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline._dvc_env import LOCK_MARKERS, override_value, project_env
from pipeline.grid_paired import dvc_loader
from pipeline.grid_tables import collect, profile_of, write_all
from pipeline.grid_variants import (
    PROFILE_SETTINGS,
    TEACHER_TARGET,
    GridError,
    GridParams,
    Variant,
    grid_for,
    seeded,
    select,
)

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


def _has_key(params: dict, dotted: str) -> bool:
    node: object = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def set_args(variant: Variant, params: dict, profile: str | None = None) -> list[str]:
    """`-S` arguments for `variant` against the raw params.yaml `params`; a run (a seeded variant)
    always sets `seed`, the base seed included, so its name and its params say the same.

    A key params.yaml does not have yet (a param the stage accepts with a default) is appended
    with Hydra's `+key=value`; a plain `key=value` on a missing key makes DVC refuse the run.
    """
    args: list[str] = []
    if profile and params.get("profile") != profile:
        args += ["-S", f"profile={override_value(profile)}"]
    if variant.seed is not None:
        args += ["-S", f"{'' if 'seed' in params else '+'}seed={override_value(int(variant.seed))}"]
    for key, value in variant.overrides.items():
        prefix = "" if _has_key(params, key) else "+"
        args += ["-S", f"{prefix}{key}={override_value(value)}"]
    return args


def data_dir_args(params: dict, repo: str | Path | None) -> list[str]:
    """`-S data.local_dir=<absolute>` when params.yaml gives it relative to the repository.

    A queued experiment runs in a copy of the repository under .dvc/tmp/exps/, so a relative
    `../shared/data/mnli` would point inside .dvc/tmp there, and every run that reruns `prepare`
    (each new seed does) would fail on a missing directory. The absolute path names the same data.
    """
    local_dir = (params.get("data") or {}).get("local_dir")
    if repo is None or not local_dir or Path(local_dir).is_absolute():
        return []
    return ["-S", f"data.local_dir={override_value(str((Path(repo).resolve() / local_dir).resolve()))}"]


def queue_command(variant: Variant, params: dict, profile: str | None = None, target: str | None = None,
                  repo: str | Path | None = None) -> list[str]:
    """The `dvc exp run --queue` command; `target`: reproduce only up to this stage. `repo`: the
    repository the relative paths in params.yaml are relative to (see data_dir_args)."""
    cmd = ["dvc", "exp", "run", "--queue", "-n", variant.exp_name, *set_args(variant, params, profile),
           *data_dir_args(params, repo)]
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


def grid_params(params: dict) -> GridParams:
    try:
        return GridParams.model_validate(params.get("grid") or {})
    except ValueError as err:
        raise GridError(f"params.yaml `grid:` section: {err}") from err


def repo_grid(
    repo: str | Path = ".", profile: str | None = None, budgets: Sequence[int] | None = None
) -> tuple[str, list[Variant]]:
    """(profile, rows) for the repository's params.yaml, `profile` overriding its `profile` key."""
    params = read_params(repo)
    profile = profile or params.get("profile") or "cpu"
    default_budget = (params.get("active_select") or {}).get("budget") if params.get("profile") == profile else None
    return profile, grid_for(profile, budgets=budgets, default_budget=default_budget)


def repo_runs(
    repo: str | Path = ".",
    profile: str | None = None,
    budgets: Sequence[int] | None = None,
    seeds: int | None = None,
) -> tuple[str, list[Variant]]:
    """(profile, runs): the rows expanded over seeds from params.yaml's `seed` and `grid.seeds`
    (`seeds` overrides the latter)."""
    params = read_params(repo)
    profile, rows = repo_grid(repo, profile, budgets)
    count = seeds if seeds is not None else grid_params(params).seeds
    return profile, seeded(rows, int(params.get("seed", 42)), count)


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


MISSING_POLLS = 3  # polls a task may be absent from `dvc queue status` before `wait` gives up on it
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
    seeds: int | None = None,
    rerun: bool = False,
    full: bool = False,
    log: Callable[[str], None] = say,
) -> list[Variant]:
    """Queue the selected runs as DVC experiments; returns the runs queued.

    A run whose experiment already succeeded is skipped (`rerun`: removed and queued again); one
    already queued or running is left alone; a failed one is queued again. Variants that feed
    only Tables 2 and 4 stop at the `evaluate_teacher` stage unless `full`.
    """
    params = read_params(repo)
    profile, runs = repo_runs(repo, profile, budgets, seeds)
    chosen = select(runs, names)
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
        cmd = queue_command(variant, params, profile, target_for(variant, stages, full), repo=repo)
        result = dvc(cmd[1:], repo, check=False)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip()[-2000:]
            raise GridError(f"queueing {variant.exp_name} ({variant.name}) failed: `{' '.join(cmd)}`\n{tail}")
        log(f"queued {variant.exp_name}: {' '.join(cmd[6:])}")
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
    missing: dict[str, int] = {}  # consecutive polls a task was absent from `dvc queue status`
    while True:
        tasks, active = queue_status(repo)
        ours = {t.id: t for t in tasks if t.id in watch}
        # `dvc queue status` can leave a task out for a moment while the worker moves it from queued
        # to running (seen in CI): only a task absent for MISSING_POLLS polls in a row is taken as
        # finished in an unknown state, and one that shows up again gets its real state back.
        for task_id in watch - set(ours):
            missing[task_id] = missing.get(task_id, 0) + 1
            if missing[task_id] >= MISSING_POLLS:
                final.setdefault(task_id, Task(task_id, names.get(task_id, task_id), "Unknown"))
        gone = {task_id for task_id in watch - set(ours) if missing[task_id] >= MISSING_POLLS}
        done = sum(1 for t in ours.values() if t.status not in ("Queued", "Running")) + len(gone)
        for task in ours.values():
            names[task.id] = task.name
            missing.pop(task.id, None)
            if task.id in final and final[task.id].status == "Unknown":
                del final[task.id]
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
    seeds: int | None = None,
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
    variants = queue(names, profile, repo=repo, budgets=budgets, seeds=seeds, rerun=rerun, full=full, log=log)
    wanted = {v.exp_name for v in variants}
    tasks, _ = queue_status(repo)
    # New tasks of ours, plus ours still pending from an earlier call (e.g. a `queue` before `run`).
    _, grid = repo_grid(repo, profile, budgets)
    ours = {v.exp_name for v in select(repo_runs(repo, profile, budgets, seeds)[1], names)}
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
    written = write_all(records, out_dir, grid=grid, load=dvc_loader(repo), log=log)
    summary["tables"] = [str(p) for p in written]
    summary["seconds"] = round(time.monotonic() - started, 1)
    log(f"grid done in {_minutes(summary['seconds'])}; tables in {out_dir}")
    return summary


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
                "--only", nargs="+", metavar="NAME",
                help="rows (every seed), experiments (one seed) or tables: main data compression curve",
            )  # fmt: skip
            p.add_argument(
                "--seeds", type=int, help="seeds of the claim rows (default: params.yaml grid.seeds, else 3)"
            )

    common(sub.add_parser("list", help="print the grid's runs"))
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
    p = sub.add_parser("tables", help="write the tables from the current `dvc exp show --json` (every seed found)")
    common(p, selecting=False)
    p.add_argument("--out-dir", default="reports/grid")
    p.add_argument("--json", type=Path, help="read a saved `dvc exp show --json` instead of calling dvc")
    p.add_argument(
        "--no-paired", action="store_true",
        help="skip the paired dev/test comparisons (no prediction files read: verdicts and claims say n/a)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            profile, runs = repo_runs(args.repo, args.profile, args.budgets, args.seeds)
            stages = pipeline_stages(args.repo)
            chosen = select(runs, args.only)
            print(
                f"profile {profile}, {len(chosen)} experiment(s): variant, seed, experiment, tables, last stage, params set"
            )
            for v in chosen:
                sets = " ".join(f"{k}={override_value(val)}" for k, val in v.overrides.items()) or "(default params)"
                last = target_for(v, stages) or "all"
                print(f"{v.name:<24} {v.seed:<5} {v.exp_name:<34} {','.join(v.tables):<22} {last:<17} {sets}")
            return 0
        if args.command == "queue":
            queue(
                args.only, args.profile, repo=args.repo, budgets=args.budgets, seeds=args.seeds,
                rerun=args.rerun, full=args.full,
            )  # fmt: skip
            print("start it with `dvc queue start -j 1`; follow it with `dvc queue status`")
            return 0
        if args.command == "run":
            summary = run(
                args.only,
                args.profile,
                repo=args.repo,
                out_dir=args.out_dir,
                budgets=args.budgets,
                seeds=args.seeds,
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
                grid = grid_for(args.profile or profile_of(records), budgets=args.budgets)
            load = None if args.no_paired else dvc_loader(args.repo)
            for path in write_all(records, args.out_dir, grid, load=load, log=say):
                print(f"wrote {path}")
            return 0
    except GridError as err:
        print(f"grid: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
