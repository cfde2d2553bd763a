import json

import numpy as np
import pandas as pd
import pytest

from pipeline.seed_summary import load_run, main, summarise


def _predictions(n: int, correct: int, seed: int) -> pd.DataFrame:
    """n examples, the first `correct` predicted right; probabilities put 0.8 on the prediction."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    pred = label.copy()
    pred[correct:] = (label[correct:] + 1) % 3
    probs = np.full((n, 3), 0.1, dtype="float32")
    probs[np.arange(n), pred] = 0.8
    return pd.DataFrame({"row_id": np.arange(n), "label": label, "pred": pred, "prob_entailment": probs[:, 0],
                         "prob_neutral": probs[:, 1], "prob_contradiction": probs[:, 2]})


def _run(tmp_path, seed: int, teacher_acc: float, quant_acc: float):
    run = tmp_path / f"s{seed}"
    (run / "metrics").mkdir(parents=True)
    (run / "predictions" / "evaluate").mkdir(parents=True)
    models = {}
    for name, acc in (("teacher", teacher_acc), ("quantized", quant_acc)):
        split = {"accuracy": acc, "accuracy_delta_pts": round((acc - teacher_acc) * 100, 2)}
        models[name] = {"dev": split, "test": split, "size_ratio": 1.0 if name == "teacher" else 10.0}
        for s in ("dev", "test"):
            _predictions(200, int(acc * 200), seed).to_parquet(run / "predictions" / "evaluate" / f"{name}-{s}.parquet")
    (run / "metrics" / "evaluate.json").write_text(json.dumps({"models": models, "seed": seed}))
    timing = {"models": {"teacher": {"speedup": 1.0}, "quantized": {"speedup": 8.0 + seed - 42}}}
    (run / "metrics" / "evaluate_timing.json").write_text(json.dumps(timing))
    return run


def test_mean_and_interval_over_seeds_and_paired_drop(tmp_path):
    runs = [_run(tmp_path, 42, 0.60, 0.50), _run(tmp_path, 43, 0.62, 0.52), _run(tmp_path, 44, 0.64, 0.54)]
    summary = summarise([load_run(r) for r in runs])
    test = summary["models"]["teacher"]["test_accuracy"]
    # mean 62, sd 2, t(0.975, 2) = 4.3027: half-width 4.3027 * 2 / sqrt(3) = 4.968
    assert test["mean"] == pytest.approx(62.0)
    assert (test["low"], test["high"]) == pytest.approx((62 - 4.968, 62 + 4.968), abs=1e-3)
    delta = summary["models"]["quantized"]["test_delta_pts"]
    assert delta["mean"] == pytest.approx(-10.0) and delta["low"] == pytest.approx(-10.0)  # no spread
    assert summary["models"]["quantized"]["speedup"]["mean"] == pytest.approx(9.0)
    paired = summary["paired_vs_teacher"]["quantized"]["test"]
    assert paired["rows"] == 600 and paired["seeds"] == 3
    assert paired["metrics"]["accuracy"]["diff"] == pytest.approx(-0.10)
    assert paired["metrics"]["accuracy"]["verdict"] == "hurt"


def test_runs_must_differ_in_seed(tmp_path):
    a = _run(tmp_path, 42, 0.6, 0.5)
    with pytest.raises(SystemExit):
        main([str(a), str(a), "--out", str(tmp_path / "x")])
    main([str(a), str(_run(tmp_path, 43, 0.6, 0.5)), "--out", str(tmp_path / "seeds")])
    assert "| quantized |" in (tmp_path / "seeds.md").read_text()
