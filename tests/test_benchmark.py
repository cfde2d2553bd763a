"""The compression benchmark script: its verdict lines, where its targets come from, its header,
and a run on tiny models (a miss exits 1, all targets met exits 0)."""

import importlib.util

import torch
import yaml

from conftest import REPO, always_predict, make_pairs
from pipeline.targets import Targets
from pipeline.timing import summarise_rounds
from stages._determinism import cpu_info
from stages._io import write_pairs
from stages._models import load_pretrained_classifier, save_model

spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)

TARGETS = Targets(max_accuracy_drop_pts=1.0, min_size_ratio=10.0, min_speedup=8.0, min_speedup_b1=10.0,
                  max_labelled_fraction=0.5)


def test_verdict_lines_compare_each_ratio_with_its_target():
    lines, missed = benchmark.verdict_lines(
        {"size_ratio": 12.0, "speedup": 5.0, "speedup_b1": 9.0, "accuracy_delta_pts": -0.4}, TARGETS)
    assert lines == [
        "  PASS  accuracy +0.40 pts lost (target <= 1.0)",
        "  PASS  size     12.00x smaller (target >= 10.0x)",
        "  MISS  latency  5.00x faster at batch 32 (target >= 8.0x)",
        "  MISS  latency1 9.00x faster at batch 1 (target >= 10.0x)",
    ]
    assert missed == 2
    # Exactly at a target passes; just past it misses; a gain is a negative loss.
    lines, missed = benchmark.verdict_lines(
        {"size_ratio": 10.0, "speedup": 8.0, "speedup_b1": 10.0, "accuracy_delta_pts": -1.5}, TARGETS)
    assert lines[1:] == ["  PASS  size     10.00x smaller (target >= 10.0x)",
                         "  PASS  latency  8.00x faster at batch 32 (target >= 8.0x)",
                         "  PASS  latency1 10.00x faster at batch 1 (target >= 10.0x)"]
    assert lines[0] == "  MISS  accuracy +1.50 pts lost (target <= 1.0)" and missed == 1
    lines, missed = benchmark.verdict_lines(
        {"size_ratio": 9.99, "speedup": 9.0, "speedup_b1": None, "accuracy_delta_pts": 0.25}, TARGETS)
    assert lines[0] == "  PASS  accuracy -0.25 pts lost (target <= 1.0)"
    assert lines[1] == "  MISS  size     9.99x smaller (target >= 10.0x)"
    # Not measured is not judged (pipeline.targets.judge, as the controller does): no pass, no miss.
    assert lines[3] == "  ----  latency1 not measured (target >= 10.0x)" and missed == 1
    # No batch-1 target: the ratio is still printed, and never counts as a miss.
    no_b1 = TARGETS.model_copy(update={"min_speedup_b1": None})
    lines, missed = benchmark.verdict_lines(
        {"size_ratio": 12.0, "speedup": 9.0, "speedup_b1": 3.0, "accuracy_delta_pts": 0.0}, no_b1)
    assert lines[3] == "  ----  latency1 3.00x faster at batch 1 (no target)" and missed == 0


def test_spread_over_rounds():
    rounds = [{"teacher": {"latency_ms_b32": 10.0, "latency_ms_b1_p50": 2.0, "latency_ms_b1_p95": 3.0, "speedup": 1.0,
                           "speedup_b1_p50": 1.0},
               "x": {"latency_ms_b32": v, "latency_ms_b1_p50": 1.0, "latency_ms_b1_p95": 1.5, "speedup": 10.0 / v,
                     "speedup_b1_p50": 2.0}} for v in (1.0, 2.0, 5.0)]
    summary = summarise_rounds(rounds)
    assert summary["x"]["speedup"] == {"median": 5.0, "min": 2.0, "max": 10.0}
    assert summary["x"]["latency_ms_b32"]["median"] == 2.0


def _params(path, *, threads, **targets):
    path.write_text(yaml.safe_dump({"threads": threads, "controller": {"targets": {"max_labelled_fraction": 0.5, **targets}}}))
    return path


def test_benchmark_reads_targets_from_params_and_exits_on_a_miss_only(tiny_model_dir, tmp_path, capsys):
    # Gold labels cycle 0, 1, 2 over 40 pairs: the teacher always says 0 (14 right, 35.0 %), the
    # candidate, of the same size, always 1 (13 right, 32.5 %): 2.50 points lost, size ratio 1.
    for name, label in (("teacher", 0), ("candidate", 1)):
        model, tok = load_pretrained_classifier(tiny_model_dir)
        save_model(always_predict(model, label), tok, tmp_path / name, {"stage": "fine_tune"})
    write_pairs(make_pairs(40), tmp_path / "test.parquet")
    base = ["--teacher", str(tmp_path / "teacher"), "--candidate", f"candidate={tmp_path / 'candidate'}",
            "--data", str(tmp_path / "test.parquet"), "--repeats", "2", "--batches", "1", "--max-length", "32",
            "--rounds", "2", "--single-pairs", "3"]
    threads_before = torch.get_num_threads()
    try:
        strict = _params(tmp_path / "strict.yaml", threads=1, max_accuracy_drop_pts=2.0, min_size_ratio=10.0, min_speedup=8.0)
        assert benchmark.main([*base, "--params", str(strict)]) == 1
        out = capsys.readouterr().out.splitlines()
        header = next(line for line in out if line.startswith("40 pairs from "))
        assert header.startswith(f"40 pairs from {tmp_path / 'test.parquet'}; 2 rounds")
        assert header.endswith(f", 1 CPU threads on {cpu_info()['model']}")  # params.yaml's `threads`
        # model, backend (two words: torch fp32), size MB, size x, acc %, delta pts, ...
        rows = {line.split()[0]: line.split() for line in out if line.startswith(("  teacher ", "  candidate "))}
        assert rows["teacher"][5:7] == ["35.00", "+0.00"] and rows["candidate"][5:7] == ["32.50", "-2.50"]
        assert "  MISS  size     1.00x smaller (target >= 10.0x)" in out
        assert "  MISS  accuracy +2.50 pts lost (target <= 2.0)" in out
        assert any(line.startswith("  MISS  latency ") and line.endswith("at batch 32 (target >= 8.0x)") for line in out)
        assert sum(line.startswith("round ") for line in out) == 2

        # The same models against targets they meet: exit 0, every line PASS.
        lenient = _params(tmp_path / "lenient.yaml", threads=2, max_accuracy_drop_pts=2.5, min_size_ratio=1.0, min_speedup=0.0)
        assert benchmark.main([*base, "--params", str(lenient)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert next(line for line in out if line.startswith("40 pairs")).endswith(f", 2 CPU threads on {cpu_info()['model']}")
        assert "  PASS  accuracy +2.50 pts lost (target <= 2.5)" in out
        assert "  PASS  size     1.00x smaller (target >= 1.0x)" in out
        # The three ratios come last: size, batch 32, batch 1.
        assert [line.split()[:2] for line in out[-4:]] == [["PASS", "accuracy"], ["PASS", "size"], ["PASS", "latency"],
                                                           ["----", "latency1"]]
    finally:
        torch.set_num_threads(threads_before)
