"""back_translate stage: planted translators for the filters, the real Apertium round trip."""

from __future__ import annotations

import json
import shutil
import subprocess

import pandas as pd
import pytest

import stages.back_translate as bt
from conftest import make_pairs
from stages._io import DataError
from stages._params import BackTranslateParams
from stages._text import pick_originals, same_negation
from stages.back_translate import apertium_round_trip, back_translate

HAS_APERTIUM = shutil.which("apertium") is not None

PAIRS = pd.DataFrame(
    {
        "premise": [
            "Nobody is sleeping by the river.",
            "The man plays music at home.",
            "A dog runs in the park.",
            "Two kids read a book.",
        ],
        "hypothesis": [
            "A woman is sleeping.",
            "The man plays.",
            "A dog is outside.",
            "Two kids do not read.",
        ],
        "label": [2, 0, 0, 2],
        "pair_id": [0, 1, 2, 3],
    }
)


class Recorder:
    """A planted round trip: "Nobody" -> "Anybody" (a flipped label), "man" -> "guy"."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, sentences: list[str]) -> list[str]:
        self.calls.append(list(sentences))
        return [s.replace("Nobody", "Anybody").replace("man", "guy") for s in sentences]


def test_planted_translator_filters_and_counts():
    translator = Recorder()
    params = BackTranslateParams(fraction=1.0, weight=0.25)
    out, metrics = back_translate(PAIRS, params, seed=0, translator=translator)
    assert len(translator.calls) == 1 and len(translator.calls[0]) == 8  # one batch: 4 premises + 4 hypotheses
    assert metrics["n_selected"] == 4
    assert metrics["n_dropped_negation"] == 1  # "Nobody ..." -> "Anybody ..."
    assert metrics["n_dropped_identical"] == 2  # no "man", no "Nobody": unchanged
    assert metrics["n_kept"] == 1 and metrics["n_output"] == len(out) == 5
    assert metrics["sentences_per_second"] > 0 and metrics["seconds"] >= 0
    pd.testing.assert_frame_equal(out.iloc[:4], PAIRS.assign(source="gold", weight=1.0))
    kept = out.iloc[4]
    assert (kept["premise"], kept["hypothesis"]) == ("The guy plays music at home.", "The guy plays.")
    assert (kept["label"], kept["pair_id"], kept["source"], kept["weight"]) == (0, 1, "backtranslation", 0.25)
    assert not out["premise"].str.contains("Anybody").any()


def test_only_gold_and_oracle_rows_are_translated_and_selection_is_seeded():
    df = make_pairs(60).assign(source=["gold"] * 20 + ["oracle"] * 20 + ["synonym"] * 20)
    params = BackTranslateParams(fraction=0.25)

    def premises_sent(seed: int) -> list[str]:
        translator = Recorder()
        back_translate(df, params, seed=seed, translator=translator)
        return translator.calls[0][:10]

    sent = premises_sent(1)
    assert len(sent) == 10  # round(0.25 * 40 gold/oracle rows)
    assert set(sent) <= set(df["premise"][:40])
    assert premises_sent(1) == sent
    assert premises_sent(2) != sent


def test_draws_differ_from_augments_with_the_same_seed():
    df = make_pairs(60).assign(source="gold")
    assert list(pick_originals(df, 0.5, 42, stream=1)) != list(pick_originals(df, 0.5, 42, stream=2))


def test_a_translator_that_loses_sentences_is_an_error():
    with pytest.raises(RuntimeError, match="returned 7 sentences for 8"):
        back_translate(PAIRS, BackTranslateParams(fraction=1.0), seed=0, translator=lambda s: s[:-1])


def test_missing_column_names_it():
    with pytest.raises(DataError, match="premise"):
        back_translate(PAIRS.drop(columns="premise"), BackTranslateParams(fraction=1.0), 0, translator=Recorder())


def test_missing_apertium_says_what_to_install(monkeypatch):
    monkeypatch.setattr(bt.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="sudo apt-get install apertium apertium-eng-spa"):
        apertium_round_trip(["A dog runs."])


def test_misaligned_apertium_output_is_an_error(monkeypatch):
    monkeypatch.setattr(bt, "check_apertium", lambda pivot: None)
    monkeypatch.setattr(
        bt.subprocess, "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, stdout="only one sentence\n\n", stderr=""),
    )
    with pytest.raises(RuntimeError, match="alignment"):
        apertium_round_trip(["One.", "Two."])


@pytest.mark.skipif(not HAS_APERTIUM, reason="apertium is not installed")
def test_real_apertium_round_trip_keeps_alignment():
    # Without a sentence boundary between them, Apertium would reorder "The dog" / "barks loudly"
    # across lines; a duplicate and an empty sentence must not shift anything either.
    sentences = ["The dog", "barks loudly", "Nobody came to the party.", "", "The dog", "I can't go\n\nhome."]
    back = apertium_round_trip(sentences)
    assert len(back) == len(sentences)
    assert back[3] == "" and back[0] == back[4]
    assert back[0].lower().startswith("the dog") and "bark" in back[1].lower()
    assert "\n" not in "".join(back)
    assert same_negation(back[5], "I cannot go home.")


@pytest.mark.skipif(not HAS_APERTIUM, reason="apertium is not installed")
def test_real_back_translation_never_keeps_a_flipped_negation(tmp_path):
    PAIRS.to_parquet(tmp_path / "train.parquet")
    (tmp_path / "params.yaml").write_text("profile: tiny\nseed: 1\nback_translate:\n  fraction: 1.0\n")
    bt.main([
        "--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "train.parquet"),
        "--output", str(tmp_path / "out.parquet"), "--metrics", str(tmp_path / "m.json"),
    ])
    out = pd.read_parquet(tmp_path / "out.parquet")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_selected"] == 4
    assert metrics["n_dropped_negation"] >= 1  # Apertium turns "Nobody" into "Anybody"
    copies = out.iloc[4:].merge(PAIRS, on="pair_id", suffixes=("", "_orig"), validate="one_to_one")
    assert len(copies) == metrics["n_kept"] >= 1
    # The "Nobody" pair (pair 0) is the one dropped, not kept; each kept copy really is a paraphrase.
    assert 0 not in set(copies["pair_id"])
    assert ((copies["premise"] != copies["premise_orig"]) | (copies["hypothesis"] != copies["hypothesis_orig"])).all()
    assert (copies["source"] == "backtranslation").all() and (copies["label"] == copies["label_orig"]).all()
    for copy in copies.itertuples():
        assert same_negation(copy.premise, copy.premise_orig) and same_negation(copy.hypothesis, copy.hypothesis_orig)
