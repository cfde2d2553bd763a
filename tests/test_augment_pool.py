"""augment_pool stage: augmented and back-translated copies of the unlabelled pool, KD only."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from stages._io import DataError
from stages._params import AugmentParams, BackTranslateParams
from stages.augment_pool import augment_pool, main


def _pool(n: int) -> pd.DataFrame:
    words = ["the man walks the dog in the park", "a woman reads a long book at home", "children play loud games outside"]
    return pd.DataFrame({
        "pool_id": range(n), "premise": [words[i % 3] + f" day {i}" for i in range(n)],
        "hypothesis": [f"someone moves quickly number {i}" for i in range(n)],
        "label": -1, "source": "pool", "weight": 1.0, "score": 0.0,
    })


def _translator(calls):
    def translate(sentences):  # a planted paraphraser: changes every sentence, no Apertium
        calls.append(len(sentences))
        return [s + " indeed" for s in sentences]
    return translate


def test_pool_copies_are_kd_only_and_the_pool_stays_first():
    pool, calls = _pool(20), []
    # swap only: WordNet is augment's business (tests/test_augment.py); this is about the pool.
    aug = AugmentParams(fraction=0.25, ops=["swap"], class_fraction={"neutral": 0.0})
    bt = BackTranslateParams(fraction=0.25)
    out, metrics = augment_pool(pool, 0.5, aug, bt, seed=0, translator=_translator(calls))
    assert calls == [20]  # half the pool, premise + hypothesis; class fractions do not apply to unlabelled pairs
    assert metrics["n_backtranslated"] == 10 and 0 < metrics["n_augmented"] <= 10
    assert metrics["n_output"] == len(out) == 20 + metrics["n_augmented"] + metrics["n_backtranslated"]
    pd.testing.assert_frame_equal(out.iloc[:20].reset_index(drop=True), pool)  # the pool unchanged, first
    extra = out.iloc[20:]
    assert (extra["label"] == -1).all() and set(extra["source"]) == {"eda", "backtranslation"}
    assert set(extra["pool_id"]) <= set(pool["pool_id"])  # each copy says which pool pair it came from
    assert list(out.columns) == list(pool.columns)
    again, _ = augment_pool(pool, 0.5, aug, bt, seed=0, translator=_translator([]))
    pd.testing.assert_frame_equal(out, again)  # seeded
    other, _ = augment_pool(pool, 0.5, aug, bt, seed=1, translator=_translator([]))
    assert not other.iloc[20:]["pool_id"].reset_index(drop=True).equals(extra["pool_id"].reset_index(drop=True))


def test_fraction_zero_passes_the_pool_through(tmp_path):
    pool = _pool(6)
    out, metrics = augment_pool(pool, 0.0, AugmentParams(fraction=0.5), BackTranslateParams(fraction=0.5), seed=0,
                                translator=lambda s: pytest.fail("nothing to translate"))
    pd.testing.assert_frame_equal(out, pool)
    assert metrics["n_augmented"] == metrics["n_backtranslated"] == 0 and metrics["n_output"] == 6


def test_main_writes_the_pool_and_names_a_bad_file(tmp_path, monkeypatch):
    import yaml

    from stages._params import load_params

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["augment_pool"]["fraction"] = 0.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_params(tmp_path / "params.yaml").augment_pool.fraction == 0.0
    _pool(5).to_parquet(tmp_path / "pool.parquet")
    main(["--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "pool.parquet"),
          "--output", str(tmp_path / "out" / "pool.parquet"), "--metrics", str(tmp_path / "m.json")])
    assert len(pd.read_parquet(tmp_path / "out" / "pool.parquet")) == 5
    assert json.loads((tmp_path / "m.json").read_text())["n_output"] == 5
    _pool(5).drop(columns="hypothesis").to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="bad.parquet.*hypothesis"):
        main(["--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "bad.parquet"),
              "--output", str(tmp_path / "o2.parquet"), "--metrics", str(tmp_path / "m2.json")])
    assert not (tmp_path / "o2.parquet").exists()
