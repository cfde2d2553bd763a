"""evaluate: every model the pipeline produced, measured side by side against the teacher.

Quality on the validation set: accuracy, macro-F1, mean cross-entropy and its exponential (the SEC
paper's "perplexity"). Cost: weights size on disk, parameter count, latency (ms per batch of 32
pairs: the mean over `latency_batches` fixed random batches, median over repeats) and throughput.
Latency is timed in one process with the models interleaved repeat by repeat, so machine noise hits
every model alike; ratios are against the teacher.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score

from stages._cli import run
from stages._inference import predict_logits, tokenize_pairs
from stages._io import LABEL_NAMES, atomic_path, read_pairs, write_json, write_metrics
from stages._models import load_model, weights_size_mb
from stages._params import EvaluateParams, load_params
from stages._quantization import count_parameters

REFERENCE = "teacher"


def quality(logits: np.ndarray, labels: np.ndarray) -> dict:
    """logits (n, 3), labels (n,) -> accuracy, macro-F1, cross-entropy, perplexity."""
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=-1)
    ce = float(torch.nn.functional.nll_loss(log_probs, torch.tensor(labels, dtype=torch.long)).item())
    predictions = logits.argmax(axis=1)
    return {
        "accuracy": float((predictions == labels).mean()),
        "macro_f1": float(f1_score(labels, predictions, average="macro", labels=[0, 1, 2])),
        "cross_entropy": ce,
        "perplexity": math.exp(ce),
    }


@torch.inference_mode()
def time_batches(models: dict, batches: dict[str, list[dict]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Mean ms per forward pass over each model's batches, one value per repeat.

    Models are interleaved within each repeat, so machine noise hits every model alike.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + repeats):
        for name, model in models.items():
            started = time.perf_counter()
            for batch in batches[name]:
                model(**batch)
            if r >= warmup:
                times[name].append((time.perf_counter() - started) * 1000 / len(batches[name]))
    return times


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Recall per gold class: what adaptive augmentation reads to find the classes missed most."""
    predictions = logits.argmax(axis=1)
    return {
        LABEL_NAMES[c]: float((predictions[labels == c] == c).mean()) if (labels == c).any() else float("nan")
        for c in range(len(LABEL_NAMES))
    }


def evaluate(
    models: dict, validation: pd.DataFrame, params: EvaluateParams, *, max_length: int, seed: int, timing: bool = True
) -> dict:
    """models: name -> (model, tokenizer, directory). Returns {name: metrics}, reference first.

    `timing=False` measures quality, size and parameters only (the teacher-only evaluation that
    data ablations need); latency, throughput and the ratios need every model in one process.
    """
    labels = validation["label"].to_numpy()
    results: dict[str, dict] = {}
    for name, (model, tokenizer, directory) in models.items():
        logits = predict_logits(
            model, tokenizer, validation["premise"].tolist(), validation["hypothesis"].tolist(),
            batch_size=params.batch_size, max_length=max_length, desc=f"evaluate {name}",
        )
        results[name] = quality(logits, labels)
        results[name]["class_accuracy"] = per_class_accuracy(logits, labels)
        results[name]["size_mb"] = round(weights_size_mb(directory), 3)
        results[name]["params"] = count_parameters(model)
    if not timing:
        return results

    # The same fixed batches (random validation pairs, each padded to its longest) for every model.
    sample = validation.sample(n=min(params.batch_size * params.latency_batches, len(validation)), random_state=seed)
    chunks = [sample.iloc[i : i + params.batch_size] for i in range(0, len(sample), params.batch_size)]
    batches = {
        name: [tokenize_pairs(tok, c["premise"].tolist(), c["hypothesis"].tolist(), max_length) for c in chunks]
        for name, (_, tok, _) in models.items()
    }
    times = time_batches({n: m for n, (m, _, _) in models.items()}, batches, params.latency_repeats, params.latency_warmup)
    pairs_per_batch = len(sample) / len(chunks)
    for name, samples in times.items():
        latency = statistics.median(samples)
        results[name]["latency_ms_b32"] = round(latency, 2)
        results[name]["throughput_pairs_per_s"] = round(pairs_per_batch / latency * 1000, 1)

    ref = results.get(REFERENCE)
    if ref:
        for r in results.values():
            r["accuracy_delta_pts"] = round((r["accuracy"] - ref["accuracy"]) * 100, 2)
            r["size_ratio"] = round(ref["size_mb"] / r["size_mb"], 3)
            r["speedup"] = round(ref["latency_ms_b32"] / r["latency_ms_b32"], 3)
            r["params_ratio"] = round(ref["params"] / r["params"], 3)
    return results


def report_markdown(results: dict, *, validation_rows: int, threads: int, latency_batches: int = 1) -> str:
    header = "| model | accuracy | macro-F1 | perplexity | size MB | params | latency ms/b32 | pairs/s | Δacc pts | size × | speed × |"
    lines = [
        "# SEC pipeline report",
        "",
        f"Validation pairs: {validation_rows}. Latency: mean over {latency_batches} fixed random batches of 32, "
        f"median over repeats, CPU threads: {threads}; all models timed interleaved in one process.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['accuracy']*100:.2f} | {r['macro_f1']*100:.2f} | {r['perplexity']:.3f} | "
            f"{r['size_mb']:.1f} | {r['params']:,} | {r['latency_ms_b32']:.1f} | {r['throughput_pairs_per_s']:.0f} | "
            f"{r.get('accuracy_delta_pts', 0):+.2f} | {r.get('size_ratio', 1):.2f} | {r.get('speedup', 1):.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot_rows(results: dict) -> list[dict]:
    return [
        {"model": name, "accuracy": round(r["accuracy"] * 100, 2), "size_mb": r["size_mb"], "latency_ms": r["latency_ms_b32"]}
        for name, r in results.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--validation", required=True)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                        help="a model to evaluate; the one named 'teacher' is the reference")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--plots", help="JSON rows for the accuracy/size/latency plots")
    parser.add_argument("--report", help="markdown report to write")
    parser.add_argument("--quality-only", action="store_true",
                        help="accuracy, F1, perplexity, size and parameters only; no latency or ratios")
    args = parser.parse_args(argv)
    if not args.quality_only and not (args.plots and args.report):
        parser.error("--plots and --report are required unless --quality-only")

    params = load_params(args.params)
    validation = read_pairs(args.validation)
    models = {}
    for spec in args.model:
        name, _, directory = spec.partition("=")
        model, tokenizer = load_model(directory)
        models[name] = (model, tokenizer, Path(directory))
    results = evaluate(
        models, validation, params.evaluate, max_length=params.model.max_length, seed=params.seed, timing=not args.quality_only
    )
    if args.quality_only:
        write_metrics({"models": results, "validation_rows": len(validation)}, args.metrics)
        for name, r in results.items():
            print(f"evaluate {name}: accuracy {r['accuracy'] * 100:.2f}, macro-F1 {r['macro_f1'] * 100:.2f}")
        return
    report = report_markdown(
        results, validation_rows=len(validation), threads=torch.get_num_threads(), latency_batches=params.evaluate.latency_batches
    )
    write_metrics({"models": results, "validation_rows": len(validation)}, args.metrics)
    write_json(plot_rows(results), args.plots)
    with atomic_path(args.report) as tmp:
        tmp.write_text(report)
    print(report)


if __name__ == "__main__":
    run(main)
