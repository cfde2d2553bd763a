import json

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
