"""distill: a student learns from the teacher's soft labels and the gold labels.

loss = (1 - alpha) * CE(gold) + alpha * T^2 * KL(teacher_T || student_T). The transfer set is the
labelled training data plus unlabelled pool pairs (KD term only: the teacher labels them for free).
The student is the pruned teacher (`student: pruned`) or any pretrained model from the registry.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from stages._cli import run
from stages._inference import predict_logits
from stages._io import read_pairs, write_metrics
from stages._models import load_model, load_pretrained_classifier, read_sec_info, save_model
from stages._params import DistillParams, load_params
from stages._training import checkpoint_dir_for, train, train_config


def transfer_set(labelled: pd.DataFrame, unlabelled: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """Labelled rows plus `size` unlabelled ones (0 = all), label -1 so they carry only the KD loss."""
    extra = unlabelled if size == 0 or size >= len(unlabelled) else unlabelled.sample(n=size, random_state=seed)
    extra = extra.assign(label=-1, source="transfer", weight=1.0)[["premise", "hypothesis", "label", "source", "weight"]]
    return pd.concat([labelled[["premise", "hypothesis", "label", "source", "weight"]], extra], ignore_index=True)


def distill(student, tokenizer, teacher, data: pd.DataFrame, params: DistillParams, *, max_length: int, seed: int, checkpoint_dir, live_dir=None) -> dict:
    started = time.perf_counter()
    teacher_logits = predict_logits(
        teacher, tokenizer, data["premise"].tolist(), data["hypothesis"].tolist(),
        batch_size=64, max_length=max_length, desc="teacher soft labels",
    )
    cfg = train_config(params, seed=seed, max_length=max_length, alpha=params.alpha, temperature=params.temperature)
    metrics = train(student, tokenizer, data, cfg, checkpoint_dir=checkpoint_dir, live_dir=live_dir, teacher_logits=teacher_logits)
    metrics.update(
        alpha=params.alpha, temperature=params.temperature,
        transfer_rows=int((data["label"] < 0).sum()), labelled_rows=int((data["label"] >= 0).sum()),
        seconds=round(time.perf_counter() - started, 1),
    )
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--pruned", required=True, help="the pruned model, the default student")
    parser.add_argument("--train", required=True)
    parser.add_argument("--unlabelled", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--live-dir", default=None)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    p = params.distill
    teacher, tokenizer = load_model(args.teacher)
    if p.student == "pruned":
        student, student_tokenizer = load_model(args.pruned)
        info = {"architecture": read_sec_info(args.pruned).get("architecture")}
    else:
        student, student_tokenizer = load_pretrained_classifier(p.student)
        info = {}
    if student_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise SystemExit(f"distill.student {p.student!r} has a different vocabulary from the teacher; "
                         "soft labels are computed per pair, so pick a student with the teacher's tokenizer")
    data = transfer_set(read_pairs(args.train), read_pairs(args.unlabelled, allow_unlabelled=True), p.transfer_size, params.seed)
    job = {"distill": p.model_dump(), "seed": params.seed, "max_length": params.model.max_length}
    inputs = [args.teacher, args.train, args.unlabelled] + ([args.pruned] if p.student == "pruned" else [])
    metrics = distill(
        student, tokenizer, teacher, data, p, max_length=params.model.max_length, seed=params.seed,
        checkpoint_dir=checkpoint_dir_for("distill", job, inputs), live_dir=args.live_dir,
    )
    info.update(stage="distill", parent=args.pruned if p.student == "pruned" else p.student, teacher=args.teacher, params=job)
    save_model(student, student_tokenizer, args.out, {k: v for k, v in info.items() if v is not None})
    write_metrics(metrics, args.metrics)
    print(f"distill: {metrics['train_steps']} steps, student {p.student}")


if __name__ == "__main__":
    run(main)
