"""The teacher over seeds: did it learn on every seed, how far apart are the seeds, how fast did it leave chance.

    python -m pipeline.teacher_seeds RUN [RUN ...] --out reports/teacher_seeds

Each RUN is a checkout that ran the pipeline at least to `evaluate_teacher` and differs from the
others only in `seed`. Per seed: dev and test accuracy (metrics/evaluate_teacher.json), the step
at which the smoothed training loss first fell below 1.0 and its share of the run's steps
(metrics/fine_tune.json), and the CPU (run.cpu). Over seeds: the test mean with its Student-t 95 %
interval, the dev spread (max - min), and each check of the teacher's targets (`CHECKS`), which
are judged here and nowhere else. Writes <out>.md, <out>.json and <out>_loss.png (every seed's
training loss against its step, from dvclive/fine_tune).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from pipeline.plots import render_png
from pipeline.stats import mean_ci
from stages._io import write_atomic, write_json

# The teacher's targets (issue "a teacher that learns on every machine and seed").
CHECKS = {"min_margin_over_chance_pts": 10.0, "max_dev_spread_pts": 2.0, "min_mean_test_pct": 66.0,
          "max_loss_below_1_fraction": 0.25}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the pipeline there first (dvc repro evaluate_teacher)")
    return json.loads(path.read_text())


def load_seed(directory: str | Path) -> dict:
    directory = Path(directory)
    evaluation = _read_json(directory / "metrics" / "evaluate_teacher.json")
    fine_tune = _read_json(directory / "metrics" / "fine_tune.json")
    teacher = evaluation["models"]["teacher"]
    loss_file = directory / "dvclive" / "fine_tune" / "plots" / "metrics" / "train" / "loss.tsv"
    losses = []
    if loss_file.is_file():
        with loss_file.open() as handle:
            losses = [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(handle, delimiter="\t")]
    return {
        "run": str(directory),
        "seed": fine_tune["run"]["seed"],
        "cpu": fine_tune["run"].get("cpu", {}).get("model", "not recorded"),
        "test_pct": 100 * teacher["test"]["accuracy"],
        "dev_pct": 100 * teacher["dev"]["accuracy"],
        "dev_chance_pct": 100 * fine_tune.get("health", {}).get("dev_chance", 1 / 3),
        "loss_below_1_step": fine_tune.get("loss_below_1_step"),
        "loss_below_1_fraction": fine_tune.get("loss_below_1_fraction"),
        "train_steps": fine_tune["train_steps"],
        "losses": losses,
    }


def summarise(seeds: list[dict]) -> dict:
    """Over-seed figures and the verdict of every check (True = met)."""
    tests, devs = [s["test_pct"] for s in seeds], [s["dev_pct"] for s in seeds]
    mean, low, high = mean_ci(tests)
    spread = max(devs) - min(devs)
    fractions = [s["loss_below_1_fraction"] for s in seeds]
    checks = {
        "none_at_chance": all(s["dev_pct"] - s["dev_chance_pct"] >= CHECKS["min_margin_over_chance_pts"] for s in seeds),
        "dev_spread": spread <= CHECKS["max_dev_spread_pts"],
        "mean_test": mean >= CHECKS["min_mean_test_pct"],
        "loss_below_1_early": all(f is not None and f < CHECKS["max_loss_below_1_fraction"] for f in fractions),
    }
    return {"seeds": [s["seed"] for s in seeds], "test_mean_pct": mean, "test_ci_pct": [low, high],
            "dev_mean_pct": sum(devs) / len(devs), "dev_spread_pts": spread, "targets": CHECKS, "checks": checks,
            "per_seed": [{k: v for k, v in s.items() if k != "losses"} for s in seeds]}


def markdown(summary: dict) -> str:
    lines = ["# The teacher over seeds", "",
             f"Seeds {', '.join(map(str, summary['seeds']))}. Test: validation_matched (reported only); "
             "dev: what decisions read. Loss below 1.0: the first logged step (mean over a 25-step window) "
             "with training loss < 1.0 (chance is ln 3 = 1.10).", "",
             "| seed | CPU | test % | dev % | dev chance % | loss < 1.0 at step | of steps |", "|---|---|---|---|---|---|---|"]
    for s in summary["per_seed"]:
        fraction = s["loss_below_1_fraction"]
        lines.append(f"| {s['seed']} | {s['cpu']} | {s['test_pct']:.2f} | {s['dev_pct']:.2f} | {s['dev_chance_pct']:.1f} | "
                     f"{s['loss_below_1_step']} | {fraction * 100:.0f} % of {s['train_steps']} |" if fraction is not None else
                     f"| {s['seed']} | {s['cpu']} | {s['test_pct']:.2f} | {s['dev_pct']:.2f} | {s['dev_chance_pct']:.1f} | never | - |")
    low, high = summary["test_ci_pct"]
    t = summary["targets"]
    c = summary["checks"]
    verdict = {True: "met", False: "MISSED"}
    lines += ["", f"- Test accuracy, mean over seeds: **{summary['test_mean_pct']:.2f} %** [{low:.2f}, {high:.2f}] "
                  f"(95 % t-interval); target >= {t['min_mean_test_pct']:.0f} %: {verdict[c['mean_test']]}.",
              f"- Dev spread (max - min): {summary['dev_spread_pts']:.2f} points; target <= {t['max_dev_spread_pts']:.0f}: "
              f"{verdict[c['dev_spread']]}.",
              f"- None at chance (dev at least {t['min_margin_over_chance_pts']:.0f} points above the most common label): "
              f"{verdict[c['none_at_chance']]}.",
              f"- Loss below 1.0 before {t['max_loss_below_1_fraction']:.0%} of the steps on every seed: "
              f"{verdict[c['loss_below_1_early']]}.", ""]
    return "\n".join(lines)


def loss_spec(seeds: list[dict]) -> dict:
    values = [{"seed": str(s["seed"]), "step": step, "loss": loss} for s in seeds for step, loss in s["losses"]]
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "width": 480, "height": 260,
            "title": "Teacher training loss per seed (mean over 25 steps); chance = ln 3",
            "layer": [
                {"data": {"values": values}, "mark": "line",
                 "encoding": {"x": {"field": "step", "type": "quantitative"},
                              "y": {"field": "loss", "type": "quantitative", "scale": {"zero": False},
                                    "title": "training loss"},
                              "color": {"field": "seed", "type": "nominal"}}},
                {"data": {"values": [{"y": 1.0986}]}, "mark": {"type": "rule", "strokeDash": [4, 4]},
                 "encoding": {"y": {"field": "y", "type": "quantitative", "title": "training loss"}}},
            ]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="checkouts that ran to evaluate_teacher, one per seed")
    parser.add_argument("--out", default="reports/teacher_seeds", help="writes <out>.md, <out>.json, <out>_loss.png")
    args = parser.parse_args(argv)
    try:
        seeds = [load_seed(run) for run in args.runs]
    except (FileNotFoundError, KeyError) as err:
        print(f"teacher_seeds: error: {err}", file=sys.stderr)
        return 2
    if len({s["seed"] for s in seeds}) != len(seeds):
        print(f"teacher_seeds: error: runs share a seed ({[s['seed'] for s in seeds]})", file=sys.stderr)
        return 2
    summary = summarise(seeds)
    out = Path(args.out)
    write_json(summary, out.with_suffix(".json"))
    write_atomic(out.with_suffix(".md"), markdown(summary))
    render_png(loss_spec(seeds), out.parent / f"{out.name}_loss.png")
    print(markdown(summary))
    return 0 if all(summary["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
