"""The synergy controller: its loop with mocked DVC (restore, failure, met targets, dev-only,
paired rejection, trigger) and, marked slow, on the tiny profile with a planted drift."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, make_tiny_repo, run_cmd
from pipeline import controller as ctl
from pipeline import flows
from pipeline.controller import DECISIONS, control, sec_controller
from pipeline.flows import DvcCommandError
from pipeline.targets import load_controller_params

TAG = "T"
DEV_ROWS = 1000
CLASSES = ("entailment", "neutral", "contradiction")


def name(i: int) -> str:
    return f"sec-ctl-{TAG}-{i}"


@dataclass
class It:
    """What one scripted iteration measures (dev), and how its dev predictions differ from the
    first iteration's (`gains` wrong rows turned right, `losses` right rows turned wrong)."""

    size: float
    ce: float
    teacher: float = 0.60
    speed: float = 9.0
    gains: int = 0
    losses: int = 0
    base_correct: int = 600  # dev rows 0..base_correct-1 are right in the first iteration

    def correct(self) -> np.ndarray:
        correct = np.arange(DEV_ROWS) < self.base_correct
        correct[self.base_correct - self.losses:self.base_correct] = False
        correct[self.base_correct:self.base_correct + self.gains] = True
        return correct

    @property
    def accuracy(self) -> float:
        return float(self.correct().mean())


def _write_predictions(path: Path, correct: np.ndarray, rng: np.random.Generator | None = None) -> None:
    row_id = np.arange(DEV_ROWS, dtype=np.int64) * 7 + 3  # ids of pairs in the source file, sorted
    label = row_id % 3
    pred = np.where(correct, label, (label + 1) % 3) if rng is None else rng.integers(0, 3, DEV_ROWS)
    probs = np.full((DEV_ROWS, 3), 1 / 3, dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"row_id": row_id, "label": label.astype(np.int64), "pred": pred.astype(np.int64),
                  "prob_entailment": probs[:, 0], "prob_neutral": probs[:, 1], "prob_contradiction": probs[:, 2],
                  }).to_parquet(path, index=False)


def write_iteration(repo: Path, it: It, poison_test: bool = False) -> None:
    """The files an evaluate run leaves, in the contract's shape. `poison_test`: every test number
    0 and the test predictions random: nothing that decides may read them."""
    def split(accuracy, ce):
        return {"accuracy": accuracy, "macro_f1": accuracy, "cross_entropy": ce, "perplexity": float(np.exp(ce)),
                "class_accuracy": {"entailment": accuracy + 0.05, "neutral": accuracy - 0.1, "contradiction": accuracy + 0.05},
                "accuracy_delta_pts": round((accuracy - it.teacher) * 100, 2)}

    def test_split(accuracy, ce):
        if poison_test:
            return {"accuracy": 0.0, "macro_f1": 0.0, "cross_entropy": 0.0, "perplexity": 0.0,
                    "class_accuracy": dict.fromkeys(CLASSES, 0.0), "accuracy_delta_pts": 0.0}
        return split(accuracy - 0.02, ce + 0.05)

    evaluate = {"models": {
        "teacher": {"dev": split(it.teacher, 0.9), "test": test_split(it.teacher, 0.9),
                    "size_mb": 90.0, "params": 22_000_000, "size_ratio": 1.0, "params_ratio": 1.0},
        "quantized": {"dev": split(it.accuracy, it.ce), "test": test_split(it.accuracy, it.ce),
                      "size_mb": 90.0 / it.size, "params": 8_000_000, "size_ratio": it.size, "params_ratio": 2.7}},
        "dev_rows": DEV_ROWS, "test_rows": 2000, "threads": 2, "seed": 42}
    timing = {"models": {"teacher": {"latency_ms_b32": 350.0, "throughput_pairs_per_s": 90, "speedup": 1.0},
                         "quantized": {"latency_ms_b32": 350.0 / it.speed, "throughput_pairs_per_s": 700, "speedup": it.speed}},
              "threads": 2, "device": "cpu", "latency_batches": 8, "latency_repeats": 10}
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics" / "evaluate.json").write_text(json.dumps(evaluate))
    (repo / "metrics" / "evaluate_timing.json").write_text(json.dumps(timing))
    _write_predictions(repo / "predictions" / "evaluate" / "quantized-dev.parquet", it.correct())
    rng = np.random.default_rng(1) if poison_test else None
    _write_predictions(repo / "predictions" / "evaluate" / "quantized-test.parquet", it.correct(), rng)


def make_repo(tmp_path: Path, targets: dict | None = None, **controller) -> Path:
    """A directory with what the controller reads: params.yaml, the data metrics, no DVC."""
    repo = tmp_path / "repo"
    repo.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["controller"].update(controller)
    # The targets these scripted iterations were written against (params.yaml's may move).
    params["controller"]["targets"].update({"min_size_ratio": 10.0, "min_speedup": 8.0, "min_speedup_b1": None})
    params["controller"]["targets"].update(targets or {})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "metrics").mkdir()
    (repo / "metrics" / "prepare.json").write_text(json.dumps({"seed_rows": 100, "pool_rows": 900}))
    (repo / "metrics" / "active_select.json").write_text(json.dumps({"labelled_rows": 300}))
    return repo


@dataclass
class FakeDvc:
    """Scripted iterations instead of `dvc exp run`; every other DVC command recorded."""

    repo: Path
    script: list[It]
    fail_at: int | None = None
    poison_test: bool = False
    fail_apply: bool = False
    runs: list[tuple[int, dict, str]] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)

    def run_iteration(self, iteration: int, changes: dict, exp: str) -> list[str]:
        self.runs.append((iteration, dict(changes), exp))
        if iteration == self.fail_at:
            # What a failed `dvc exp run` leaves: half-written outputs of the failing stage.
            (self.repo / "metrics" / "evaluate.json").write_text("{")
            raise DvcCommandError(["dvc", "exp", "run", "--name", exp], 255, "ERROR: failed to reproduce 'distill'")
        write_iteration(self.repo, self.script[iteration], self.poison_test)
        return ["prune", "distill", "quantize", "evaluate"]

    def dvc(self, cmd: list[str]) -> str:
        self.commands.append(cmd)
        if self.fail_apply and cmd[:3] == ["dvc", "exp", "apply"]:
            raise DvcCommandError(cmd, 1, "ERROR: cannot apply")
        return ""


def run_control(repo: Path, fake: FakeDvc, bound: int = 3) -> list[dict]:
    cfg = load_controller_params(repo / "params.yaml")
    return control(repo, cfg, bound, TAG, fake.run_iteration, fake.dvc, log=lambda _: None)


def logged(repo: Path) -> list[dict]:
    return [json.loads(line) for line in (repo / DECISIONS).read_text().splitlines()]




def test_an_iteration_that_does_not_improve_restores_the_best_experiment(tmp_path):
    repo = make_repo(tmp_path)
    # 0: too big (size 5 < 10): raise pruning. 1: still too big and a worse objective: stop,
    # restore 0. Its dev predictions differ within noise, and its teacher moved.
    fake = FakeDvc(repo, [It(size=5.0, ce=0.9), It(size=6.0, ce=1.2, teacher=0.57, gains=15, losses=25)])
    records = run_control(repo, fake)

    assert [r[0] for r in fake.runs] == [0, 1]
    assert fake.runs[1][1] == records[0]["decision"] == {"prune.ratio": 0.4}
    assert records[0]["misses"] == ["size"] and records[0]["improved"] and not records[0]["stop"]
    assert records[1]["improved"] is False and records[1]["stop"] is True
    assert "did not improve" in records[1]["reason"]
    assert records[1]["comparison"]["verdict"] == "not shown" and records[1]["comparison"]["against"] == name(0)
    assert records[1]["comparison"]["diff"] == pytest.approx(-0.01)
    # The best (0) is applied, then the log is tracked; nothing else is run.
    assert fake.commands == [["dvc", "exp", "apply", name(0)]]
    assert logged(repo) == json.loads(json.dumps(records))
    # The reference is iteration 0's, in every record, although the teacher moved.
    assert records[0]["reference"]["teacher_accuracy"] == records[1]["reference"]["teacher_accuracy"] == 0.60
    assert records[1]["metrics"]["teacher_accuracy"] == 0.57
    assert records[0]["reference"]["deployed_accuracy"] == 0.6 and records[0]["reference"]["accuracy_floor"] == 0.59
    assert records[0]["comparison"] is None


def test_the_last_iteration_when_best_is_left_applied_and_the_log_still_recorded(tmp_path):
    repo = make_repo(tmp_path)
    (repo / DECISIONS).parent.mkdir()
    (repo / DECISIONS).write_text('{"iteration": 0, "old": true}\n')  # an earlier run's history is kept
    fake = FakeDvc(repo, [It(size=5.0, ce=0.9), It(size=12.0, ce=0.8, gains=3)])
    records = run_control(repo, fake)
    assert records[-1]["reason"] == "all targets met" and records[-1]["experiment"] == name(1)
    assert fake.commands == []
    assert logged(repo)[0] == {"iteration": 0, "old": True} and len(logged(repo)) == 3


def test_met_targets_win_over_an_earlier_better_objective(tmp_path):
    repo = make_repo(tmp_path)
    # 0 misses size with a low cross-entropy; 1 meets every target with a higher objective.
    # Restoring 0 (what the old controller did) would hand back an experiment that misses.
    fake = FakeDvc(repo, [It(size=5.0, ce=0.3), It(size=12.0, ce=1.4, gains=10, losses=10)])
    records = run_control(repo, fake)
    j0, j1 = records[0]["objective"], records[1]["objective"]
    assert j1 > j0  # under the λs each iteration ran with; the decision compares under the same λ
    assert records[1]["misses"] == [] and records[1]["improved"] is True
    assert records[1]["reason"] == "all targets met"
    assert ["dvc", "exp", "apply", name(0)] not in fake.commands and fake.commands == []


def test_a_dev_regression_beyond_noise_is_rejected_even_when_it_meets_the_targets(tmp_path):
    repo = make_repo(tmp_path)
    # 0: 63.0 on dev with the teacher at 63.0, too big. 1: small enough and within a point of the
    # pinned teacher (62.2), better objective, but 8 dev examples lost and none gained: "hurt".
    fake = FakeDvc(repo, [It(size=5.0, ce=0.9, teacher=0.63, base_correct=630),
                          It(size=12.0, ce=0.5, teacher=0.63, base_correct=630, losses=8)])
    records = run_control(repo, fake)
    assert records[1]["misses"] == []
    assert records[1]["comparison"]["verdict"] == "hurt" and records[1]["comparison"]["high"] < 0
    assert records[1]["improved"] is False and "rejected" in records[1]["reason"]
    assert fake.commands == [["dvc", "exp", "apply", name(0)]]


def test_a_failed_experiment_leaves_the_best_applied_the_log_recorded_and_raises(tmp_path):
    repo = make_repo(tmp_path)
    fake = FakeDvc(repo, [It(size=5.0, ce=0.9)], fail_at=1)
    with pytest.raises(DvcCommandError, match="failed to reproduce"):
        run_control(repo, fake)
    assert fake.commands == [["dvc", "exp", "apply", name(0)]]
    log = logged(repo)
    assert [r["iteration"] for r in log] == [0, 1]
    assert log[1]["failed"] is True and log[1]["restored"] == name(0) and log[1]["applied"] == {"prune.ratio": 0.4}
    assert "failed to reproduce" in log[1]["error"] and log[1]["reference"]["teacher_accuracy"] == 0.60


def test_a_failure_before_anything_was_accepted_still_records_the_log(tmp_path):
    repo = make_repo(tmp_path)
    fake = FakeDvc(repo, [], fail_at=0)
    with pytest.raises(DvcCommandError):
        run_control(repo, fake)
    assert fake.commands == []  # nothing to restore
    assert logged(repo)[0]["restored"] is None


def test_a_failing_restore_still_records_the_log_and_the_iteration_error_is_raised(tmp_path):
    repo = make_repo(tmp_path)
    fake = FakeDvc(repo, [It(size=5.0, ce=0.9)], fail_at=1, fail_apply=True)
    (repo / DECISIONS).parent.mkdir()
    (repo / DECISIONS).write_text(json.dumps({"iteration": 0, "experiment": "an earlier run"}) + "\n")
    with pytest.raises(DvcCommandError, match="failed to reproduce"):
        run_control(repo, fake)
    assert fake.commands == [["dvc", "exp", "apply", name(0)]]
    # The log holds the earlier history, then both iterations: the one that ran, the one that failed.
    log = logged(repo)
    assert [r["experiment"] for r in log] == ["an earlier run", name(0), name(1)]
    assert log[1]["improved"] is True and log[1]["stop"] is False
    assert log[2]["failed"] is True and log[2]["restored"] == name(0) and "failed to reproduce" in log[2]["error"]


def test_decisions_never_read_test_numbers(tmp_path):
    """Every test value poisoned (0, random test predictions): the same decisions, word for word."""
    script = [It(size=5.0, ce=0.9), It(size=6.0, ce=0.7, gains=20, losses=5), It(size=7.0, ce=1.1, gains=5, losses=20)]
    results = []
    for poison in (False, True):
        repo = make_repo(tmp_path / str(poison))
        fake = FakeDvc(repo, script, poison_test=poison)
        results.append((run_control(repo, fake), fake.commands, fake.runs, logged(repo)))
        metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
        assert (metrics["models"]["quantized"]["test"]["accuracy"] == 0.0) is poison
    assert results[0] == results[1]
    assert len(results[0][0]) == 3  # three iterations ran: the poison had every chance to matter


def test_controller_iterations_do_not_emit_the_event_that_triggers_the_controller(tmp_path, monkeypatch):
    from prefect.events import DeploymentEventTrigger
    from prefect.events.schemas.events import Resource

    repo = make_repo(tmp_path)
    write_iteration(repo, It(size=5.0, ce=0.9))
    emitted: list[dict] = []
    monkeypatch.setattr(flows, "emit_event", lambda **event: emitted.append(event))
    monkeypatch.setattr(flows, "create_markdown_artifact", lambda **_: None)
    monkeypatch.setattr(ctl, "publish_metrics", flows.publish_metrics.fn)
    monkeypatch.setattr(ctl, "dvc_exp_run", lambda changes, exp, repo: "Running stage 'prune':\nRunning stage 'evaluate':")

    result = ctl.controller_iteration.fn(1, {"prune.ratio": 0.4}, name(1), str(repo))
    assert result == {"stages_run": ["prune", "evaluate"]}
    flows.publish_metrics.fn(str(repo))  # what the pipeline flow publishes
    controller_event, pipeline_event = emitted

    deployment = next(d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                      if d["entrypoint"] == "pipeline/controller.py:sec_controller")
    (trigger,) = [DeploymentEventTrigger.model_validate(t) for t in deployment["triggers"]]

    def fires(event: dict) -> bool:
        return event["event"] in trigger.expect and trigger.match.matches(Resource(event["resource"]))

    assert fires(pipeline_event)  # the trigger still works for the pipeline's runs
    assert not fires(controller_event)
    # The event carries dev numbers only.
    assert controller_event["payload"]["split"] == "dev" and controller_event["payload"]["accuracy"] == 0.6
    assert controller_event["payload"]["speedup"] == 9.0


@pytest.mark.slow
def test_controller_reruns_prune_downstream_logs_why_and_stops_within_bound(tmp_path):
    repo = make_tiny_repo(tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["controller"].update(max_iterations=2)
    # Accuracy may drop freely and labels are free: only the size target (unreachable) is missed,
    # so the controller must raise compression pressure, i.e. the pruning ratio.
    params["controller"]["targets"] = {
        "max_accuracy_drop_pts": 100.0, "min_size_ratio": 50.0, "min_speedup": 0.0, "max_labelled_fraction": 1.0,
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_cmd(["git", "commit", "-qam", "planted drift"], repo)

    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        records = sec_controller(repo=str(repo))

    assert 2 <= len(records) <= 3  # first run + at most max_iterations experiments
    first = records[0]
    assert first["misses"] == ["size"]
    assert first["decision"] == {"prune.ratio": 0.4} and first["first_stage"] == "prune"
    assert "size below target" in first["reason"]
    assert first["reference"]["teacher_accuracy"] == first["metrics"]["teacher_accuracy"]
    second = records[1]
    assert second["applied"] == {"prune.ratio": 0.4}
    ran = second["stages_run"]  # nothing upstream; quantize and export are independent (either order)
    assert ran[:2] == ["prune", "distill"] and sorted(ran[2:4]) == ["export", "quantize"] and ran[4:] == ["evaluate", "report_plots"]
    assert second["comparison"]["against"] == first["experiment"] and second["comparison"]["rows"] > 0
    assert records[-1]["stop"] is True and records[-1]["reason"]

    logged_records = [json.loads(line) for line in (repo / DECISIONS).read_text().splitlines()]
    assert [r["iteration"] for r in logged_records] == [r["iteration"] for r in records]
    # the log is a plain git-trackable file: a DVC-tracked log missing from a fresh clone's cache
    # made `dvc exp apply` fail on the default profile
    assert (repo / DECISIONS).is_file() and not (repo / f"{DECISIONS}.dvc").exists()

    shown = json.loads(run_cmd(["dvc", "exp", "show", "--json"], repo).stdout)
    names = json.dumps(shown)
    for record in records:
        assert record["experiment"] in names

