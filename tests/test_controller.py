"""The synergy controller on the tiny profile with a planted drift: a size target no run can meet."""

from __future__ import annotations

import json

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from conftest import make_tiny_repo, run_cmd
from pipeline.controller import DECISIONS, sec_controller

pytestmark = pytest.mark.slow


def test_controller_reruns_prune_downstream_logs_why_and_stops_within_bound(tmp_path):
    repo = make_tiny_repo(tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["controller"].update(max_iterations=2)
    # Accuracy may drop freely and labels are free: only the size target (unreachable) is missed,
    # so the controller must raise compression pressure, i.e. the pruning ratio.
    params["controller"]["targets"] = {
        "max_accuracy_drop_pts": 100.0, "min_size_ratio": 50.0, "min_speedup": 0.0, "max_labelled_fraction": 1.0,
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_cmd(["git", "commit", "-qam", "planted drift"], repo)

    with prefect_test_harness(server_startup_timeout=120):
        records = sec_controller(repo=str(repo))

    assert 2 <= len(records) <= 3  # first run + at most max_iterations experiments
    first = records[0]
    assert first["misses"] == ["size"]
    assert first["decision"] == {"prune.ratio": 0.4} and first["first_stage"] == "prune"
    assert "size below target" in first["reason"]
    second = records[1]
    assert second["applied"] == {"prune.ratio": 0.4}
    assert second["stages_run"] == ["prune", "distill", "quantize", "evaluate", "report_plots"]  # nothing upstream
    assert records[-1]["stop"] is True and records[-1]["reason"]

    logged = [json.loads(line) for line in (repo / DECISIONS).read_text().splitlines()]
    assert [r["iteration"] for r in logged] == [r["iteration"] for r in records]
    assert (repo / f"{DECISIONS}.dvc").is_file()  # the log is a DVC-tracked output

    shown = json.loads(run_cmd(["dvc", "exp", "show", "--json"], repo).stdout)
    names = json.dumps(shown)
    for record in records:
        assert record["experiment"] in names
