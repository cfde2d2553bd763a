#!/usr/bin/env bash
# One configuration over seeds, each in a checkout of its own, then the paired summary:
#
#   bash scripts/seed_runs.sh OUT SEEDS [KEY=VALUE ...]
#   bash scripts/seed_runs.sh reports/search/confirm "42 43 44" prune.ratio=0.5 distill.layers=2
#
# For each seed: a clone of this repository's HEAD beside it, <checkout>-<OUT's name>-s<seed>
# (beside, so that relative paths such as data.local_dir ../shared/... resolve as here), that
# shares this checkout's DVC cache, so DVC's run-cache restores every stage any earlier run
# computed with the same inputs (the seed you already ran costs a minute), and
# `dvc exp run -S seed=<seed> -S KEY=VALUE`.
# Runs one seed at a time: two training runs on one CPU only slow each other down. Then
# `python -m pipeline.seed_summary` over the checkouts writes OUT.md and OUT.json (test and dev,
# every model against its own teacher, paired on the same examples). A finished checkout is kept
# and not rerun (it must have run the same KEY=VALUEs: else the script stops); delete the
# checkout to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 2
fi
out=$1; seeds=$2; shift 2
source scripts/env.sh
root=$(pwd)
cache=$(dvc cache dir)
runs=()
config="$*"
for seed in $seeds; do
  dir="$root-$(basename "$out")-s$seed"
  runs+=("$dir")
  if [ -f "$dir/.seed-run-done" ]; then
    ran=$(sed -n 's/^config: //p' "$dir/.seed-run-done")
    if [ "$ran" != "$config" ]; then
      echo "$dir ran '$ran', not '$config': delete it or choose another OUT" >&2; exit 2
    fi
    echo "seed $seed: done before ($dir)"; continue
  fi
  rm -rf "$dir"
  git clone -q "$root" "$dir"
  ln -s "$root/.venv" "$dir/.venv"
  mkdir -p "$dir/.cache" && [ -d .cache/nltk_data ] && cp -r .cache/nltk_data "$dir/.cache/"
  args=(-S "seed=$seed")
  for kv in "$@"; do args+=(-S "$kv"); done
  start=$(date +%s)
  (cd "$dir" && dvc cache dir --local "$cache" && dvc exp run "${args[@]}")
  printf 'seed %s: %s s\nconfig: %s\n' "$seed" "$(( $(date +%s) - start ))" "$config" | tee "$dir/.seed-run-done"
done
python -m pipeline.seed_summary "${runs[@]}" --out "$out" --title "${config:+Over seeds: }${config:-Default profile over seeds}"
