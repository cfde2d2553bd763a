"""What a fanned-out grid runs, where, and under which names: the decisions, without Prefect.

One experiment (a grid cell: variant x seed, a controller trial, a plain run) is one flow run of
the `sec-experiment` deployment (pipeline/fanout.py). The worker that takes it clones the
project's git remote into its own workspace under a scratch directory, checks out the requested
commit, pulls the run-cache from the shared DVC remote, runs `dvc exp run -n <name> -S ...` and
pushes the experiment ref, its outputs and the run-cache. This module decides everything that can
be decided without running anything, so tests/test_fanout.py checks it without a server:

- which cells are missing (not a successful experiment on this commit in `dvc exp show`);
- the commands a worker runs, built from the grid's own `-S` serializer (pipeline.grid.set_args);
- the workspace path (one per cell, so a crashed cell retaken by the same host resumes from the
  training checkpoints its workspace kept);
- the flow-run name and idempotency key (two submissions of the same cell make one flow run).

Kept free of Prefect, like pipeline.grid.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline._dvc_env import project_env
from pipeline.grid import pipeline_stages, read_params, repo_runs, set_args, target_for
from pipeline.grid_variants import Variant, select

# The scratch directory (in the worker's checkout, ignored by git and DVC) that holds workspaces
# and the host's shared DVC cache; env SEC_SCRATCH moves it.
SCRATCH_DIR = ".sec-scratch"
# The DVC remote name the workspaces' local config gives the shared remote.
SHARED_REMOTE = "sec-shared"
# A URL with a scheme (s3://, ssh://, https://, file://) or scp-like git syntax (git@host:path).
_HAS_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^[\w.-]+@[\w.-]+:")


class FanoutError(RuntimeError):
    """A fan-out could not start or a cell could not run; the message names what to fix."""


@dataclass(frozen=True)
class Remotes:
    """Where workers get the code (git) and exchange DVC outputs and the run-cache (DVC)."""

    git: str
    dvc: str


@dataclass(frozen=True)
class Cell:
    """One experiment to run on a worker: `dvc exp run -n name -S override... [target]` at `commit`."""

    name: str
    commit: str
    overrides: tuple[str, ...] = field(default_factory=tuple)  # what follows each `-S`, e.g. "seed=43"
    target: str | None = None  # reproduce only up to this stage

    def parameters(self, remotes: Remotes) -> dict:
        """The `sec-experiment` deployment's parameters for this cell."""
        return {"name": self.name, "commit": self.commit, "overrides": list(self.overrides),
                "target": self.target, "git_remote": remotes.git, "dvc_remote": remotes.dvc}


# --------------------------------------------------------------------------------------------
# Configuration: the project's own remotes.


def absolute_location(url: str, base: Path) -> str:
    """A remote URL as every process can read it: a relative local path (as `dvc remote add` and
    `git remote add` accept) resolved against `base`; URLs and absolute paths unchanged."""
    if _HAS_SCHEME.match(url) or Path(url).is_absolute():
        return url
    return str((base / url).resolve())


def _output(cmd: list[str], cwd: Path) -> str | None:
    result = subprocess.run(cmd, cwd=cwd, env=project_env(), capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def project_remotes(repo: str | Path, git_remote: str | None = None, dvc_remote: str | None = None) -> Remotes:
    """The git remote (`git remote get-url origin`) and the default DVC remote's URL (`dvc remote
    default`, then its `url` in .dvc/config) of the checkout `repo`; explicit values win."""
    repo = Path(repo).resolve()
    if git_remote:
        git = absolute_location(git_remote, Path.cwd())
    else:
        origin = _output(["git", "remote", "get-url", "origin"], repo)
        if not origin:
            raise FanoutError(f"{repo}: no git remote `origin` (workers clone the commit from it): "
                              "`git remote add origin URL` and push, or pass --git-remote URL")
        git = absolute_location(origin, repo)
    if dvc_remote:
        dvc = absolute_location(dvc_remote, Path.cwd())
    else:
        name = _output(["dvc", "remote", "default"], repo)
        url = _output(["dvc", "config", f"remote.{name}.url"], repo) if name else None
        if not url:
            raise FanoutError(f"{repo}/.dvc/config: no default DVC remote (workers share outputs and the run-cache "
                              "through it): `dvc remote add -d shared s3://...` or pass --dvc-remote URL")
        dvc = absolute_location(url, repo / ".dvc")  # DVC reads a relative url against .dvc/
    return Remotes(git=git, dvc=dvc)


GATHER_REMOTE = "sec-fanout"  # .dvc/config.local name of the shared remote when no remote has its URL


def remote_named(url: str, listing: str, repo: str | Path) -> str | None:
    """The DVC remote of `dvc remote list` output (`name<TAB>url[<TAB>(default)]` lines) whose URL
    is `url` (a relative one read against .dvc/, as DVC does); None when none is."""
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 2 and absolute_location(parts[1], Path(repo).resolve() / ".dvc") == url:
            return parts[0]
    return None


def gather_commands(remotes: Remotes, listing: str, repo: str | Path, with_cache: bool,
                    experiments: Sequence[str] = ()) -> list[list[str]]:
    """`dvc exp pull` of `experiments` (default: every one on the git remote); with the cache, from
    the SHARED DVC remote the workers pushed to, even when it is not this checkout's default
    (`--dvc-remote URL`): by name when a remote has its URL, else added to .dvc/config.local
    (untracked) as GATHER_REMOTE."""
    if not with_cache:
        return [["dvc", "exp", "pull", "--no-cache", remotes.git, *experiments]]
    name = remote_named(remotes.dvc, listing, repo)
    add = [] if name else [["dvc", "remote", "add", "--local", "--force", GATHER_REMOTE, remotes.dvc]]
    return [*add, ["dvc", "exp", "pull", "--remote", name or GATHER_REMOTE, remotes.git, *experiments]]


# --------------------------------------------------------------------------------------------
# The grid as cells, and which are missing.


def cell_for(variant: Variant, params: dict, commit: str, profile: str | None, stages: set[str],
             full: bool = False) -> Cell:
    """A grid run as a cell: the same `-S` overrides and target `python -m pipeline.grid` queues."""
    args = set_args(variant, params, profile)
    return Cell(variant.exp_name, commit, tuple(args[1::2]), target_for(variant, stages, full))


def grid_cells(repo: str | Path, commit: str, names: Iterable[str] | None = None, profile: str | None = None,
               budgets: Sequence[int] | None = None, seeds: int | None = None, full: bool = False) -> list[Cell]:
    """Every selected run of the repository's grid as a cell at `commit` (seed-major, as the grid)."""
    params = read_params(repo)
    profile, runs = repo_runs(repo, profile, budgets, seeds)
    stages = pipeline_stages(repo)
    return [cell_for(v, params, commit, profile, stages, full) for v in select(runs, names)]


def done_experiments(records: Iterable[dict], commit: str) -> set[str]:
    """Names of the experiments that succeeded on baseline `commit` (pipeline.grid_tables.collect records)."""
    return {r["name"] for r in records
            if not r.get("is_baseline") and r.get("state") == "success" and str(r.get("baseline")) == commit}


def missing_cells(cells: Iterable[Cell], records: Iterable[dict]) -> list[Cell]:
    """The cells without a successful experiment of their name on their commit: a crashed or failed
    cell left none, so a rerun submits exactly those."""
    cells = list(cells)
    done = set().union(*(done_experiments(records, c) for c in {cell.commit for cell in cells})) if cells else set()
    return [cell for cell in cells if cell.name not in done]


# --------------------------------------------------------------------------------------------
# Names: flow runs, idempotency, workspaces.


def flow_run_name(cell: Cell) -> str:
    """The cell's flow-run name: its experiment and commit, the same for every attempt, so the UI
    and a second submission find earlier attempts by name."""
    return f"{cell.name}@{cell.commit[:8]}"


def idempotency_key(cell: Cell, finished_attempts: int) -> str:
    """Prefect creates one flow run per key and deployment: submissions that agree on how many
    attempts of the cell have already ended (crashed, failed, cancelled) get the same flow run;
    after one ends, the next rerun counts it and makes a new attempt."""
    if finished_attempts < 0:
        raise ValueError(f"finished_attempts must be >= 0, got {finished_attempts}")
    return f"sec-experiment/{cell.commit}/{cell.name}/attempt-{finished_attempts}"


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def workspace_dir(scratch: str | Path, name: str) -> Path:
    """`<scratch>/<experiment name>`: one per cell, not per attempt, so a cell retaken by the same
    host finds the training checkpoints (.cache/checkpoints) its killed attempt left."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise FanoutError(f"experiment name {name!r}: use letters, digits, '.', '_' and '-' (it names a directory and a git ref)")
    return Path(scratch) / name


# --------------------------------------------------------------------------------------------
# Commands a worker runs, in order.


def clone_commands(git_remote: str, workspace: Path, commit: str, reuse: bool) -> list[list[str]]:
    """Make `workspace` a checkout of `commit`: a fresh clone, or (reuse) a fetch into the one a
    crashed attempt left. `checkout --force` resets tracked files (params.yaml, dvc.lock) to the
    commit; ignored outputs and checkpoints stay for DVC and the Trainer to reuse."""
    ws = str(workspace)
    get = (["git", "-C", ws, "fetch", "--quiet", "origin"] if reuse
           else ["git", "clone", "--quiet", "--no-checkout", git_remote, ws])
    return [get, ["git", "-C", ws, "checkout", "--quiet", "--force", "--detach", commit]]


def dvc_setup_commands(dvc_remote: str, cache_dir: Path) -> list[list[str]]:
    """In the workspace: the shared remote as default and the host's DVC cache, both in
    .dvc/config.local (ignored by git: the experiment commit does not carry them)."""
    return [
        ["dvc", "remote", "add", "--local", "--force", "--default", SHARED_REMOTE, dvc_remote],
        ["dvc", "cache", "dir", "--local", str(cache_dir)],
    ]


PULL_COMMAND = ["dvc", "pull", "--run-cache", "--allow-missing"]  # a new commit has nothing to pull yet


def exp_run_command(cell: Cell, extra_overrides: Sequence[str] = ()) -> list[str]:
    """`dvc exp run -n <name> -S ... [target]`, in the workspace (already isolated: no --queue/--temp)."""
    cmd = ["dvc", "exp", "run", "-n", cell.name]
    for override in (*cell.overrides, *extra_overrides):
        cmd += ["-S", override]
    return cmd + [cell.target] if cell.target else cmd


def push_commands(cell: Cell) -> list[list[str]]:
    """The experiment's outputs and the run-cache to the shared DVC remote, its ref to the git remote."""
    return [["dvc", "exp", "push", "--run-cache", "origin", cell.name]]


RUN_CACHE_PUSH = ["dvc", "push", "--run-cache"]  # after a failure: keep the stages that did finish



# --------------------------------------------------------------------------------------------
# Attempts: reuse a live flow run of the cell, or make the next attempt.

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def attempt_plan(states: Iterable[str]) -> tuple[str, int]:
    """From the state types of the cell's earlier flow runs: ("wait", index of a live one) when one is
    scheduled, pending or running (another submission made it: never run a cell twice), else
    ("submit", attempts that ended), the number idempotency_key takes."""
    states = [str(s).upper() for s in states]
    for index, state in enumerate(states):
        if state not in FINAL_STATES:
            return "wait", index
    return "submit", len(states)


def artifact_key(name: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for the cell `name`."""
    return "sec-cell-" + re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", name.lower())).strip("-")


def metrics_markdown(cell: Cell, worker: str, evaluated: dict[str, dict], ran: Sequence[str]) -> str:
    """A cell's artifact: where it ran, what it set, and accuracy per model and split from the
    metrics files it wrote ({file stem: parsed json}, e.g. evaluate_teacher, evaluate)."""
    lines = [f"# {cell.name} (commit {cell.commit[:8]})", "",
             f"Worker `{worker}`; set: " + (", ".join(f"`{o}`" for o in cell.overrides) or "(default params)")
             + f"; stages run here: {', '.join(ran) or 'none (all restored from the run-cache)'}", "",
             "| file | model | dev accuracy % | test accuracy % |", "|---|---|---|---|"]
    for stem, metrics in evaluated.items():
        for model, values in (metrics.get("models") or {}).items():
            dev, test = (values.get(s, {}).get("accuracy") for s in ("dev", "test"))
            lines.append(f"| {stem} | {model} | {_pct(dev)} | {_pct(test)} |")
    return "\n".join(lines) + "\n"


def _pct(value) -> str:
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "n/a"


def cells_markdown(rows: Sequence[dict]) -> str:
    """The parent's summary artifact: one row per cell ({name, state, worker, message})."""
    lines = ["| experiment | state | worker | note |", "|---|---|---|---|"]
    for row in rows:
        note = (row.get("message") or "").strip().splitlines()
        lines.append(f"| {row['name']} | {row['state']} | {row.get('worker') or '-'} | {note[0][:120] if note else ''} |")
    return "\n".join(lines) + "\n"
