"""What every DVC subprocess the orchestration starts shares (Prefect flows, the controller, the
ablation grid, the GPU check): its environment, and how a param override is written for `-S`.

Kept free of Prefect so `python -m pipeline.grid` does not import it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# DVC's messages when another command holds the repository lock: the one failure worth a retry.
LOCK_MARKERS = ("Unable to acquire lock", "is busy")


def project_env() -> dict[str, str]:
    """The environment every DVC command runs in: telemetry off, the venv's python first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def override_value(value: object) -> str:
    """A value in DVC's `-S` (Hydra) override grammar, read back as the same value: JSON for scalars
    and lists (a string is always quoted, so "1.0", "null" or a path stay strings), `{key: value}`
    for mappings (Hydra refuses quoted keys). tests/test_dvc_env.py round-trips it through DVC's parser.
    """
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)
