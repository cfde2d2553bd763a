"""Mean and 95 % interval over seeds of the default profile's runs, and the paired drop test.

    python -m pipeline.seed_summary RUN [RUN ...] --out reports/seeds

Each RUN is a checkout that ran the pipeline (`dvc repro`) and differs from the others only in
`seed`. For every model it reports, over seeds: test accuracy, dev accuracy, the accuracy change
against the same run's teacher (test and dev), size ratio and speed-up (mean with a Student-t
95 % interval, pipeline.stats.mean_ci). It also pools the per-example test and dev predictions of
every seed into one paired test of each model against its own teacher (bootstrap within seed,
McNemar's exact p). Writes <out>.md and <out>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from pipeline.compare import compare_predictions
from pipeline.stats import mean_ci
from stages._io import atomic_path, write_json

MODELS = ("teacher", "pruned", "distilled", "quantized", "onnx_fp32", "onnx_int8")


def _ci(values: list[float], scale: float = 1.0) -> dict:
    mean, low, high = mean_ci([v * scale for v in values])
    return {"mean": mean, "low": low, "high": high, "n": len(values), "values": [v * scale for v in values]}


def summarise(runs: list[dict]) -> dict:
    """runs: [{"seed", "evaluate" (evaluate.json), "timing" (evaluate_timing.json),
    "predictions" ({"<model>-<split>": frame})}] -> per-model summaries and paired drop tests."""
    summary: dict = {"seeds": [r["seed"] for r in runs], "models": {}, "paired_vs_teacher": {}}
    for model in MODELS:
        if not all(model in r["evaluate"]["models"] for r in runs):
            continue
        rows = [r["evaluate"]["models"][model] for r in runs]
        entry = {f"{split}_accuracy": _ci([m[split]["accuracy"] for m in rows], 100) for split in ("test", "dev")}
        for split in ("test", "dev"):
            entry[f"{split}_delta_pts"] = _ci([m[split].get("accuracy_delta_pts", 0.0) for m in rows])
        entry["size_ratio"] = _ci([m.get("size_ratio", 1.0) for m in rows])
        entry["speedup"] = _ci([r["timing"]["models"][model]["speedup"] for r in runs])
        summary["models"][model] = entry
        if model != "teacher":
            summary["paired_vs_teacher"][model] = {
                split: compare_predictions([r["predictions"][f"teacher-{split}"] for r in runs],
                                           [r["predictions"][f"{model}-{split}"] for r in runs])
                for split in ("test", "dev")
            }
    return summary


def load_run(directory: str | Path) -> dict:
    directory = Path(directory)
    evaluate = json.loads((directory / "metrics" / "evaluate.json").read_text())
    predictions = {p.stem: pd.read_parquet(p) for p in sorted((directory / "predictions" / "evaluate").glob("*.parquet"))}
    return {
        "seed": evaluate.get("seed"), "directory": str(directory), "evaluate": evaluate,
        "timing": json.loads((directory / "metrics" / "evaluate_timing.json").read_text()), "predictions": predictions,
    }


def _fmt(c: dict, digits: int = 2, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if c["n"] < 2 or math.isnan(c["low"]):
        return f"{c['mean']:{sign}.{digits}f} (n={c['n']})"
    return f"{c['mean']:{sign}.{digits}f} [{c['low']:{sign}.{digits}f}, {c['high']:{sign}.{digits}f}]"


def markdown(summary: dict, *, with_speed: bool = True, title: str = "Default profile over seeds") -> str:
    seeds = ", ".join(str(s) for s in summary["seeds"])
    lines = [
        f"# {title}",
        "",
        f"Seeds {seeds}: runs that differ only in `seed`. Mean [95 % Student-t interval] over seeds. "
        "Test = validation_matched (reported only); dev = the held-out dev split "
        "(what decisions read). Δ = against the same run's teacher, accuracy points.",
        "",
        "| model | test accuracy | dev accuracy | Δ test | Δ dev | size × |" + (" speed × |" if with_speed else ""),
        "|---|---|---|---|---|---|" + ("---|" if with_speed else ""),
    ]
    for model, e in summary["models"].items():
        lines.append(
            f"| {model} | {_fmt(e['test_accuracy'])} | {_fmt(e['dev_accuracy'])} | {_fmt(e['test_delta_pts'], signed=True)} | "
            f"{_fmt(e['dev_delta_pts'], signed=True)} | {_fmt(e['size_ratio'])} |" + (f" {_fmt(e['speedup'])} |" if with_speed else "")
        )
    if not with_speed:
        lines += ["", "Speed-ups left out: these runs were timed while sharing the CPU with each other "
                  "(see the benchmark for a quiet side-by-side timing)."]
    lines += [
        "",
        "Paired against the teacher on the same examples, all seeds pooled (bootstrap within seed, "
        "10,000 resamples; McNemar's exact p on accuracy):",
        "",
        "| model | split | pairs | Δ accuracy pts [95 % CI] | McNemar p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for model, splits in summary["paired_vs_teacher"].items():
        for split, result in splits.items():
            acc = result["metrics"]["accuracy"]
            lines.append(
                f"| {model} | {split} | {result['rows']:,} | {acc['diff'] * 100:+.2f} "
                f"[{acc['low'] * 100:+.2f}, {acc['high'] * 100:+.2f}] | {acc['mcnemar_p']:.2g} | {acc['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="checkouts that ran the pipeline, one per seed")
    parser.add_argument("--out", default="reports/seeds", help="writes <out>.md and <out>.json")
    parser.add_argument("--no-speed", action="store_true",
                        help="leave the speed-ups out of the table (runs timed while sharing the CPU)")
    parser.add_argument("--title", default="Default profile over seeds",
                        help="the report's heading (say which configuration the runs share)")
    args = parser.parse_args(argv)
    runs = [load_run(r) for r in args.runs]
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        parser.error(f"runs must differ in seed; got seeds {seeds}")
    summary = summarise(runs)
    text = markdown(summary, with_speed=not args.no_speed, title=args.title)
    with atomic_path(f"{args.out}.md") as tmp:
        tmp.write_text(text)
    write_json({**summary, "runs": [r["directory"] for r in runs]}, f"{args.out}.json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
