"""scripts/distill_levers.py: the augmented unlabelled pool (a larger distillation transfer set)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from distill_levers import augmented_pool  # noqa: E402

from stages._params import load_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _pool(n: int) -> pd.DataFrame:
    words = ["the man walks the dog in the park", "a woman reads a long book at home", "children play loud games outside"]
    return pd.DataFrame({
        "pool_id": range(n), "premise": [words[i % 3] + f" day {i}" for i in range(n)],
        "hypothesis": [f"someone moves quickly number {i}" for i in range(n)],
        "label": -1, "source": "pool", "weight": 1.0, "score": 0.0,
    })


def test_pool_copies_are_kd_only_and_keep_the_pool_first():
    params = load_params(REPO / "params.yaml")
    pool = _pool(20)
    calls = []

    def translator(sentences):  # a planted paraphraser: changes every sentence, no Apertium
        calls.append(len(sentences))
        return [s + " indeed" for s in sentences]

    out, counts = augmented_pool(pool, params, 0.5, seed=0, translator=translator)
    assert calls == [20]  # half the pool, premise and hypothesis
    assert counts["back_translate"] == 10 and 0 < counts["augment"] <= 10
    assert len(out) == 20 + counts["augment"] + counts["back_translate"]
    pd.testing.assert_frame_equal(out.iloc[:20].reset_index(drop=True), pool)  # the pool unchanged, first
    extra = out.iloc[20:]
    assert (extra["label"] == -1).all() and set(extra["source"]) <= {"synonym", "eda", "backtranslation"}
    assert set(extra["pool_id"]) <= set(pool["pool_id"])  # each copy says which pool pair it came from
    assert list(out.columns) == list(pool.columns)
    again, _ = augmented_pool(pool, params, 0.5, seed=0, translator=translator)
    pd.testing.assert_frame_equal(out, again)  # seeded
