"""Helpers shared by the text-augmentation stages (augment, back_translate).

NLI labels hinge on negation: "A man is sleeping" / "Nobody is sleeping" is a contradiction, and a
paraphrase that loses or gains a "not" silently flips it. So both stages protect negation cues and
drop any rewritten sentence whose cues differ from the original's (`same_negation`). The stages also
share which rows they may rewrite (`pick_originals`) and how rewrites are filtered and appended
(`append_rewrites`).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from stages._io import LABEL_NAMES

# Rows written by people (the seed set and the oracle's labels); only these are rewritten, never
# rows that are themselves augmentations.
ORIGINAL_SOURCES = ("gold", "oracle")

# Words that negate or nearly negate a clause.
NEGATION_WORDS = frozenset(
    {
        "no", "not", "never", "nobody", "noone", "nothing", "none", "neither", "nor", "nowhere",
        "cannot", "without", "hardly", "scarcely", "barely", "seldom", "rarely",
    }
)
# Spellings of one cue, counted under one name, because translators and rewriters move freely
# between them ("can't" -> "can not", "rarely" -> "seldom"). Every "-n't" contraction is "not".
_SAME_CUE = {"cannot": "not", "scarcely": "hardly", "barely": "hardly", "seldom": "rarely"}

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def negation_cues(text: str) -> Counter:
    """Count negation cues in `text`, case-insensitively, spellings of one cue under one name."""
    cues: Counter = Counter()
    for token in _WORD.findall(text.replace("’", "'").lower()):
        if token.endswith("n't"):
            cues["not"] += 1
            continue
        base = token.split("'", 1)[0]  # "nothing's" -> "nothing"
        if base in NEGATION_WORDS:
            cues[_SAME_CUE.get(base, base)] += 1
    return cues


def same_negation(a: str, b: str) -> bool:
    """True when `a` and `b` carry the same negation cues, each the same number of times."""
    return negation_cues(a) == negation_cues(b)


def is_negation(token: str) -> bool:
    return bool(negation_cues(token))


def stopword_regex(extra_words: frozenset[str] = frozenset()) -> str:
    """A pattern for nlpaug's `stopwords_regex`: a whole token that is a negation cue (any case,
    optionally with a clitic, as in "nothing's") or one of `extra_words`.

    nlpaug compares its `stopwords` list case-sensitively; a case-insensitive regex catches "Not"
    at the start of a sentence and every "-n't" contraction.
    """
    words = "|".join(map(re.escape, sorted(NEGATION_WORDS | extra_words)))
    return r"(?i)^\s*(?:(?:" + words + r")(?:['’]\w+)?|\w*n['’]t)\s*$"


def same_words(a: str, b: str) -> bool:
    """True when `a` and `b` have the same words in the same order, ignoring case, spacing and
    punctuation: such a rewrite adds nothing to the training set."""
    return re.findall(r"\w+", a.casefold()) == re.findall(r"\w+", b.casefold())


def pick_originals(
    df: pd.DataFrame, fraction: float, seed: int, stream: int, class_fraction: dict[str, float] | None = None
) -> pd.Index:
    """Index labels of round(fraction * n) rows drawn from the n labelled original rows.

    `class_fraction` (label name -> fraction) overrides `fraction` per class: adaptive augmentation,
    where the controller raises the rate for the classes the last evaluation got wrong most.
    `stream` separates the stages' draws: with the same seed, augment and back_translate would
    otherwise rewrite exactly the same rows.
    """
    original = df["source"].isin(ORIGINAL_SOURCES) & (df["label"] >= 0)
    rng = np.random.default_rng([seed, stream])
    if not class_fraction:
        eligible = df.index[original]
        k = round(fraction * len(eligible))
        return pd.Index(np.sort(rng.choice(eligible.to_numpy(), size=k, replace=False)))
    picked = []
    for label, name in enumerate(LABEL_NAMES):
        eligible = df.index[original & (df["label"] == label)]
        k = round(min(1.0, class_fraction.get(name, fraction)) * len(eligible))
        picked.append(rng.choice(eligible.to_numpy(), size=k, replace=False))
    return pd.Index(np.sort(np.concatenate(picked)))


def append_rewrites(
    df: pd.DataFrame, rewrites: dict, source: str, weight: float
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Append rewritten pairs ({row: (premise, hypothesis)}) as new rows after all of `df`.

    A rewrite whose negation cues differ from its original's on either side is dropped (it may
    have flipped the label), as is one whose words are unchanged on both sides. Kept rows copy
    their original's other columns (label, ids) and get `source` and `weight`.
    """
    kept: dict = {}
    counts = {"dropped_negation": 0, "dropped_identical": 0}
    for row, (premise, hypothesis) in rewrites.items():
        old_premise, old_hypothesis = df.at[row, "premise"], df.at[row, "hypothesis"]
        if not (same_negation(old_premise, premise) and same_negation(old_hypothesis, hypothesis)):
            counts["dropped_negation"] += 1
        elif same_words(old_premise, premise) and same_words(old_hypothesis, hypothesis):
            counts["dropped_identical"] += 1
        else:
            kept[row] = (premise, hypothesis)
    copies = df.loc[list(kept)].copy()
    copies["premise"] = [p for p, _ in kept.values()]
    copies["hypothesis"] = [h for _, h in kept.values()]
    copies["source"] = source
    copies["weight"] = float(weight)
    return pd.concat([df, copies], ignore_index=True), {"kept": len(copies), **counts}
