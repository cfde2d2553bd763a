"""The active-learning curve: dev (decides) and test (reports) accuracy against labels, per strategy.

For each strategy and seed, the purchase order is made once up to the largest budget (random: the
order active_select's `random` buys in; an in-loop strategy: stages._active_rounds on the pretrained
pair embeddings), so a smaller budget is a prefix of a larger one, as in a real labelling campaign.
Each cell then measures the seed set plus a prefix in one of two ways:

  proxy      the in-loop logistic regression on the embeddings (seconds a cell): every strategy,
             every budget, every seed; it chooses which strategies the fine-tuned curve runs
  finetune   the teacher fine-tuned once on the cell's labels with the fine_tune params (one
             epoch: the steps per label are the same in every cell), scored on dev and test

    python -m pipeline.active_curve proxy --embeddings DIR --strategies random margin ... --out reports/active_curve
    python -m pipeline.active_curve finetune --embeddings DIR --strategies random margin --budgets 2000 4000 ...
    python -m pipeline.active_curve summary --out reports/active_curve

DIR holds `<split>.npy` pair features (stages._embeddings, features "pair") of data/prepared's seed,
pool, dev and test; `embed` writes them. Budgets count labels: the seed set included.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stages._active_rounds import RoundsConfig, select_in_rounds
from stages._io import write_atomic

PREPARED = Path("data/prepared")


def random_order(pool_size: int, seed: int) -> np.ndarray:
    """The pool positions in the order active_select's `random` buys them (stages.active_select.pick)."""
    from stages.active_select import SCORE_DECIMALS, uncertainty

    scores = np.round(uncertainty(np.zeros((pool_size, 3)), "random", seed), SCORE_DECIMALS)
    return np.argsort(-scores, kind="stable")


def purchase_order(strategy: str, seed: int, x_seed, y_seed, x_pool, oracle, *, budget: int, round_size: int,
                   candidates: int = 0) -> tuple[np.ndarray, list[dict]]:
    """`budget` pool positions in purchase order; strategy 'NAME' or 'NAME+datamap'."""
    if strategy == "random":
        return random_order(len(x_pool), seed)[:budget], []
    name, _, outliers = strategy.partition("+")
    cfg = RoundsConfig(strategy=name, budget=budget, round_size=round_size, seed=seed,
                       outliers=outliers or "none", candidates=candidates)
    result = select_in_rounds(x_seed, y_seed, x_pool, oracle, cfg)
    return result.order, result.rounds


def load_split(embeddings: Path, split: str) -> tuple[np.ndarray, pd.DataFrame]:
    frame = pd.read_parquet(PREPARED / f"{split}.parquet")
    return np.load(embeddings / f"{split}.npy"), frame


def orders_for(args, strategy: str, seed: int, x_seed, y_seed, x_pool, oracle) -> np.ndarray:
    """The cached purchase order of (strategy, seed), made on first use (orders/<strategy>_s<seed>.npy)."""
    path = Path(args.out) / "orders" / f"{strategy}_s{seed}.npy"
    if path.exists():
        return np.load(path)
    started = time.perf_counter()
    budget = min(max(args.budgets) - len(x_seed), len(x_pool))
    order, rounds = purchase_order(strategy, seed, x_seed, y_seed, x_pool, oracle,
                                   budget=budget, round_size=args.round_size, candidates=args.candidates)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path.with_suffix(".json"), json.dumps(
        {"strategy": strategy, "seed": seed, "seconds": round(time.perf_counter() - started, 1), "rounds": rounds},
        indent=1, default=str))
    with open(path.with_suffix(".tmp.npy"), "wb") as handle:
        np.save(handle, order)
    path.with_suffix(".tmp.npy").rename(path)
    return order


def proxy_measure(x_seed, x_pool, evals):
    """Cell -> predictions of the in-loop classifier trained on the cell's labels."""
    from stages._active_rounds import make_classifier

    def measure(train: pd.DataFrame, bought: np.ndarray, seed: int, checkpoint_dir: Path) -> dict[str, np.ndarray]:
        clf = make_classifier(seed)
        clf.fit(np.concatenate([x_seed, x_pool[bought]]), train["label"].to_numpy())
        return {split: clf.predict(x) for split, (x, _) in evals.items()}

    return measure


def finetune_measure(params, evals):
    """Cell -> predictions of the teacher as the fine_tune stage trains it (the profile's params,
    the cell's seed), scored as evaluate scores it."""
    from stages._determinism import seed_everything
    from stages._models import load_pretrained_classifier
    from stages._training import train_config
    from stages.evaluate import score_split
    from stages.fine_tune import fine_tune

    def measure(train: pd.DataFrame, bought: np.ndarray, seed: int, checkpoint_dir: Path) -> dict[str, np.ndarray]:
        seed_everything(seed, params.threads)
        model, tokenizer = load_pretrained_classifier(params.model.teacher, seed=seed, pooling=params.model.pooling)
        cfg = train_config(params.fine_tune, seed=seed, max_length=params.model.max_length, precision="fp32")
        fine_tune(model, tokenizer, train, cfg, checkpoint_dir=checkpoint_dir)
        preds = {}
        for split, (_, frame) in evals.items():
            scored = score_split(model, tokenizer, frame, batch_size=64, max_length=params.model.max_length, desc=None)[1]
            preds[split] = frame[["row_id"]].merge(scored[["row_id", "pred"]], on="row_id", how="left")["pred"].to_numpy()
        return preds

    return measure


def run_cells(args) -> None:
    from stages._params import load_params

    out, embeddings = Path(args.out), Path(args.embeddings)
    x_seed, seed_frame = load_split(embeddings, "seed")
    x_pool, pool = load_split(embeddings, "pool")
    oracle = pd.read_parquet(PREPARED / "oracle.parquet").set_index("pool_id")["label"].loc[pool["pool_id"]].to_numpy()
    evals = {split: load_split(embeddings, split) for split in ("dev", "test")}
    measure = (proxy_measure(x_seed, x_pool, evals) if args.mode == "proxy"
               else finetune_measure(load_params(args.params), evals))
    # Budget before strategy: a run stopped early has every strategy at the budgets it reached.
    for seed in args.seeds:
        for labels in args.budgets:
            for strategy in args.strategies:
                order = orders_for(args, strategy, seed, x_seed, seed_frame["label"].to_numpy(), x_pool, oracle)
                bought = order[: max(0, labels - len(seed_frame))]
                # A budget the seed set alone fills buys nothing: one cell for every strategy.
                name = strategy if len(bought) else "seedset"
                cell = out / args.mode / f"{name}_s{seed}_{labels}"
                if (cell / "cell.json").exists():
                    continue
                started = time.perf_counter()
                picked = pool.iloc[bought].assign(label=oracle[bought], source="oracle")
                train = pd.concat([seed_frame, picked.drop(columns="pool_id")], ignore_index=True)
                preds = measure(train, bought, seed, out / "checkpoints" / cell.name)
                cell.mkdir(parents=True, exist_ok=True)
                record = {"strategy": name, "seed": seed, "labels": int(len(train)),
                          "seconds": round(time.perf_counter() - started, 1)}
                for split, pred in preds.items():
                    gold = evals[split][1]["label"].to_numpy()
                    pd.DataFrame({"row_id": evals[split][1]["row_id"], "label": gold, "pred": pred}).to_parquet(
                        cell / f"{split}.parquet", index=False)
                    record[f"{split}_accuracy"] = round(float((pred == gold).mean()), 5)
                write_atomic(cell / "cell.json", json.dumps(record, indent=1))
                print(json.dumps(record), flush=True)


def embed(args) -> None:
    from stages._embeddings import embed_pairs, load_encoder
    from stages._params import load_params

    params = load_params(args.params)
    encoder, tokenizer = load_encoder(params.model.teacher)
    Path(args.embeddings).mkdir(parents=True, exist_ok=True)
    for split in ("seed", "pool", "dev", "test"):
        x = embed_pairs(encoder, tokenizer, pd.read_parquet(PREPARED / f"{split}.parquet"), features="pair",
                        max_length=params.model.max_length, desc=f"embed {split}")
        np.save(Path(args.embeddings) / f"{split}.npy", x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.active_curve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["embed", "proxy", "finetune", "summary"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--embeddings", default="data/embeddings")
    parser.add_argument("--out", default="reports/active_curve")
    parser.add_argument("--strategies", nargs="+", default=["random", "margin", "entropy"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--budgets", nargs="+", type=int, default=[2000, 4000, 8000, 13000])
    parser.add_argument("--round-size", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "embed":
        embed(args)
    elif args.mode == "summary":
        from pipeline.active_curve_report import write_summary

        write_summary(Path(args.out))
    else:
        run_cells(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
