"""Generation throughput of the generate stage's endpoint (default: the local SmolLM2 under llama.cpp).

Runs use (a) for `--transfer` requests and use (b) for `--premises` premises (3 requests each) on
MNLI pairs, with the stage's own prompts, filters and client, and prints the stage's metrics
(completion tokens/s, seconds per request, what the filters dropped). Use (b)'s label check is
replaced by a uniform one (this measures the generator, not the acquisition model): the pairs that
passed the filters are `kept + check_rejected` of its metrics.

    python scripts/bench_generate.py --mnli ../shared/data/mnli --transfer 15 --premises 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from stages._io import read_pairs
from stages._params import load_params
from stages.generate import endpoint, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--mnli", required=True, help="directory with train.parquet and validation_matched.parquet")
    parser.add_argument("--transfer", type=int, default=15)
    parser.add_argument("--premises", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log", default=".cache/generate/bench-server.log")
    args = parser.parse_args()

    params = load_params(args.params)
    p = params.generate.model_copy(update={"transfer_count": args.transfer, "label_count": args.premises})
    train = read_pairs(Path(args.mnli) / "train.parquet").sample(n=2000, random_state=0)
    pool, labelled = train.iloc[:1000].assign(label=-1), train.iloc[1000:]
    test = read_pairs(Path(args.mnli) / "validation_matched.parquet")
    with endpoint(p, params.seed, args.threads, Path(args.log)) as (ask, described):
        transfer, conditioned, metrics = generate(pool, labelled, test, ask, p, params.seed,
                                                  check=lambda ps, hs: np.full((len(ps), 3), 1 / 3))
    metrics["endpoint"] = described
    metrics["threads"] = args.threads
    print(json.dumps(metrics, indent=2))
    with pd.option_context("display.max_colwidth", 120, "display.width", 250):
        print(transfer[["premise", "hypothesis"]].head(8).to_string())
        print(conditioned[["premise", "hypothesis", "label"]].head(9).to_string())


if __name__ == "__main__":
    main()
