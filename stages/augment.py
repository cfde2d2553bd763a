"""augment: label-preserving EDA-style augmentation of the labelled NLI pairs.

round(fraction * n) of the n labelled gold/oracle rows (never earlier augmentations) get one
augmented copy. Premise and hypothesis both go through `params.ops`, in the listed order:
  synonym  replace ceil(rate * tokens) content words (nouns, verbs, adjectives, adverbs) with a
           synonym from their most frequent WordNet sense: nlpaug's SynonymAug, offline
           (stages/_wordnet.py);
  swap     swap two random words, max(1, round(rate * words)) times (EDA random swap);
  delete   delete max(1, round(rate * words)) random words, never all (EDA random deletion).
NLI safety: negation cues (stages/_text.py) are never replaced, swapped or deleted, and a copy
whose negation cues differ from its original's on either side is dropped (n_dropped_negation), as is
a copy whose words are unchanged on both sides (n_dropped_identical). Synonyms also skip auxiliaries
and quantifiers ("is", "all", "only", ...), which carry the entailment as much as negations do.

Output: every input row unchanged, then the kept copies with source "synonym" when the ops include
synonym, else "eda", and weight `params.weight`. Each sentence's randomness is seeded from
(seed, row, side), so the output depends only on the input, the params and the seed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pandas as pd
from tqdm import tqdm

from stages._cli import run
from stages._determinism import seed_everything
from stages._io import read_pairs, validate_pairs, write_metrics, write_pairs
from stages._params import AugmentParams, load_params
from stages._text import append_rewrites, is_negation, pick_originals, stopword_regex

if TYPE_CHECKING:
    from nlpaug.augmenter.word import SynonymAug

# Separates augment's draw of rows from back_translate's (see stages._text.pick_originals).
_STREAM = 1

# Words a synonym must not replace besides negations: auxiliaries and quantifiers decide
# entailment ("all" -> "whole", "is" -> "exist") and WordNet's "synonyms" for them rarely fit.
_SYNONYM_SKIP = frozenset(
    """be am is are was were been being have has had having do does did doing done get gets got
    gotten getting all some any every each many much more most few fewer less least several both
    either only just even also too very so such same other another else then there here still
    again ever always often sometimes usually almost quite rather enough first last own""".split()
)

# A token and whether it was written glued to the previous one ("park" + "." in "park.").
Token = tuple[str, bool]
Op = Callable[[list[Token], random.Random], list[Token]]

_EDGES = re.compile(r"^(\W*)(.*?)(\W*)$")
# nlpaug works on strings. Joined with a character that `tokenize` removes from any text, our
# tokens pass through it one for one, and each keeps its glue flag.
_SEP = "\x00"


def tokenize(text: str) -> list[Token]:
    """Whitespace chunks with leading/trailing punctuation split off, one token per mark.

    Inner punctuation stays, so "don't", "U.S" and "bi-unique" are single tokens.
    """
    tokens: list[Token] = []
    for chunk in text.replace(_SEP, " ").split():
        prefix, core, suffix = _EDGES.match(chunk).groups()
        parts = [*prefix, *([core] if core else []), *suffix]
        tokens += [(part, i > 0) for i, part in enumerate(parts)]
    return tokens


def detokenize(tokens: list[Token]) -> str:
    return "".join(("" if glued or i == 0 else " ") + text for i, (text, glued) in enumerate(tokens))


def _editable(tokens: list[Token]) -> list[int]:
    """Positions EDA may touch: words (not punctuation) that are not negation cues."""
    return [i for i, (text, _) in enumerate(tokens) if re.search(r"\w", text) and not is_negation(text)]


def _count(rate: float, n_words: int) -> int:
    # As in EDA: at least one edit, else about `rate` of the words.
    return max(1, round(rate * n_words))


def _swap(tokens: list[Token], rng: random.Random, rate: float) -> list[Token]:
    positions = _editable(tokens)
    if len(positions) < 2:
        return tokens
    out = list(tokens)
    for _ in range(_count(rate, len(positions))):
        i, j = rng.sample(positions, 2)
        # Words move, spacing stays with the position.
        (a, glued_a), (b, glued_b) = out[i], out[j]
        out[i], out[j] = (b, glued_a), (a, glued_b)
    return out


def _delete(tokens: list[Token], rng: random.Random, rate: float) -> list[Token]:
    positions = _editable(tokens)
    n = min(_count(rate, len(positions)), len(positions) - 1)
    if n <= 0:
        return tokens
    dropped = set(rng.sample(positions, n))
    out: list[Token] = []
    glue_gap = False
    for i, (text, glued) in enumerate(tokens):
        if i in dropped:
            glue_gap = glue_gap or glued
            continue
        # Closing the gap: stay glued if either side was ("in the park." -> "in the.").
        out.append((text, (glued or glue_gap) if out else False))
        glue_gap = False
    return out


@contextlib.contextmanager
def _global_random(seed: int) -> Iterator[None]:
    # nlpaug draws from the global `random` module; seed it per sentence and give the caller's
    # state back afterwards.
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _synonym(tokens: list[Token], rng: random.Random, aug: SynonymAug) -> list[Token]:
    if not tokens:
        return tokens
    with _global_random(rng.getrandbits(64)):
        result = aug.augment(_SEP.join(text for text, _ in tokens))
    words = result[0].split(_SEP) if result else []
    if len(words) != len(tokens):  # nlpaug substitutes one for one; anything else: leave it
        return tokens
    return [(word, glued) for word, (_, glued) in zip(words, tokens, strict=True)]


def _build_ops(params: AugmentParams) -> list[Op]:
    ops: list[Op] = []
    for name in params.ops:
        if name == "synonym":
            # Imported here: nlpaug imports torch and transformers (seconds), which EDA-only
            # runs and tests do not need.
            from stages._wordnet import synonym_augmenter

            aug = synonym_augmenter(
                params.rate, stopword_regex(_SYNONYM_SKIP),
                tokenizer=lambda text: text.split(_SEP), reverse_tokenizer=_SEP.join,
            )
            ops.append(functools.partial(_synonym, aug=aug))
        elif name == "swap":
            ops.append(functools.partial(_swap, rate=params.rate))
        elif name == "delete":
            ops.append(functools.partial(_delete, rate=params.rate))
    return ops


def _augment_text(text: str, ops: list[Op], rng: random.Random) -> str:
    original = tokenize(text)
    tokens = original
    for op in ops:
        tokens = op(tokens, rng)
    return text if tokens == original else detokenize(tokens)


def augment(df: pd.DataFrame, params: AugmentParams, seed: int) -> tuple[pd.DataFrame, dict]:
    """Return (input rows + augmented copies, metrics); see the module docstring."""
    started = time.perf_counter()
    df = validate_pairs(df, "augment input")
    picked = pick_originals(df, params.fraction, seed, _STREAM, params.class_fraction)
    ops = _build_ops(params)
    source = "synonym" if "synonym" in params.ops else "eda"
    rewrites = {
        row: tuple(
            _augment_text(df.at[row, side], ops, random.Random(f"{seed}:{row}:{side}"))
            for side in ("premise", "hypothesis")
        )
        for row in tqdm(picked, desc="augment", unit="pair", mininterval=1.0)
    }
    out, counts = append_rewrites(df, rewrites, source, params.weight)
    return out, {
        "n_input": len(df),
        "n_selected": len(picked),
        "n_augmented": counts["kept"],
        "n_dropped_negation": counts["dropped_negation"],
        "n_dropped_identical": counts["dropped_identical"],
        "n_output": len(out),
        "ops": list(params.ops),
        "rate": params.rate,
        "source": source,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--input", required=True, help="labelled pairs (Parquet)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run_info = seed_everything(params.seed, params.threads)
    out, metrics = augment(read_pairs(args.input), params.augment, params.seed)
    write_pairs(out, args.output)
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(
        f"augment: {metrics['n_augmented']} of {metrics['n_selected']} selected pairs augmented "
        f"({metrics['n_dropped_negation']} dropped for negation, {metrics['n_dropped_identical']} unchanged) "
        f"in {metrics['seconds']} s"
    )


if __name__ == "__main__":
    run(main)
