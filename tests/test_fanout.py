"""The fan-out's decisions (pipeline/fanout_plan.py): which cells are missing, the commands a worker
runs, workspaces, names and idempotency keys. No Prefect server, no DVC run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cmd
from pipeline import fanout_plan as plan
from pipeline.fanout_plan import Cell, FanoutError, Remotes
from pipeline.grid import queue_command, repo_runs

COMMIT = "a" * 40
OTHER = "b" * 40


def _record(name, state="success", baseline=COMMIT, is_baseline=False):
    return {"name": name, "state": state, "baseline": baseline, "is_baseline": is_baseline}


def test_missing_cells_are_those_without_a_successful_experiment_on_their_commit():
    cells = [Cell(f"grid-x-s{i}", COMMIT) for i in range(5)]
    records = [
        _record(COMMIT[:7], "baseline", is_baseline=True),
        _record("grid-x-s0"),                      # done here
        _record("grid-x-s1", state="failed"),      # a failed run is missing
        _record("grid-x-s2", baseline=OTHER),      # done, but on another commit
        _record("grid-x-s3", state="running"),     # a local dvc queue run is not a result
    ]
    assert [c.name for c in plan.missing_cells(cells, records)] == ["grid-x-s1", "grid-x-s2", "grid-x-s3", "grid-x-s4"]
    assert plan.missing_cells(cells, [_record(c.name) for c in cells]) == []
    assert plan.missing_cells([], records) == []


@pytest.fixture
def tiny_params_repo(tmp_path) -> Path:
    """params.yaml (profile tiny) and dvc.yaml of this project in a scratch directory."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "tiny"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def test_grid_cells_carry_the_grids_own_overrides_and_targets(tiny_params_repo):
    cells = plan.grid_cells(tiny_params_repo, COMMIT)
    params = yaml.safe_load((tiny_params_repo / "params.yaml").read_text())
    _, runs = repo_runs(tiny_params_repo)
    assert [c.name for c in cells] == [v.exp_name for v in runs]  # every run, in the grid's order
    by_name = {v.exp_name: v for v in runs}
    for cell in cells:
        assert cell.commit == COMMIT
        # The worker's `dvc exp run` sets exactly what `python -m pipeline.grid` queues (one serializer).
        queued = queue_command(by_name[cell.name], params, target=cell.target)
        run = plan.exp_run_command(cell)
        assert run[:5] == ["dvc", "exp", "run", "-n", cell.name]
        assert run[5:] == queued[6:]
    sec = next(c for c in cells if c.name == f"grid-sec-s{params['seed']}")
    assert sec.overrides == (f"seed={params['seed']}",) and sec.target is None
    teacher_only = next(c for c in cells if c.name.startswith("grid-random-s"))
    assert teacher_only.target == "evaluate_teacher"
    assert "active_select.strategy=\"random\"" in teacher_only.overrides
    assert [c.name for c in plan.grid_cells(tiny_params_repo, COMMIT, names=["sec"], seeds=2)] == [
        f"grid-sec-s{params['seed']}", f"grid-sec-s{params['seed'] + 1}"]


def test_exp_run_command_appends_the_workers_overrides_and_the_target():
    cell = Cell("grid-a-s1", COMMIT, ("seed=1", "+x.y=2"), "evaluate_teacher")
    assert plan.exp_run_command(cell, ["data.local_dir=\"/d\""]) == [
        "dvc", "exp", "run", "-n", "grid-a-s1", "-S", "seed=1", "-S", "+x.y=2", "-S", "data.local_dir=\"/d\"",
        "evaluate_teacher"]
    assert plan.exp_run_command(Cell("plain", COMMIT)) == ["dvc", "exp", "run", "-n", "plain"]


def test_idempotency_key_is_one_per_cell_and_attempt():
    cell = Cell("grid-a-s1", COMMIT, ("seed=1",))
    assert plan.idempotency_key(cell, 0) == plan.idempotency_key(Cell("grid-a-s1", COMMIT, ("seed=1",)), 0)
    keys = {plan.idempotency_key(cell, 0), plan.idempotency_key(cell, 1),
            plan.idempotency_key(Cell("grid-a-s2", COMMIT), 0), plan.idempotency_key(Cell("grid-a-s1", OTHER), 0)}
    assert len(keys) == 4
    with pytest.raises(ValueError, match="finished_attempts"):
        plan.idempotency_key(cell, -1)
    assert plan.flow_run_name(cell) == f"grid-a-s1@{COMMIT[:8]}"


@pytest.mark.parametrize(("states", "expected"), [
    ([], ("submit", 0)),                        # first submission
    (["SCHEDULED"], ("wait", 0)),               # another submission made it: wait on it
    (["PENDING"], ("wait", 0)),
    (["CRASHED", "RUNNING"], ("wait", 1)),      # a rerun is already running
    (["CRASHED"], ("submit", 1)),               # the killed attempt counts: a new key
    (["COMPLETED", "failed"], ("submit", 2)),   # completed but not gathered (push lost): run again
])
def test_attempt_plan_waits_on_a_live_run_and_otherwise_counts_the_ended_ones(states, expected):
    assert plan.attempt_plan(states) == expected


def test_workspace_is_one_directory_per_cell_and_refuses_unsafe_names(tmp_path):
    assert plan.workspace_dir(tmp_path, "grid-a-s1") == tmp_path / "grid-a-s1"
    for bad in ("../etc", "a/b", "", "-x", "a..b"):
        with pytest.raises(FanoutError, match="experiment name"):
            plan.workspace_dir(tmp_path, bad)


def test_clone_and_setup_commands(tmp_path):
    ws = tmp_path / "grid-a-s1"
    fresh = plan.clone_commands("/srv/git/sec.git", ws, COMMIT, reuse=False)
    assert fresh == [["git", "clone", "--quiet", "--no-checkout", "/srv/git/sec.git", str(ws)],
                     ["git", "-C", str(ws), "checkout", "--quiet", "--force", "--detach", COMMIT]]
    assert plan.clone_commands("/srv/git/sec.git", ws, COMMIT, reuse=True)[0] == ["git", "-C", str(ws), "fetch", "--quiet", "origin"]
    setup = plan.dvc_setup_commands("s3://bucket/dvc", tmp_path / "cache")
    assert all("--local" in cmd for cmd in setup)  # never in the committed .dvc/config
    assert setup[0][-2:] == [plan.SHARED_REMOTE, "s3://bucket/dvc"] and "--default" in setup[0]
    assert plan.push_commands(Cell("grid-a-s1", COMMIT)) == [["dvc", "exp", "push", "--run-cache", "origin", "grid-a-s1"]]


def test_absolute_location_resolves_only_relative_local_paths(tmp_path):
    for url in ("s3://bucket/dvc", "ssh://host/srv/sec.git", "https://github.com/x/y.git", "git@github.com:x/y.git",
                "/srv/dvc"):
        assert plan.absolute_location(url, tmp_path) == url
    assert plan.absolute_location("../remote", tmp_path / ".dvc") == str((tmp_path / "remote").resolve())


def test_project_remotes_come_from_the_checkouts_own_config(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run_cmd(["git", "init", "-q"], repo)
    run_cmd(["dvc", "init", "-q"], repo)
    with pytest.raises(FanoutError, match="no git remote `origin`"):
        plan.project_remotes(repo)
    run_cmd(["git", "remote", "add", "origin", "../sec.git"], repo)
    with pytest.raises(FanoutError, match=r"\.dvc/config: no default DVC remote"):
        plan.project_remotes(repo)
    run_cmd(["dvc", "remote", "add", "-d", "shared", "../dvc-store"], repo)  # typed relative to the checkout; DVC stores it relative to .dvc/
    assert plan.project_remotes(repo) == Remotes(git=str(tmp_path / "sec.git"), dvc=str(tmp_path / "dvc-store"))
    assert plan.project_remotes(repo, "ssh://h/sec.git", "s3://b/d") == Remotes("ssh://h/sec.git", "s3://b/d")


def test_cell_parameters_name_everything_the_worker_needs():
    cell = Cell("grid-a-s1", COMMIT, ("seed=1",), "evaluate_teacher")
    assert cell.parameters(Remotes("g", "d")) == {"name": "grid-a-s1", "commit": COMMIT, "overrides": ["seed=1"],
                                                 "target": "evaluate_teacher", "git_remote": "g", "dvc_remote": "d"}


def test_artifacts_say_where_a_cell_ran_and_what_it_measured():
    cell = Cell("grid-Active+x_s1", COMMIT, ("seed=1",))
    assert plan.artifact_key(cell.name) == "sec-cell-grid-active-x-s1"
    text = plan.metrics_markdown(cell, "host-b", {"evaluate_teacher": {"models": {"teacher": {
        "dev": {"accuracy": 0.5}, "test": {"accuracy": 0.25}}}}}, ["prepare", "fine_tune"])
    assert "Worker `host-b`" in text and "`seed=1`" in text and "prepare, fine_tune" in text
    assert "| evaluate_teacher | teacher | 50.00 | 25.00 |" in text
    table = plan.cells_markdown([{"name": "a", "state": "FAILED", "worker": "w1", "message": "exited 1\nmore"},
                                 {"name": "b", "state": "COMPLETED", "worker": None, "message": ""}])
    assert "| a | FAILED | w1 | exited 1 |" in table and "| b | COMPLETED | - |  |" in table


def test_gather_pulls_outputs_from_the_shared_remote_even_when_it_is_not_the_default(tmp_path):
    """`sec grid --workers --dvc-remote URL`: the cells' outputs are on URL, so `dvc exp pull` must
    read them there (the checkout's default remote lacks them and the tables could pair nothing)."""
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    shared = str(tmp_path / "shared-remote")
    remotes = Remotes(git="/srv/sec.git", dvc=shared)
    # A remote with that URL (relative urls are read against .dvc/): pulled by its name.
    listing = "local\t../../elsewhere\t(default)\nshared\t../../shared-remote\n"
    assert plan.gather_commands(remotes, listing, repo, with_cache=True) == [
        ["dvc", "exp", "pull", "--remote", "shared", "/srv/sec.git"]]
    # None has it: added to the untracked local config, then pulled from.
    assert plan.gather_commands(remotes, "local\t../../elsewhere\t(default)\n", repo, with_cache=True) == [
        ["dvc", "remote", "add", "--local", "--force", plan.GATHER_REMOTE, shared],
        ["dvc", "exp", "pull", "--remote", plan.GATHER_REMOTE, "/srv/sec.git"]]
    assert plan.gather_commands(remotes, "", repo, with_cache=False) == [
        ["dvc", "exp", "pull", "--no-cache", "/srv/sec.git"]]


def test_gather_can_pull_one_experiment():
    """A controller trial's run is pulled alone, not with every earlier run of the study."""
    remotes = Remotes(git="/srv/sec.git", dvc="/srv/dvc")
    assert plan.gather_commands(remotes, "shared\t/srv/dvc\n", "/repo", True, ["sec-s-t3-full"]) == [
        ["dvc", "exp", "pull", "--remote", "shared", "/srv/sec.git", "sec-s-t3-full"]]
