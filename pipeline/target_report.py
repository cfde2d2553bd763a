"""The deployed model against the targets in params.yaml, from a finished run's metrics.

    python -m pipeline.target_report                  # prints the table; exits 0
    python -m pipeline.target_report --out reports/targets.md --strict   # exit 1 if a target is missed

The verdicts come from `pipeline.targets.judge`, the same function the controller and
scripts/benchmark.py call. They are a view of the run, not a DVC stage: changing a target in
params.yaml must not rerun (or invalidate) any model. Accuracy is the deployed model's DEV loss
against this run's own teacher (dev decides); the test figure is printed beside it, reported only.
Latency ratios are evaluate's (one process, interleaved, dev batches); scripts/benchmark.py is the
measurement of record with more rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.targets import Targets, deployed_name, judge, load_controller_params
from stages._io import write_atomic


class MetricsMissing(FileNotFoundError):
    """A metrics file the verdicts need is missing: the message names it and the stage to run."""


def _read(path: Path, stage: str) -> dict:
    if not path.is_file():
        raise MetricsMissing(f"{path}: not found; run `dvc repro {stage}` first")
    return json.loads(path.read_text())


def measurements(metrics_dir: Path, deployed: str | None = None) -> dict:
    """The deployed model's measured values from metrics/{evaluate,evaluate_timing,active_select}.json."""
    evaluate = _read(metrics_dir / "evaluate.json", "evaluate")
    timing = _read(metrics_dir / "evaluate_timing.json", "evaluate")
    selected = _read(metrics_dir / "active_select.json", "active_select")
    name = deployed_name(deployed, evaluate)
    if name not in evaluate.get("models", {}):
        raise KeyError(f"{metrics_dir / 'evaluate.json'}: no model {name!r} (has {sorted(evaluate.get('models', {}))})")
    model, speed = evaluate["models"][name], timing["models"].get(name, {})
    return {
        "model": name,
        "accuracy_drop_pts": 0.0 - model["dev"]["accuracy_delta_pts"],  # 0.0 - x: no "-0.0"
        "test_drop_pts": 0.0 - model["test"]["accuracy_delta_pts"],
        "size_ratio": model["size_ratio"],
        "speedup": speed.get("speedup"),
        "speedup_b1": speed.get("speedup_b1_p50"),
        "labelled_fraction": selected.get("label_fraction"),
    }


def verdict_rows(measured: dict, targets: Targets) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, wanted, met) per target, in judge's order."""
    met = judge(targets, accuracy_drop_pts=measured["accuracy_drop_pts"], size_ratio=measured["size_ratio"],
                speedup=measured["speedup"], speedup_b1=measured["speedup_b1"],
                labelled_fraction=measured["labelled_fraction"])

    def show(value, fmt):
        return "not measured" if value is None else fmt.format(value)

    b1_target = "no target" if targets.min_speedup_b1 is None else f">= {targets.min_speedup_b1}x"
    return [
        ("accuracy (dev, points lost)", f"{measured['accuracy_drop_pts']:.2f} (test {measured['test_drop_pts']:.2f})",
         f"<= {targets.max_accuracy_drop_pts}", met["accuracy"]),
        ("size (x smaller)", show(measured["size_ratio"], "{:.2f}x"), f">= {targets.min_size_ratio}x", met["size"]),
        ("speed at batch 32", show(measured["speedup"], "{:.2f}x"), f">= {targets.min_speedup}x", met["latency"]),
        ("speed at batch 1 (p50)", show(measured["speedup_b1"], "{:.2f}x"), b1_target, met["latency_b1"]),
        ("labelled fraction", show(measured["labelled_fraction"], "{:.3f}"), f"<= {targets.max_labelled_fraction}",
         met["data"]),
    ]


def markdown(measured: dict, rows: list[tuple[str, str, str, bool | None]]) -> str:
    word = {True: "met", False: "**missed**", None: "not judged"}
    lines = [f"# Targets: the deployed model ({measured['model']}) against params.yaml `controller.targets`", "",
             "| target | measured | wanted | verdict |", "|---|---|---|---|"]
    lines += [f"| {name} | {value} | {wanted} | {word[met]} |" for name, value, wanted, met in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics-dir", default="metrics")
    parser.add_argument("--out", help="also write the table here (markdown)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    controller = load_controller_params(args.params)
    try:
        measured = measurements(Path(args.metrics_dir), controller.deployed_model)
    except (MetricsMissing, KeyError) as err:
        print(f"target_report: {err}", file=sys.stderr)
        return 2
    rows = verdict_rows(measured, controller.targets)
    text = markdown(measured, rows)
    print(text)
    if args.out:
        write_atomic(args.out, text)
    return 1 if args.strict and any(met is False for *_, met in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
