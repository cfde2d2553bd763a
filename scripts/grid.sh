#!/usr/bin/env bash
# The ablation grid: every run as a DVC experiment `grid-<row>-s<seed>` (queued, run one at a time),
# then the paper tables from `dvc exp show` and the runs' prediction files in reports/grid/
# (tables.md, table*.csv, claims.csv, stage_time.csv, verdicts.json, accuracy_vs_label_fraction.json).
# The rows that carry a claim run at params.yaml's grid.seeds seeds (seed, seed+1, ...), the others
# at `seed`. Finished experiments are skipped, so running it again only rewrites the tables (and
# raising --seeds runs only the new seeds). Extra arguments go to `python -m pipeline.grid run`:
# --only NAME..., --seeds N, --profile tiny, --rerun, --full, --timeout S.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
python -m pipeline.grid run --out-dir reports/grid "$@"
