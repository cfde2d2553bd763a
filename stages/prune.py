"""prune: structured pruning of attention heads and FFN channels, then a short recovery fine-tune.

torch-pruning removes `ratio` of the heads and FFN channels of every layer, ranked by Taylor
importance on a few calibration batches (or weight magnitude). The result is saved with the
architecture it now has (weights + per-layer architecture in sec.json), reloadable with
`stages._models.load_model` in a fresh process.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from stages._cli import run
from stages._determinism import seed_everything
from stages._device import model_device, pick_device, resolve_precision
from stages._io import read_pairs, write_metrics
from stages._models import load_model, save_model
from stages._params import PruneParams, load_params
from stages._pruning import prune_structured
from stages._quantization import count_parameters
from stages._training import PairCollator, TrainConfig, build_dataset, checkpoint_dir_for, train


def calibration_batches(data: pd.DataFrame, tokenizer, params: PruneParams, *, max_length: int, seed: int) -> list[dict]:
    """A few labelled batches (dicts of tensors, with `labels`) for Taylor importance."""
    n = min(len(data), params.calibration_batches * params.batch_size)
    sample = data[data["label"] >= 0].sample(n=min(n, int((data["label"] >= 0).sum())), random_state=seed)
    rows = list(build_dataset(sample, tokenizer, max_length))
    collate = PairCollator(tokenizer)
    batches = []
    for start in range(0, len(rows), params.batch_size):
        batch = collate(rows[start : start + params.batch_size])
        batch.pop("weight")
        batches.append(batch)
    return batches


def prune(model, tokenizer, data: pd.DataFrame, params: PruneParams, *, max_length: int, seed: int, checkpoint_dir,
          live_dir=None, device=None, precision: str = "fp32") -> tuple[dict, dict]:
    """Prune `model` in place and recover; returns (architecture, metrics).

    `device`: where calibration and recovery run (the model is moved there; None = where it is).
    """
    started = time.perf_counter()
    if device is not None:
        model.to(device)
    params_before = count_parameters(model)
    batches = calibration_batches(data, tokenizer, params, max_length=max_length, seed=seed)
    architecture = prune_structured(
        model, params.ratio, calibration_batches=batches, importance=params.importance,
        prune_heads=params.prune_heads, prune_ffn=params.prune_ffn,
    )
    metrics: dict = {
        "ratio": params.ratio,
        "params_before": params_before,
        "params_after": count_parameters(model),
        "prune_seconds": round(time.perf_counter() - started, 1),
    }
    metrics["params_kept_fraction"] = round(metrics["params_after"] / params_before, 4)
    if params.recovery_steps > 0:
        cfg = TrainConfig(
            epochs=1.0, batch_size=params.batch_size, max_steps=params.recovery_steps,
            learning_rate=params.learning_rate, seed=seed, max_length=max_length,
            save_steps=max(1, params.recovery_steps // 2), precision=precision,
        )
        metrics["recovery"] = train(model, tokenizer, data, cfg, checkpoint_dir=checkpoint_dir, live_dir=live_dir,
                                    device=device if device is not None else model_device(model))
    elif live_dir:
        # No recovery run, so no training curve; the dvclive outputs DVC expects still record the cut.
        from dvclive import Live

        with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
            live.log_metric("prune/params_kept_fraction", metrics["params_kept_fraction"])
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return architecture, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--live-dir", default=None)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    device = pick_device(params.device)
    run_info = seed_everything(params.seed, params.threads, device)
    data = read_pairs(args.train)
    model, tokenizer = load_model(args.teacher)
    precision = resolve_precision(params.train.precision, device)
    job = {"prune": params.prune.model_dump(), "seed": params.seed, "max_length": params.model.max_length,
           "precision": precision}
    architecture, metrics = prune(
        model, tokenizer, data, params.prune, max_length=params.model.max_length, seed=params.seed,
        checkpoint_dir=checkpoint_dir_for("prune", job, [args.teacher, args.train]), live_dir=args.live_dir,
        device=device, precision=precision,
    )
    info = {"stage": "prune", "parent": args.teacher, "architecture": architecture, "params": job}
    save_model(model, tokenizer, args.out, info)
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(f"prune: {metrics['params_before']:,} -> {metrics['params_after']:,} parameters")


if __name__ == "__main__":
    run(main)
