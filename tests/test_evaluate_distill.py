import math

import numpy as np
import pytest
import torch

from conftest import make_pairs
from stages._io import validate_pairs
from stages._models import load_model, load_pretrained_classifier, save_model
from stages._params import DistillParams, EvaluateParams, QuantizeParams
from stages.distill import distill, transfer_set
from stages.evaluate import TIMING_KEYS, evaluate, quality, report_markdown, time_batches
from stages.quantize import quantize


def test_quality_metrics_on_known_logits():
    logits = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]], dtype=np.float32)
    labels = np.array([0, 1, 2, 1])
    q = quality(logits, labels)
    assert q["accuracy"] == pytest.approx(0.75)
    assert q["perplexity"] == pytest.approx(math.exp(q["cross_entropy"]))
    assert 0 < q["macro_f1"] < 1


def test_transfer_set_adds_unlabelled_rows_for_kd_only(pairs):
    pool = pairs.assign(label=-1).iloc[:10]
    data = transfer_set(pairs, pool, size=4, seed=0)
    assert len(data) == len(pairs) + 4
    assert (data.iloc[len(pairs):]["label"] == -1).all()
    assert len(transfer_set(pairs, pool, size=0, seed=0)) == len(pairs) + 10


def _kl_to_teacher(student, teacher, tok, pairs) -> float:
    enc = tok(pairs["premise"].tolist(), pairs["hypothesis"].tolist(), padding=True, return_tensors="pt")
    with torch.no_grad():
        s, t = student(**enc).logits, teacher(**enc).logits
    return float(torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="batchmean"))


def test_distill_shrinks_the_student_and_moves_it_towards_the_teacher(tiny_model_dir, pairs, tmp_path):
    teacher, tok = load_pretrained_classifier(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():  # a teacher that differs from the student's starting point
        for p in teacher.classifier.parameters():
            p.add_(torch.randn_like(p))
    student, _ = load_pretrained_classifier(tiny_model_dir)
    params = DistillParams(
        epochs=1, batch_size=8, max_steps=20, learning_rate=3e-3, transfer_size=0, alpha=1.0, temperature=1.0,
        layers=1, hidden_weight=1.0, trim_vocab=True,
    )
    data = transfer_set(pairs, pairs.assign(label=-1), 0, 0)
    dropped, _ = load_pretrained_classifier(tiny_model_dir)
    from stages._student import keep_layers

    keep_layers(dropped, [1])  # what the student starts as: the top layer of two
    before = _kl_to_teacher(dropped, teacher, tok, pairs)
    student, student_tok, metrics = distill(student, tok, teacher, data, params, max_length=32, seed=0, checkpoint_dir=tmp_path / "ck")
    assert metrics["train_steps"] == 20 and metrics["transfer_rows"] == len(pairs)
    assert metrics["layers_kept"] == [1] and student.config.num_hidden_layers == 1
    assert metrics["vocab_after"] < metrics["vocab_before"] and metrics["params_after"] < metrics["params_before"]
    # The trimmed tokenizer splits the training text into the same tokens as the teacher's.
    enc_t = tok(pairs["premise"].tolist(), pairs["hypothesis"].tolist())["input_ids"]
    enc_s = student_tok(pairs["premise"].tolist(), pairs["hypothesis"].tolist())["input_ids"]
    assert [tok.convert_ids_to_tokens(a) for a in enc_t] == [student_tok.convert_ids_to_tokens(b) for b in enc_s]
    student.eval()
    enc = student_tok(pairs["premise"].tolist(), pairs["hypothesis"].tolist(), padding=True, return_tensors="pt")
    t_enc = tok(pairs["premise"].tolist(), pairs["hypothesis"].tolist(), padding=True, return_tensors="pt")
    with torch.no_grad():
        after = float(torch.nn.functional.kl_div(
            student(**enc).logits.log_softmax(-1), teacher(**t_enc).logits.log_softmax(-1), log_target=True, reduction="batchmean"
        ))
    assert after < before


def test_evaluate_reports_every_model_against_the_teacher(tiny_model_dir, tmp_path):
    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    save_model(model, tok, tmp_path / "teacher", {"stage": "fine_tune"})
    quantized, _ = quantize(model, QuantizeParams())
    save_model(quantized, tok, tmp_path / "quantized", {"stage": "quantize", "quantization": "dynamic_int8"})
    models = {name: (*load_model(tmp_path / name), tmp_path / name) for name in ("teacher", "quantized")}
    test = validate_pairs(make_pairs(40), "test").assign(row_id=lambda f: f.index * 3 + 7)
    dev = validate_pairs(make_pairs(20, seed=5), "dev").assign(row_id=range(20))
    results, timings, predictions = evaluate(
        models, {"dev": dev, "test": test}, EvaluateParams(latency_repeats=3, latency_batches=2), max_length=32, seed=0
    )
    assert list(results) == ["teacher", "quantized"]
    for r in results.values():
        for split in ("dev", "test"):
            for key in ("accuracy", "macro_f1", "cross_entropy", "perplexity"):
                assert r[split][key] >= 0, key
        assert not set(r) & set(TIMING_KEYS)  # timings never enter the reproducible metrics
    assert results["teacher"]["size_ratio"] == 1 and timings["teacher"]["speedup"] == 1
    assert results["quantized"]["size_ratio"] > 1  # int8 weights are smaller on disk
    assert timings["quantized"]["latency_ms_b32"] > 0
    # Per-example predictions: one frame per model and split, keyed by the split's row ids, and
    # consistent with the accuracy reported for that split.
    assert sorted(predictions) == ["quantized-dev", "quantized-test", "teacher-dev", "teacher-test"]
    frame = predictions["teacher-test"]
    assert frame["row_id"].tolist() == sorted(test["row_id"]) and frame["label"].tolist() == test["label"].tolist()
    assert (frame["pred"] == frame["label"]).mean() == pytest.approx(results["teacher"]["test"]["accuracy"])
    probs = frame[["prob_entailment", "prob_neutral", "prob_contradiction"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5) and (probs.argmax(axis=1) == frame["pred"]).all()
    delta = (results["quantized"]["dev"]["accuracy"] - results["teacher"]["dev"]["accuracy"]) * 100
    assert results["quantized"]["dev"]["accuracy_delta_pts"] == pytest.approx(delta, abs=0.01)
    table = report_markdown(results, timings, rows={"dev": 20, "test": 40}, threads=1, deployed="quantized")
    assert "| teacher |" in table and "| quantized |" in table and "Dev: 20 pairs" in table
    assert "Deployed model: quantized." in table
    # Batch-1 latency: p50 <= p95, a speed-up of exactly 1 for the teacher, every row labelled with its device.
    for t in timings.values():
        assert 0 < t["latency_ms_b1_p50"] <= t["latency_ms_b1_p95"] and t["device"] == "cpu"
    assert timings["teacher"]["speedup_b1_p50"] == 1

    # The teacher scored once: evaluate reuses evaluate_teacher's quality and predictions instead of
    # scoring it again. Planted values (which no model produced) must come through untouched.
    planted = {split: {**results["teacher"][split], "accuracy": 0.123} for split in ("dev", "test")}
    reference = {"quality": planted, "predictions": {s: predictions[f"teacher-{s}"] for s in ("dev", "test")}}
    reused, _, reused_preds = evaluate(models, {"dev": dev, "test": test}, EvaluateParams(latency_repeats=1),
                                       max_length=32, seed=0, timing=False, reference=reference)
    assert reused["teacher"]["test"]["accuracy"] == 0.123 and reused_preds["teacher-dev"] is predictions["teacher-dev"]
    assert reused["quantized"]["test"]["accuracy_delta_pts"] == pytest.approx(
        (results["quantized"]["test"]["accuracy"] - 0.123) * 100, abs=0.01)
    # Scores of other rows (a stale evaluate_teacher) are refused, naming the split and the fix.
    stale = {"quality": planted, "predictions": {"dev": predictions["teacher-dev"].iloc[:-1], "test": predictions["teacher-test"]}}
    with pytest.raises(ValueError, match="'dev'.*dvc repro evaluate_teacher"):
        evaluate(models, {"dev": dev, "test": test}, EvaluateParams(latency_repeats=1), max_length=32, seed=0,
                 timing=False, reference=stale)


def test_time_batches_runs_every_batch_per_repeat_and_averages():
    calls = {"a": 0, "b": 0}

    def fake(name):
        def forward(**batch):
            calls[name] += 1
        return forward

    batches = {"a": [{}, {}, {}], "b": [{}, {}, {}]}
    times = time_batches({"a": fake("a"), "b": fake("b")}, batches, repeats=2, warmup=1)
    # (warmup + repeats) x 3 batches each; one mean-per-batch value per timed repeat.
    assert calls == {"a": 9, "b": 9}
    assert [len(v) for v in times.values()] == [2, 2] and all(t >= 0 for v in times.values() for t in v)
