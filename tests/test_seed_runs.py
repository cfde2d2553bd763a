"""scripts/seed_runs.sh keeps a finished seed checkout only for the configuration it ran."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_finished_checkout_of_another_configuration_stops_the_script(tmp_path):
    root = tmp_path / "proj"
    (root / "scripts").mkdir(parents=True)
    for name in ("seed_runs.sh", "env.sh"):
        shutil.copy(REPO / "scripts" / name, root / "scripts" / name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True)
    done = tmp_path / "proj-confirm-s42"
    done.mkdir()
    (done / ".seed-run-done").write_text("seed 42: 392 s\nconfig: prune.ratio=0.3 distill.vocab_size=12000\n")
    result = subprocess.run(["bash", "scripts/seed_runs.sh", "reports/confirm", "42", "prune.ratio=0.0"],
                            cwd=root, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": os.environ["PATH"]})
    assert result.returncode == 2, result.stderr
    assert str(done) in result.stderr and "prune.ratio=0.3 distill.vocab_size=12000" in result.stderr
    assert (done / ".seed-run-done").is_file()  # nothing deleted

