"""back_translate: paraphrase labelled NLI pairs by round-trip translation (en -> pivot -> en).

round(fraction * n) of the n labelled gold/oracle rows are drawn; their premises and hypotheses
are translated with Apertium (rule-based, offline, CPU) in one batched process per direction. A
paraphrase is kept unless its words are unchanged on both sides (n_dropped_identical) or its
negation cues differ from the original's on either side (n_dropped_negation): "Nobody came" ->
"Anybody came" would flip the label. Kept rows are appended with source "backtranslation" and
weight `params.weight`; every input row is kept unchanged, first.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
import time
from collections.abc import Callable

import pandas as pd

from stages._cli import run
from stages._determinism import seed_everything
from stages._io import MissingPackageError, read_pairs, validate_pairs, write_metrics, write_pairs
from stages._params import BackTranslateParams, load_params
from stages._text import append_rewrites, pick_originals

# Separates back_translate's draw of rows from augment's (see stages._text.pick_originals).
_STREAM = 2

# Apertium's text format reads a blank line as a paragraph break: it ends the sentence there and
# passes the break through untouched. A single newline is only a space to it, and its transfer
# rules reorder words across one ("The dog\nbarks" -> "Los ladridos\nde perro").
_SEPARATOR = "\n\n"

Translator = Callable[[list[str]], list[str]]


def _install_hint(pivot: str) -> str:
    return f"sudo apt-get install apertium apertium-eng-{pivot}"


def check_apertium(pivot: str) -> None:
    """Raise RuntimeError naming the apt packages when apertium or the en<->pivot pair is missing."""
    if shutil.which("apertium") is None:
        raise MissingPackageError(f"back_translate needs the apertium binary; run: {_install_hint(pivot)}")
    listed = subprocess.run(["apertium", "-l"], capture_output=True, text=True, check=False).stdout.split()
    missing = [d for d in (f"eng-{pivot}", f"{pivot}-eng") if d not in listed]
    if missing:
        raise MissingPackageError(f"apertium has no {'/'.join(missing)} translator; run: {_install_hint(pivot)}")


def _apertium(sentences: list[str], direction: str) -> list[str]:
    """Translate with one apertium process; one output sentence per input sentence, in order."""
    if not sentences:
        return []
    done = subprocess.run(
        ["apertium", "-u", direction], input=_SEPARATOR.join(sentences) + _SEPARATOR,
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"apertium {direction} failed (exit {done.returncode}): {done.stderr.strip()[:500]}")
    out = [" ".join(s.split()) for s in done.stdout.strip("\n").split(_SEPARATOR)]
    if len(out) != len(sentences):
        raise RuntimeError(
            f"apertium {direction} returned {len(out)} sentences for {len(sentences)}; "
            "the sentence alignment is lost, refusing to guess"
        )
    return out


def apertium_round_trip(sentences: list[str], pivot: str = "spa") -> list[str]:
    """English -> pivot -> English with Apertium, one process per direction for the whole batch."""
    check_apertium(pivot)
    # A sentence must not contain a paragraph break of its own, so collapse all whitespace.
    clean = [" ".join(s.split()) for s in sentences]
    # MNLI repeats each premise for several hypotheses and Apertium is deterministic: translate
    # each distinct sentence once. "" is not sent (an empty paragraph would shift the alignment).
    unique = list(dict.fromkeys(s for s in clean if s))
    back = dict(zip(unique, _apertium(_apertium(unique, f"eng-{pivot}"), f"{pivot}-eng"), strict=True))
    return [back.get(s, s) for s in clean]


def back_translate(
    df: pd.DataFrame, params: BackTranslateParams, seed: int, translator: Translator | None = None
) -> tuple[pd.DataFrame, dict]:
    """Return (input rows + kept paraphrases, metrics). `translator` maps English sentences to
    their round-trip paraphrases (default: Apertium through `params.pivot`)."""
    started = time.perf_counter()
    df = validate_pairs(df, "back_translate input")
    translator = translator or functools.partial(apertium_round_trip, pivot=params.pivot)
    picked = pick_originals(df, params.fraction, seed, _STREAM, params.class_fraction)
    premises = df.loc[picked, "premise"].tolist()
    hypotheses = df.loc[picked, "hypothesis"].tolist()
    sentences = premises + hypotheses
    translate_started = time.perf_counter()
    paraphrases = translator(sentences) if sentences else []
    translate_seconds = time.perf_counter() - translate_started
    if len(paraphrases) != len(sentences):
        raise RuntimeError(f"translator returned {len(paraphrases)} sentences for {len(sentences)}")

    n = len(picked)
    rewrites = dict(zip(picked, zip(paraphrases[:n], paraphrases[n:], strict=True), strict=True))
    out, counts = append_rewrites(df, rewrites, "backtranslation", params.weight)
    return out, {
        "n_input": len(df),
        "n_selected": n,
        "n_kept": counts["kept"],
        "n_dropped_identical": counts["dropped_identical"],
        "n_dropped_negation": counts["dropped_negation"],
        "n_output": len(out),
        "pivot": params.pivot,
        "seconds": round(time.perf_counter() - started, 2),
        "sentences_per_second": round(len(sentences) / translate_seconds, 1) if sentences else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--input", required=True, help="training pairs (Parquet)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run_info = seed_everything(params.seed, params.threads)
    out, metrics = back_translate(read_pairs(args.input), params.back_translate, params.seed)
    write_pairs(out, args.output)
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(
        f"back_translate: kept {metrics['n_kept']} of {metrics['n_selected']} paraphrased pairs "
        f"({metrics['n_dropped_negation']} dropped for negation, {metrics['n_dropped_identical']} unchanged); "
        f"{metrics['sentences_per_second']} sentences/s"
    )


if __name__ == "__main__":
    run(main)
