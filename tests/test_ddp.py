"""Data-parallel training: fine_tune and distill on 2 CPU processes (torchrun, gloo) on the tiny profile.

Each stage is started the way dvc.yaml starts it (`python -m stages.<stage> ...`) and re-launches
itself under torchrun when `train.processes` is 2. Checked against the same stage on 1 process:
the same number of optimizer steps (the global batch is split, not doubled), a loss close to the
one-process loss, and one model, one metrics file and one set of training curves written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_pairs
from stages._distributed import DistributedError, launcher_command, per_process_batch, relaunch, threads_per_process

pytestmark = pytest.mark.slow


def _params(tmp_path: Path, teacher: str, processes: int) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(profile="tiny", threads=2, device="cpu")
    params["model"]["teacher"] = teacher
    params["train"]["processes"] = processes
    # Whole epochs (no max_steps): a global batch doubled by mistake would halve the step count.
    params["fine_tune"].update(epochs=2.0, max_steps=-1, batch_size=8)
    params["distill"].update(epochs=1.0, max_steps=-1, batch_size=8, transfer_size=16, layers=1)
    path = tmp_path / f"params-{processes}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _stage(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{module} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_two_processes_train_like_one(tiny_model_dir, tmp_path):
    data = tmp_path / "train.parquet"
    make_pairs(64).assign(source="seed", weight=1.0).to_parquet(data)
    unlabelled = tmp_path / "unlabelled.parquet"
    make_pairs(24, seed=5).assign(label=-1, source="pool", weight=1.0).to_parquet(unlabelled)

    runs = {}
    for processes in (1, 2):
        work = tmp_path / f"p{processes}"
        work.mkdir()
        params = _params(tmp_path, tiny_model_dir, processes)
        ft = _stage("stages.fine_tune", "--params", str(params), "--train", str(data), "--dev", str(data), "--out", "teacher",
                    "--metrics", "fine_tune.json", "--live-dir", "live_ft", cwd=work)
        _stage("stages.distill", "--params", str(params), "--teacher", "teacher", "--pruned", "teacher",
               "--train", str(data), "--unlabelled", str(unlabelled), "--out", "student",
               "--metrics", "distill.json", "--live-dir", "live_distill", cwd=work)
        runs[processes] = {
            "fine_tune": json.loads((work / "fine_tune.json").read_text()),
            "distill": json.loads((work / "distill.json").read_text()),
            "work": work, "log": ft.stderr,
        }

    one, two = runs[1], runs[2]
    assert "torchrun" in two["log"] and "torchrun" not in one["log"]
    for stage in ("fine_tune", "distill"):
        assert one[stage]["processes"] == 1 and two[stage]["processes"] == 2
        assert two[stage]["run"]["processes"] == 2 and two[stage]["run"]["threads"] == 1  # 2 threads shared out
        # 64 rows / global batch 8 x 2 epochs = 16 steps (distill: 64 + 16 rows, 1 epoch = 10)
        assert two[stage]["train_steps"] == one[stage]["train_steps"] > 0
        loss1, loss2 = one[stage]["train_loss"], two[stage]["train_loss"]
        assert abs(loss2 - loss1) <= 0.1 * abs(loss1), (stage, loss1, loss2)
    assert one["fine_tune"]["train_steps"] == 16
    # One model and one set of curves, the same files as the one-process run; no checkpoints left.
    for out in ("teacher", "student", "live_ft", "live_distill"):
        assert _files(two["work"] / out) == _files(one["work"] / out), out
    assert not list(two["work"].rglob("checkpoint-*"))


def test_a_global_batch_that_does_not_split_is_refused():
    assert per_process_batch(16, 2) == 8 and per_process_batch(16, 1) == 16
    with pytest.raises(DistributedError, match="batch_size 10 does not split evenly over train.processes=4"):
        per_process_batch(10, 4)
    assert threads_per_process(2, 2) == 1 and threads_per_process(2, 4) == 1 and threads_per_process(8, 2) == 4


def test_one_process_or_a_worker_trains_in_place(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert relaunch("stages.fine_tune", ["--x"], 1) is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert relaunch("stages.fine_tune", ["--x"], 2) is None  # already a worker: no second launch
    cmd = launcher_command("stages.fine_tune", ["--params", "p.yaml"], 2)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[-3:] == ["stages.fine_tune", "--params", "p.yaml"]


def test_the_two_gpu_deployment_asks_for_two_processes_on_two_gpus(tmp_path):
    from pipeline.flows import apply_overrides
    from stages._params import load_params

    deployment = next(d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                      if d["name"] == "sec-pipeline-2gpu")
    assert deployment["entrypoint"] == "pipeline/flows.py:sec_pipeline"
    overrides = deployment["parameters"]["overrides"]
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)))
    processes = load_params(params_file).train.processes
    gpus = deployment["work_pool"]["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"].split(",")
    assert processes == len(gpus) == 2
