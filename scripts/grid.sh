#!/usr/bin/env bash
# The ablation grid: every variant as a DVC experiment (queued, run one at a time), then the paper
# tables from `dvc exp show` in reports/grid/ (tables.md, table*.csv, accuracy_vs_label_fraction.json).
# Finished experiments are skipped, so running it again only rewrites the tables. Extra arguments go
# to `python -m pipeline.grid run`: --only NAME..., --profile tiny, --rerun, --full, --timeout S.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
python -m pipeline.grid run --out-dir reports/grid "$@"
