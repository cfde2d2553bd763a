"""Compression benchmark: the deployed model against the teacher, measured in one process.

    python scripts/benchmark.py                      # models/teacher vs models/quantized, test split
    python scripts/benchmark.py --candidate models/distilled --limit 2000

Prints size, latency and accuracy of both models and their ratios, and exits 1 when a ratio misses
its target. The targets are params.yaml's `controller.targets` (min_size_ratio, min_speedup,
max_accuracy_drop_pts), read through `pipeline.targets.load_targets`, the one place the controller
and the report read them too. The data defaults to the TEST split: this script reports, it chooses
nothing. A benchmark, not a unit test: the numbers depend on the machine (its CPU model and thread
count are printed), so both models are timed interleaved, repeat by repeat, in the same process.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.targets import Targets, load_targets  # noqa: E402
from stages._io import read_pairs  # noqa: E402
from stages._models import load_model  # noqa: E402
from stages._params import EvaluateParams  # noqa: E402
from stages.evaluate import evaluate  # noqa: E402


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's "model name" from /proc/cpuinfo (Linux); platform's guess elsewhere."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def verdicts(candidate: dict, targets: Targets) -> list[tuple[str, str, bool]]:
    """(measure, measured vs target, met) for the three compression targets.

    candidate: size_ratio, speedup and accuracy_delta_pts (candidate minus teacher, points).
    """
    drop = 0.0 - candidate["accuracy_delta_pts"]  # 0.0 - x: no "-0.00" when nothing was lost
    return [
        ("size", f"{candidate['size_ratio']:.2f}x smaller (target >= {targets.min_size_ratio}x)",
         candidate["size_ratio"] >= targets.min_size_ratio),
        ("latency", f"{candidate['speedup']:.2f}x faster (target >= {targets.min_speedup}x)",
         candidate["speedup"] >= targets.min_speedup),
        ("accuracy", f"{drop:+.2f} pts lost (target <= {targets.max_accuracy_drop_pts})",
         drop <= targets.max_accuracy_drop_pts),
    ]


def verdict_lines(candidate: dict, targets: Targets) -> tuple[list[str], int]:
    """The printed PASS/MISS lines and how many targets were missed."""
    rows = verdicts(candidate, targets)
    return [f"  {'PASS' if met else 'MISS'}  {measure:8s} {text}" for measure, text, met in rows], sum(not met for *_, met in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--candidate", default="models/quantized")
    parser.add_argument("--data", default="data/prepared/test.parquet", help="labelled pairs to measure on (default: the test split)")
    parser.add_argument("--params", default="params.yaml", help="targets from controller.targets; threads from `threads`")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: params.yaml's `threads`)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate on the first N pairs (0 = all)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batches", type=int, default=8, help="fixed random batches of 32 timed per repeat")
    parser.add_argument("--seed", type=int, default=42, help="draws the timed batches (the evaluate stage uses params.yaml's seed)")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)

    targets = load_targets(args.params)
    threads = args.threads or (yaml.safe_load(Path(args.params).read_text()) or {}).get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    data = read_pairs(args.data)
    if args.limit:
        data = data.iloc[: args.limit]
    models = {}
    for name, directory in (("teacher", args.teacher), ("candidate", args.candidate)):
        model, tokenizer = load_model(directory)
        models[name] = (model, tokenizer, Path(directory))
    split = Path(args.data).stem
    results, timings, _ = evaluate(
        models, {split: data}, EvaluateParams(latency_repeats=args.repeats, latency_batches=args.batches),
        max_length=args.max_length, seed=args.seed,
    )

    print(f"{len(data)} pairs from {args.data}; latency: {args.batches} batches of 32, median of {args.repeats} timed repeats, "
          f"{torch.get_num_threads()} CPU threads on {cpu_model()}")
    for name, r in results.items():
        print(f"  {name:9s} {args.teacher if name == 'teacher' else args.candidate:22s} accuracy {r[split]['accuracy'] * 100:6.2f}  "
              f"size {r['size_mb']:7.1f} MB  latency {timings[name]['latency_ms_b32']:7.1f} ms")
    candidate = {
        "size_ratio": results["candidate"]["size_ratio"],
        "speedup": timings["candidate"]["speedup"],
        "accuracy_delta_pts": results["candidate"][split]["accuracy_delta_pts"],
    }
    lines, missed = verdict_lines(candidate, targets)
    print("\n".join(lines))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
