"""scripts/onnx_static_int8.py: static int8 ONNX (int8 activations with calibrated scales) on a tiny BERT.

The tiny BERT is trained first (test_models._trained_tiny_model): on an untrained one every logit
is ~0 and any quantization "agrees". The checks read the graph ONNX Runtime actually runs (after
its session-time QDQ fusions), so "activations are int8 with static scales" is measured there, and
the same check must say "dynamic" for the pipeline's dynamic int8 export.
"""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, always_predict, make_pairs
from stages import _onnx
from stages._io import write_pairs
from stages._models import OnnxModel, load_model, load_pretrained_classifier, save_model
from stages.onnx_runtime import OnnxClassifier

spec = importlib.util.spec_from_file_location("onnx_static_int8", REPO / "scripts" / "onnx_static_int8.py")
lever = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lever)

MAX_LENGTH = 64
LAYERS = 2  # conftest's tiny BERT


@pytest.fixture(scope="module")
def dirs(tiny_model_dir, tmp_path_factory):
    """The trained tiny BERT, its fused fp32 export, its unfused fp32 export, its dynamic int8 export,
    and a static int8 built from the fused export (QDQ, the script's defaults)."""
    from test_models import _trained_tiny_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's cores are shared; one thread is plenty here
    root = tmp_path_factory.mktemp("static")
    model, tok = _trained_tiny_model(tiny_model_dir, make_pairs(300, seed=0))
    save_model(model.eval(), tok, root / "trained", {"stage": "fine_tune"})
    out = {"trained": root / "trained"}
    for name, kwargs in {"fp32": {}, "unfused": {"optimize": False},
                         "dynamic": {"precision": "int8", "reduce_range": "off"}}.items():
        _onnx.export_model_dir(root / "trained", root / name, max_length=MAX_LENGTH, **kwargs)
        out[name] = root / name
    calibration = make_pairs(64, seed=3)
    lever.build_static(out["fp32"], root / "static", calibration["premise"], calibration["hypothesis"], graph="fused", threads=1)
    out["static"] = root / "static"
    yield out
    torch.set_num_threads(threads)


def _coverage(directory, tmp_path):
    return lever.int8_coverage(lever.runtime_graph(directory / "model.onnx", tmp_path))


def _agreement(directory, fp32_dir, pairs):
    int8 = OnnxClassifier(directory, threads=1).predict(pairs["premise"], pairs["hypothesis"])
    fp32 = OnnxClassifier(fp32_dir, threads=1).predict(pairs["premise"], pairs["hypothesis"])
    return (int8.argmax(1) == fp32.argmax(1)).mean(), np.abs(int8 - fp32).max()


def test_static_int8_is_a_loadable_export_with_static_int8_activations(dirs, tmp_path):
    static = dirs["static"]
    assert sorted(p.name for p in static.iterdir()) == sorted(p.name for p in dirs["fp32"].iterdir())
    model, _ = load_model(static)  # the loader models/onnx/int8 goes through
    assert isinstance(model, OnnxModel)
    info = json.loads((static / "sec.json").read_text())
    assert info["precision"] == "int8" and info["quantization"]["mode"] == "static"
    assert info["quantization"]["dynamic_ops"] == ["Attention", "EmbedLayerNormalization"]
    saved = {n.op_type for n in __import__("onnx").load(str(static / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= saved

    coverage = _coverage(static, tmp_path)
    # Per layer: attention output, FFN in, FFN out MatMuls with calibrated input scales, + the
    # classifier (the mean-pooling head has no pooler dense); the fused attention has no static
    # kernel: QAttention (dynamic).
    assert coverage["static"] == 3 * LAYERS + 1, coverage
    assert coverage["dynamic"] == LAYERS and coverage["float"] == {}, coverage
    # The same check on the pipeline's dynamic int8 finds no static activation scale at all.
    dynamic = _coverage(dirs["dynamic"], tmp_path)
    assert dynamic["static"] == 0 and dynamic["dynamic"] >= 4 * LAYERS, dynamic

    agreement, max_diff = _agreement(static, dirs["fp32"], make_pairs(60, seed=7))
    assert agreement >= 0.9 and 0 < max_diff < 1.0, (agreement, max_diff)
    assert _onnx.onnx_size_mb(static) < 0.8 * _onnx.onnx_size_mb(dirs["fp32"])


@pytest.mark.parametrize("graph,fmt,minimum,floats", [("fused", "qoperator", 3 * LAYERS, {"Gemm": 1}),
                                                      ("unfused", "qdq", 8 * LAYERS + 1, {})])
def test_other_formats_and_the_unfused_graph(dirs, tmp_path, graph, fmt, minimum, floats):
    """QOperator on the fused graph (uint8 outputs, so the classifier stays float: logits are not
    rounded to 8 bits); QDQ on the unfused one, where all 8 MatMuls of a layer (Q, K, V, Q.K^T,
    P.V, output, FFN in, FFN out) get static int8 activations and nothing is left dynamic."""
    pairs = make_pairs(64, seed=3)
    src = dirs["fp32"] if graph == "fused" else dirs["unfused"]
    settings = lever.build_static(src, tmp_path / "static", pairs["premise"], pairs["hypothesis"], graph=graph, fmt=fmt,
                                  threads=1)
    coverage = _coverage(tmp_path / "static", tmp_path)
    assert coverage["static"] >= minimum and coverage["float"] == floats, coverage
    assert coverage["dynamic"] == (LAYERS if graph == "fused" else 0), coverage
    assert settings["outputs_quantized"] is (fmt == "qoperator")
    agreement, _ = _agreement(tmp_path / "static", dirs["fp32"], make_pairs(60, seed=7))
    assert agreement >= 0.9


def test_reader_feeds_every_pair_once_in_length_sorted_batches(dirs):
    premises = [f"p{'x' * (i % 7)}" for i in range(70)]
    hypotheses = ["h"] * 70
    calls = []
    reader = lever.PairReader(lambda p, h: calls.append(list(p)) or {"n": len(p)}, premises, hypotheses, 32)
    sizes = []
    while (feeds := reader.get_next()) is not None:
        sizes.append(feeds["n"])
    assert sizes == [32, 32, 6] and sorted(sum(calls, [])) == sorted(premises)
    lengths = [len(p) for p in sum(calls, [])]
    assert lengths == sorted(lengths)  # shortest first: little padding, as at inference
    reader.rewind()
    assert reader.get_next() == {"n": 32}
    # With the real encoder: the graph's input names, int64.
    clf = OnnxClassifier(dirs["fp32"], threads=1)
    pairs = make_pairs(5)
    feeds = lever.PairReader(clf.encode, pairs["premise"], pairs["hypothesis"], 32).get_next()
    assert list(feeds) == clf.input_names and all(v.dtype == np.int64 and v.shape[0] == 5 for v in feeds.values())


def test_calibration_sample_never_takes_a_dev_pair():
    train = make_pairs(200, seed=1)
    dev = train.iloc[::4]
    sample, dropped = lever.calibration_sample(train, dev, 100, seed=0)
    dev_pairs = set(zip(dev["premise"], dev["hypothesis"]))
    assert dropped >= len(dev) and len(sample) == 100
    assert not any((p, h) in dev_pairs for p, h in zip(sample["premise"], sample["hypothesis"]))
    again, _ = lever.calibration_sample(train, dev, 100, seed=0)
    assert again.equals(sample)
    with pytest.raises(ValueError, match="not in dev"):
        lever.calibration_sample(dev, dev, 10, seed=0)


def test_guards_keep_out_of_dvc_outputs_and_the_test_split(tmp_path):
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text(yaml.safe_dump({"stages": {"export": {"outs": ["models/onnx/int8"],
                                                         "metrics": [{"metrics/export.json": {"cache": False}}]}}}))
    with pytest.raises(SystemExit, match="inside the DVC output"):
        lever.check_work_dir(tmp_path / "models" / "onnx" / "int8" / "static", dvc)
    lever.check_work_dir(tmp_path / "models" / "onnx" / "static", dvc)  # beside an output is fine
    with pytest.raises(SystemExit, match="test split"):
        lever.check_splits(tmp_path / "test.parquet", tmp_path / "train.parquet")
    with pytest.raises(SystemExit, match="is the dev split"):
        lever.check_splits(tmp_path / "dev.parquet", tmp_path / "dev.parquet")


def _spread(x):
    return {"median": x, "min": x * 0.9, "max": x * 1.1}


def test_table_and_verdict():
    row = {"name": "static_fused", "backend": "onnxruntime", "size_mb": 8.66, "accuracy": 0.6123, "delta_pts": -1.2,
           "agreement": 0.973, "latency_ms_b32": _spread(40.0), "speedup": _spread(7.5),
           "latency_ms_b1_p50": _spread(3.0), "speedup_b1_p50": _spread(6.0)}
    lines = lever.format_table([{**row, "name": "teacher", "agreement": None, "delta_pts": 0.0}, row])
    assert len(lines) == 3 and "agree %" in lines[0]
    assert lines[1].split()[:6] == ["teacher", "onnxruntime", "8.66", "61.23", "+0.00", "-"]
    assert "97.3" in lines[2] and " 7.50x [6.75, 8.25]" in lines[2] and "-1.20" in lines[2]

    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.6
    better = base | (rng.random(1000) < 0.2)  # right wherever the baseline was, and on more
    line = lever.verdict_line("static_fused", "dynamic_int8", [1.2, 1.1, 1.3], [0.9, 1.05, 1.0], base, better)
    assert line.startswith("verdict static_fused vs dynamic_int8: speed b32 1.20x [1.10, 1.30] (helped over 3 rounds)")
    assert "b1 1.00x [0.90, 1.05] (not shown)" in line
    assert line.endswith(": helped") and "McNemar p=" in line
    same = lever.verdict_line("s", "d", [0.8], [0.9], base, base)
    assert "(hurt over 1 rounds)" in same and "+0.00 pts" in same and same.endswith(": not shown")
    assert lever.verdict_line("s", "d", [1.0], [1.0], better, base).endswith(": hurt")


def test_main_on_tiny_models_reads_dev_only_and_ends_with_a_verdict(dirs, tiny_model_dir, tmp_path, capsys):
    dev = make_pairs(40, seed=9).assign(row_id=np.arange(40, dtype="int64"), source="gold", weight=1.0)
    write_pairs(dev, tmp_path / "dev.parquet")
    # The dynamic int8 the static ones are judged against always says entailment (14 of the 40 dev
    # pairs): the trained static models must come out `helped`, whichever way a verdict could go wrong.
    model, tok = load_pretrained_classifier(tiny_model_dir)
    save_model(always_predict(model, 0), tok, tmp_path / "constant", {"stage": "fine_tune"})
    _onnx.export_model_dir(tmp_path / "constant", tmp_path / "dynamic", precision="int8", reduce_range="off",
                           max_length=MAX_LENGTH)
    write_pairs(make_pairs(80, seed=2).assign(source="gold", weight=1.0), tmp_path / "train.parquet")
    (tmp_path / "params.yaml").write_text("threads: 1\nseed: 3\n")
    threads = torch.get_num_threads()
    try:
        code = lever.main([
            "--fp32", str(dirs["fp32"]), "--dynamic", str(tmp_path / "dynamic"), "--teacher", str(dirs["trained"]),
            "--teacher-metrics", str(tmp_path / "none.json"), "--calibration", str(tmp_path / "train.parquet"),
            "--dev", str(tmp_path / "dev.parquet"), "--work-dir", str(tmp_path / "work"), "--params", str(tmp_path / "params.yaml"),
            "--graph", "both", "--calibration-pairs", "32", "--rounds", "1", "--repeats", "1", "--batches", "1",
            "--single-pairs", "2"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "work" / "static_fused" / "model.onnx").is_file() and (tmp_path / "work" / "static_unfused").is_dir()
    lines = out.strip().splitlines()
    for name in ("teacher", "onnx_fp32", "dynamic_int8", "static_fused", "static_unfused"):
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "40 dev pairs" in out and "1 CPU threads" in out and "teacher quality scored here" in out
    assert lines[-2].startswith("verdict static_fused vs dynamic_int8") and lines[-1].startswith("verdict static_unfused")
    # Each verdict is about the dev accuracies the table printed, static minus dynamic, and its
    # interval lies above 0.
    accuracy = {line.split()[0]: float(line.split()[3]) for line in lines if line.split()[1:2] == ["onnxruntime"]}
    for line, name in zip(lines[-2:], ("static_fused", "static_unfused"), strict=True):
        diff, low, high = map(float, re.search(
            r"dev accuracy ([-+][\d.]+) pts \(95% CI ([-+][\d.]+) to ([-+][\d.]+),", line).groups())
        assert accuracy["dynamic_int8"] == 35.0 and diff == pytest.approx(accuracy[name] - 35.0, abs=0.011), line
        assert low > 0 and line.endswith(": helped"), line
