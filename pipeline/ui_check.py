"""Run the pipeline deployment through a real Prefect server and worker, then screenshot the UI.

    python -m pipeline.ui_check --repo . --out reports/ui        # any prepared checkout

Starts `prefect server` on 127.0.0.1 (telemetry off, a throwaway PREFECT_HOME), registers the
deployments of `<repo>/prefect.yaml`, starts a worker on the work pool, runs the `sec-pipeline`
deployment, and checks what a person would see: the flow run completed, one task run per DVC stage,
the metrics artifact. Headless Chromium then screenshots the flow run's page. Prints a JSON summary;
exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pipeline.dag import STAGE_ORDER

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1600,1100",
    # The UI fetches its lists after the first paint: give it (virtual) time, and paint every
    # compositor stage before the capture, else a busy machine gets the page mid-fade, list empty.
    "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_tree(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Terminate a process started here and everything it started (a worker's flow runs, the
    server's uvicorn): terminating the parent alone leaves those running."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in reversed(tree):
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for p in alive:
        p.kill()


def wait_healthy(api: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"Prefect server at {api} not healthy after {timeout:.0f} s")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(url: str, out: Path, user_dir: Path) -> None:
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium: sudo apt-get install chromium")
    cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={user_dir}", f"--screenshot={out}", url]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


async def inspect_run(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = await client.read_artifacts()
    return {
        "flow_run": flow_run.name,
        "state": flow_run.state.type.value if flow_run.state else None,
        "task_runs": sorted(t.name for t in task_runs),
        "artifacts": sorted(a.key for a in artifacts if a.key and a.flow_run_id == flow_run_id),
    }


def check(repo: Path, out: Path, timeout: float = 1500) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="prefect-home-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", SEC_REPO_DIR=str(repo.resolve()),
               PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port))
    prefect = str(Path(sys.executable).parent / "prefect")
    logs = out / "prefect-server.log"
    procs = []
    try:
        procs.append(subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                      env=env, stdout=logs.open("w"), stderr=subprocess.STDOUT))
        wait_healthy(api)
        subprocess.run([prefect, "work-pool", "create", "sec-gpu", "--type", "process"], env=env, check=True, capture_output=True)
        # What `sec worker --gpu-limit gpu-0` does: one slot per GPU (prefect.yaml sets SEC_GPU_LIMIT).
        subprocess.run([prefect, "global-concurrency-limit", "create", "gpu-0", "--limit", "1"], env=env, check=True, capture_output=True)
        subprocess.run([prefect, "--no-prompt", "deploy", "--all"], cwd=repo, env=env, check=True, capture_output=True)
        procs.append(subprocess.Popen([prefect, "worker", "start", "--pool", "sec-gpu", "--type", "process"],
                                      cwd=repo, env=env, stdout=(out / "prefect-worker.log").open("w"), stderr=subprocess.STDOUT))
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # In-process clients must talk to this server even if Prefect settings were loaded
        # earlier in the process (another server, a test harness): env vars alone are not enough.
        with temporary_settings({PREFECT_API_URL: api}):
            flow_run = run_deployment("sec-pipeline/sec-pipeline", timeout=timeout)
            summary = asyncio.run(inspect_run(flow_run.id))
        png = out / "flow-run.png"
        screenshot(f"http://127.0.0.1:{port}/runs/flow-run/{flow_run.id}", png, home / "chromium")
        summary.update(screenshot=str(png), screenshot_bytes=png.stat().st_size, ui=f"http://127.0.0.1:{port}")
        return summary
    finally:
        for proc in reversed(procs):
            stop_tree(proc)
        shutil.rmtree(home, ignore_errors=True)


def failures(summary: dict) -> list[str]:
    problems = []
    if summary["state"] != "COMPLETED":
        problems.append(f"flow run ended {summary['state']}")
    stages_seen = {name.split("-")[0] for name in summary["task_runs"]}
    missing = [s for s in STAGE_ORDER if s not in stages_seen]
    if missing:
        problems.append(f"no task run for stages {missing}")
    if "sec-metrics" not in summary["artifacts"]:
        problems.append("no sec-metrics artifact")
    if summary.get("screenshot_bytes", 0) < 10_000:
        problems.append("screenshot missing or blank")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=".")
    parser.add_argument("--out", default="reports/ui")
    parser.add_argument("--timeout", type=float, default=2400, help="seconds to wait for the flow run")
    args = parser.parse_args(argv)
    summary = check(Path(args.repo), Path(args.out), timeout=args.timeout)
    problems = failures(summary)
    print(json.dumps({**summary, "problems": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
