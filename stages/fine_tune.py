"""fine_tune: the teacher, trained on seed + selected + augmented + back-translated pairs.

Checkpoints go to a directory keyed by params and inputs (outside DVC's outputs, which DVC deletes
before a stage runs): a killed run resumes from its last checkpoint when the stage is run again.
The trained teacher is scored on dev before it is written: below `fine_tune.min_dev_accuracy` the
stage fails (stages._health) and writes no model, so nothing downstream compresses a coin-flipper.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from stages._cli import run
from stages._device import resolve_precision
from stages._distributed import is_main_process, start_training_stage
from stages._health import dev_health
from stages._io import read_pairs, write_metrics
from stages._models import load_pretrained_classifier, save_model
from stages._params import load_params
from stages._training import TrainConfig, checkpoint_dir_for, train, train_config


def fine_tune(model, tokenizer, data: pd.DataFrame, cfg: TrainConfig, *, checkpoint_dir, live_dir=None, device=None,
              dev: pd.DataFrame | None = None, min_dev_accuracy: float = 0.0) -> dict:
    """Train `model` in place on `data`; with `dev`, check it learned (raises ModelDidNotLearnError)."""
    started = time.perf_counter()
    metrics = train(model, tokenizer, data, cfg, checkpoint_dir=checkpoint_dir, live_dir=live_dir, device=device)
    metrics["rows_by_source"] = {str(k): int(v) for k, v in data["source"].value_counts().sort_index().items()}
    if dev is not None:
        metrics["health"] = dev_health(model, tokenizer, dev, stage="fine_tune", section="fine_tune",
                                       min_accuracy=min_dev_accuracy, max_length=cfg.max_length)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train", required=True)
    parser.add_argument("--generated", default=None,
                        help="label-conditioned pairs from the generate stage, added to --train (may be empty)")
    parser.add_argument("--dev", required=True, help="the dev split: the trained teacher must clear min_dev_accuracy on it")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--live-dir", default=None, help="dvclive directory for training curves")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    device, processes, run_info = start_training_stage("stages.fine_tune", argv, params)
    data = read_pairs(args.train)
    if args.generated:  # generate's use (b); an empty file (the use off) leaves the data as it was
        generated = read_pairs(args.generated, allow_empty=True)
        data = pd.concat([data, generated], ignore_index=True) if len(generated) else data
    model, tokenizer = load_pretrained_classifier(params.model.teacher, seed=params.seed, pooling=params.model.pooling)
    precision = resolve_precision(params.train.precision, device)
    cfg = train_config(params.fine_tune, seed=params.seed, max_length=params.model.max_length, precision=precision)
    job = {"fine_tune": params.fine_tune.model_dump(), "model": params.model.model_dump(), "seed": params.seed,
           "precision": precision, "processes": processes}
    metrics = fine_tune(
        model, tokenizer, data, cfg,
        checkpoint_dir=checkpoint_dir_for("fine_tune", job, [args.train, *filter(None, [args.generated])]), live_dir=args.live_dir, device=device,
        # Every rank trains; rank 0 alone checks and writes (the others stop below).
        dev=read_pairs(args.dev) if is_main_process() else None, min_dev_accuracy=params.fine_tune.min_dev_accuracy,
    )
    if not is_main_process():
        return  # rank 0 writes the model and the metrics
    save_model(model, tokenizer, args.out, {"stage": "fine_tune", "parent": params.model.teacher, "params": job})
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(f"fine_tune: {metrics['train_steps']} steps on {len(data)} rows in {metrics['seconds']} s; "
          f"dev {metrics['health']['dev_accuracy']:.1%}, loss below 1.0 from step {metrics['loss_below_1_step']}")


if __name__ == "__main__":
    run(main)
