"""What the controller's study shows: the Pareto front as a table and a plot, the recommendation,
and the trial closest to each target. Written to reports/search/ from the study alone (dev numbers).

    reports/search/pareto.md    the Pareto front, the trials off it, the recommendation, the misses
    reports/search/pareto.png   accuracy vs speed-up (batch 32) and vs size ratio, coloured by labels
    reports/search/trials.json  one row per trial, for other tools
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.plots import VL_SCHEMA, render_png
from pipeline.reference import Reference
from pipeline.search import OBJECTIVES, closest_to_targets, confirmed, feasible, nearest, recommend, shortfall
from pipeline.targets import Targets
from stages._io import write_atomic, write_json

OUT = Path("reports") / "search"


def _tidy(value):
    """0.30000000000000004 (Optuna's float steps) -> 0.3."""
    return round(value, 10) if isinstance(value, float) else value


def rows(trials: Sequence[FrozenTrial], reference: Reference, base: dict | None = None) -> list[dict]:
    """One row per completed trial: knobs (a knob added to the space after the trial ran: the
    study's base value, which it ran with), objective values (mean over its seeds), verdicts, and
    `repeat_of`: the earlier trial with the same knobs, if any (the run-cache returns its runs)."""
    out = []
    seen: dict[tuple, int] = {}
    knob_names = sorted({k for t in trials for k in t.params})
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        knobs = {k: _tidy(t.params.get(k, (base or {}).get(k))) for k in knob_names}
        key = tuple(sorted(knobs.items()))
        repeat_of = seen.setdefault(key, t.number)
        values = dict(zip([name for name, _ in OBJECTIVES], t.values))
        # The full-steps run at the base seed: the experiment `--apply` applies, its sizes and times.
        full = next((v for k, v in t.user_attrs.items() if k.startswith("run:full:")), {})
        out.append({
            "trial": t.number, **{f"knob:{k}": v for k, v in knobs.items()}, **values,
            "repeat_of": repeat_of if repeat_of != t.number else None,
            "drop_pts": reference.accuracy_drop_pts(values["accuracy"]),
            "size_mb": full.get("size_mb"), "latency_ms_b32": full.get("latency_ms_b32"),
            "latency_ms_b1": full.get("latency_ms_b1"), "experiment": full.get("experiment"),
            "seeds": t.user_attrs.get("confirmation", {}).get("seeds", 1),
            "feasible": feasible(t), "confirmed": confirmed(t),
        })
    return out


def dominator(row: dict, others: list[dict]) -> dict | None:
    """A row of `others` at least as good as `row` on every objective and better on one."""
    signs = {name: 1 if direction == "maximize" else -1 for name, direction in OBJECTIVES}
    for other in others:
        pairs = [(signs[k] * other[k], signs[k] * row[k]) for k in signs]
        if all(x >= y for x, y in pairs) and any(x > y for x, y in pairs):
            return other
    return None


def pareto(table: list[dict]) -> list[dict]:
    """Rows no other row dominates on every objective (at least as good on all, better on one)."""
    return [r for r in table if dominator(r, table) is None]


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def stopped_early(trials: Sequence[FrozenTrial], reference: Reference) -> list[str]:
    """Markdown rows for the trials pruned after their cheap pass: what that pass measured and why
    it stopped (a pruned trial has no objective values, so the front above cannot show it)."""
    lines = []
    for t in trials:
        if t.state != TrialState.PRUNED:
            continue
        for key, run in sorted(t.user_attrs.items()):
            if not key.startswith("run:cheap:") or not isinstance(run, dict) or run.get("accuracy") is None:
                continue
            knobs = ", ".join(f"`{k}={v:g}`" if isinstance(v, float) else f"`{k}={v}`" for k, v in t.params.items())
            lines.append(f"| {t.number} | {knobs} | {100 * run['accuracy']:.2f} "
                         f"| {reference.accuracy_drop_pts(run['accuracy']):+.2f} | {_fmt(run.get('size_ratio'))} "
                         f"| {_fmt(run.get('speedup'))} | {_fmt(run.get('speedup_b1'))} | {t.user_attrs.get('pruned', '–')} |")
    if not lines:
        return []
    return ["", "## Stopped after the cheap pass", "",
            "Measured with a quarter of the distillation steps, so their accuracy is a lower bound.", "",
            "| trial | knobs | dev acc % | drop pts | size × | speed-up b32 × | b1 × | why stopped |",
            "|---|---|---|---|---|---|---|---|", *lines]


def markdown(study: optuna.Study, targets: Targets, reference: Reference) -> str:
    trials = study.get_trials(deepcopy=False)
    table = rows(trials, reference, study.user_attrs.get("base"))
    repeats = [r for r in table if r["repeat_of"] is not None]
    front = sorted(pareto([r for r in table if r["repeat_of"] is None]), key=lambda r: -r["accuracy"])
    counts = {state.name: sum(t.state == state for t in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    knobs = sorted({k for r in table for k in r if k.startswith("knob:")})
    header = ["| trial | " + " | ".join(k.removeprefix("knob:") for k in knobs)
              + " | dev acc % | drop pts | size × | speed-up b32 × | b1 × | labels % | seeds | meets targets |",
              "|---" * (len(knobs) + 9) + "|"]
    lines = [
        "# The controller's search: Pareto front (dev)", "",
        f"{len(trials)} trials: " + ", ".join(f"{n} {name.lower()}" for name, n in counts.items() if n) + ". "
        f"Accuracy reference: the teacher's dev accuracy {100 * reference.teacher_dev_accuracy:.2f} % "
        f"(mean over seeds {reference.seeds}, controller/reference.json). Targets: drop ≤ {targets.max_accuracy_drop_pts} "
        f"points, ≥ {targets.min_size_ratio}× smaller, ≥ {targets.min_speedup}× faster at batch 32"
        + (f" and ≥ {targets.min_speedup_b1}× at batch 1" if targets.min_speedup_b1 else "")
        + f", ≤ {100 * targets.max_labelled_fraction:.0f} % of the labels. Dev only: the test split is not read.", "",
        *header,
    ]
    def row(r: dict) -> str:
        return (f"| {r['trial']} | " + " | ".join(str(r.get(k, "–")) for k in knobs)
                + f" | {100 * r['accuracy']:.2f} | {r['drop_pts']:+.2f} | {_fmt(r['size_ratio'])} | {_fmt(r['speedup'])}"
                f" | {_fmt(r['speedup_b1'])} | {100 * r['labelled_fraction']:.1f} | {r['seeds']}"
                f" | {'yes' + (' (confirmed)' if r['confirmed'] else '') if r['feasible'] else 'no'} |")

    lines += [row(r) for r in front]
    if not front:
        lines.append("| (no completed trial yet) |")
    # Every measured configuration is shown: the ones off the front with the trial that beats them.
    behind = sorted((r for r in table if r["repeat_of"] is None and r not in front), key=lambda r: -r["accuracy"])
    if behind:
        lines += ["", "Off the front (a trial on it is at least as good on every objective):", "",
                  header[0] + " beaten by |", header[1] + "---|"]
        lines += [row(r) + f" trial {dominator(r, front)['trial']} |" for r in behind]
    if repeats:
        lines += ["", "Drawn again (the same knobs as an earlier trial; DVC's run-cache returned its runs): "
                  + ", ".join(f"trial {r['trial']} = trial {r['repeat_of']}" for r in repeats) + "."]
    lines += stopped_early(trials, reference)
    chosen = recommend(trials, targets)
    lines += ["", "## Recommendation", ""]
    if chosen is None:
        lines.append("None: no trial meets every target with its accuracy confirmed over seeds.")
        near = nearest(trials, targets)
        if near is not None:
            run = next((r for r in table if r["trial"] == near.number), {})
            lines.append(f"Nearest to meeting them all (smallest sum of misses, each as a share of its target: "
                         f"{shortfall(near, targets):.2f}): trial {near.number} (experiment `{run.get('experiment')}`), "
                         + ", ".join(f"`{k}={_tidy(v)}`" for k, v in near.params.items()) + ".")
    else:
        run = next((r for r in table if r["trial"] == chosen.number), {})
        lines.append(f"Trial {chosen.number} (experiment `{run.get('experiment')}`): "
                     + ", ".join(f"`{k}={_tidy(v)}`" for k, v in chosen.params.items())
                     + ". Apply it with `sec controller --apply`.")
    closest = closest_to_targets(trials)
    if closest:
        lines += ["", "## Closest trial to each target", "", "| target | trial | distance (≤ 0 met) |", "|---|---|---|"]
        lines += [f"| {name} | {number} | {distance:+.3f} |" for name, (number, distance) in closest.items()]
    return "\n".join(lines) + "\n"


def plot_spec(table: list[dict]) -> dict:
    """Accuracy against speed-up at batch 32 and against size ratio; colour: labelled fraction;
    filled: on the Pareto front; shape: meets every target."""
    table = [r for r in table if r.get("repeat_of") is None]  # a repeat would sit on its original
    front = {r["trial"] for r in pareto(table)}
    values = [{**{k: v for k, v in r.items() if not k.startswith("knob:")}, "front": r["trial"] in front,
               "meets": "meets targets" if r["feasible"] else "misses a target"} for r in table]
    y = {"field": "accuracy", "type": "quantitative", "title": "deployed dev accuracy", "scale": {"zero": False}}

    def panel(x_field: str, title: str) -> dict:
        return {
            "width": 320, "height": 260,
            "mark": {"type": "point", "size": 90},
            "encoding": {
                "x": {"field": x_field, "type": "quantitative", "title": title, "scale": {"zero": False}},
                "y": y,
                "color": {"field": "labelled_fraction", "type": "quantitative", "title": "labels bought"},
                "shape": {"field": "meets", "type": "nominal", "title": ""},
                "fill": {"condition": {"test": "datum.front", "field": "labelled_fraction", "type": "quantitative"},
                         "value": "transparent"},
                "tooltip": [{"field": "trial", "type": "ordinal"}, {"field": "accuracy", "type": "quantitative"},
                            {"field": x_field, "type": "quantitative"}],
            },
        }

    return {"$schema": VL_SCHEMA, "title": {"text": "Controller search: trials on dev (filled: Pareto front)"},
            "data": {"values": values},
            "hconcat": [panel("speedup", "speed-up at batch 32 (×)"), panel("size_ratio", "size ratio (×)")]}


def write(study: optuna.Study, targets: Targets, reference: Reference, out_dir: str | Path = OUT) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = rows(study.get_trials(deepcopy=False), reference, study.user_attrs.get("base"))
    paths = [write_atomic(out / "pareto.md", markdown(study, targets, reference))]
    write_json(table, out / "trials.json")
    paths.append(out / "trials.json")
    if table:
        paths.append(render_png(plot_spec(table), out / "pareto.png"))
    return paths
