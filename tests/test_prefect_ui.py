"""A real Prefect server, a worker on the work pool, the pipeline deployment, and the UI in Chromium."""

from __future__ import annotations

import shutil

import pytest

from conftest import make_tiny_repo
from pipeline.ui_check import check, chromium, failures

pytestmark = pytest.mark.slow


def test_deployment_runs_through_a_worker_and_the_ui_shows_it(tmp_path):
    if chromium() is None:
        pytest.fail("Chromium is not installed: scripts/test.sh installs it (apt-get install chromium)")
    repo = make_tiny_repo(tmp_path)
    out = tmp_path / "ui"
    summary = check(repo, out, timeout=900)
    assert failures(summary) == []
    assert {"prepare", "fine_tune", "evaluate"} <= set(summary["task_runs"])
    shutil.copy(out / "flow-run.png", tmp_path / "flow-run.png")
