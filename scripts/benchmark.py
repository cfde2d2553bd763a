"""Compression benchmark: the deployed model against the teacher, measured in one process.

    python scripts/benchmark.py                      # models/teacher vs models/quantized
    python scripts/benchmark.py --candidate models/distilled --limit 2000

Prints size, latency and accuracy of both models and their ratios, and exits 1 when a ratio misses
its target (defaults: >= 10x smaller on disk, >= 8x faster on CPU at batch 32, <= 1.0 accuracy
point lost). A benchmark, not a unit test: the numbers depend on the machine, so both models are
timed interleaved, repeat by repeat, in the same process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages._io import read_pairs  # noqa: E402
from stages._models import load_model  # noqa: E402
from stages._params import EvaluateParams  # noqa: E402
from stages.evaluate import evaluate  # noqa: E402


def verdicts(candidate: dict, size_target: float, speed_target: float, max_drop: float) -> list[tuple[str, str, bool]]:
    """(measure, measured vs target, met) for the three compression targets."""
    drop = -candidate["accuracy_delta_pts"]
    return [
        ("size", f"{candidate['size_ratio']:.2f}x smaller (target >= {size_target}x)", candidate["size_ratio"] >= size_target),
        ("latency", f"{candidate['speedup']:.2f}x faster (target >= {speed_target}x)", candidate["speedup"] >= speed_target),
        ("accuracy", f"{drop:+.2f} pts lost (target <= {max_drop})", drop <= max_drop),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--candidate", default="models/quantized")
    parser.add_argument("--validation", default="data/prepared/validation.parquet")
    parser.add_argument("--limit", type=int, default=0, help="evaluate on the first N validation pairs (0 = all)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batches", type=int, default=8, help="fixed random batches of 32 timed per repeat")
    parser.add_argument("--seed", type=int, default=42, help="draws the timed batches (the evaluate stage uses params.yaml's seed)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--size-target", type=float, default=10.0)
    parser.add_argument("--speed-target", type=float, default=8.0)
    parser.add_argument("--max-drop", type=float, default=1.0)
    args = parser.parse_args(argv)

    validation = read_pairs(args.validation)
    if args.limit:
        validation = validation.iloc[: args.limit]
    models = {}
    for name, directory in (("teacher", args.teacher), ("candidate", args.candidate)):
        model, tokenizer = load_model(directory)
        models[name] = (model, tokenizer, Path(directory))
    results = evaluate(
        models, validation, EvaluateParams(latency_repeats=args.repeats, latency_batches=args.batches),
        max_length=args.max_length, seed=args.seed,
    )

    print(f"{len(validation)} validation pairs; latency: {args.batches} batches of 32, {torch.get_num_threads()} CPU threads, "
          f"median of {args.repeats} timed repeats")
    for name, r in results.items():
        print(f"  {name:9s} {args.teacher if name == 'teacher' else args.candidate:22s} accuracy {r['accuracy'] * 100:6.2f}  "
              f"size {r['size_mb']:7.1f} MB  latency {r['latency_ms_b32']:7.1f} ms")
    missed = 0
    for measure, text, met in verdicts(results["candidate"], args.size_target, args.speed_target, args.max_drop):
        print(f"  {'PASS' if met else 'MISS'}  {measure:8s} {text}")
        missed += not met
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
