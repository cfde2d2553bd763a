"""pipeline.reference_run: a run's comparable files copied into git, usable as a run by the comparison."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.reference_run import SnapshotError, main, snapshot
from pipeline.reproducibility import prediction_files


def _run(root, with_predictions=True):
    (root / "metrics").mkdir(parents=True)
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (root / "metrics" / "evaluate.json").write_text('{"models": {}}')
    (root / "models").mkdir()
    (root / "models" / "big.bin").write_bytes(b"x" * 10)  # models stay out of git
    if with_predictions:
        for directory, model in (("predictions/evaluate", "quantized"), ("predictions/evaluate_teacher", "teacher")):
            (root / directory).mkdir(parents=True)
            for split in ("dev", "test"):
                pd.DataFrame({"row_id": [0, 1], "label": [0, 1], "pred": [0, 2]}).to_parquet(
                    root / directory / f"{model}-{split}.parquet")
    return root


def test_snapshot_copies_lock_metrics_and_predictions_only(tmp_path):
    run = _run(tmp_path / "run")
    out = tmp_path / "repo" / "reports" / "reference_run"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an older snapshot")
    copied = snapshot(run, out)
    assert "dvc.lock" in copied and "metrics/evaluate.json" in copied
    assert not (out / "models").exists() and not (out / "stale.txt").exists()
    # The snapshot is a run the cross-machine comparison reads.
    assert set(prediction_files(out)) == {("quantized", "dev"), ("quantized", "test"), ("teacher", "dev"),
                                          ("teacher", "test")}
    assert [p.name for p in out.parent.iterdir()] == ["reference_run"]  # no staging directory left


def test_a_run_without_predictions_is_refused_and_the_old_snapshot_kept(tmp_path, capsys):
    run = _run(tmp_path / "run", with_predictions=False)
    out = tmp_path / "reference_run"
    out.mkdir()
    (out / "dvc.lock").write_text("kept")
    with pytest.raises(SnapshotError, match="predictions/evaluate: no predictions"):
        snapshot(run, out)
    assert (out / "dvc.lock").read_text() == "kept"
    assert main(["--run", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "dvc.lock: not found" in capsys.readouterr().err
