"""What every DVC subprocess the orchestration starts shares (Prefect flows and the ablation grid).

Kept free of Prefect so `python -m pipeline.grid` does not import it.
"""

from __future__ import annotations

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
