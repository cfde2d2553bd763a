#!/usr/bin/env bash
# The main job: set up, run the DVC pipeline on the profile in params.yaml, print the report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
dvc repro "$@"
dvc push -q || echo "run: dvc push to the default remote failed (outputs stay in the local cache)"
echo
cat reports/report.md
# The deployed model against params.yaml's targets (a view: changing a target reruns nothing).
python -m pipeline.target_report --out reports/targets.md
