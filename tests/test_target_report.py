"""pipeline.target_report: the deployed model's verdicts from a run's metrics, judged by targets.judge."""

from __future__ import annotations

import json

import pytest

from pipeline.target_report import main, measurements, verdict_rows
from pipeline.targets import Targets

TARGETS = Targets(max_accuracy_drop_pts=1.0, min_size_ratio=12.0, min_speedup=10.0, min_speedup_b1=10.0,
                  max_labelled_fraction=0.5)


def _metrics(tmp_path, *, dev_delta=-0.8, size_ratio=7.3, speedup=6.6, b1=4.3, fraction=0.467, deployed="quantized"):
    d = tmp_path / "metrics"
    d.mkdir(exist_ok=True)
    models = {"quantized": {"dev": {"accuracy_delta_pts": dev_delta}, "test": {"accuracy_delta_pts": -1.7},
                            "size_ratio": size_ratio},
              "onnx_int8": {"dev": {"accuracy_delta_pts": -3.0}, "test": {"accuracy_delta_pts": -3.0},
                            "size_ratio": 13.0}}
    (d / "evaluate.json").write_text(json.dumps({"deployed": deployed, "models": models}))
    timing = {"quantized": {"speedup": speedup, "speedup_b1_p50": b1}, "onnx_int8": {"speedup": 11.0, "speedup_b1_p50": 12.0}}
    (d / "evaluate_timing.json").write_text(json.dumps({"models": timing}))
    (d / "active_select.json").write_text(json.dumps({"label_fraction": fraction}))
    return d


def test_verdicts_read_dev_not_test_and_the_deployed_model(tmp_path):
    measured = measurements(_metrics(tmp_path))
    assert measured["model"] == "quantized" and measured["accuracy_drop_pts"] == pytest.approx(0.8)
    verdicts = [met for *_, met in verdict_rows(measured, TARGETS)]
    # dev loses 0.8 (met) although test loses 1.7; size and both speeds missed; labels met.
    assert verdicts == [True, False, False, False, True]
    other = measurements(_metrics(tmp_path, deployed="onnx_int8"))
    assert [met for *_, met in verdict_rows(other, TARGETS)] == [False, True, True, True, True]


def test_a_value_exactly_at_its_target_meets_it(tmp_path):
    measured = measurements(_metrics(tmp_path, dev_delta=-1.0, size_ratio=12.0, speedup=10.0, b1=10.0, fraction=0.5))
    assert all(met for *_, met in verdict_rows(measured, TARGETS))


def test_strict_exit_code_and_written_table(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("controller:\n  targets: {max_accuracy_drop_pts: 1.0, min_size_ratio: 12.0, min_speedup: 10.0,"
                      " min_speedup_b1: 10.0, max_labelled_fraction: 0.5}\n")
    metrics = _metrics(tmp_path)
    out = tmp_path / "reports" / "targets.md"
    assert main(["--params", str(params), "--metrics-dir", str(metrics), "--out", str(out)]) == 0
    assert main(["--params", str(params), "--metrics-dir", str(metrics), "--strict"]) == 1
    assert "| size (x smaller) | 7.30x | >= 12.0x | **missed** |" in out.read_text()
    met = _metrics(tmp_path, size_ratio=13, speedup=11, b1=11)
    assert main(["--params", str(params), "--metrics-dir", str(met), "--strict"]) == 0


def test_a_missing_metrics_file_names_it_and_the_stage(tmp_path, capsys):
    metrics = _metrics(tmp_path)
    (metrics / "evaluate_timing.json").unlink()
    params = tmp_path / "params.yaml"
    params.write_text("controller:\n  targets: {max_accuracy_drop_pts: 1.0, min_size_ratio: 12.0, min_speedup: 10.0,"
                      " max_labelled_fraction: 0.5}\n")
    assert main(["--params", str(params), "--metrics-dir", str(metrics)]) == 2
    assert "evaluate_timing.json: not found; run `dvc repro evaluate`" in capsys.readouterr().err
