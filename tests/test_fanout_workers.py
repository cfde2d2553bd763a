"""The grid fanned out over a real Prefect server and two workers on one pool (tiny profile).

A bare git repository is the git remote and a local directory the DVC remote; each worker has its
own scratch directory (its own "host"). The grid's cells run as `sec-experiment` flow runs, and the
main checkout gathers them with `dvc exp pull`. Then a worker is killed during a cell: that cell is
missing (Crashed, by the heartbeat automation), the other completes, and a rerun runs only the
missing one. Last, a controller trial runs on the pool (`sec controller --workers`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import make_tiny_repo, run_cmd
from pipeline.ui_check import chromium, free_port, screenshot, stop_tree, wait_healthy

pytestmark = pytest.mark.slow

PREFECT = str(Path(sys.executable).parent / "prefect")
WORKERS = ("w1", "w2")


def _env(api: str, home: Path, repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", SEC_REPO_DIR=str(repo),
               PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30", PREFECT_WORKER_QUERY_SECONDS="3",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop("SEC_GPU_LIMIT", None)
    return env


@contextmanager
def cluster(tmp_path: Path, repo: Path):
    """A Prefect server, the sec-gpu process pool, the sec-experiment deployment and two workers."""
    home = Path(tempfile.mkdtemp(prefix="prefect-home-", dir=tmp_path))
    port = free_port()
    env = _env(f"http://127.0.0.1:{port}/api", home, repo)
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["server"] = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                           env=env, stdout=(tmp_path / "server.log").open("w"), stderr=subprocess.STDOUT)
        wait_healthy(env["PREFECT_API_URL"])
        subprocess.run([PREFECT, "work-pool", "create", "sec-gpu", "--type", "process"], env=env, check=True,
                       capture_output=True)
        subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", "sec-experiment"], cwd=repo, env=env, check=True,
                       capture_output=True)
        for name in WORKERS:  # two "hosts": a scratch directory (workspaces, DVC cache) each
            worker_env = dict(env, SEC_SCRATCH=str(tmp_path / f"scratch-{name}"))
            procs[name] = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", "sec-gpu", "--type", "process", "--limit", "1", "--name", name],
                cwd=repo, env=worker_env, stdout=(tmp_path / f"worker-{name}.log").open("w"), stderr=subprocess.STDOUT)
        yield env, procs
    finally:
        for proc in reversed(list(procs.values())):
            stop_tree(proc)


def start_grid(repo: Path, env: dict, seeds: int, out: Path, procs: dict) -> subprocess.Popen:
    """`sec grid --workers` as a user runs it (its own process), on the random and active rows;
    registered in `procs` so the cluster stops it too."""
    code = ("import json, sys; from pipeline.fanout import grid_fanout; "
            f"s = grid_fanout(repo='.', only=['random', 'active'], seeds={seeds}, out_dir={str(out)!r}, poll_s=3); "
            "print('SUMMARY ' + json.dumps(s))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    procs[f"grid-{len(procs)}"] = proc
    return proc


def summary_of(proc: subprocess.Popen, timeout: float) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("SUMMARY ")]
    assert lines, f"grid_fanout exited {proc.returncode} without a summary:\n{out[-6000:]}"
    return json.loads(lines[-1][len("SUMMARY "):])


def shown_experiments(repo: Path) -> set[str]:
    from pipeline.grid_tables import collect

    return {r["name"] for r in collect(run_cmd(["dvc", "exp", "show", "--json"], repo).stdout) if not r["is_baseline"]}


def flow_runs(env: dict, tag: str = "sec-grid") -> list:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        return [r for r in client.read_flow_runs() if tag in r.tags]


def set_up_one_trial_search(repo: Path) -> None:
    """A one-trial study (the baseline configuration, one full run: no cheaper pass, no confirmation
    seeds against a 100 % reference), committed and pushed, as workers run the pushed commit."""
    from pipeline.reference import Reference, save

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["controller"]["targets"] = {"max_accuracy_drop_pts": 0.0, "min_size_ratio": 1.0, "min_speedup": 0.0,
                                       "min_speedup_b1": None, "max_labelled_fraction": 1.0}
    params["controller"]["search"] = {"trials": 1, "startup_trials": 1, "teacher_every": 3, "confirm_seeds": 1,
                                      "cheap_fraction": 1.0, "knobs": {"prune.ratio": {"choices": [0.3, 0.5]}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    save(Reference(teacher_dev_accuracy=1.0, seeds=[42], values=[1.0]), repo)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "one-trial search"], repo)
    run_cmd(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo)


def test_grid_cells_fan_out_over_two_workers_and_a_killed_cell_is_rerun_alone(tmp_path):
    repo = make_tiny_repo(tmp_path)
    bare = tmp_path / "sec.git"
    run_cmd(["git", "init", "-q", "--bare", str(bare)], tmp_path)
    run_cmd(["git", "remote", "add", "origin", str(bare)], repo)
    run_cmd(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "dvc-remote")], repo)
    run_cmd(["git", "commit", "-qam", "remotes"], repo)
    run_cmd(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], repo)
    started = time.monotonic()
    with cluster(tmp_path, repo) as (env, procs):
        # 1. Four cells (random, active x 2 seeds) over two workers.
        first = summary_of(start_grid(repo, env, 2, tmp_path / "tables", procs), timeout=1500)
        cells = {"grid-random-s42", "grid-random-s43", "grid-active-s42", "grid-active-s43"}
        assert set(first["cells"]) == cells and set(first["submitted"]) == cells
        assert first["failed"] == [] and first["missing"] == []
        assert {r["worker"] for r in first["runs"]} == set(WORKERS), first["runs"]
        assert cells <= shown_experiments(repo)
        assert (tmp_path / "tables" / "tables.md").is_file()
        # The user's checkout: no tracked file changed, no workspace in it.
        assert run_cmd(["git", "status", "--porcelain", "--untracked-files=no"], repo).stdout == ""
        assert not (repo / ".sec-scratch").exists()
        for name in WORKERS:  # workspaces removed; only the host's DVC cache is left in the scratch dir
            assert sorted(p.name for p in (tmp_path / f"scratch-{name}").iterdir() if p.is_dir()) == ["dvc-cache"]

        # 2. The third seed: two new cells, submitted by two grids at once; kill a worker mid-cell.
        grids = [start_grid(repo, env, 3, tmp_path / f"tables-{i}", procs) for i in range(2)]
        victim = None
        deadline = time.monotonic() + 600
        while victim is None and time.monotonic() < deadline:
            for run in flow_runs(env):
                worker = next((t.split(":", 1)[1] for t in run.tags if t.startswith("worker:")), None)
                if run.name.split("@")[0].endswith("-s44") and run.state_type.value == "RUNNING" and worker:
                    victim = (run.name.split("@")[0], worker)
                    break
            time.sleep(2)
        assert victim is not None, "no cell of the third seed started running"
        time.sleep(5)  # inside `dvc exp run` by now
        _stop_hard(procs[victim[1]])
        killed_cell, killed_worker = victim
        results = [summary_of(g, timeout=900) for g in grids]
        other = ({"grid-random-s44", "grid-active-s44"} - {killed_cell}).pop()
        for result in results:
            assert result["missing"] == [killed_cell], result
        by_name: dict[str, list] = {}
        for run in flow_runs(env):
            by_name.setdefault(run.name.split("@")[0], []).append(run.state_type.value)
        assert by_name[other] == ["COMPLETED"]  # two submissions, one flow run
        assert by_name[killed_cell] == ["CRASHED"]

        # 3. The rerun submits only the killed cell; the surviving worker runs it.
        rerun = summary_of(start_grid(repo, env, 3, tmp_path / "tables-rerun", procs), timeout=900)
        assert rerun["submitted"] == [killed_cell]
        assert rerun["failed"] == [] and rerun["missing"] == []
        assert [r["worker"] for r in rerun["runs"]] == [w for w in WORKERS if w != killed_worker]
        assert cells | {"grid-random-s44", "grid-active-s44"} <= shown_experiments(repo)

        # 4. A controller trial on the pool (`sec controller --workers`): its run is a flow run a
        #    worker takes, pulled back and measured at its commit; the workspace is not touched.
        set_up_one_trial_search(repo)
        trial = subprocess.run([sys.executable, "-c", (
            "import json; from pipeline.controller import sec_controller; "
            "print('SUMMARY ' + json.dumps(sec_controller(repo='.', trials=1, workers=True)))")],
            cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        lines = [line for line in trial.stdout.splitlines() if line.startswith("SUMMARY ")]
        assert trial.returncode == 0 and lines, (trial.stdout + trial.stderr)[-6000:]
        assert json.loads(lines[-1][len("SUMMARY "):])["trials"] == ["COMPLETE"]
        trial_runs = flow_runs(env, "sec-controller")
        assert [r.state_type.value for r in trial_runs] == ["COMPLETED"]
        assert f"worker:{[w for w in WORKERS if w != killed_worker][0]}" in trial_runs[0].tags
        assert trial_runs[0].name.split("@")[0] in shown_experiments(repo)
        assert not (repo / "metrics" / "evaluate.json").exists()  # measured at the experiment's commit
        shot = os.environ.get("SEC_FANOUT_SCREENSHOT")  # docs/prefect-fanout.png is made this way
        if shot and chromium():
            api = env["PREFECT_API_URL"].removesuffix("/api")
            screenshot(f"{api}/runs", Path(shot), tmp_path / "chromium")  # only this test's server: all runs are grid cells
            assert Path(shot).read_bytes()[:4] == b"\x89PNG"
    print(f"fan-out test took {time.monotonic() - started:.0f} s")


def _stop_hard(proc: subprocess.Popen) -> None:
    """SIGKILL a worker and the flow run it runs, as a dying host would (no clean-up, no state change)."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)
