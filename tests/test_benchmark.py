"""The compression benchmark script: its verdict lines, where its targets come from, its header,
and a run on tiny models (a miss exits 1, all targets met exits 0)."""

import importlib.util

import torch
import yaml

from conftest import REPO, make_pairs
from pipeline.targets import Targets
from stages._io import write_pairs
from stages._models import load_pretrained_classifier, save_model

spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)

TARGETS = Targets(max_accuracy_drop_pts=1.0, min_size_ratio=10.0, min_speedup=8.0, max_labelled_fraction=0.5)


def test_verdict_lines_compare_each_ratio_with_its_target():
    lines, missed = benchmark.verdict_lines({"size_ratio": 12.0, "speedup": 5.0, "accuracy_delta_pts": -0.4}, TARGETS)
    assert lines == [
        "  PASS  size     12.00x smaller (target >= 10.0x)",
        "  MISS  latency  5.00x faster (target >= 8.0x)",
        "  PASS  accuracy +0.40 pts lost (target <= 1.0)",
    ]
    assert missed == 1
    # Exactly at a target passes; just past it misses; a gain is a negative loss.
    lines, missed = benchmark.verdict_lines({"size_ratio": 10.0, "speedup": 8.0, "accuracy_delta_pts": -1.5}, TARGETS)
    assert lines[:2] == ["  PASS  size     10.00x smaller (target >= 10.0x)", "  PASS  latency  8.00x faster (target >= 8.0x)"]
    assert lines[2] == "  MISS  accuracy +1.50 pts lost (target <= 1.0)" and missed == 1
    lines, missed = benchmark.verdict_lines({"size_ratio": 9.99, "speedup": 9.0, "accuracy_delta_pts": 0.25}, TARGETS)
    assert lines[0] == "  MISS  size     9.99x smaller (target >= 10.0x)"
    assert lines[2] == "  PASS  accuracy -0.25 pts lost (target <= 1.0)" and missed == 1


def test_cpu_model_reads_the_model_name_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
                       "\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n")
    assert benchmark.cpu_model(cpuinfo) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert benchmark.cpu_model(tmp_path / "missing")  # another OS: still names something


def _params(path, *, threads, **targets):
    path.write_text(yaml.safe_dump({"threads": threads, "controller": {"targets": {"max_labelled_fraction": 0.5, **targets}}}))
    return path


def test_benchmark_reads_targets_from_params_and_exits_on_a_miss_only(tiny_model_dir, tmp_path, capsys):
    model, tok = load_pretrained_classifier(tiny_model_dir)
    # The candidate is the teacher itself: size ratio exactly 1, nothing lost, speed-up about 1.
    for name in ("teacher", "candidate"):
        save_model(model, tok, tmp_path / name, {"stage": "fine_tune"})
    write_pairs(make_pairs(40), tmp_path / "test.parquet")
    base = ["--teacher", str(tmp_path / "teacher"), "--candidate", str(tmp_path / "candidate"),
            "--data", str(tmp_path / "test.parquet"), "--repeats", "2", "--batches", "1", "--max-length", "32"]
    threads_before = torch.get_num_threads()
    try:
        strict = _params(tmp_path / "strict.yaml", threads=1, max_accuracy_drop_pts=0.0, min_size_ratio=10.0, min_speedup=8.0)
        assert benchmark.main([*base, "--params", str(strict)]) == 1
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(f"40 pairs from {tmp_path / 'test.parquet'}; ")
        assert out[0].endswith(f", 1 CPU threads on {benchmark.cpu_model()}")  # params.yaml's `threads`
        assert "  MISS  size     1.00x smaller (target >= 10.0x)" in out
        assert "  PASS  accuracy +0.00 pts lost (target <= 0.0)" in out
        assert any(line.startswith("  MISS  latency ") and line.endswith("(target >= 8.0x)") for line in out)

        # The same models against targets they meet: exit 0, every line PASS.
        lenient = _params(tmp_path / "lenient.yaml", threads=2, max_accuracy_drop_pts=0.0, min_size_ratio=1.0, min_speedup=0.0)
        assert benchmark.main([*base, "--params", str(lenient)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].endswith(f", 2 CPU threads on {benchmark.cpu_model()}")
        assert "  PASS  size     1.00x smaller (target >= 1.0x)" in out
        assert [line.split()[:2] for line in out[-3:]] == [["PASS", "size"], ["PASS", "latency"], ["PASS", "accuracy"]]
    finally:
        torch.set_num_threads(threads_before)
