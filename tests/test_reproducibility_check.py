import json

import numpy as np
import pandas as pd
import yaml

from pipeline.reproducibility import differences, main


def _run(root, model_md5="aaa", loss=0.5, seconds=1.0, latency=10.0, with_distill=True):
    root.mkdir()
    stages = {
        "fine_tune": {"outs": [{"path": "models/teacher", "md5": model_md5 + ".dir"},
                               {"path": "metrics/fine_tune.json", "md5": f"m{seconds}"}]},
        "evaluate": {"outs": [{"path": "reports/report.md", "md5": f"r{latency}"},
                              {"path": "predictions/evaluate", "md5": "p.dir"}]},
    }
    if with_distill:
        stages["distill"] = {"outs": [{"path": "models/distilled", "md5": "d.dir"}]}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    (root / "metrics").mkdir()
    (root / "metrics" / "fine_tune.json").write_text(json.dumps(
        {"train_loss": loss, "train_seconds": seconds, "seconds": seconds, "run": {"threads": 2}}))
    (root / "metrics" / "evaluate_timing.json").write_text(json.dumps({"models": {"t": {"latency_ms_b32": latency}}}))
    return root


def test_timings_may_differ_everything_else_may_not(tmp_path):
    a = _run(tmp_path / "a")
    assert differences(a, _run(tmp_path / "b", seconds=9.0, latency=99.0)) == []
    model = differences(a, _run(tmp_path / "c", model_md5="bbb"))
    assert model == ["output models/teacher: aaa.dir != bbb.dir"]
    loss = differences(a, _run(tmp_path / "d", loss=0.6))
    assert loss == ["metric metrics/fine_tune.json: train_loss: 0.5 != 0.6"]


def test_a_shorter_run_differs_unless_restricted_to_its_stages(tmp_path, capsys):
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b", with_distill=False)
    assert differences(a, b) == ["output models/distilled: d.dir != None"]
    assert differences(a, b, stages={"fine_tune"}) == []
    assert differences(a, _run(tmp_path / "c", loss=0.9), stages={"fine_tune"}) != []  # its metrics still count
    assert main([str(a), str(b)]) == 1
    assert main([str(a), str(b), "--stages", "fine_tune,evaluate"]) == 0
    assert "identical: 2 data/model output hashes" in capsys.readouterr().out


# --cross-machine: per-model paired tests on the predictions, data hashes, recorded CPUs.

AVX512 = {"model": "Intel Xeon Platinum 8480", "isa": {"avx2": True, "avx512f": True, "avx512_vnni": True}}


def _predictions(rows=200, wrong=0, row_ids=None):
    """A predictions frame (sec compare's contract) that is right on every row but the first `wrong`."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=rows)
    preds = labels.copy()
    preds[:wrong] = (labels[:wrong] + 1) % 3
    frame = pd.DataFrame({"row_id": np.arange(rows) if row_ids is None else row_ids, "label": labels, "pred": preds})
    for k, name in enumerate(("entailment", "neutral", "contradiction")):
        frame[f"prob_{name}"] = np.where(preds == k, 0.8, 0.1).astype("float32")
    return frame


def _cross_run(root, cpu=AVX512, wrong=None, row_ids=None, selected_md5="sel.dir"):
    """A run as --cross-machine reads it: dvc.lock, metrics with run.cpu, teacher and quantized
    predictions on dev and test. wrong: {model: examples B gets wrong}."""
    root.mkdir()
    stages = {
        "prepare": {"outs": [{"path": "data/prepared", "md5": "prep.dir"},
                             {"path": "metrics/prepare.json", "md5": "m1"}]},
        "active_select": {"outs": [{"path": "data/selected", "md5": selected_md5}]},
        "fine_tune": {"outs": [{"path": "models/teacher", "md5": "t.dir"}]},
    }
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    (root / "metrics").mkdir()
    run = {"seed": 42, "threads": 2} | ({"cpu": cpu} if cpu else {})
    (root / "metrics" / "prepare.json").write_text(json.dumps({"dev_rows": 200, "run": run}))
    (root / "metrics" / "evaluate.json").write_text(json.dumps({"models": {}, **run}))  # evaluate: top level
    for directory, model in (("evaluate_teacher", "teacher"), ("evaluate", "quantized")):
        (root / "predictions" / directory).mkdir(parents=True)
        for split in ("dev", "test"):
            frame = _predictions(wrong=(wrong or {}).get(model, 0), row_ids=row_ids)
            frame.to_parquet(root / "predictions" / directory / f"{model}-{split}.parquet", index=False)
    return root


def _cross(a, b, *extra):
    return main([str(a), str(b), "--cross-machine", "--resamples", "500", *extra])


def test_equal_predictions_on_two_cpus_are_equivalent(tmp_path, capsys):
    a, b = _cross_run(tmp_path / "a"), _cross_run(tmp_path / "b", cpu=None, selected_md5="other.dir")
    assert _cross(a, b, "--json", str(tmp_path / "reports" / "x.json")) == 0
    out = capsys.readouterr().out
    assert "cpu A: Intel Xeon Platinum 8480 [avx2 avx512f avx512_vnni]" in out
    assert "cpu B: not recorded" in out
    assert "data/prepared                       identical  prep.dir" in out
    assert "data/selected                       differs    A sel.dir  B other.dir" in out
    assert out.count("equivalent within noise") == 5  # 2 models x 2 splits, and the summary
    saved = json.loads((tmp_path / "reports" / "x.json").read_text())
    assert saved["equivalent"] and [m["model"] for m in saved["models"]] == ["teacher"] * 2 + ["quantized"] * 2
    assert saved["models"][0] | {"files": None} == saved["models"][0] | {
        "rows": 200, "diff": 0.0, "low": 0.0, "high": 0.0, "mcnemar_p": 1.0, "agreement": 1.0, "files": None}
    assert saved["cpu"]["a"]["evaluate"] == AVX512 and saved["cpu"]["b"]["prepare"] is None


def test_a_much_worse_model_differs(tmp_path, capsys):
    a, b = _cross_run(tmp_path / "a"), _cross_run(tmp_path / "b", wrong={"quantized": 40})
    assert _cross(a, b) == 1
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:2]): line for line in out.splitlines() if line.startswith("  ")}
    assert "-20.00" in rows[("quantized", "dev")] and rows[("quantized", "dev")].endswith("differs")
    assert rows[("quantized", "dev")].split()[-2] == "80.00%"  # agree: 160 of 200
    assert rows[("teacher", "test")].endswith("equivalent within noise")
    assert "2 of 4 model/split pairs differ: quantized dev, quantized test" in out


def test_rows_that_do_not_pair_are_refused_naming_the_file(tmp_path, capsys):
    a, b = _cross_run(tmp_path / "a"), _cross_run(tmp_path / "b", row_ids=np.arange(200) + 100)
    assert _cross(a, b) == 2
    err = capsys.readouterr().err
    assert "row_ids differ" in err and str(b / "predictions" / "evaluate_teacher" / "teacher-dev.parquet") in err


def test_a_missing_run_is_one_line_naming_the_path(tmp_path, capsys):
    a = _cross_run(tmp_path / "a")
    assert _cross(a, tmp_path / "nope") == 2
    assert capsys.readouterr().err == f"reproducibility: error: {tmp_path / 'nope'}: no such directory\n"
    (tmp_path / "bare").mkdir()
    assert main([str(a), str(tmp_path / "bare")]) == 2
    assert f"{tmp_path / 'bare' / 'dvc.lock'}: file not found" in capsys.readouterr().err
