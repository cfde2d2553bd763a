"""Compression benchmark: the deployed model and the other int8/ONNX students against the teacher.

    python scripts/benchmark.py                      # the committed models, the test split, 5 rounds
    python scripts/benchmark.py --candidate distilled=models/distilled --limit 2000 --rounds 7

Measures, in ONE process on the same inputs: the fp32 PyTorch teacher (the reference), the PyTorch
int8 student (models/quantized), and the ONNX Runtime fp32 and int8 students (models/onnx/*).
Per model: size on disk, test accuracy, latency at batch 32 (mean over fixed batches) and at
batch 1 (p50/p95 over single pairs). The whole timing is repeated `--rounds` times (>= 5 by
default) as separate rounds; every ratio is reported as its median over rounds with min and max.

Exits 1 when the deployed model (params.yaml quantize.backend, or --deployed) misses a target, and
prints its verdicts last, the three ratios (size, batch 32, batch 1) at the very end. The targets
are params.yaml's `controller.targets`, read through `pipeline.targets.load_targets` (the one place
the controller and the report read them too). The data defaults to the TEST split: this script
reports, it chooses nothing. A benchmark, not a unit test: the numbers depend on the machine (its
CPU model and thread count are printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.targets import Targets, judge, load_targets  # noqa: E402
from pipeline.timing import backend_of, summarise_rounds, time_rounds  # noqa: E402
from stages._determinism import cpu_info  # noqa: E402
from stages._io import read_pairs  # noqa: E402
from stages._models import load_model  # noqa: E402
from stages._params import EvaluateParams  # noqa: E402
from stages.evaluate import DEPLOYED_BY_BACKEND, REFERENCE, evaluate  # noqa: E402

DEFAULT_CANDIDATES = ("quantized=models/quantized", "onnx_fp32=models/onnx/fp32", "onnx_int8=models/onnx/int8")


def verdicts(candidate: dict, targets: Targets) -> list[tuple[str, str, bool | None]]:
    """(measure, measured vs target, met) for the accuracy target, then the three ratios.

    candidate: accuracy_delta_pts (candidate minus teacher, points), size_ratio, speedup (batch 32)
    and speedup_b1 (batch-1 p50; None when not measured). met: pipeline.targets.judge's verdict,
    None where there is no target or nothing was measured.
    """
    drop = 0.0 - candidate["accuracy_delta_pts"]  # 0.0 - x: no "-0.00" when nothing was lost
    b1 = candidate.get("speedup_b1")
    met = judge(targets, accuracy_drop_pts=drop, size_ratio=candidate["size_ratio"], speedup=candidate["speedup"],
                speedup_b1=b1)
    measured_b1 = f"{b1:.2f}x faster at batch 1" if b1 is not None else "not measured"
    target_b1 = "no target" if targets.min_speedup_b1 is None else f"target >= {targets.min_speedup_b1}x"
    return [
        ("accuracy", f"{drop:+.2f} pts lost (target <= {targets.max_accuracy_drop_pts})", met["accuracy"]),
        ("size", f"{candidate['size_ratio']:.2f}x smaller (target >= {targets.min_size_ratio}x)", met["size"]),
        ("latency", f"{candidate['speedup']:.2f}x faster at batch 32 (target >= {targets.min_speedup}x)", met["latency"]),
        ("latency1", f"{measured_b1} ({target_b1})", met["latency_b1"]),
    ]


def verdict_lines(candidate: dict, targets: Targets) -> tuple[list[str], int]:
    """The printed PASS/MISS lines and how many targets were missed."""
    rows = verdicts(candidate, targets)
    tag = {True: "PASS", False: "MISS", None: "----"}
    return [f"  {tag[met]}  {measure:8s} {text}" for measure, text, met in rows], sum(met is False for *_, met in rows)


def default_deployed(params_path: str) -> str:
    raw = yaml.safe_load(Path(params_path).read_text()) or {}
    return DEPLOYED_BY_BACKEND[((raw.get("quantize") or {}).get("backend")) or "torch"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--candidate", action="append", metavar="NAME=DIR",
                        help=f"a model to compare with the teacher (repeatable; default: {', '.join(DEFAULT_CANDIDATES)})")
    parser.add_argument("--deployed", help="the candidate judged by the targets (default: params.yaml quantize.backend)")
    parser.add_argument("--data", default="data/prepared/test.parquet", help="labelled pairs to measure on (default: the test split)")
    parser.add_argument("--params", default="params.yaml", help="targets from controller.targets; threads from `threads`")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: params.yaml's `threads`)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate on the first N pairs (0 = all)")
    parser.add_argument("--rounds", type=int, default=5, help="separate timing rounds; ratios are median [min, max] over them")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats within a round (median)")
    parser.add_argument("--batches", type=int, default=8, help="fixed random batches of 32 timed per repeat")
    parser.add_argument("--single-pairs", type=int, default=64, help="single pairs timed at batch 1 (p50, p95)")
    parser.add_argument("--seed", type=int, default=42, help="draws the timed batches (the evaluate stage uses params.yaml's seed)")
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")

    targets = load_targets(args.params)
    threads = args.threads or (yaml.safe_load(Path(args.params).read_text()) or {}).get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    data = read_pairs(args.data)
    if args.limit:
        data = data.iloc[: args.limit]
    specs = args.candidate or [s for s in DEFAULT_CANDIDATES if Path(s.partition("=")[2]).is_dir()]
    models = {REFERENCE: (*load_model(args.teacher), Path(args.teacher))}
    for spec in specs:
        name, _, directory = spec.partition("=")
        if not directory:
            parser.error(f"--candidate {spec!r}: expected NAME=DIR")
        models[name] = (*load_model(directory), Path(directory))
    deployed = args.deployed or (specs[0].partition("=")[0] if args.candidate and len(specs) == 1 else default_deployed(args.params))
    if deployed not in models:
        parser.error(f"deployed model {deployed!r} is not among the candidates ({', '.join(list(models)[1:])})")

    split = Path(args.data).stem
    timing_params = EvaluateParams(latency_repeats=args.repeats, latency_batches=args.batches, latency_single_pairs=args.single_pairs)
    results, _, _ = evaluate(models, {split: data}, timing_params, max_length=args.max_length, seed=args.seed, timing=False)
    timed = summarise_rounds(time_rounds(models, {split: data}, timing_params, rounds=args.rounds,
                                         max_length=args.max_length, seed=args.seed))

    print(f"{len(data)} pairs from {args.data}; {args.rounds} rounds, each: batch 32 = mean over {args.batches} fixed batches, "
          f"median of {args.repeats} repeats; batch 1 = p50/p95 over {args.single_pairs} single pairs"
          f", {torch.get_num_threads()} CPU threads on {cpu_info()['model']}")
    print(f"  {'model':10s} {'backend':12s} {'size MB':>8s} {'size x':>7s} {'acc %':>6s} {'Δ pts':>6s} {'b32 ms':>8s} "
          f"{'speed-up b32 [min, max]':>24s} {'b1 p50 ms':>9s} {'b1 p95':>7s} {'speed-up b1 [min, max]':>23s}")
    for name, (model, _, _) in models.items():
        r, t = results[name], timed[name]
        print(f"  {name:10s} {backend_of(model):12s} {r['size_mb']:8.2f} {r.get('size_ratio', 1.0):7.2f} "
              f"{r[split]['accuracy'] * 100:6.2f} {r[split].get('accuracy_delta_pts', 0.0):+6.2f} "
              f"{t['latency_ms_b32']['median']:8.2f} "
              f"{t['speedup']['median']:8.2f} [{t['speedup']['min']:5.2f}, {t['speedup']['max']:5.2f}]      "
              f"{t['latency_ms_b1_p50']['median']:9.2f} {t['latency_ms_b1_p95']['median']:7.2f} "
              f"{t['speedup_b1_p50']['median']:8.2f} [{t['speedup_b1_p50']['min']:5.2f}, {t['speedup_b1_p50']['max']:5.2f}]")
    candidate = {
        "accuracy_delta_pts": results[deployed][split]["accuracy_delta_pts"],
        "size_ratio": results[deployed]["size_ratio"],
        "speedup": timed[deployed]["speedup"]["median"],
        "speedup_b1": timed[deployed]["speedup_b1_p50"]["median"],
    }
    lines, missed = verdict_lines(candidate, targets)
    print(f"deployed: {deployed} ({models[deployed][2]}), ratios = medians over {args.rounds} rounds")
    print("\n".join(lines))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
