"""Measure a distillation lever on the pipeline's current teacher, without touching DVC outputs.

    python scripts/distill_levers.py                                  # the distill params as they are
    python scripts/distill_levers.py --set epochs=3.0                 # one lever
    python scripts/distill_levers.py --student models/teacher         # start from the unpruned teacher
    python scripts/distill_levers.py --augment-pool 0 --predictions-out /tmp/lever
        # the transfer set without augment_pool's copies of the unlabelled pool (stages.augment_pool);
        # then: sec compare predictions/evaluate /tmp/lever --model quantized --split dev

Runs the distill stage's core function with `--set` overrides on models/teacher (and the pruned
model, or `--student`), the committed training and unlabelled data, then quantizes the student with
the quantize params and prints the DEV accuracy of both next to the teacher's
(metrics/evaluate_teacher.json, dev). A lever script chooses settings, so it reads the dev split only:
the test split (validation_matched) is never scored here. This is how the levers in README "Closing the accuracy gap" were
measured; it writes only under --work-dir, --predictions-out and --save-model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from stages._architecture import describe_architecture  # noqa: E402
from stages._determinism import seed_everything  # noqa: E402
from stages._io import read_pairs  # noqa: E402
from stages._models import load_model, save_model  # noqa: E402
from stages._params import load_params  # noqa: E402
from stages.augment_pool import augment_pool  # noqa: E402
from stages.distill import distill, transfer_set  # noqa: E402
from stages.evaluate import score_split, write_predictions  # noqa: E402
from stages.quantize import quantize  # noqa: E402


def score_dev(model, tokenizer, dev, batch_size: int, max_length: int, name: str) -> tuple[float, pd.DataFrame]:
    # evaluate's batch size: the same padding as the pipeline's own dev predictions, to pair with.
    metrics, predictions = score_split(model, tokenizer, dev, batch_size=batch_size, max_length=max_length, desc=name)
    return round(metrics["accuracy"] * 100, 2), predictions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a distill param (YAML value)")
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--student", default="models/pruned", help="the model cut to distill.layers and trained")
    parser.add_argument("--train", default="data/backtranslated/train.parquet")
    parser.add_argument("--unlabelled", default="data/selected/unlabelled.parquet",
                        help="the pool before augment_pool (that stage's output already holds the copies)")
    parser.add_argument("--dev", default="data/prepared/dev.parquet", help="the dev split (never the test split)")
    parser.add_argument("--teacher-metrics", default="metrics/evaluate_teacher.json")
    parser.add_argument("--work-dir", default=None, help="checkpoints (default: a temporary directory)")
    parser.add_argument("--augment-pool", type=float, default=None, metavar="FRACTION",
                        help="add augmented and back-translated copies of this share of the unlabelled pool "
                             "(KD only; default: params.yaml augment_pool.fraction, as the pipeline does)")
    parser.add_argument("--predictions-out", default=None,
                        help="write distilled-dev.parquet and quantized-dev.parquet here, for `sec compare`")
    parser.add_argument("--save-model", default=None,
                        help="save the distilled (float) student here, a model directory like models/distilled "
                             "(then `python -m stages.quantize` and scripts/benchmark.py --candidate time it)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    seed_everything(params.seed, params.threads)
    updates = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        try:
            updates[key] = json.loads(value)  # 2e-4 is a number here; YAML 1.1 would read a string
        except ValueError:
            updates[key] = yaml.safe_load(value)
    # model_validate (not model_copy) so an override is type-checked like params.yaml itself.
    p = type(params.distill).model_validate({**params.distill.model_dump(), **updates})
    teacher, tokenizer = load_model(args.teacher)
    student, _ = load_model(args.student)
    unlabelled = read_pairs(args.unlabelled, allow_unlabelled=True, allow_empty=True)
    pool_copies = {}
    fraction = params.augment_pool.fraction if args.augment_pool is None else args.augment_pool
    if fraction > 0:
        unlabelled, pool_metrics = augment_pool(unlabelled, fraction, params.augment, params.back_translate, params.seed)
        pool_copies = {k: pool_metrics[k] for k in ("n_augmented", "n_backtranslated")}
    data = transfer_set(read_pairs(args.train), unlabelled, p.transfer_size, params.seed)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        student, student_tok, metrics = distill(
            student, tokenizer, teacher, data, p, max_length=params.model.max_length, seed=params.seed,
            checkpoint_dir=Path(work) / "checkpoints",
        )
    if args.save_model:
        info = {"stage": "distill_levers", "parent": args.student, "teacher": args.teacher, "set": updates,
                "augment_pool": fraction, "architecture": describe_architecture(student)}
        save_model(student, student_tok, args.save_model, info)
    quantized, _ = quantize(student, params.quantize)
    dev = read_pairs(args.dev)
    teacher_acc = json.loads(Path(args.teacher_metrics).read_text())["models"]["teacher"]["dev"]["accuracy"] * 100
    distilled_acc, distilled_preds = score_dev(student, student_tok, dev, params.evaluate.batch_size, params.model.max_length, "distilled")
    quantized_acc, quantized_preds = score_dev(quantized, student_tok, dev, params.evaluate.batch_size, params.model.max_length, "quantized")
    if args.predictions_out:
        write_predictions({"distilled-dev": distilled_preds, "quantized-dev": quantized_preds}, args.predictions_out)
    result = {
        "student": args.student, "set": updates, "augment_pool": fraction, "pool_copies": pool_copies,
        "transfer_rows": metrics["transfer_rows"], "labelled_rows": metrics["labelled_rows"],
        "train_steps": metrics["train_steps"],
        "train_minutes": round(metrics["train_seconds"] / 60, 1), "params": metrics["params_after"],
        "teacher_dev_accuracy": round(teacher_acc, 2),
        "distilled_dev_accuracy": distilled_acc,
        "quantized_dev_accuracy": quantized_acc,
    }
    result["quantized_dev_delta_pts"] = round(result["quantized_dev_accuracy"] - result["teacher_dev_accuracy"], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
