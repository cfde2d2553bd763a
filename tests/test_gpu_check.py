"""The GPU check's decisions, on fake metrics (no GPU here)."""

from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.gpu_check import GPU_SHORT, accuracy_by_model, device_problems, scratch_repo, stage_seconds


def _all_on(device: str) -> dict:
    def run():
        return {"seed": 42, "threads": 2, "device": device}

    return {
        "prepare": {"run": {"seed": 42, "threads": 2}, "seconds": 1.0},
        "active_select": {"run": run(), "acquisition": {"device": device}, "seconds": 12.5},
        "fine_tune": {"run": run(), "device": device, "precision": "bf16", "seconds": 40.0},
        "prune": {"run": run(), "recovery": {"device": device}, "seconds": 9.0},
        "distill": {"run": run(), "device": device, "seconds": 50.0},
        # evaluate.json carries the run info at its top level (as the stage writes it)
        "evaluate_teacher": {**run(), "models": {"teacher": {"test": {"accuracy": 0.8}}}},
        "evaluate": {**run(), "models": {"teacher": {"test": {"accuracy": 0.8123}},
                                            "quantized": {"test": {"accuracy": 0.75}}}},
    }


def test_all_stages_on_cuda_pass():
    assert device_problems(_all_on("cuda")) == []


@pytest.mark.parametrize("stage, path", [
    ("active_select", ("acquisition", "device")),  # scored on the GPU but trained on the CPU
    ("fine_tune", ("device",)),
    ("prune", ("recovery", "device")),
    ("distill", ("run", "device")),
    ("evaluate", ("device",)),
    ("evaluate_teacher", ("device",)),
])
def test_one_stage_on_the_cpu_is_named(stage, path):
    metrics = copy.deepcopy(_all_on("cuda"))
    node = metrics[stage]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "cpu"
    problems = device_problems(metrics)
    assert problems == [f"{stage}: {'.'.join(path)} is 'cpu', expected 'cuda'"]


def test_missing_metrics_and_missing_trainer_records_are_problems():
    metrics = _all_on("cuda")
    metrics["distill"] = None
    del metrics["prune"]["recovery"]  # recovery_steps 0: nothing trained on any device
    assert device_problems(metrics) == ["prune: recovery.device is None, expected 'cuda'", "distill: no metrics"]


def test_a_cpu_run_passes_a_cpu_check():
    assert device_problems(_all_on("cpu"), expected="cpu") == []
    assert len(device_problems(_all_on("cpu"))) == 10  # every record of the 6 stages


def test_times_and_accuracy_are_read_off_the_metrics():
    metrics = _all_on("cuda")
    assert stage_seconds(metrics) == {"prepare": 1.0, "active_select": 12.5, "fine_tune": 40.0, "prune": 9.0,
                                      "distill": 50.0}
    assert accuracy_by_model(metrics["evaluate"]) == {"teacher": 81.23, "quantized": 75.0}
    assert accuracy_by_model(None) == {}


def test_the_short_gpu_profile_is_valid_params(tmp_path):
    """Every override names a real key with a valid value, on the gpu profile, with device cuda."""
    from stages._params import load_params

    repo = scratch_repo(tmp_path, {"profile": "gpu", "device": "cuda", **GPU_SHORT})
    params = load_params(repo / "params.yaml")
    assert params.profile == "gpu" and params.device == "cuda" and params.model.teacher == "mpnet-base"
    assert params.fine_tune.max_steps == GPU_SHORT["fine_tune.max_steps"]
    assert params.data.seed_size + params.data.pool_size + params.data.dev_size <= 9830  # the offline pairs
    assert params.active_select.budget < params.data.pool_size
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    assert raw["data"]["dev_size"] == GPU_SHORT["data.dev_size"]
