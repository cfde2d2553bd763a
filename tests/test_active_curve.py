"""The learning curve's purchase orders, paired tables and labels-saved estimate (pipeline.active_curve*)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.active_curve import random_order
from pipeline.active_curve_report import _labels_to_reach, curve_table, labels_saved, load_cells, write_summary


def test_random_order_is_what_active_select_buys():
    from conftest import make_pairs
    from stages._params import ActiveSelectParams, DataParams
    from stages.active_select import active_select
    from stages.prepare import prepare

    frames, _ = prepare(make_pairs(60), make_pairs(10, seed=3),
                        DataParams(dev_size=4, seed_size=10, pool_size=40, eval_size=0), seed=0)
    params = ActiveSelectParams(strategy="random", budget=12, acquisition_epochs=1, batch_size=8, learning_rate=1e-4)
    labelled, _, _ = active_select(frames["seed"], frames["pool"], frames["oracle"], params, teacher="unused",
                                   max_length=32, seed=7, checkpoint_dir="unused")
    bought = labelled.loc[labelled["source"] == "oracle", "premise"].tolist()
    assert bought == frames["pool"]["premise"].iloc[random_order(40, 7)[:12]].tolist()


def test_labels_to_reach_interpolates_and_says_never():
    budgets = np.array([2000, 4000, 8000])
    assert _labels_to_reach(budgets, np.array([0.5, 0.6, 0.7]), 0.65) == pytest.approx(6000)
    assert _labels_to_reach(budgets, np.array([0.5, 0.6, 0.7]), 0.45) == 2000
    assert _labels_to_reach(budgets, np.array([0.5, 0.6, 0.7]), 0.71) is None


def write_cell(root, strategy, seed, labels, correct_dev, correct_test):
    cell = root / f"{strategy}_s{seed}_{labels}"
    cell.mkdir(parents=True)
    for split, correct in (("dev", correct_dev), ("test", correct_test)):
        n = len(correct)
        pd.DataFrame({"row_id": np.arange(n), "label": np.zeros(n, int),
                      "pred": np.where(correct, 0, 1)}).to_parquet(cell / f"{split}.parquet")
    (cell / "cell.json").write_text(json.dumps({"strategy": strategy, "seed": seed, "labels": labels}))


@pytest.fixture
def cells_dir(tmp_path):
    """Random reaches 60 % dev at 8000 labels; 'good' reaches 60 % already at 4000."""
    root = tmp_path / "finetune"
    n = 200
    rng = np.random.default_rng(0)

    def correct(rate):
        out = np.zeros(n, bool)
        out[rng.permutation(n)[: int(rate * n)]] = True
        return out

    for seed in (1, 2):
        write_cell(root, "seedset", seed, 2000, correct(0.40), correct(0.40))
        for labels, (r, g) in {4000: (0.50, 0.60), 8000: (0.60, 0.65)}.items():
            write_cell(root, "random", seed, labels, correct(r), correct(r))
            write_cell(root, "good", seed, labels, correct(g), correct(g))
    return tmp_path


def test_the_table_pairs_each_strategy_with_random_at_its_budget(cells_dir):
    cells = load_cells(cells_dir / "finetune")
    assert set(cells["strategy"]) == {"random", "good"}  # the seed-set cell is both curves' first point
    table = curve_table(cells).set_index(["strategy", "labels"])
    assert table.loc[("random", 2000), "dev_accuracy"] == 40.0
    assert table.loc[("good", 4000), "dev_diff"] == pytest.approx(10.0)
    assert table.loc[("good", 4000), "dev_low"] > 0 and table.loc[("good", 4000), "dev_verdict"] == "helped"
    assert table.loc[("good", 2000), "dev_diff"] == 0.0


def test_labels_saved_at_equal_dev_accuracy(cells_dir):
    saved = labels_saved(load_cells(cells_dir / "finetune"), "good", reference=8000, resamples=200)
    assert saved["saved"] == pytest.approx(0.5)  # 4000 of random's 8000 labels
    assert saved["low"] <= 0.5 <= saved["high"] and saved["high"] < 1
    missing = labels_saved(load_cells(cells_dir / "finetune"), "good", reference=13000)
    assert missing["saved"] is None and "13000" in missing["why"]


def test_summary_writes_tables_data_and_plots(cells_dir):
    write_summary(cells_dir, reference=8000)
    assert "**50.0 %**" in (cells_dir / "summary.md").read_text()
    assert (cells_dir / "finetune.png").stat().st_size > 1000
    assert json.loads((cells_dir / "curve.json").read_text())["finetune"]["labels_saved"][0]["saved"] == 0.5
