# Sourced by the other scripts: the environment every project command runs in.
# Telemetry off for DVC and Prefect; offline mode for the Hugging Face hub when it is unreachable
# (otherwise each hub attempt costs ~25 s of retries).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$ROOT/.venv/bin:$PATH"
export DVC_NO_ANALYTICS=1
export DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.cache/prefect}"
export TOKENIZERS_PARALLELISM=false
export NLTK_DATA="${NLTK_DATA:-$ROOT/.cache/nltk_data}"
export SEC_CACHE_DIR="${SEC_CACHE_DIR:-$ROOT/.cache/sec}"
if [ -z "${HF_HUB_OFFLINE:-}" ]; then
  if python3 - <<'PY' 2>/dev/null
import socket, sys
try:
    socket.create_connection(("huggingface.co", 443), timeout=3).close()
except OSError:
    sys.exit(1)
PY
  then export HF_HUB_OFFLINE=0; else export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1; fi
fi
