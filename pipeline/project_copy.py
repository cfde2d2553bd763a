"""Copy this project's pipeline into a scratch repository (the GPU check's and the tests' tiny repos).

The one list of what a scratch repo needs to run `dvc exp run` on this pipeline, so the GPU check
and tests/conftest.py `make_tiny_repo` cannot drift apart when a file is added to it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What a scratch repo needs: the stage code, the flows/controller, the DVC pipeline and its params,
# and the Prefect deployments. Data, models and metrics are made (or pointed at) by the caller.
PROJECT_ITEMS = ("stages", "pipeline", "dvc.yaml", "params.yaml", "prefect.yaml")


def copy_project(dest: Path) -> Path:
    """Create `dest` (it must not exist yet) and copy PROJECT_ITEMS into it, without __pycache__."""
    dest.mkdir(parents=True)
    for item in PROJECT_ITEMS:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / item)
    return dest
