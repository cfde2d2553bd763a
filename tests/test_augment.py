"""augment stage: EDA ops, NLI safety (negations), selection, determinism, offline WordNet."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

import stages.augment as augment_stage
from conftest import make_pairs
from stages._io import DataError
from stages._params import AugmentParams
from stages._text import (
    NEGATION_WORDS,
    is_negation,
    negation_cues,
    pick_originals,
    same_negation,
    same_words,
    stopword_regex,
)
from stages.augment import augment, detokenize, tokenize

HAS_WORDNET = Path("/usr/share/wordnet/data.noun").is_file()

NEGATED = pd.DataFrame(
    {
        "premise": [
            "Nobody is sleeping by the river in the old town.",
            "The chef doesn't cook dinner at home on Sundays.",
            "A man is never late for the early morning train.",
            "Two kids cannot find the red ball in the garden.",
        ],
        "hypothesis": [
            "A woman is not sleeping by the river.",
            "The chef cooks nothing at home on weekends.",
            "A man has no car and no bike for the trip.",
            "The kids are without their ball today.",
        ],
        "label": [1, 0, 1, 0],
        # Copies keep their original's other columns: this one ties each copy to its original.
        "pair_id": [10, 11, 12, 13],
    }
)


def with_originals(df: pd.DataFrame, out: pd.DataFrame) -> pd.DataFrame:
    """The appended copies, each joined with its original (columns *_orig)."""
    copies = out.iloc[len(df):]
    return copies.merge(df, on="pair_id", suffixes=("", "_orig"), validate="one_to_one")


def test_negation_cues_normalise_contractions_and_spellings():
    assert negation_cues("I don't think nobody can't go.") == Counter({"not": 2, "nobody": 1})
    assert same_negation("I can't go, won't stay.", "I cannot go, will not stay.")
    assert same_negation("Authors rarely write.", "Authors seldom write.")
    assert same_negation("Do n't", "do not")  # Penn-Treebank-style tokens
    assert not same_negation("Nobody came to the party.", "Anybody came to the party.")
    assert not same_negation("It has no impact.", "It has an impact.")
    assert negation_cues("Nothing's wrong") == Counter({"nothing": 1})


def test_stopword_regex_matches_exactly_the_negation_tokens():
    pattern = re.compile(stopword_regex(frozenset({"is"})))
    for word in [*NEGATION_WORDS, "Not", "NEVER", "don't", "Won’t", "nothing's", " no "]:
        assert pattern.match(word), word
        assert word.strip() == "is" or is_negation(word), word
    assert pattern.match("Is")
    for word in ["notable", "know", "nothingness", "snow", "dog"]:
        assert not pattern.match(word), word
        assert not is_negation(word), word


@pytest.mark.parametrize(
    "text",
    ["The man is eating in the park.", '(the man) said, "hello" -- don\'t U.S. kids\' toys...', "", "Hi"],
)
def test_tokenize_round_trips_the_spacing(text):
    assert detokenize(tokenize(text)) == text


def test_eda_never_touches_negations_and_keeps_labels():
    params = AugmentParams(fraction=1.0, rate=0.5, ops=["swap", "delete"], weight=0.5)
    df = NEGATED.assign(source="gold")
    out, metrics = augment(df, params, seed=3)
    new = with_originals(df, out)
    assert metrics["n_dropped_negation"] == 0
    assert metrics["n_augmented"] == len(new) == 4
    for copy in new.itertuples():
        assert copy.label == copy.label_orig
        assert same_negation(copy.premise, copy.premise_orig)
        assert same_negation(copy.hypothesis, copy.hypothesis_orig)
        assert (copy.premise, copy.hypothesis) != (copy.premise_orig, copy.hypothesis_orig)
        # Swap and delete only move and remove words: no new ones, fewer in all.
        words, words_orig = Counter(sorted_words(copy.premise)), Counter(sorted_words(copy.premise_orig))
        assert not words - words_orig and words.total() < words_orig.total()
    assert set(new["source"]) == {"eda"}
    assert set(new["weight"]) == {0.5}


def test_output_is_input_plus_copies_and_metrics_add_up():
    df = make_pairs(40).assign(pair_id=range(40), source=["gold"] * 20 + ["oracle"] * 10 + ["synonym"] * 10)
    params = AugmentParams(fraction=0.5, rate=0.2, ops=["swap"])
    out, metrics = augment(df, params, seed=0)
    pd.testing.assert_frame_equal(out.iloc[: len(df)].reset_index(drop=True), df.assign(weight=1.0))
    assert metrics["n_input"] == 40
    assert metrics["n_selected"] == 15  # half of the 30 gold/oracle rows; augmentations are never re-augmented
    assert metrics["n_output"] == len(out) == 40 + metrics["n_augmented"]
    assert metrics["ops"] == ["swap"] and metrics["rate"] == 0.2 and metrics["seconds"] >= 0
    new = with_originals(df, out)  # one copy per original at most (validate="one_to_one")
    # The copies are of selected originals and differ from them; the selected originals left without
    # a copy are the dropped ones: a swap moves words, so none changes a negation, and those whose
    # swaps changed nothing are the identical ones.
    selected = set(df.loc[pick_originals(df, params.fraction, 0, augment_stage._STREAM), "pair_id"])
    assert len(selected) == 15 and set(new["pair_id"]) <= selected
    assert ((new["premise"] != new["premise_orig"]) | (new["hypothesis"] != new["hypothesis_orig"])).all()
    assert metrics["n_dropped_negation"] == 0
    assert len(selected - set(new["pair_id"])) == metrics["n_dropped_identical"]
    assert (new["source"] == "eda").all()
    assert set(new["source_orig"]) <= {"gold", "oracle"}
    assert (new["label"] == new["label_orig"]).all()
    # A swap keeps the words, only their order changes.
    assert (new["premise"].map(sorted_words) == new["premise_orig"].map(sorted_words)).all()


def sorted_words(text: str) -> list[str]:
    return sorted(re.findall(r"\w+", text))


def test_unchangeable_rows_are_dropped_as_identical():
    df = pd.DataFrame({"premise": ["Hello.", "Yes!"], "hypothesis": ["Hi.", "No."], "label": [0, 2]})
    out, metrics = augment(df, AugmentParams(fraction=1.0, ops=["swap", "delete"]), seed=0)
    assert metrics["n_dropped_identical"] == 2
    assert metrics["n_augmented"] == 0 and len(out) == 2


def test_a_copy_that_changes_negation_is_dropped(monkeypatch):
    def planted(tokens, rng):  # rewrites every sentence, and "Nobody" into "Anybody"
        def rewrite(t: str) -> str:
            return "Anybody" if t == "Nobody" else t if is_negation(t) or not t.isalpha() else t + "s"

        return [(rewrite(t), glued) for t, glued in tokens]

    monkeypatch.setattr(augment_stage, "_build_ops", lambda params: [planted])
    out, metrics = augment(NEGATED, AugmentParams(fraction=1.0, ops=["swap"]), seed=0)
    assert metrics["n_dropped_negation"] == 1
    assert metrics["n_augmented"] == 3
    assert not out["premise"].str.contains("Anybody").any()


def test_deterministic_by_seed():
    df = make_pairs(60)
    params = AugmentParams(fraction=0.3, rate=0.3, ops=["swap", "delete"])
    first, first_metrics = augment(df, params, seed=7)
    again, _ = augment(df, params, seed=7)
    other, _ = augment(df, params, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not first.iloc[60:].reset_index(drop=True).equals(other.iloc[60:].reset_index(drop=True))
    assert first_metrics["n_selected"] == 18


def test_fraction_zero_adds_nothing():
    out, metrics = augment(make_pairs(9), AugmentParams(fraction=0.0, ops=["swap"]), seed=0)
    assert len(out) == 9 and metrics["n_selected"] == metrics["n_augmented"] == 0


def test_missing_column_names_it():
    with pytest.raises(DataError, match="hypothesis"):
        augment(make_pairs(6).drop(columns="hypothesis"), AugmentParams(fraction=0.5), seed=0)


def test_main_writes_pairs_and_metrics(tmp_path):
    make_pairs(30).to_parquet(tmp_path / "labelled.parquet")
    (tmp_path / "params.yaml").write_text("profile: tiny\nseed: 5\naugment:\n  ops: [swap, delete]\n  weight: 0.7\n")
    augment_stage.main([
        "--params", str(tmp_path / "params.yaml"), "--input", str(tmp_path / "labelled.parquet"),
        "--output", str(tmp_path / "out" / "train.parquet"), "--metrics", str(tmp_path / "m.json"),
    ])
    out = pd.read_parquet(tmp_path / "out" / "train.parquet")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_selected"] == 15  # the tiny profile's fraction, 0.5
    assert len(out) == 30 + metrics["n_augmented"] > 30
    assert set(out["weight"].iloc[30:]) == {0.7}


# --- offline WordNet + SynonymAug (Debian's wordnet-base) ---------------------------------------


@pytest.fixture(scope="module")
def nltk_data(tmp_path_factory) -> Path:
    if not HAS_WORDNET:
        pytest.skip("wordnet-base is not installed (sudo apt-get install wordnet-base)")
    return tmp_path_factory.mktemp("nltk_data")


@pytest.fixture
def offline_nltk(nltk_data, monkeypatch):
    import nltk

    monkeypatch.setenv("NLTK_DATA", str(nltk_data))
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))

    def no_network(*args, **kwargs):
        raise AssertionError("nltk tried to download (or use its downloadable tagger)")

    monkeypatch.setattr(nltk, "download", no_network)
    monkeypatch.setattr(nltk, "pos_tag", no_network)
    yield nltk_data
    # nltk's lazy `wordnet` turns itself into a reader rooted at this temporary directory on first
    # use; unload it so that later tests in this process find WordNet where NLTK_DATA says again.
    from nltk.corpus import wordnet
    from nltk.corpus.util import LazyCorpusLoader

    if not isinstance(wordnet, LazyCorpusLoader) and hasattr(wordnet, "_unload"):
        wordnet._unload()


def test_ensure_wordnet_copies_debian_files_and_is_idempotent(offline_nltk):
    from stages._wordnet import ensure_wordnet

    corpus = ensure_wordnet()
    assert corpus == offline_nltk / "corpora" / "wordnet"
    assert (corpus / "data.noun").is_file() and not (corpus / "data.noun").is_symlink()
    lexnames = (corpus / "lexnames").read_text().splitlines()
    assert len(lexnames) == 45 and lexnames[0] == "00\tadj.all\t3" and lexnames[44] == "44\tadj.ppl\t3"
    stamps = {p.name: p.stat().st_mtime_ns for p in corpus.iterdir()}
    assert ensure_wordnet() == corpus
    assert {p.name: p.stat().st_mtime_ns for p in corpus.iterdir()} == stamps

    from nltk.corpus import wordnet

    assert "dog.n.01" in {s.name() for s in wordnet.synsets("dog")}
    assert wordnet.lemma_from_key("dog%1:05:00::").name() == "dog"  # index.sense, rebuilt


def test_ensure_wordnet_without_debian_files_says_what_to_install(tmp_path):
    from stages._wordnet import ensure_wordnet

    with pytest.raises(RuntimeError, match="sudo apt-get install wordnet-base"):
        ensure_wordnet(tmp_path / "nltk", source=tmp_path / "no-wordnet")


def test_real_synonym_aug_is_offline_deterministic_and_keeps_negations(offline_nltk):
    params = AugmentParams(fraction=1.0, rate=0.3, ops=["synonym"])
    out, metrics = augment(NEGATED, params, seed=1)
    again, _ = augment(NEGATED, params, seed=1)
    pd.testing.assert_frame_equal(out, again)
    new = with_originals(NEGATED, out)
    assert metrics["n_augmented"] == len(new) >= 3
    assert set(new["source"]) == {"synonym"}
    for copy in new.itertuples():
        assert copy.label == copy.label_orig
        assert same_negation(copy.premise, copy.premise_orig)
        assert same_negation(copy.hypothesis, copy.hypothesis_orig)
        # The negation words themselves are still there, untouched.
        for side, side_orig in ((copy.premise, copy.premise_orig), (copy.hypothesis, copy.hypothesis_orig)):
            assert [w for w in side.split() if is_negation(w)] == [w for w in side_orig.split() if is_negation(w)]
        # Substitution keeps the sentence's punctuation where it was.
        assert re.findall(r"[^\w\s']", copy.premise) == re.findall(r"[^\w\s']", copy.premise_orig)
        assert not same_words(copy.premise, copy.premise_orig) or not same_words(copy.hypothesis, copy.hypothesis_orig)


def test_class_fraction_augments_only_the_classes_it_raises(pairs):
    from stages._text import pick_originals

    picked = pick_originals(pairs, 0.0, 0, 1, {"neutral": 1.0})
    assert set(pairs.loc[picked, "label"]) == {1}
    assert len(picked) == int((pairs["label"] == 1).sum())
    both = pick_originals(pairs, 0.5, 0, 1, {"contradiction": 0.0})
    assert 2 not in set(pairs.loc[both, "label"]) and len(both) == round(0.5 * 20) * 2


def test_class_fraction_rejects_unknown_class_and_out_of_range():
    import yaml

    from stages._params import ParamsError, parse_params

    raw = yaml.safe_load(open("params.yaml"))
    raw["augment"]["class_fraction"] = {"neutrall": 0.5}
    with pytest.raises(ParamsError, match="augment.class_fraction"):
        parse_params(raw)
    raw["augment"]["class_fraction"] = {"neutral": 1.5}
    with pytest.raises(ParamsError, match="augment.class_fraction.neutral"):
        parse_params(raw)
