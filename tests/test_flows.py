"""Prefect flows under Prefect's test harness, on a scratch tiny-profile repository."""

from __future__ import annotations

import json

import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from conftest import REPO, make_tiny_repo, run_cmd
from pipeline import flows
from pipeline.dag import STAGE_ORDER
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


def _record_dvc_runs(monkeypatch) -> dict[str, str]:
    """stage -> "ran" / "not run", from DVC's own output, for each `dvc repro` the flow's tasks start.

    Read independently of run_stage's verdict: DVC prints "Running stage '<name>':" only when it
    executes a stage's command (not when it skips it or restores it from its run-cache).
    """
    seen: dict[str, str] = {}
    real = flows.run_streaming

    def recording(cmd, cwd, log):
        output = real(cmd, cwd, log)
        stage = cmd[-1]
        seen[stage] = "ran" if f"Running stage '{stage}':" in output else "not run"
        return output

    monkeypatch.setattr(flows, "run_streaming", recording)
    return seen


@pytest.mark.slow
def test_pipeline_flow_runs_stages_and_never_answers_a_params_change_from_cache(tmp_path, monkeypatch):
    repo = make_tiny_repo(tmp_path)
    metrics = sec_pipeline(repo=str(repo))
    assert set(metrics["models"]) == {"teacher", "pruned", "distilled", "quantized", "onnx_fp32", "onnx_int8"}

    # Same params: DVC skips; the task still runs (no Prefect cache) and reports it.
    assert run_stage("prune", str(repo)) == "skipped"

    # Changed params through the flow: exactly prune and the stages downstream of it rerun;
    # nothing before it, nor evaluate_teacher (after it in the order, but not downstream).
    dvc_runs = _record_dvc_runs(monkeypatch)
    states = sec_pipeline(overrides={"prune.ratio": 0.5}, repo=str(repo), return_state=True)
    assert states.is_completed()
    assert tuple(dvc_runs) == STAGE_ORDER  # every stage of dvc.yaml was handed to DVC, in its order
    rerun = {"prune", "distill", "quantize", "export", "evaluate", "report_plots"}
    assert dvc_runs == {stage: "ran" if stage in rerun else "not run" for stage in STAGE_ORDER}
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


def _scratch_params(tmp_path, dvc_repo: bool = False):
    """A copy of this repository's params.yaml (comments and all) in a scratch directory."""
    if dvc_repo:
        (tmp_path / ".dvc").mkdir()
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    return path


def test_write_params_keeps_the_users_comments_and_changes_only_the_set_lines(tmp_path):
    path = _scratch_params(tmp_path)
    before = path.read_text()
    assert "# share of attention heads" in before and "class_fraction: null #" in before
    write_params.fn({"prune.ratio": 0.5, "augment.class_fraction": {"neutral": 0.5}, "augment.ops": ["swap"]},
                    "tiny", str(tmp_path))
    after = path.read_text()
    changed = [(old, new) for old, new in zip(before.splitlines(), after.splitlines(), strict=True) if old != new]
    assert [new for _, new in changed] == [
        "profile: tiny",
        "  ops: [swap]",
        "  class_fraction: {neutral: 0.5} # adaptive: {neutral: 0.5, ...} overrides fraction per class (set by the controller)",
        "  ratio: 0.5           # share of attention heads and FFN channels removed per layer",
    ]
    loaded = yaml.safe_load(after)
    assert loaded["augment"]["class_fraction"] == {"neutral": 0.5} and loaded["prune"]["ratio"] == 0.5
    assert loaded["data"]["seed_size"] is None  # nulls stay null, not empty


def test_write_params_refuses_an_invalid_override_and_leaves_the_file(tmp_path):
    path = _scratch_params(tmp_path)
    before = path.read_bytes()
    with pytest.raises(ParamsError, match="prune.ratio"):
        write_params.fn({"prune.ratio": 3.0}, None, str(tmp_path))
    with pytest.raises(KeyError, match="prune.ration"):
        write_params.fn({"prune.ration": 0.5}, None, str(tmp_path))
    assert path.read_bytes() == before


def test_two_concurrent_writers_both_land(tmp_path, monkeypatch):
    import threading
    import time

    from pipeline import flows

    path = _scratch_params(tmp_path, dvc_repo=True)
    validate = flows.parse_params

    def slow_validate(*args, **kwargs):  # widen the read-modify-write window so a race would show
        time.sleep(0.3)
        return validate(*args, **kwargs)

    monkeypatch.setattr(flows, "parse_params", slow_validate)
    errors = []

    def writer(overrides):
        try:
            write_params.fn(overrides, None, str(tmp_path))
        except Exception as err:  # surfaced below; a thread's exception would be lost
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(o,)) for o in ({"prune.ratio": 0.5}, {"augment.rate": 0.2})]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    loaded = yaml.safe_load(path.read_text())
    assert loaded["prune"]["ratio"] == 0.5 and loaded["augment"]["rate"] == 0.2
    assert (tmp_path / ".dvc" / "tmp" / "params.yaml.lock").exists()  # DVC's gitignored scratch dir


def test_a_failure_mid_write_leaves_the_old_params_file(tmp_path, monkeypatch):
    from pipeline import flows

    path = _scratch_params(tmp_path)
    before = path.read_bytes()

    def half_dump(rt, doc, stream):
        stream.write("profile: tiny\nprune:\n")  # half a file, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(flows, "_dump_yaml", half_dump)
    with pytest.raises(OSError, match="No space left"):
        write_params.fn({"prune.ratio": 0.5}, None, str(tmp_path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".params.yaml.lock", "params.yaml"]  # no temp left behind
