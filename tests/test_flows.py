"""Prefect flows under Prefect's test harness, on a scratch tiny-profile repository."""

from __future__ import annotations

import json

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from conftest import make_tiny_repo, run_cmd
from pipeline.flows import apply_overrides, run_stage, sec_pipeline, write_params
from stages._params import ParamsError


@pytest.fixture(scope="module", autouse=True)
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_apply_overrides_sets_dotted_keys_and_refuses_unknown_ones():
    raw = {"profile": "cpu", "prune": {"ratio": 0.3}}
    assert apply_overrides(raw, {"prune.ratio": 0.5, "profile": "tiny"}) == {"profile": "tiny", "prune": {"ratio": 0.5}}
    assert raw["prune"]["ratio"] == 0.3  # the input is not modified
    with pytest.raises(KeyError, match="prune.ration"):
        apply_overrides(raw, {"prune.ration": 0.5})


@pytest.mark.slow
def test_pipeline_flow_runs_stages_and_never_answers_a_params_change_from_cache(tmp_path):
    repo = make_tiny_repo(tmp_path)
    metrics = sec_pipeline(repo=str(repo))
    assert set(metrics["models"]) == {"teacher", "pruned", "distilled", "quantized"}

    # Same params: DVC skips; the task still runs (no Prefect cache) and reports it.
    assert run_stage("prune", str(repo)) == "skipped"

    # Changed params through the flow: prune and everything after it rerun, nothing before.
    states = sec_pipeline(overrides={"prune.ratio": 0.5}, repo=str(repo), return_state=True)
    assert states.is_completed()
    assert yaml.safe_load((repo / "params.yaml").read_text())["prune"]["ratio"] == 0.5
    prune_metrics = json.loads((repo / "metrics" / "prune.json").read_text())
    assert prune_metrics["ratio"] == 0.5
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["prune"]["params"]["params.yaml"]["prune"]["ratio"] == 0.5

    # An invalid override fails before anything runs and leaves params.yaml as it was.
    before = (repo / "params.yaml").read_text()
    with pytest.raises(ParamsError, match="prune.ratio"):
        write_params.fn({"prune.ratio": 3.0}, None, str(repo))
    assert (repo / "params.yaml").read_text() == before
    assert run_cmd(["dvc", "status"], repo).stdout.strip().endswith("up to date.")
