"""A stage's errors name the stage, not `__main__` (python -m stages.<name>)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("args", "message"), [
    ([], "prepare: error: the following arguments are required: --out-dir, --metrics"),
    (["--params", "no-such-params.yaml", "--out-dir", "x", "--metrics", "x.json"],
     "prepare: error: no-such-params.yaml: params file not found"),
])
def test_prepare_errors_start_with_the_stage_name(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "stages.prepare", *args], capture_output=True, text=True,
                            cwd=tmp_path, env={"PYTHONPATH": str(Path(__file__).parents[1]),
                                               "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert "__main__" not in result.stderr
