"""Same commit, same numbers; and the test split decides nothing (tiny profile, end to end).

Two scratch repositories made the same way run `dvc repro`: every data and model output hash in
dvc.lock and every non-timing metric must match (pipeline.reproducibility). Then the test split's
gold labels are poisoned in one of them: DVC may rerun only prepare and the evaluations, and
every trained model, selected/augmented dataset and dev metric must be unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import make_tiny_repo
from conftest import run_cmd as _run
from pipeline.reproducibility import differences, lock_hashes

pytestmark = pytest.mark.slow

# What may read the test split: prepare writes it, the evaluations score it, the plots draw it,
# and generate reads its texts (not its labels) so that no generated pair repeats a test pair.
READS_TEST = {"prepare", "generate", "evaluate_teacher", "evaluate", "report_plots"}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    repos = []
    shared = tmp_path_factory.mktemp("shared")  # one data dir and model: identical params.yaml
    for name in ("a", "b"):
        repo = make_tiny_repo(tmp_path_factory.mktemp(f"run-{name}"), shared=shared)
        _run(["dvc", "repro"], repo)
        repos.append(repo)
    return repos[0], repos[1]


def test_two_fresh_runs_give_identical_outputs_and_metrics(two_runs):
    a, b = two_runs
    assert differences(a, b) == []
    hashes = lock_hashes(a / "dvc.lock")
    # the comparison covers the data and model outputs, not just metrics
    assert {"data/prepared", "data/selected", "models/teacher", "models/quantized", "predictions/evaluate"} <= set(hashes)
    metrics = json.loads((a / "metrics" / "evaluate.json").read_text())
    assert metrics["threads"] == yaml.safe_load((a / "params.yaml").read_text())["threads"]
    # timings exist, and live in their own file (the one thing allowed to differ)
    assert "latency_ms_b32" in json.loads((a / "metrics" / "evaluate_timing.json").read_text())["models"]["teacher"]


def test_poisoned_test_labels_change_no_decision_and_no_trained_model(two_runs):
    _, repo = two_runs
    before = lock_hashes(repo / "dvc.lock")
    dev_before = json.loads((repo / "metrics" / "evaluate.json").read_text())
    # A poisoned copy of the data: every gold test label wrong, the training file untouched.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    source = Path(params["data"]["local_dir"])
    poisoned = repo.parent / "poisoned-mnli"
    poisoned.mkdir()
    (poisoned / "train.parquet").write_bytes((source / "train.parquet").read_bytes())
    test = pd.read_parquet(source / "validation_matched.parquet")
    test["label"] = (test["label"] + 1) % 3
    test.to_parquet(poisoned / "validation_matched.parquet")
    params["data"]["local_dir"] = str(poisoned)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    out = _run(["dvc", "repro"], repo)
    ran = set(re.findall(r"Running stage '([a-z_]+)'", out.stdout))
    assert "prepare" in ran and ran <= READS_TEST, ran
    after = lock_hashes(repo / "dvc.lock")
    changed = {path for path in before if before[path] != after[path]}
    # prepare's directory holds test.parquet; the predictions hold the test labels. Nothing else.
    assert changed <= {"data/prepared", "predictions/evaluate", "predictions/evaluate_teacher"}, changed
    assert "data/prepared" in changed  # the poison did reach the pipeline
    dev_after = json.loads((repo / "metrics" / "evaluate.json").read_text())
    for name, model in dev_before["models"].items():
        assert dev_after["models"][name]["dev"] == model["dev"], name
        assert dev_after["models"][name]["test"] != model["test"], name
