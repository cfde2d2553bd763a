"""The DVC pipeline end to end on the tiny profile, in a scratch copy of the repository.

Checks DVC's contract with the stages: a full `dvc repro`, a second one that skips everything, a
params change that reruns exactly the downstream stages (and, run again, restores them from the
run-cache), and a failed stage that DVC does not record as done.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import make_tiny_repo
from conftest import run_cmd as _run
from pipeline.dag import STAGE_ORDER as STAGES

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([a-z_]+)'", output)


def _set_param(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return make_tiny_repo(tmp_path_factory.mktemp("pipeline"))


def test_repro_runs_every_stage_then_skips_them_all(tiny_repo):
    first = _run(["dvc", "repro"], tiny_repo)
    ran = _ran(first.stdout)
    assert sorted(ran) == sorted(STAGES)  # DVC may order independent branches differently
    assert ran.index("fine_tune") < ran.index("evaluate_teacher") and ran.index("evaluate") < ran.index("report_plots")
    report = json.loads((tiny_repo / "metrics" / "evaluate.json").read_text())
    assert set(report["models"]) == {"teacher", "pruned", "distilled", "quantized", "onnx_fp32", "onnx_int8"}
    assert report["deployed"] == "quantized"  # quantize.backend: torch
    assert report["models"]["pruned"]["params"] < report["models"]["teacher"]["params"]
    assert report["models"]["distilled"]["params"] < report["models"]["pruned"]["params"]  # fewer layers, trimmed vocab
    teacher_only = json.loads((tiny_repo / "metrics" / "evaluate_teacher.json").read_text())
    for split in ("dev", "test"):  # the same teacher on the same pairs: the same numbers
        assert teacher_only["models"]["teacher"][split] == {
            k: v for k, v in report["models"]["teacher"][split].items() if k != "accuracy_delta_pts"
        }
    assert "latency_ms_b32" not in teacher_only["models"]["teacher"] and not (tiny_repo / "metrics" / "evaluate_teacher_timing.json").exists()
    timing = json.loads((tiny_repo / "metrics" / "evaluate_timing.json").read_text())
    assert set(timing["models"]) == set(report["models"]) and timing["threads"] == report["threads"]
    predictions = {p.name for p in (tiny_repo / "predictions" / "evaluate").iterdir()}
    assert predictions == {f"{m}-{s}.parquet" for m in report["models"] for s in ("dev", "test")}
    assert {p.name for p in (tiny_repo / "reports" / "plots").iterdir()} == {"accuracy_vs_size.png", "accuracy_vs_latency.png"}
    assert (tiny_repo / "reports" / "report.md").read_text().count("|") > 20
    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)

    second = _run(["dvc", "repro"], tiny_repo)
    assert _ran(second.stdout) == []
    assert "didn't change" in second.stdout or "Data and pipelines are up to date" in second.stdout
    _run(["git", "add", "-A"], tiny_repo)
    _run(["git", "commit", "-qm", "tiny run"], tiny_repo)


def test_params_change_reruns_only_downstream_stages(tiny_repo):
    result = _run(["dvc", "exp", "run", "-S", "prune.ratio=0.5"], tiny_repo)
    ran = _ran(result.stdout)
    assert sorted(ran) == sorted(["prune", "distill", "quantize", "export", "evaluate", "report_plots"])
    assert ran[:2] == ["prune", "distill"] and ran[-2:] == ["evaluate", "report_plots"]
    shown = _run(["dvc", "exp", "show", "--json"], tiny_repo).stdout
    assert "0.5" in shown
    diff = _run(["dvc", "params", "diff", "--json"], tiny_repo).stdout
    assert json.loads(diff)["params.yaml"]["prune.ratio"]["new"] == 0.5
    metrics = _run(["dvc", "metrics", "diff", "--json"], tiny_repo).stdout
    assert "metrics/prune.json" in json.loads(metrics)
    # Back to the committed ratio: the training stages come back from DVC's run-cache, not retrained
    # (their dvclive curves are `cache: false` plots + metrics, which do not keep a stage out of it).
    committed = yaml.safe_load(_run(["git", "show", "HEAD:params.yaml"], tiny_repo).stdout)["prune"]["ratio"]
    assert committed != 0.5
    again = _run(["dvc", "exp", "run", "-S", f"prune.ratio={committed}"], tiny_repo)
    restored = re.findall(r"Stage '([a-z_]+)' is cached", again.stdout + again.stderr)
    assert {"prune", "distill", "quantize"} <= set(restored), again.stdout
    assert not {"prune", "distill", "quantize"} & set(_ran(again.stdout))


def test_failed_stage_is_not_recorded(tiny_repo):
    lock_before = yaml.safe_load((tiny_repo / "dvc.lock").read_text())["stages"]["augment"]
    _set_param(tiny_repo, "augment", "rate", 2.0)  # invalid: must be <= 1
    result = _run(["dvc", "repro"], tiny_repo, check=False)
    assert result.returncode != 0
    assert "augment.rate" in result.stdout + result.stderr
    assert yaml.safe_load((tiny_repo / "dvc.lock").read_text())["stages"]["augment"] == lock_before
    status = _run(["dvc", "status", "augment"], tiny_repo).stdout
    assert "changed" in status
    _set_param(tiny_repo, "augment", "rate", 0.15)
