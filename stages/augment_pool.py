"""augment_pool: a larger distillation transfer set from the unlabelled pool.

Distillation needs no gold labels: the teacher labels every transfer pair for free. This stage
gives each of round(fraction * n) pool pairs an augmented copy (augment's ops and rate:
synonyms and swaps) and, independently drawn, round(fraction * n) a back-translated one
(Apertium through back_translate.pivot), with the same NLI-safety filters as those stages
(copies whose negation cues changed, or whose words did not, are dropped). Output: the pool
unchanged, then the kept copies (source "synonym"/"eda" or "backtranslation"), every row label -1,
so distill gives them the KD terms only. `fraction: 0` passes the pool through unchanged.
"""

from __future__ import annotations

import argparse

import pandas as pd

from stages._cli import run
from stages._determinism import seed_everything
from stages._io import read_pairs, write_metrics, write_pairs
from stages._params import AugmentParams, BackTranslateParams, load_params
from stages.augment import augment
from stages.back_translate import Translator, back_translate


def augment_pool(
    unlabelled: pd.DataFrame, fraction: float, augment_params: AugmentParams, back_translate_params: BackTranslateParams,
    seed: int, translator: Translator | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Return (the pool + its kept copies, all label -1; metrics). `translator`: as back_translate takes it.

    augment and back_translate draw from labelled originals, so the pool goes through them with a
    placeholder label 0 that no rewrite reads; it is set back to -1 here. Their own class
    fractions (adaptive augmentation of the labelled rows) do not apply to unlabelled pairs.
    """
    pool = unlabelled.assign(label=0, source="gold")
    copies, metrics = [], {"n_pool": len(unlabelled), "fraction": fraction}
    if fraction > 0 and len(pool):
        off = {"fraction": fraction, "class_fraction": None}
        augmented, a = augment(pool, augment_params.model_copy(update=off), seed)
        translated, b = back_translate(pool, back_translate_params.model_copy(update=off), seed, translator)
        copies = [augmented.iloc[len(pool):], translated.iloc[len(pool):]]
        metrics.update(n_augmented=a["n_augmented"], n_backtranslated=b["n_kept"],
                       n_dropped_negation=a["n_dropped_negation"] + b["n_dropped_negation"],
                       n_dropped_identical=a["n_dropped_identical"] + b["n_dropped_identical"])
    else:
        metrics.update(n_augmented=0, n_backtranslated=0, n_dropped_negation=0, n_dropped_identical=0)
    extra = pd.concat(copies, ignore_index=True).assign(label=-1) if copies else unlabelled.iloc[:0]
    out = pd.concat([unlabelled, extra[unlabelled.columns]], ignore_index=True)
    metrics["n_output"] = len(out)
    return out, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--input", required=True, help="the unlabelled pool (Parquet)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run_info = seed_everything(params.seed, params.threads)
    unlabelled = read_pairs(args.input, allow_unlabelled=True, allow_empty=True)
    out, metrics = augment_pool(unlabelled, params.augment_pool.fraction, params.augment, params.back_translate, params.seed)
    write_pairs(out, args.output)
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(f"augment_pool: {metrics['n_pool']} pool pairs + {metrics['n_augmented']} augmented "
          f"+ {metrics['n_backtranslated']} back-translated copies (KD only)")


if __name__ == "__main__":
    run(main)
