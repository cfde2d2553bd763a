#!/usr/bin/env bash
# One command on a bare GPU machine with a copy of this repository (issue 10):
#   bash scripts/gpu_check.sh
# set-up (scripts/setup.sh installs a CUDA torch where nvidia-smi works), then the tiny profile and a
# shortened gpu profile (mpnet-base teacher, the offline data in ../shared/data/mnli) end to end on
# CUDA, each in a scratch git + DVC repository (this one is not touched). Fails unless every
# training and inference stage recorded `cuda`; prints the stage times and the test accuracy.
# Budget: 10 minutes including set-up (GPU_CHECK_TIMEOUT seconds for the runs, default 540).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
  echo "gpu_check: nvidia-smi does not work here: no GPU to check" >&2
  exit 2
fi
bash scripts/setup.sh
source scripts/env.sh
python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU (a CPU wheel? see README 'GPU')")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PY
echo "gpu_check: set-up took $((SECONDS - started)) s"
status=0
timeout "${GPU_CHECK_TIMEOUT:-540}" python -m pipeline.gpu_check --device cuda "$@" || status=$?
echo "gpu_check: $((SECONDS - started)) s in all, exit $status"
exit $status
