"""Wall time of grid cells through 1 and through N local Prefect workers, each measured from nothing.

    python scripts/fanout_walltime.py --only random active --seeds 2 --workers 1 2 \
        --scratch ../fanout-walltime --out reports/fanout

For each worker count (in the order given), the script builds what docs/prefect.md's two-host
set-up has, on this machine and empty: a clone of this checkout's HEAD as the user's checkout, a
bare git repository as its git remote, an empty directory as the DVC remote (so no run-cache: every
cell trains), its own Prefect server (`sec server`), `sec worker --name wK` per worker (each with
its own scratch directory, i.e. its own "host") and `sec deploy`. Then it times
`sec grid --workers --only ... --seeds ...` as a user types it, from submission until the tables
are written, and reads every cell's flow run back from the server: which worker ran it, when it
started and ended.

Writes OUT/grid/ (the grid's tables, from the last configuration), OUT/walltime.json, OUT/walltime.md (wall time per worker count and the ratio against the
first one, cells per worker, each cell's test accuracy in every configuration: the same commit
must give the same numbers whichever worker ran the cell) and OUT/walltime.png (the cells on a
timeline per worker). Exits 1 when a configuration's grid fails, misses a cell, or a cell's
accuracy differs between configurations.

A measurement, not a test: run it alone on the machine (it is minutes to hours of training); the
machine and its thread count are recorded. The measured configurations run one after another,
not interleaved (each is a whole grid), so a change in the machine's load between them shows in
the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.grid_tables import collect  # noqa: E402
from pipeline.ui_check import free_port, stop_tree, wait_healthy  # noqa: E402
from stages._determinism import cpu_info  # noqa: E402

BIN = Path(sys.executable).parent
TEACHER_TEST = "evaluate_teacher.models.teacher.test.accuracy"


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` in {cwd} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result.stdout


def link_data(repo: Path, clone: Path) -> None:
    """A relative `data.local_dir` (../shared/data/mnli) is read against the worker's checkout, here
    the clone: link the same path beside the clone to the repository's data."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    local_dir = (params.get("data") or {}).get("local_dir")
    if not local_dir or Path(local_dir).is_absolute():
        return
    target = (repo / local_dir).resolve()
    link = Path(os.path.normpath(clone / local_dir))
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)


def flow_runs(api: str) -> list[dict]:
    """The grid's cells as the server has them: name, state, worker, start and end."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if "sec-grid" in r.tags]
    return [{"cell": r.name.split("@")[0], "state": r.state_type.value if r.state_type else None,
             "worker": next((t.split(":", 1)[1] for t in r.tags if t.startswith("worker:")), None),
             "start": r.start_time.timestamp() if r.start_time else None,
             "end": r.end_time.timestamp() if r.end_time else None} for r in runs]


def cell_accuracies(clone: Path) -> dict[str, dict[str, float]]:
    """Every experiment's dev and test accuracies (metric key -> value) from `dvc exp show`."""
    records = collect(run(["dvc", "exp", "show", "--json"], clone, env=dict(os.environ, DVC_NO_ANALYTICS="1")))
    return {r["name"]: {k: v for k, v in r["metrics"].items() if k.endswith(("dev.accuracy", "test.accuracy"))}
            for r in records if not r["is_baseline"]}


def measure(repo: Path, base: Path, workers: int, selection: list[str]) -> dict:
    """One configuration from nothing: clone, remotes, server, `workers` workers, the timed grid."""
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    clone, bare, dvc_remote = base / "sec", base / "sec.git", base / "dvc-remote"
    run(["git", "clone", "-q", str(repo), str(clone)], base)
    link_data(repo, clone)
    run(["git", "init", "-q", "--bare", str(bare)], base)
    run(["git", "push", "-q", str(bare), "HEAD:refs/heads/main"], clone)
    dvc_remote.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", PREFECT_HOME=str(base / "prefect-home"),
               PREFECT_API_URL=api, SEC_REPO_DIR=str(clone), HF_HUB_OFFLINE="1")
    env.pop("SEC_GPU_LIMIT", None)
    procs: list[subprocess.Popen] = []
    sec = str(BIN / "sec")
    try:
        procs.append(subprocess.Popen([sec, "server", "--port", str(port)], cwd=clone, env=env,
                                      stdout=(base / "server.log").open("w"), stderr=subprocess.STDOUT))
        wait_healthy(api)
        run([str(BIN / "prefect"), "work-pool", "create", "sec-gpu", "--type", "process"], clone, env)
        for k in range(1, workers + 1):
            name = f"w{k}"
            procs.append(subprocess.Popen([sec, "worker", "--name", name], cwd=clone,
                                          env=dict(env, SEC_SCRATCH=str(base / f"scratch-{name}")),
                                          stdout=(base / f"worker-{name}.log").open("w"), stderr=subprocess.STDOUT))
        run([sec, "deploy"], clone, env)
        cmd = [sec, "grid", "--workers", *selection, "--git-remote", str(bare), "--dvc-remote", str(dvc_remote),
               "--out-dir", str(base / "tables")]
        print(f"[{workers} worker(s)] {' '.join(cmd[1:])}", flush=True)
        started, started_at = time.time(), datetime.now().isoformat(timespec="minutes")
        with (base / "grid.log").open("w") as log:
            rc = subprocess.call(cmd, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = time.time() - started
        runs = flow_runs(api)
    finally:
        for proc in reversed(procs):
            stop_tree(proc)
    for r in runs:  # seconds since submission: the timeline
        r["start"] = None if r["start"] is None else round(r["start"] - started, 1)
        r["end"] = None if r["end"] is None else round(r["end"] - started, 1)
    tail = (base / "grid.log").read_text().splitlines()[-1:] or [""]
    print(f"[{workers} worker(s)] rc {rc}, {wall:.0f} s: {tail[0]}", flush=True)
    return {"workers": workers, "rc": rc, "wall_s": round(wall, 1), "runs": sorted(runs, key=lambda r: r["start"] or 0),
            "accuracy": cell_accuracies(clone), "dir": str(base), "commit": run(["git", "rev-parse", "HEAD"], clone).strip(),
            "measured": started_at}


def completed(res: dict) -> bool:
    return res["rc"] == 0 and bool(res["runs"]) and all(r["state"] == "COMPLETED" for r in res["runs"])


def problems(results: list[dict]) -> list[str]:
    """What makes the measurement fail: a failed grid, a cell not completed, or a cell whose
    accuracies differ between configurations (same commit, same numbers)."""
    out = []
    for res in results:
        if res["rc"] != 0:
            out.append(f"{res['workers']} worker(s): `sec grid --workers` exited {res['rc']} (see {res['dir']}/grid.log)")
        out += [f"{res['workers']} worker(s): {r['cell']} {r['state']}" for r in res["runs"] if r["state"] != "COMPLETED"]
    first = results[0]["accuracy"] if results else {}
    for res in results[1:]:
        for cell, metrics in first.items():
            if res["accuracy"].get(cell) != metrics:
                out.append(f"{cell}: accuracies differ between {results[0]['workers']} and {res['workers']} worker(s): "
                           f"{metrics} vs {res['accuracy'].get(cell)}")
    return out


def markdown(results: list[dict], selection: list[str], machine: dict, threads: int) -> str:
    base = results[0]
    lines = [
        "# Grid cells through one and through several local workers",
        "",
        f"`sec grid --workers {' '.join(selection)}`, each configuration from nothing (empty DVC remote,",
        "no run-cache, fresh Prefect server), one after the other on one machine:",
        f"{machine.get('model', '?')}, {psutil.cpu_count()} cores, {threads} torch threads per stage "
        f"(params.yaml `threads`); {datetime.now().strftime('%Y-%m-%d')}. Made by scripts/fanout_walltime.py.",
        "",
        "| workers | wall time | against 1st | cells per worker | result |",
        "|---|---|---|---|---|",
    ]
    for res in results:
        per = {}
        for r in res["runs"]:
            per[r["worker"]] = per.get(r["worker"], 0) + 1
        ok = "ok" if completed(res) else f"rc {res['rc']}, not completed"
        ratio = f"{base['wall_s'] / res['wall_s']:.2f}x" if completed(res) and completed(base) else "-"
        lines.append(f"| {res['workers']} | {res['wall_s'] / 60:.1f} min ({res['wall_s']:.0f} s) | {ratio} | "
                     f"{', '.join(f'{w}: {n}' for w, n in sorted(per.items(), key=lambda x: str(x[0])))} | {ok} |")
    lines += ["", "Commits and start: " + "; ".join(
        f"{r['workers']} worker(s) {str(r.get('commit', '?'))[:8]} at {r.get('measured', '?')}"
        + (" (reused from an earlier run of this script)" if r.get("reused") else "") for r in results) + ".",
        "", "Each cell (seconds since the grid was submitted; worker):", "",
              "| cell | " + " | ".join(f"{r['workers']} worker(s)" for r in results) + " | teacher, test |",
              "|---|" + "---|" * len(results) + "---|"]
    cells = sorted({r["cell"] for res in results for r in res["runs"]})
    for cell in cells:
        spans = []
        for res in results:
            r = next((r for r in res["runs"] if r["cell"] == cell), None)
            spans.append("-" if r is None else f"{r['start']:.0f}-{r['end']:.0f} s, {r['worker']}" if r["end"] else
                         f"{r['state']}, {r['worker']}")
        # Every cell ends at evaluate_teacher or later: its teacher's test accuracy (a teacher-only
        # cell's evaluate.* metrics are the commit's own, not the cell's).
        acc = [res["accuracy"].get(cell, {}).get(TEACHER_TEST) for res in results]
        text = "-" if acc[0] is None else f"{100 * acc[0]:.2f} %" + ("" if len(set(acc)) == 1 else " (DIFFERS)")
        lines.append(f"| {cell} | " + " | ".join(spans) + f" | {text} |")
    return "\n".join(lines) + "\n"


def timeline_png(results: list[dict], path: Path) -> None:
    """The cells as bars on a time axis, one row per worker, one panel per configuration."""
    from pipeline.plots import render_png

    rows = [{"configuration": f"{res['workers']} worker(s)", "worker": r["worker"] or "?", "cell": r["cell"],
             "start_min": r["start"] / 60, "end_min": r["end"] / 60}
            for res in results for r in res["runs"] if r["start"] is not None and r["end"] is not None]
    spec = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": rows},
        "facet": {"row": {"field": "configuration", "type": "nominal", "title": None}},
        "spec": {
            "width": 560, "height": {"step": 28},
            "layer": [
                {"mark": {"type": "bar", "cornerRadius": 3},
                 "encoding": {"x": {"field": "start_min", "type": "quantitative", "title": "minutes since submission"},
                              "x2": {"field": "end_min"},
                              "y": {"field": "worker", "type": "nominal", "title": "worker"},
                              "color": {"field": "cell", "type": "nominal", "title": "cell"}}},
                {"mark": {"type": "text", "align": "left", "dx": 4, "color": "white", "fontSize": 9},
                 "encoding": {"x": {"field": "start_min", "type": "quantitative"},
                              "y": {"field": "worker", "type": "nominal"}, "text": {"field": "cell"}}},
            ],
        },
        "resolve": {"scale": {"y": "independent"}},
        "title": "Grid cells per worker",
    }
    render_png(spec, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", default=["random", "active"], help="grid rows (as sec grid --only)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--profile", choices=["cpu", "gpu", "tiny"], default=None)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts, measured in this order")
    ap.add_argument("--scratch", type=Path, default=Path("../fanout-walltime"),
                    help="where the clones, remotes, servers and workers live (emptied per configuration)")
    ap.add_argument("--out", type=Path, default=Path("reports/fanout"))
    ap.add_argument("--reuse", type=Path, default=None,
                    help="a walltime.json of an earlier run: its completed configurations of the same selection are "
                         "taken from it instead of measured again (the report says so)")
    args = ap.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                      text=True).stdout.strip():
        print("fanout_walltime: uncommitted changes; the workers run the committed HEAD (commit first)", file=sys.stderr)
    selection = ["--only", *args.only, "--seeds", str(args.seeds), *(["--profile", args.profile] if args.profile else [])]
    threads = int((yaml.safe_load((repo / "params.yaml").read_text()) or {}).get("threads") or 0)
    earlier = {}
    if args.reuse:
        previous = json.loads(args.reuse.read_text())
        if previous["selection"] != selection:
            raise SystemExit(f"--reuse {args.reuse}: measured {previous['selection']}, not {selection}")
        earlier = {r["workers"]: dict(r, reused=True) for r in previous["results"] if completed(r)}
    results = [earlier.get(n) or measure(repo, args.scratch.resolve() / f"{n}w", n, selection) for n in args.workers]
    machine = cpu_info()
    args.out.mkdir(parents=True, exist_ok=True)
    commit = run(["git", "rev-parse", "HEAD"], repo).strip()
    (args.out / "walltime.json").write_text(json.dumps(
        {"commit": commit, "selection": selection, "machine": machine, "cores": psutil.cpu_count(), "threads": threads,
         "results": results}, indent=2) + "\n")
    (args.out / "walltime.md").write_text(markdown(results, selection, machine, threads))
    timeline_png(results, args.out / "walltime.png")
    # The grid's tables as the last configuration wrote them (every configuration ran the same cells).
    tables = Path(results[-1]["dir"]) / "tables"
    if tables.is_dir():
        shutil.copytree(tables, args.out / "grid", dirs_exist_ok=True)
    bad = problems(results)
    for line in bad:
        print(f"MISS {line}")
    for res in results:
        ratio = f"{results[0]['wall_s'] / res['wall_s']:.2f}x" if completed(res) and completed(results[0]) else "not completed"
        print(f"{res['workers']} worker(s): {res['wall_s']:.0f} s ({ratio})")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
