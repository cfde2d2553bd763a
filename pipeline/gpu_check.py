"""The GPU check (scripts/gpu_check.sh): the tiny profile and a shortened gpu profile on CUDA.

    python -m pipeline.gpu_check [--work DIR] [--only tiny|gpu] [--device cuda]

Each run happens in a scratch git + DVC repository (a copy of stages/, pipeline/, dvc.yaml,
params.yaml), never in this one, with `dvc exp run -S device=cuda ...`. Afterwards
`device_problems` reads the stages' metrics and lists every training and inference stage that
did not record the device, and the stage times and the test accuracy are printed. Exit status 1
when anything is off. The decision logic (`device_problems`, `stage_seconds`, `accuracy_by_model`) is
pure: tested on the CPU with fake metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline._dvc_env import override_value
from pipeline.dag import STAGE_ORDER
from pipeline.project_copy import copy_project

REPO = Path(__file__).resolve().parents[1]

# Stage -> where its metrics say the device: "run" (pick_device; evaluate spreads "run" into the top
# level of evaluate.json) and, for the training stages, the Trainer's own record of where it trained.
# One entry for each stage of pipeline.dag.GPU_STAGES (tests/test_dag.py checks).
DEVICE_RECORDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "active_select": (("run", "device"), ("acquisition", "device")),
    "fine_tune": (("run", "device"), ("device",)),
    "prune": (("run", "device"), ("recovery", "device")),
    "distill": (("run", "device"), ("device",)),
    "evaluate_teacher": (("device",),),
    "evaluate": (("device",),),
}

# The gpu profile shrunk to ~5 minutes on one H100 (mpnet-base teacher, the offline MNLI files):
# enough steps that every stage really trains on the GPU, not enough for the numbers to mean much.
GPU_SHORT = {
    "data.dev_size": 500, "data.seed_size": 1000, "data.pool_size": 3000, "data.eval_size": 2000,
    "active_select.budget": 1000, "active_select.acquisition_epochs": 1,
    "augment.fraction": 0.1, "back_translate.fraction": 0.05,
    "fine_tune.max_steps": 300, "prune.recovery_steps": 100, "distill.max_steps": 300, "distill.transfer_size": 1000,
    "evaluate.latency_repeats": 3, "evaluate.latency_single_pairs": 16,
    # A few requests to the local llama.cpp server (it runs on the CPU cores): the stage is
    # exercised, but the gpu profile's 1,300 requests would take an hour.
    "generate.transfer_count": 8, "generate.label_count": 4,
}


def _dig(metrics: dict, path: tuple[str, ...]):
    for key in path:
        if not isinstance(metrics, dict) or key not in metrics:
            return None
        metrics = metrics[key]
    return metrics


def device_problems(metrics: dict[str, dict | None], expected: str = "cuda") -> list[str]:
    """Every training/inference stage whose metrics do not say `expected`; [] when all do.

    metrics: stage -> its metrics JSON (None when the file is missing). A training stage that
    trained nothing (prune with recovery_steps 0, active_select with strategy random) has no
    Trainer record, which is reported too: the check is meant to run them.
    """
    problems = []
    for stage, paths in DEVICE_RECORDS.items():
        found = metrics.get(stage)
        if found is None:
            problems.append(f"{stage}: no metrics")
            continue
        for path in paths:
            value = _dig(found, path)
            if value != expected:
                problems.append(f"{stage}: {'.'.join(path)} is {value!r}, expected {expected!r}")
    return problems


def stage_seconds(metrics: dict[str, dict | None]) -> dict[str, float]:
    """Seconds each stage reported (its own `seconds`), in pipeline order."""
    return {stage: float(m["seconds"]) for stage, m in metrics.items() if isinstance(m, dict) and "seconds" in m}


def accuracy_by_model(evaluate: dict | None) -> dict[str, float]:
    """Test accuracy (%) of every evaluated model."""
    models = (evaluate or {}).get("models", {})
    return {name: round(r["test"]["accuracy"] * 100, 2) for name, r in models.items() if "test" in r}


def read_metrics(repo: Path) -> dict[str, dict | None]:
    """Stage -> its metrics/<stage>.json, in pipeline order; None where a stage wrote none."""
    out = {}
    for stage in STAGE_ORDER:
        path = repo / "metrics" / f"{stage}.json"
        out[stage] = json.loads(path.read_text()) if path.is_file() else None
    return out


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    print("$ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=cwd, env=env)
    if result.returncode != 0:
        raise SystemExit(f"gpu_check: {' '.join(cmd[:3])} failed ({result.returncode})")


def scratch_repo(root: Path, params: dict) -> Path:
    """A git + DVC repository with this project's pipeline and `params` merged into params.yaml."""
    import yaml

    repo = copy_project(root / "repo")
    merged = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in params.items():
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    return repo


def _init(repo: Path, env: dict) -> None:
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "gpu check"]):
        _run(cmd, repo, env)


def run_profile(name: str, root: Path, env: dict, device: str) -> tuple[list[str], dict[str, dict | None], float]:
    """Build the scratch repo for `name` (tiny | gpu), run the pipeline, return (problems, metrics, seconds)."""
    root.mkdir(parents=True, exist_ok=True)
    if name == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import make_tiny_repo  # the test-suite's tiny repository: tiny BERT, synthetic pairs

        repo = make_tiny_repo(root)
        overrides = {"device": device}
    else:
        data = (REPO / ".." / "shared" / "data" / "mnli").resolve()
        repo = scratch_repo(root, {"profile": "gpu", "data.local_dir": str(data)})
        _init(repo, env)
        overrides = {"device": device, **GPU_SHORT}
    started = time.perf_counter()
    sets = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={override_value(value)}")]
    _run(["dvc", "exp", "run", *sets], repo, env)
    seconds = time.perf_counter() - started
    metrics = read_metrics(repo)
    return device_problems(metrics, expected=device), metrics, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=None, help="scratch directory (default: a new one under /tmp)")
    parser.add_argument("--only", choices=["tiny", "gpu"], action="append", help="run only this profile (repeatable)")
    parser.add_argument("--device", default="cuda", help="the device every stage must record")
    args = parser.parse_args(argv)
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="sec-gpu-check-"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "SEC_DEVICE": args.device, "GIT_AUTHOR_NAME": "gpu-check", "GIT_AUTHOR_EMAIL": "gpu-check@localhost",
           "GIT_COMMITTER_NAME": "gpu-check", "GIT_COMMITTER_EMAIL": "gpu-check@localhost"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    failed = False
    for name in args.only or ["tiny", "gpu"]:
        problems, metrics, seconds = run_profile(name, work / name, env, args.device)
        print(f"\n== {name} profile: {seconds:.0f} s wall ==")
        for stage, secs in stage_seconds(metrics).items():
            print(f"  {stage:16s} {secs:7.1f} s")
        for model, accuracy in accuracy_by_model(metrics.get("evaluate")).items():
            print(f"  test accuracy {model:10s} {accuracy:6.2f} %")
        for problem in problems:
            print(f"  DEVICE PROBLEM: {problem}")
        failed |= bool(problems)
    print("gpu_check: " + ("FAILED" if failed else f"every training and inference stage recorded {args.device}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
