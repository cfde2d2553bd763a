"""The compression benchmark script: its verdicts, and a run on tiny models (a miss exits 1)."""

import importlib.util

from conftest import REPO, make_pairs
from stages._io import write_pairs
from stages._models import load_pretrained_classifier, save_model
from stages._params import QuantizeParams
from stages.quantize import quantize

spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def test_verdicts_compare_each_ratio_with_its_target():
    candidate = {"size_ratio": 12.0, "speedup": 5.0, "accuracy_delta_pts": -0.4}
    met = {measure: ok for measure, _, ok in benchmark.verdicts(candidate, 10, 8, 1.0)}
    assert met == {"size": True, "latency": False, "accuracy": True}
    assert not benchmark.verdicts({**candidate, "accuracy_delta_pts": -1.5}, 10, 8, 1.0)[2][2]


def test_benchmark_on_tiny_models_reports_and_exits_nonzero_on_a_miss(tiny_model_dir, tmp_path, capsys):
    model, tok = load_pretrained_classifier(tiny_model_dir)
    save_model(model, tok, tmp_path / "teacher", {"stage": "fine_tune"})
    quantized, _ = quantize(model, QuantizeParams())
    save_model(quantized, tok, tmp_path / "quantized", {"stage": "quantize", "quantization": "dynamic_int8"})
    write_pairs(make_pairs(40), tmp_path / "validation.parquet")
    code = benchmark.main(["--teacher", str(tmp_path / "teacher"), "--candidate", str(tmp_path / "quantized"),
                           "--validation", str(tmp_path / "validation.parquet"), "--repeats", "2", "--max-length", "32"])
    out = capsys.readouterr().out
    assert code == 1 and "MISS  size" in out  # int8 alone is nowhere near 10x on a tiny model
    assert "PASS  accuracy" in out or "MISS  accuracy" in out
