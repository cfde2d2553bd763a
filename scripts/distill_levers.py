"""Measure a distillation lever on the pipeline's current teacher, without touching DVC outputs.

    python scripts/distill_levers.py                                  # the distill params as they are
    python scripts/distill_levers.py --set epochs=3.0                 # one lever
    python scripts/distill_levers.py --student models/teacher         # start from the unpruned teacher

Runs the distill stage's core function with `--set` overrides on models/teacher (and the pruned
model, or `--student`), the committed training and unlabelled data, then quantizes the student with
the quantize params and prints the DEV accuracy of both next to the teacher's
(metrics/evaluate_teacher.json, dev). A lever script chooses settings, so it reads the dev split only:
the test split (validation_matched) is never scored here. This is how the levers in README "Closing the accuracy gap" were
measured; it writes only under --work-dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages._determinism import seed_everything  # noqa: E402
from stages._inference import predict_logits  # noqa: E402
from stages._io import read_pairs  # noqa: E402
from stages._models import load_model  # noqa: E402
from stages._params import load_params  # noqa: E402
from stages.distill import distill, transfer_set  # noqa: E402
from stages.evaluate import quality  # noqa: E402
from stages.quantize import quantize  # noqa: E402


def accuracy_pct(model, tokenizer, dev, max_length: int) -> float:
    logits = predict_logits(
        model, tokenizer, dev["premise"].tolist(), dev["hypothesis"].tolist(), batch_size=32, max_length=max_length
    )
    return round(quality(logits, dev["label"].to_numpy())["accuracy"] * 100, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a distill param (YAML value)")
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--student", default="models/pruned", help="the model cut to distill.layers and trained")
    parser.add_argument("--train", default="data/backtranslated/train.parquet")
    parser.add_argument("--unlabelled", default="data/selected/unlabelled.parquet")
    parser.add_argument("--dev", default="data/prepared/dev.parquet", help="the dev split (never the test split)")
    parser.add_argument("--teacher-metrics", default="metrics/evaluate_teacher.json")
    parser.add_argument("--work-dir", default=None, help="checkpoints (default: a temporary directory)")
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
    data = transfer_set(
        read_pairs(args.train), read_pairs(args.unlabelled, allow_unlabelled=True, allow_empty=True), p.transfer_size, params.seed
    )
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        student, student_tok, metrics = distill(
            student, tokenizer, teacher, data, p, max_length=params.model.max_length, seed=params.seed,
            checkpoint_dir=Path(work) / "checkpoints",
        )
    quantized, _ = quantize(student, params.quantize)
    dev = read_pairs(args.dev)
    teacher_acc = json.loads(Path(args.teacher_metrics).read_text())["models"]["teacher"]["dev"]["accuracy"] * 100
    result = {
        "student": args.student, "set": updates, "train_steps": metrics["train_steps"],
        "train_minutes": round(metrics["train_seconds"] / 60, 1), "params": metrics["params_after"],
        "teacher_dev_accuracy": round(teacher_acc, 2),
        "distilled_dev_accuracy": accuracy_pct(student, student_tok, dev, params.model.max_length),
        "quantized_dev_accuracy": accuracy_pct(quantized, student_tok, dev, params.model.max_length),
    }
    result["quantized_dev_delta_pts"] = round(result["quantized_dev_accuracy"] - result["teacher_dev_accuracy"], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
