"""Tables, labels saved and plots of the active-learning curve (pipeline.active_curve's cells).

Every cell holds per-example predictions on dev and test (the same rows in every cell), so each
difference against random is paired: same seed, same budget, same examples. Intervals are
bootstrap percentiles, resampling the examples within each seed (pipeline.stats.paired_bootstrap).

Labels saved at equal dev accuracy (dev decides): the fewest labels with which a strategy's mean
dev accuracy over seeds reaches random's at the reference budget, interpolated linearly between
the measured budgets; saved = 1 - labels / reference. Its interval resamples seeds and dev examples
together and repeats the interpolation (a strategy that never reaches random's accuracy inside
the measured budgets saves nothing: 0 in that resample).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.stats import paired_bootstrap, verdict
from stages._io import write_atomic

SPLITS = ("dev", "test")


def load_cells(directory: Path) -> pd.DataFrame:
    """One row per cell: strategy, seed, labels, and per split the correctness vector (sorted by row_id)."""
    rows = []
    for cell in sorted(directory.glob("*/cell.json")):
        record = json.loads(cell.read_text())
        for split in SPLITS:
            preds = pd.read_parquet(cell.parent / f"{split}.parquet").sort_values("row_id", kind="stable")
            record[f"{split}_correct"] = (preds["pred"].to_numpy() == preds["label"].to_numpy()).astype(float)
        rows.append(record)
    if not rows:
        raise FileNotFoundError(f"{directory}: no cells (*/cell.json); run python -m pipeline.active_curve first")
    cells = pd.DataFrame(rows)
    # The seed-set cell (no purchase) is every strategy's first point.
    shared = cells[cells["strategy"] == "seedset"]
    strategies = sorted(set(cells["strategy"]) - {"seedset"}, key=lambda s: (s != "random", s))
    spread = [shared.assign(strategy=s) for s in strategies]
    return pd.concat([cells[cells["strategy"] != "seedset"], *spread], ignore_index=True)


def curve_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy per (strategy, labels) and the paired difference against random (points)."""
    rows = []
    for (strategy, labels), group in cells.groupby(["strategy", "labels"], sort=True):
        row = {"strategy": strategy, "labels": int(labels), "seeds": int(len(group))}
        base = cells[(cells["strategy"] == "random") & (cells["labels"] == labels)].set_index("seed")
        for split in SPLITS:
            row[f"{split}_accuracy"] = round(100 * float(np.mean([c.mean() for c in group[f"{split}_correct"]])), 2)
            paired = group[group["seed"].isin(base.index)]
            if strategy != "random" and len(paired):
                a = np.concatenate([base.loc[s, f"{split}_correct"] for s in paired["seed"]])
                b = np.concatenate(list(paired[f"{split}_correct"]))
                groups = np.concatenate([np.full(len(c), s) for s, c in zip(paired["seed"], paired[f"{split}_correct"])])
                diff, low, high = paired_bootstrap(a, b, groups=groups, resamples=2000)
                row.update({f"{split}_diff": round(100 * diff, 2), f"{split}_low": round(100 * low, 2),
                            f"{split}_high": round(100 * high, 2), f"{split}_verdict": verdict(low, high)})
        rows.append(row)
    return pd.DataFrame(rows)


def _labels_to_reach(budgets: np.ndarray, accuracy: np.ndarray, target: float) -> float | None:
    """Fewest labels at which a curve (budgets ascending) reaches target, linearly interpolated."""
    for i, (labels, acc) in enumerate(zip(budgets, accuracy)):
        if acc >= target:
            if i == 0:
                return float(labels)
            b0, a0 = budgets[i - 1], accuracy[i - 1]
            return float(b0 + (target - a0) / (acc - a0) * (labels - b0))
    return None


def labels_saved(cells: pd.DataFrame, strategy: str, reference: int, resamples: int = 1000,
                 seed: int = 0) -> dict:
    """Share of random's labels at `reference` that `strategy` needs to match its dev accuracy."""
    seeds = sorted(set(cells.loc[cells["strategy"] == strategy, "seed"]) & set(cells.loc[cells["strategy"] == "random", "seed"]))
    budgets = np.array(sorted(cells.loc[cells["strategy"] == strategy, "labels"].unique()))
    ref = cells[(cells["strategy"] == "random") & (cells["labels"] == reference) & cells["seed"].isin(seeds)]
    if ref.empty or not seeds:
        return {"strategy": strategy, "reference_labels": reference, "saved": None,
                "why": f"random has no cell at {reference} labels for the strategy's seeds"}
    # (seeds, budgets, n) correctness of the strategy; (seeds, n) of random at the reference.
    def grid(name: str, labels: int, s: int) -> np.ndarray:
        row = cells[(cells["strategy"] == name) & (cells["labels"] == labels) & (cells["seed"] == s)]
        return row["dev_correct"].iloc[0] if len(row) else None

    have = [b for b in budgets if all(grid(strategy, b, s) is not None for s in seeds)]
    budgets = np.array(have)
    strat = np.stack([[grid(strategy, b, s) for b in budgets] for s in seeds])  # (seeds, budgets, n)
    base = np.stack([grid("random", reference, s) for s in seeds])  # (seeds, n)

    def saved(strat_, base_) -> float:
        reached = _labels_to_reach(budgets, strat_.mean(axis=(0, 2)), base_.mean())
        return 0.0 if reached is None else max(0.0, 1.0 - reached / reference)

    point = saved(strat, base)
    rng = np.random.default_rng(seed)
    n = base.shape[1]
    draws = []
    for _ in range(resamples):
        s_idx = rng.integers(0, len(seeds), len(seeds))
        e_idx = rng.integers(0, n, n)
        draws.append(saved(strat[s_idx][:, :, e_idx], base[s_idx][:, e_idx]))
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"strategy": strategy, "reference_labels": reference, "seeds": seeds, "budgets": budgets.tolist(),
            "random_dev_accuracy": round(100 * float(base.mean()), 2),
            "saved": round(point, 4), "low": round(float(low), 4), "high": round(float(high), 4)}


def curve_spec(table: pd.DataFrame, title: str) -> dict:
    """Vega-Lite: accuracy against labels, one line per strategy, a band for the paired interval."""
    rows = []
    for record in table.to_dict("records"):
        for split in SPLITS:
            diff = record.get(f"{split}_diff")
            low = record[f"{split}_accuracy"] + (record[f"{split}_low"] - diff) if pd.notna(diff) else record[f"{split}_accuracy"]
            high = record[f"{split}_accuracy"] + (record[f"{split}_high"] - diff) if pd.notna(diff) else record[f"{split}_accuracy"]
            rows.append({"strategy": record["strategy"], "labels": record["labels"], "split": split,
                         "accuracy": record[f"{split}_accuracy"], "low": low, "high": high})
    x = {"field": "labels", "type": "quantitative", "title": "labels (seed set included)"}
    color = {"field": "strategy", "type": "nominal"}
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title, "data": {"values": rows},
        "facet": {"column": {"field": "split", "type": "nominal", "title": None}},
        "spec": {"width": 320, "height": 240, "layer": [
            {"mark": {"type": "area", "opacity": 0.2},
             "encoding": {"x": x, "y": {"field": "low", "type": "quantitative", "scale": {"zero": False},
                                         "title": "accuracy %"}, "y2": {"field": "high"}, "color": color}},
            {"mark": {"type": "line", "point": True},
             "encoding": {"x": x, "y": {"field": "accuracy", "type": "quantitative"}, "color": color}},
        ]},
    }


def _delta(row: dict, split: str) -> str:
    """`+d [low, high] verdict` of a table row against random, or a dash for random itself."""
    if pd.isna(row.get(f"{split}_diff")):
        return "—"
    return (f"{row[f'{split}_diff']:+.2f} [{row[f'{split}_low']:+.2f}, {row[f'{split}_high']:+.2f}] "
            f"{row[f'{split}_verdict']}")


def markdown(table: pd.DataFrame, saved: list[dict], mode: str) -> str:
    lines = [f"## {mode}", "", "| strategy | labels | seeds | dev % | Δ dev vs random [95 %] | test % | Δ test vs random [95 %] |",
             "|---|---|---|---|---|---|---|"]
    for r in table.sort_values(["labels", "strategy"]).to_dict("records"):
        lines.append(f"| {r['strategy']} | {r['labels']} | {r['seeds']} | {r['dev_accuracy']:.2f} | {_delta(r, 'dev')} | "
                     f"{r['test_accuracy']:.2f} | {_delta(r, 'test')} |")
    lines += ["", "Labels saved at equal dev accuracy (against random at the reference budget):", ""]
    for s in saved:
        if s.get("saved") is None:
            lines.append(f"- {s['strategy']}: not computable ({s['why']})")
        else:
            lines.append(f"- {s['strategy']}: **{100 * s['saved']:.1f} %** [{100 * s['low']:.1f}, {100 * s['high']:.1f}] "
                         f"of {s['reference_labels']} labels (random's dev {s['random_dev_accuracy']:.2f} %; seeds "
                         f"{s['seeds']}, budgets {s['budgets']})")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, reference: int = 13000) -> None:
    from pipeline.plots import render_png

    sections = []
    data = {}
    for mode in ("finetune", "proxy"):
        if not (out / mode).is_dir():
            continue
        cells = load_cells(out / mode)
        table = curve_table(cells)
        saved = [labels_saved(cells, s, reference) for s in sorted(set(cells["strategy"]) - {"random"})]
        data[mode] = {"table": table.to_dict("records"), "labels_saved": saved}
        render_png(curve_spec(table, f"Active learning curve ({mode})"), out / f"{mode}.png")
        sections.append(markdown(table, saved, mode))
    write_atomic(out / "curve.json", json.dumps(data, indent=1, default=str))
    write_atomic(out / "summary.md", "\n".join(sections))
