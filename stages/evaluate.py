"""evaluate: every model the pipeline produced, measured side by side against the teacher.

Quality on the dev split (what decisions read) and on the test split (validation_matched, only
reported), with every model's per-example predictions saved for paired tests (`sec compare`): accuracy, macro-F1, mean cross-entropy and its exponential (the SEC
paper's "perplexity"). Cost: weights size on disk, parameter count, latency at batch 32 (ms per
batch: the mean over `latency_batches` fixed random batches, median over repeats), throughput, and
latency at batch 1 (p50 and p95 over `latency_single_pairs` single pairs, each pair's median over
repeats). Latency is timed in one process with the models interleaved, so machine noise hits every
model alike; ratios are against the teacher. Models may be torch modules or exported ONNX
directories (ONNX Runtime), loaded alike by stages._models.load_model.

The teacher is scored once: `evaluate_teacher` scores it, and this stage reuses its quality and
predictions (`--reference-metrics`, `--reference-predictions`) and only times it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score

from stages._cli import run
from stages._determinism import seed_everything
from stages._device import cpu_only, describe, pick_device
from stages._inference import predict_logits, tokenize_pairs
from stages._io import LABEL_NAMES, atomic_path, read_pairs, write_json, write_metrics
from stages._models import OnnxModel, load_model, weights_size_mb
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


@contextlib.contextmanager
def deployment_mode():
    """Deterministic kernels off while timing, restored after.

    Deterministic mode may pick slower kernels and also fills every new tensor's memory
    (torch.utils.deterministic.fill_uninitialized_memory) so that a read of uninitialised memory is
    reproducible. A deployed model runs in torch's default mode, so that is what is timed; timings
    feed no output that must be reproducible. (On this machine the difference was within the
    timing noise for both models.)
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def _no_sync() -> None:
    pass


@torch.inference_mode()
def time_batches(models: dict, batches: dict[str, list[dict]], repeats: int, warmup: int, sync=_no_sync) -> dict[str, list[float]]:
    """Mean ms per forward pass over each model's batches, one value per repeat.

    Models are interleaved within each repeat, so machine noise hits every model alike. `sync`
    waits for queued device work (torch.cuda.synchronize on a GPU, whose kernels run async).
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(warmup + repeats):
        for name, model in models.items():
            sync()
            started = time.perf_counter()
            for batch in batches[name]:
                model(**batch)
            sync()
            if r >= warmup:
                times[name].append((time.perf_counter() - started) * 1000 / len(batches[name]))
    return times


@torch.inference_mode()
def time_single_pairs(models: dict, pairs: dict[str, list[dict]], repeats: int, warmup: int,
                      sync=_no_sync) -> dict[str, list[float]]:
    """Batch-1 latency: for each pair, the median ms over `repeats` calls; models interleaved call by call."""
    samples: dict[str, list[list[float]]] = {name: [[] for _ in pairs[name]] for name in models}
    for r in range(warmup + repeats):
        for i in range(len(next(iter(pairs.values())))):
            for name, model in models.items():
                sync()
                started = time.perf_counter()
                model(**pairs[name][i])
                sync()
                if r >= warmup:
                    samples[name][i].append((time.perf_counter() - started) * 1000)
    return {name: [statistics.median(s) for s in per_pair] for name, per_pair in samples.items()}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def parameter_count(model) -> int:
    return model.parameter_count() if isinstance(model, OnnxModel) else count_parameters(model)


def model_device(model) -> str:
    return "cpu" if isinstance(model, OnnxModel) else str(next(model.parameters(), torch.empty(0)).device)


def on_device(model, device: torch.device | str):
    """`model` itself when it is to run on the CPU (where models load) or cannot leave it (int8,
    ONNX Runtime); else a copy on `device`. A copy, so the CPU original is still there to be timed
    on the CPU, the deployment target."""
    device = torch.device(device)
    if device.type == "cpu" or cpu_only(model):
        return model
    return copy.deepcopy(model).to(device)


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Recall per gold class: what adaptive augmentation reads to find the classes missed most."""
    predictions = logits.argmax(axis=1)
    return {
        LABEL_NAMES[c]: float((predictions[labels == c] == c).mean()) if (labels == c).any() else float("nan")
        for c in range(len(LABEL_NAMES))
    }


SPLITS = ("dev", "test")
PROB_COLUMNS = [f"prob_{name}" for name in LABEL_NAMES]
# Keys that are timings: they live in the timing file, never in evaluate.json (which must be
# bit-identical across reruns of one commit).
TIMING_KEYS = ("latency_ms_b32", "throughput_pairs_per_s", "speedup", "latency_ms_b1_p50", "latency_ms_b1_p95",
               "speedup_b1_p50")


def score_split(model, tokenizer, frame: pd.DataFrame, *, batch_size: int, max_length: int, desc: str) -> tuple[dict, pd.DataFrame]:
    """Quality of one model on one split, and its per-example predictions (sorted by row_id).

    frame: the split with `row_id` and gold `label`. Predictions: row_id, label, pred, one
    probability column per class (float32), the input of `sec compare`'s paired tests.
    """
    logits = predict_logits(
        model, tokenizer, frame["premise"].tolist(), frame["hypothesis"].tolist(),
        batch_size=batch_size, max_length=max_length, desc=desc,
    )  # (n, 3)
    labels = frame["label"].to_numpy()
    metrics = quality(logits, labels)
    metrics["class_accuracy"] = per_class_accuracy(logits, labels)
    probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy().astype("float32")  # (n, 3)
    row_ids = frame["row_id"].to_numpy() if "row_id" in frame.columns else np.arange(len(frame))
    predictions = pd.DataFrame({"row_id": row_ids.astype("int64"), "label": labels.astype("int64"),
                                "pred": logits.argmax(axis=1).astype("int64")})
    for column, values in zip(PROB_COLUMNS, probs.T):
        predictions[column] = values
    return metrics, predictions.sort_values("row_id", kind="stable").reset_index(drop=True)


def check_reference(reference: dict, splits: dict[str, pd.DataFrame]) -> None:
    """The reused teacher scores must be of these very splits: same row ids, same gold labels."""
    for split, frame in splits.items():
        preds = reference["predictions"].get(split)
        if preds is None or split not in reference["quality"]:
            raise ValueError(f"reference teacher scores have no {split!r} split; rerun: dvc repro evaluate_teacher")
        ours = frame.sort_values("row_id", kind="stable") if "row_id" in frame.columns else frame
        same = len(preds) == len(ours) and (preds["row_id"].to_numpy() == ours["row_id"].to_numpy()).all() and (
            preds["label"].to_numpy() == ours["label"].to_numpy()).all()
        if not same:
            raise ValueError(f"reference teacher predictions for {split!r} are not of this split's rows; "
                             "rerun: dvc repro evaluate_teacher")


def evaluate(
    models: dict, splits: dict[str, pd.DataFrame], params: EvaluateParams, *, max_length: int, seed: int,
    timing: bool = True, reference: dict | None = None, device: torch.device | str = "cpu",
) -> tuple[dict, dict, dict[str, pd.DataFrame]]:
    """models: name -> (model, tokenizer, directory); splits: "dev"/"test" -> frame.

    Returns (quality {name: {split: metrics, size_mb, params, ratios}}, timings {name: {...}},
    predictions {"<name>-<split>": frame}). Quality is deterministic; timings are not, so they are
    kept apart. `timing=False` skips latency (the teacher-only evaluation data ablations need);
    latency and the speed-up need every model in one process, interleaved. `reference`:
    {"quality": {split: metrics}, "predictions": {split: frame}} of the teacher, already scored by
    evaluate_teacher on these splits: reused instead of scoring the teacher again.
    `device`: where quality is scored (models load on the CPU; a GPU gets a copy, freed after).
    The latency returned here is the CPU's (see time_models for the GPU's).
    """
    results: dict[str, dict] = {}
    predictions: dict[str, pd.DataFrame] = {}
    if reference is not None:
        check_reference(reference, splits)
    for name, (model, tokenizer, directory) in models.items():
        results[name] = {}
        scorer = None
        for split, frame in splits.items():
            if name == REFERENCE and reference is not None:
                metrics, preds = dict(reference["quality"][split]), reference["predictions"][split]
                metrics.pop("accuracy_delta_pts", None)
            else:
                scorer = scorer if scorer is not None else on_device(model, device)
                metrics, preds = score_split(
                    scorer, tokenizer, frame, batch_size=params.batch_size, max_length=max_length, desc=f"evaluate {name} {split}"
                )
            results[name][split] = metrics
            predictions[f"{name}-{split}"] = preds
        del scorer  # a GPU copy goes before the next model's arrives
        results[name]["size_mb"] = round(weights_size_mb(directory), 3)
        results[name]["params"] = parameter_count(model)

    ref = results.get(REFERENCE)
    if ref and len(results) > 1:
        for r in results.values():
            for split in splits:
                r[split]["accuracy_delta_pts"] = round((r[split]["accuracy"] - ref[split]["accuracy"]) * 100, 2)
            r["size_ratio"] = round(ref["size_mb"] / r["size_mb"], 3)
            r["params_ratio"] = round(ref["params"] / r["params"], 3)
    if not timing:
        return results, {}, predictions
    return results, time_models(models, splits, params, max_length=max_length, seed=seed), predictions


def time_models(models: dict, splits: dict[str, pd.DataFrame], params: EvaluateParams, *, max_length: int, seed: int,
                device: torch.device | str = "cpu") -> dict:
    """Latency of every model on the same inputs, one process, interleaved: batch 32 and batch 1.

    device "cpu" (the deployment target every ratio is about): every model, as loaded. On a GPU:
    a copy of each model that can run there (not int8 or ONNX Runtime ones), inputs on the GPU
    before the clock starts. Each row names the device it was timed on.
    """
    device = torch.device(device)
    if device.type != "cpu":
        models = {name: (on_device(m, device), tok, d) for name, (m, tok, d) in models.items() if not cpu_only(m)}
    # The same fixed batches (random dev pairs, each padded to its longest) for every model. Dev,
    # not test: the controller acts on these timings, and nothing that chooses may read the test split.
    latency_split = splits.get("dev", next(iter(splits.values())))
    sample = latency_split.sample(n=min(params.batch_size * params.latency_batches, len(latency_split)), random_state=seed)
    chunks = [sample.iloc[i : i + params.batch_size] for i in range(0, len(sample), params.batch_size)]
    batches = {
        name: [tokenize_pairs(tok, c["premise"].tolist(), c["hypothesis"].tolist(), max_length) for c in chunks]
        for name, (_, tok, _) in models.items()
    }
    singles = latency_split.sample(n=min(params.latency_single_pairs, len(latency_split)), random_state=seed + 1)
    pairs = {
        name: [tokenize_pairs(tok, [p], [h], max_length) for p, h in zip(singles["premise"], singles["hypothesis"])]
        for name, (_, tok, _) in models.items()
    }
    plain = {n: m for n, (m, _, _) in models.items()}
    sync = _no_sync
    if device.type == "cuda":
        batches = {n: [{k: v.to(device) for k, v in b.items()} for b in bs] for n, bs in batches.items()}
        pairs = {n: [{k: v.to(device) for k, v in b.items()} for b in bs] for n, bs in pairs.items()}
        sync = torch.cuda.synchronize
    with deployment_mode():
        times = time_batches(plain, batches, params.latency_repeats, params.latency_warmup, sync)
        single = time_single_pairs(plain, pairs, params.latency_repeats, params.latency_warmup, sync)
    pairs_per_batch = len(sample) / len(chunks)
    timings: dict[str, dict] = {}
    for name, samples in times.items():
        latency = statistics.median(samples)
        timings[name] = {"device": model_device(plain[name]), "latency_ms_b32": round(latency, 2),
                         "throughput_pairs_per_s": round(pairs_per_batch / latency * 1000, 1),
                         "latency_ms_b1_p50": round(percentile(single[name], 50), 3),
                         "latency_ms_b1_p95": round(percentile(single[name], 95), 3)}
    if REFERENCE in timings:
        ref = timings[REFERENCE]
        for t in timings.values():
            t["speedup"] = round(ref["latency_ms_b32"] / t["latency_ms_b32"], 3)
            t["speedup_b1_p50"] = round(ref["latency_ms_b1_p50"] / t["latency_ms_b1_p50"], 3)
    return timings


def report_markdown(results: dict, timings: dict, *, rows: dict[str, int], threads: int, latency_batches: int = 1,
                    deployed: str | None = None, gpu: dict | None = None) -> str:
    header = ("| model | test accuracy | dev accuracy | test macro-F1 | test perplexity | size MB | params | "
              "latency ms/b32 | pairs/s | b1 p50 ms | b1 p95 ms | Δacc pts (test) | Δacc pts (dev) | size × | speed × b32 | "
              "speed × b1 |")
    lines = [
        "# SEC pipeline report",
        "",
        f"Test: validation_matched, {rows.get('test', 0)} pairs (reported only, never used to choose). "
        f"Dev: {rows.get('dev', 0)} pairs held out of the training pool (what every decision reads).",
        f"Latency: batch 32 = mean over {latency_batches} fixed random dev batches, median over repeats; "
        f"batch 1 = p50/p95 over single dev pairs. CPU threads: {threads}; all models timed interleaved in one "
        "process (torch eager or ONNX Runtime, see each model's row). One seed: see README for means and "
        "intervals over seeds.",
        f"Deployed model: {deployed}." if deployed else "",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for name, r in results.items():
        t = timings.get(name, {})
        lines.append(
            f"| {name} | {r['test']['accuracy']*100:.2f} | {r['dev']['accuracy']*100:.2f} | {r['test']['macro_f1']*100:.2f} | "
            f"{r['test']['perplexity']:.3f} | {r['size_mb']:.1f} | {r['params']:,} | {t.get('latency_ms_b32', float('nan')):.1f} | "
            f"{t.get('throughput_pairs_per_s', float('nan')):.0f} | {t.get('latency_ms_b1_p50', float('nan')):.2f} | "
            f"{t.get('latency_ms_b1_p95', float('nan')):.2f} | {r['test'].get('accuracy_delta_pts', 0):+.2f} | "
            f"{r['dev'].get('accuracy_delta_pts', 0):+.2f} | {r.get('size_ratio', 1):.2f} | {t.get('speedup', 1):.2f} | "
            f"{t.get('speedup_b1_p50', 1):.2f} |"
        )
    if gpu and gpu.get("models"):
        lines += ["", f"GPU latency ({gpu.get('device_name', gpu.get('device'))}; not what the targets judge):", "",
                  "| model | latency ms/b32 | pairs/s | b1 p50 ms | speed × b32 |", "|---|---|---|---|---|"]
        for name, t in gpu["models"].items():
            lines.append(f"| {name} | {t['latency_ms_b32']:.2f} | {t['throughput_pairs_per_s']:.0f} | "
                         f"{t['latency_ms_b1_p50']:.2f} | {t.get('speedup', 1):.2f} |")
    return "\n".join(lines) + "\n"


def plot_rows(results: dict, timings: dict) -> list[dict]:
    """Test accuracy against size and latency (a report, so the test split)."""
    return [
        {"model": name, "accuracy": round(r["test"]["accuracy"] * 100, 2), "size_mb": r["size_mb"],
         "latency_ms": timings[name]["latency_ms_b32"]}
        for name, r in results.items()
    ]


def write_predictions(predictions: dict[str, pd.DataFrame], directory: str | Path) -> None:
    """One Parquet per model and split, written as a whole directory (atomic: all or nothing)."""
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        for key, frame in sorted(predictions.items()):
            frame.to_parquet(tmp / f"{key}.parquet", index=False)


# quantize.backend -> the evaluated model that is the deployed one (what targets are judged on).
DEPLOYED_BY_BACKEND = {"torch": "quantized", "onnxruntime": "onnx_int8"}


def read_reference(metrics_path: str, predictions_dir: str, splits: dict) -> dict:
    """The teacher's quality and predictions as evaluate_teacher wrote them."""
    teacher = json.loads(Path(metrics_path).read_text())["models"].get(REFERENCE)
    if teacher is None:
        raise ValueError(f"{metrics_path}: no {REFERENCE!r} model; rerun: dvc repro evaluate_teacher")
    predictions = {}
    for split in splits:
        path = Path(predictions_dir) / f"{REFERENCE}-{split}.parquet"
        if not path.is_file():
            raise ValueError(f"{path}: missing; rerun: dvc repro evaluate_teacher")
        predictions[split] = pd.read_parquet(path)
    return {"quality": {split: teacher[split] for split in splits if split in teacher}, "predictions": predictions}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dev", required=True, help="the dev split (decisions read its metrics)")
    parser.add_argument("--test", required=True, help="the test split (reported only)")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                        help="a model to evaluate; the one named 'teacher' is the reference")
    parser.add_argument("--metrics", required=True, help="quality, size, ratios (no timings: bit-reproducible)")
    parser.add_argument("--predictions", required=True, help="directory for <model>-<split>.parquet per-example predictions")
    parser.add_argument("--timing", help="latency, throughput and speed-up (differ run to run)")
    parser.add_argument("--plots", help="JSON rows for the accuracy/size/latency plots")
    parser.add_argument("--report", help="markdown report to write")
    parser.add_argument("--quality-only", action="store_true",
                        help="accuracy, F1, perplexity, size and parameters only; no latency")
    parser.add_argument("--reference-metrics", help="evaluate_teacher's metrics: the teacher's quality, reused")
    parser.add_argument("--reference-predictions", help="evaluate_teacher's predictions directory, reused")
    args = parser.parse_args(argv)
    if bool(args.reference_metrics) != bool(args.reference_predictions):
        parser.error("--reference-metrics and --reference-predictions go together")
    if not args.quality_only and not (args.plots and args.report and args.timing):
        parser.error("--timing, --plots and --report are required unless --quality-only")

    params = load_params(args.params)
    device = pick_device(params.device)
    run_info = seed_everything(params.seed, params.threads, device)
    splits = {"dev": read_pairs(args.dev), "test": read_pairs(args.test)}
    models = {}
    for spec in args.model:
        name, _, directory = spec.partition("=")
        model, tokenizer = load_model(directory)
        models[name] = (model, tokenizer, Path(directory))
    reference = read_reference(args.reference_metrics, args.reference_predictions, splits) if args.reference_metrics else None
    results, timings, predictions = evaluate(
        models, splits, params.evaluate, max_length=params.model.max_length, seed=params.seed,
        timing=not args.quality_only, reference=reference, device=device,
    )
    rows = {split: len(frame) for split, frame in splits.items()}
    deployed = DEPLOYED_BY_BACKEND[params.quantize.backend]
    summary = {"models": results, "dev_rows": rows["dev"], "test_rows": rows["test"], **run_info}
    if deployed in results:
        summary["deployed"] = deployed
    write_predictions(predictions, args.predictions)
    write_metrics(summary, args.metrics)
    if args.quality_only:
        for name, r in results.items():
            print(f"evaluate {name}: dev accuracy {r['dev']['accuracy'] * 100:.2f}, "
                  f"test accuracy {r['test']['accuracy'] * 100:.2f}")
        return
    timing_file = {"models": timings, "threads": run_info["threads"], "device": "cpu",
                   "latency_batches": params.evaluate.latency_batches,
                   "latency_repeats": params.evaluate.latency_repeats}
    gpu = None
    if device.type == "cuda":
        # Beside the CPU rows, not instead: the targets and ratios are about CPU deployment.
        gpu = {**describe(device), "models": time_models(
            models, splits, params.evaluate, max_length=params.model.max_length, seed=params.seed, device=device)}
        timing_file["gpu"] = gpu
    write_metrics(timing_file, args.timing)
    report = report_markdown(results, timings, rows=rows, threads=run_info["threads"],
                             latency_batches=params.evaluate.latency_batches, deployed=summary.get("deployed"), gpu=gpu)
    write_json(plot_rows(results, timings), args.plots)
    with atomic_path(args.report) as tmp:
        tmp.write_text(report)
    print(report)


if __name__ == "__main__":
    run(main)
