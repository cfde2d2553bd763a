"""A fine_tune stage killed with SIGKILL mid-training resumes from its checkpoint when rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import REPO, build_tiny_bert, make_pairs

pytestmark = pytest.mark.slow


def test_sigkilled_fine_tune_resumes_and_leaves_no_output(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["model"]["teacher"] = build_tiny_bert(tmp_path / "tiny")
    params["fine_tune"].update(max_steps=400, save_steps=2, batch_size=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    make_pairs(80).to_parquet(tmp_path / "train.parquet")
    make_pairs(12, seed=3).to_parquet(tmp_path / "dev.parquet")  # the dev check (off on tiny: it only scores)
    cmd = [sys.executable, "-m", "stages.fine_tune", "--params", "params.yaml", "--train", "train.parquet",
           "--dev", "dev.parquet", "--out", "teacher", "--metrics", "fine_tune.json"]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")

    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / ".cache" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("fine_tune-*/checkpoint-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(checkpoints.glob("fine_tune-*/checkpoint-*")), "no checkpoint was written before the kill"
    assert not (tmp_path / "teacher").exists() and not (tmp_path / "fine_tune.json").exists()

    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True)
    metrics = json.loads((tmp_path / "fine_tune.json").read_text())
    assert metrics["resumed_from"] and metrics["resumed_from"].startswith("checkpoint-")
    assert metrics["train_steps"] == 400
    assert (tmp_path / "teacher" / "model.safetensors").is_file()
    assert not list(checkpoints.glob("fine_tune-*"))  # cleaned after success
