"""distill: a smaller student learns from the teacher's soft labels, hidden states and gold labels.

loss = (1 - alpha) * CE(gold) + alpha * T^2 * KL(teacher_T || student_T)
       + hidden_weight * MSE(student layer j, the teacher layer it was initialised from)
       + attention_weight * KL(teacher || student self-attention relations at those layers).
The transfer set is the labelled training data plus unlabelled pool pairs (KD terms only: the
teacher labels them for free). The student is the pruned teacher (`student: pruned`) or any
pretrained model from the registry, cut to `layers` evenly spaced encoder layers (initialised from
the teacher's, TinyBERT/DistilBERT-style). After training, `trim_vocab` keeps only the embedding
rows the transfer set's text uses (stages._student), the biggest saving on a small model.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from stages._architecture import describe_architecture
from stages._attention_kd import check_relation_heads
from stages._cli import run
from stages._device import model_device, resolve_precision
from stages._distributed import is_main_process, start_training_stage
from stages._inference import predict_logits
from stages._io import read_pairs, write_metrics
from stages._models import load_model, load_pretrained_classifier, save_model
from stages._params import DistillParams, load_params
from stages._quantization import count_parameters
from stages._student import evenly_spaced_layers, keep_layers, layer_map, most_frequent, token_counts, trim_vocabulary
from stages._training import checkpoint_dir_for, train, train_config


def transfer_set(labelled: pd.DataFrame, unlabelled: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """Labelled rows plus `size` unlabelled ones (0 = all), label -1 so they carry only the KD loss."""
    extra = unlabelled if size == 0 or size >= len(unlabelled) else unlabelled.sample(n=size, random_state=seed)
    extra = extra.assign(label=-1, source="transfer", weight=1.0)[["premise", "hypothesis", "label", "source", "weight"]]
    return pd.concat([labelled[["premise", "hypothesis", "label", "source", "weight"]], extra], ignore_index=True)


def distill(
    student, tokenizer, teacher, data: pd.DataFrame, params: DistillParams, *, max_length: int, seed: int, checkpoint_dir,
    live_dir=None, device=None, precision: str = "fp32",
) -> tuple[object, object, dict]:
    """Shrink `student` (layers), train it against `teacher`, trim its vocabulary.

    Returns (student, its tokenizer, metrics); the student may be a new object after trimming.
    `device`: where both models compute (None: where the student is). The teacher goes there too,
    in eval mode: its soft labels and hidden states must meet the student's batches on one device.
    """
    started = time.perf_counter()
    device = torch.device(device) if device is not None else model_device(student)
    student.to(device)
    teacher.to(device).eval()
    params_start = count_parameters(student)
    kept = evenly_spaced_layers(student.config.num_hidden_layers, params.layers)
    keep_layers(student, kept)
    cfg = train_config(params, seed=seed, max_length=max_length, alpha=params.alpha, temperature=params.temperature,
                       precision=precision)
    if params.hidden_weight > 0 or params.attention_weight > 0:
        # Hidden states and attention relations are too big to precompute: the teacher runs
        # beside the student.
        if params.hidden_weight > 0 and teacher.config.hidden_size != student.config.hidden_size:
            raise ValueError("distill.hidden_weight needs a student with the teacher's hidden size")
        pairs = layer_map(kept)
        if params.attention_weight > 0:
            check_relation_heads(student, teacher, [(s - 1, t - 1) for s, t in pairs if s > 0], params.attention_heads)
        metrics = train(
            student, tokenizer, data, cfg, checkpoint_dir=checkpoint_dir, live_dir=live_dir,
            teacher=teacher, hidden_weight=params.hidden_weight, layer_pairs=pairs, device=device,
            attention_weight=params.attention_weight, attention_heads=params.attention_heads,
        )
    else:
        teacher_logits = predict_logits(
            teacher, tokenizer, data["premise"].tolist(), data["hypothesis"].tolist(),
            batch_size=64, max_length=max_length, desc="teacher soft labels",
        )
        metrics = train(student, tokenizer, data, cfg, checkpoint_dir=checkpoint_dir, live_dir=live_dir,
                        teacher_logits=teacher_logits, device=device)
    metrics.update(layers_kept=kept, vocab_before=student.config.vocab_size)
    if params.trim_vocab:
        counts = token_counts(tokenizer, data["premise"].tolist(), data["hypothesis"].tolist())
        student, tokenizer = trim_vocabulary(student, tokenizer, most_frequent(counts, params.vocab_size))
    metrics.update(
        vocab_after=student.config.vocab_size, vocab_size_cap=params.vocab_size,
        params_before=params_start, params_after=count_parameters(student),
        alpha=params.alpha, temperature=params.temperature, hidden_weight=params.hidden_weight,
        attention_weight=params.attention_weight,
        transfer_rows=int((data["label"] < 0).sum()), labelled_rows=int((data["label"] >= 0).sum()),
        seconds=round(time.perf_counter() - started, 1),
    )
    return student, tokenizer, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--pruned", required=True, help="the pruned model, the default student")
    parser.add_argument("--train", required=True)
    parser.add_argument("--unlabelled", required=True)
    parser.add_argument("--generated", default=None,
                        help="transfer pairs from the generate stage (label -1), all added to the transfer set")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--live-dir", default=None)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    device, processes, run_info = start_training_stage("stages.distill", argv, params)
    precision = resolve_precision(params.train.precision, device)
    p = params.distill
    teacher, tokenizer = load_model(args.teacher)
    if p.student == "pruned":
        student, student_tokenizer = load_model(args.pruned)
    else:
        student, student_tokenizer = load_pretrained_classifier(p.student, seed=params.seed, pooling=params.model.pooling)
    if student_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise SystemExit(f"distill.student {p.student!r} has a different vocabulary from the teacher; "
                         "soft labels are computed per pair, so pick a student with the teacher's tokenizer")
    unlabelled = read_pairs(args.unlabelled, allow_unlabelled=True, allow_empty=True)
    data = transfer_set(read_pairs(args.train), unlabelled, p.transfer_size, params.seed)
    if args.generated:  # generate's use (a): every pair, beside the transfer_size drawn from the pool
        generated = read_pairs(args.generated, allow_unlabelled=True, allow_empty=True)
        if len(generated):
            data = pd.concat([data, generated.assign(label=-1)[data.columns]], ignore_index=True)
    job = {"distill": p.model_dump(), "seed": params.seed, "max_length": params.model.max_length, "precision": precision,
           "processes": processes}
    inputs = [args.teacher, args.train, args.unlabelled, *filter(None, [args.generated])] + (
        [args.pruned] if p.student == "pruned" else [])
    student, student_tokenizer, metrics = distill(
        student, tokenizer, teacher, data, p, max_length=params.model.max_length, seed=params.seed,
        checkpoint_dir=checkpoint_dir_for("distill", job, inputs), live_dir=args.live_dir,
        device=device, precision=precision,
    )
    if not is_main_process():
        return  # rank 0 writes the model and the metrics
    # Saved with the shape it now has (layers, heads, FFN widths; vocabulary in config.json).
    info = {
        "stage": "distill", "parent": args.pruned if p.student == "pruned" else p.student, "teacher": args.teacher,
        "params": job, "architecture": describe_architecture(student),
    }
    save_model(student, student_tokenizer, args.out, info)
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(f"distill: {metrics['train_steps']} steps, student {p.student}")


if __name__ == "__main__":
    run(main)
