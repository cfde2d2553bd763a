"""The controller around the search: reading what `dvc exp run` left (dev only), the reports, the
pinned reference, `--apply`, the Prefect trial subflow; marked slow, real trials on the tiny profile."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from conftest import REPO, make_tiny_repo, run_cmd
from pipeline import controller as ctl
from pipeline import flows, search
from pipeline.reference import REFERENCE, Reference, ReferenceError, save
from pipeline.search import RunRequest

optuna.logging.set_verbosity(optuna.logging.WARNING)

DEV_ROWS = 300
KNOBS = {"prune.ratio": {"low": 0.3, "high": 0.7, "step": 0.2}, "distill.layers": {"choices": [2, 3]}}


def make_repo(tmp_path: Path, **search_settings) -> Path:
    """A directory with what the controller reads: params.yaml (a small space), a pinned reference."""
    repo = tmp_path / "repo"
    repo.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["controller"]["search"] = {"trials": 4, "startup_trials": 2, "teacher_every": 1, "confirm_seeds": 1,
                                      "cheap_fraction": 1.0, "knobs": KNOBS, **search_settings}
    params["controller"]["targets"].update({"min_size_ratio": 12.0, "min_speedup": 8.0, "min_speedup_b1": 8.0})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    save(Reference(teacher_dev_accuracy=0.60, seeds=[42, 43], values=[0.60, 0.60]), repo)
    return repo


def _predictions(path: Path, right: int, shift: int = 0, poison: bool = False) -> None:
    row_id = np.arange(DEV_ROWS, dtype=np.int64) * 7 + 3
    label = row_id % 3
    ok = np.roll(np.arange(DEV_ROWS) < right, shift)
    pred = np.random.default_rng(1).integers(0, 3, DEV_ROWS) if poison else np.where(ok, label, (label + 1) % 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"row_id": row_id, "label": label, "pred": pred, "prob_entailment": 1 / 3, "prob_neutral": 1 / 3,
                  "prob_contradiction": 1 / 3}).to_parquet(path, index=False)


@dataclass
class FakeDvc:
    """`dvc exp run` replaced by writing the files an evaluate run leaves, from the overrides.
    `poison_test`: every test number 0 and the test predictions random."""

    repo: Path
    poison_test: bool = False
    requests: list[RunRequest] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)

    def run_experiment(self, request: RunRequest) -> None:
        self.requests.append(request)
        o = request.overrides
        size = 5 + 20 * o["prune.ratio"] + (4 if o["distill.layers"] == 2 else 0)
        speed = size - 2
        accuracy = 0.60 - (0.03 if o["prune.ratio"] > 0.6 else 0.0)
        right, teacher_right = int(round(accuracy * DEV_ROWS)), int(0.60 * DEV_ROWS)

        def split(acc):
            return {"accuracy": acc, "macro_f1": acc, "cross_entropy": 0.9}

        def test(acc):
            return {"accuracy": 0.0, "macro_f1": 0.0, "cross_entropy": 0.0} if self.poison_test else split(acc - 0.02)

        metrics = self.repo / "metrics"
        metrics.mkdir(exist_ok=True)
        (metrics / "evaluate.json").write_text(json.dumps({"deployed": "quantized", "models": {
            "teacher": {"dev": split(0.60), "test": test(0.60), "size_mb": 90.0, "size_ratio": 1.0},
            "quantized": {"dev": split(right / DEV_ROWS), "test": test(right / DEV_ROWS), "size_mb": 90 / size,
                          "size_ratio": size}}}))
        (metrics / "evaluate_timing.json").write_text(json.dumps({"models": {
            "teacher": {"latency_ms_b32": 350.0, "speedup": 1.0},
            "quantized": {"latency_ms_b32": 350 / speed, "speedup": speed, "latency_ms_b1_p50": 40 / speed,
                          "speedup_b1_p50": speed}}}))
        (metrics / "prepare.json").write_text(json.dumps({"seed_rows": 100, "pool_rows": 900}))
        (metrics / "active_select.json").write_text(json.dumps({"labelled_rows": 300}))
        _predictions(self.repo / "predictions/evaluate/quantized-dev.parquet", right, shift=request.seed)
        _predictions(self.repo / "predictions/evaluate_teacher/teacher-dev.parquet", teacher_right, shift=request.seed)
        _predictions(self.repo / "predictions/evaluate/quantized-test.parquet", right, poison=self.poison_test)

    def dvc(self, cmd: list[str]) -> str:
        self.commands.append(cmd)
        if cmd[:3] == ["dvc", "exp", "apply"]:  # what apply does to a tracked file the experiment holds older
            (self.repo / search.STORAGE).write_text("")
        return ""


def control(repo: Path, fake: FakeDvc, trials: int | None = None, apply: bool = False) -> dict:
    return ctl.control(repo, trials, apply, fake.run_experiment, fake.dvc, log=lambda _: None)


def test_a_study_writes_its_pareto_front_and_applies_only_when_asked(tmp_path):
    repo = make_repo(tmp_path)
    fake = FakeDvc(repo)
    summary = control(repo, fake)
    assert len(summary["trials"]) == 4 and fake.commands == []  # no apply without --apply
    assert (repo / search.STORAGE).is_file()
    md = (repo / "reports/search/pareto.md").read_text()
    assert "Pareto front" in md and "| trial |" in md
    png = (repo / "reports/search/pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    rows = json.loads((repo / "reports/search/trials.json").read_text())
    assert {r["trial"] for r in rows} and all(r["size_ratio"] > 0 for r in rows)
    # Each run set every knob, the seed and the steps.
    for request in fake.requests:
        assert set(request.overrides) == {*KNOBS, "distill.max_steps", "seed"}

    before = (repo / search.STORAGE).read_text()
    summary = control(repo, fake, trials=0, apply=True)
    assert summary["recommended"] is not None
    study = search.open_study(repo / search.STORAGE, ctl.load_controller_params(repo / "params.yaml").search)
    chosen = study.trials[summary["recommended"]]
    assert fake.commands == [["dvc", "exp", "apply", chosen.user_attrs[f"run:full:{42}"]["experiment"]]]
    assert chosen.params["prune.ratio"] < 0.6  # 0.7 loses 3 points on dev: never the recommendation
    assert (repo / search.STORAGE).read_text() == before  # the study survived the apply


def test_decisions_never_read_test_numbers(tmp_path):
    """Every test value poisoned (0, random test predictions): the same study, value for value."""
    studies = []
    for poison in (False, True):
        repo = make_repo(tmp_path / str(poison))
        control(repo, FakeDvc(repo, poison_test=poison))
        study = search.open_study(repo / search.STORAGE, ctl.load_controller_params(repo / "params.yaml").search)
        studies.append([(t.params, t.values, t.state, t.constraints) for t in study.trials])
        test_metrics = json.loads((repo / "metrics/evaluate.json").read_text())["models"]["quantized"]["test"]
        assert (test_metrics["accuracy"] == 0.0) is poison
    assert studies[0] == studies[1] and len(studies[0]) == 4


def test_the_search_refuses_to_start_without_a_pinned_reference(tmp_path):
    repo = make_repo(tmp_path)
    (repo / REFERENCE).unlink()
    with pytest.raises(ReferenceError, match=r"reference.json.*--pin-reference"):
        control(repo, FakeDvc(repo))


def test_pin_reference_is_the_mean_of_the_runs_teachers_on_dev(tmp_path):
    runs = []
    for seed, dev in ((42, 0.60), (43, 0.63), (44, 0.66)):
        run = tmp_path / f"s{seed}"
        (run / "metrics").mkdir(parents=True)
        (run / "metrics/evaluate_teacher.json").write_text(json.dumps(
            {"models": {"teacher": {"dev": {"accuracy": dev}, "test": {"accuracy": 0.0}}}}))
        (run / "metrics/fine_tune.json").write_text(json.dumps({"run": {"seed": seed}, "train_steps": 10}))
        runs.append(str(run))
    ref = ctl.pin_reference(runs, tmp_path)
    assert ref.teacher_dev_accuracy == pytest.approx(0.63) and ref.seeds == [42, 43, 44]
    assert json.loads((tmp_path / REFERENCE).read_text())["teacher_dev_accuracy"] == pytest.approx(0.63)
    with pytest.raises(ReferenceError, match="repeat a seed"):
        ctl.pin_reference([runs[0], runs[0]], tmp_path)


def test_the_baseline_is_the_repository_as_the_study_first_saw_it(tmp_path):
    repo = make_repo(tmp_path, trials=1)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["controller"]["search"]["knobs"]["prune.ratio"] = {"low": 0.3, "high": 0.7, "step": 0.1}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fake = FakeDvc(repo)
    control(repo, fake)
    assert fake.requests[0].overrides["seed"] == 42 and fake.requests[0].overrides["prune.ratio"] == 0.3
    # A trial rewrote the workspace's params.yaml (what `dvc exp run -S` does): the next start keeps the first baseline.
    params["seed"], params["prune"]["ratio"] = 44, 0.6
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    study = search.open_study(repo / search.STORAGE, ctl.load_controller_params(repo / "params.yaml").search)
    setup = ctl.setup_for(repo, study, ctl.load_controller_params(repo / "params.yaml"))
    assert setup.seed == 42 and setup.base["prune.ratio"] == 0.3


def test_controller_trials_do_not_emit_the_event_that_triggers_the_controller(tmp_path, monkeypatch):
    from prefect.events import DeploymentEventTrigger
    from prefect.events.schemas.events import Resource

    repo = make_repo(tmp_path)
    request = RunRequest(1, "sec-x-t1-full", {"prune.ratio": 0.5, "distill.layers": 3, "distill.max_steps": 10, "seed": 42},
                         42, "full")
    FakeDvc(repo).run_experiment(request)
    emitted: list[dict] = []
    artifacts: list[dict] = []
    monkeypatch.setattr(flows, "emit_event", lambda **event: emitted.append(event))
    monkeypatch.setattr(flows, "create_markdown_artifact", lambda **_: None)
    monkeypatch.setattr(ctl, "create_markdown_artifact", lambda **a: artifacts.append(a))
    monkeypatch.setattr(ctl, "publish_metrics", flows.publish_metrics.fn)
    monkeypatch.setattr(ctl, "dvc_exp_run", lambda changes, exp, repo: "Running stage 'prune':\nRunning stage 'evaluate':")

    result = ctl.controller_trial.fn(1, "full", 42, request.overrides, request.name, str(repo))
    assert result == {"stages_run": ["prune", "evaluate"]}
    assert artifacts[0]["key"] == "sec-trial-1-full-s42" and "sec-x-t1-full" in artifacts[0]["markdown"]
    flows.publish_metrics.fn(str(repo))  # what the pipeline flow publishes
    controller_event, pipeline_event = emitted

    deployment = next(d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                      if d["entrypoint"] == "pipeline/controller.py:sec_controller")
    (trigger,) = [DeploymentEventTrigger.model_validate(t) for t in deployment["triggers"]]

    def fires(event: dict) -> bool:
        return event["event"] in trigger.expect and trigger.match.matches(Resource(event["resource"]))

    assert fires(pipeline_event) and not fires(controller_event)
    assert controller_event["payload"]["split"] == "dev"


def test_exp_run_command_uses_the_projects_override_serializer():
    cmd = ctl.exp_run_command({"quantize.backend": "onnxruntime", "prune.ratio": 0.5, "seed": 43}, "sec-x-t0-full")
    assert cmd == ["dvc", "exp", "run", "--name", "sec-x-t0-full", "-S", 'quantize.backend="onnxruntime"',
                   "-S", "prune.ratio=0.5", "-S", "seed=43"]


def test_runs_made_elsewhere_are_measured_at_their_experiment_commit(tmp_path):
    """`sec controller --workers`: a run on a worker returns its experiment's commit, and the
    measurement is read there (git-tracked metrics, DVC-tracked predictions from the cache), not
    from this workspace, which holds none of its files: the same study as runs made here."""
    import shutil

    here_repo = make_repo(tmp_path / "here", trials=2)
    here = control(here_repo, FakeDvc(here_repo), trials=2)

    repo = make_repo(tmp_path / "elsewhere", trials=2)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "repo"]):
        run_cmd(cmd, repo)
    fake, revs = FakeDvc(repo), []

    def elsewhere(request: RunRequest) -> str:
        fake.run_experiment(request)  # stands in for the worker: the run's files, committed
        run_cmd(["dvc", "add", "-q", "predictions"], repo)
        run_cmd(["git", "add", "metrics", "predictions.dvc"], repo)
        run_cmd(["git", "commit", "-qm", request.name], repo)
        revs.append(run_cmd(["git", "rev-parse", "HEAD"], repo).stdout.strip())
        shutil.rmtree(repo / "metrics")
        shutil.rmtree(repo / "predictions")
        return revs[-1]

    summary = ctl.control(repo, 2, False, elsewhere, fake.dvc, log=lambda _: None)
    assert len(revs) == len(fake.requests) >= 2 and not (repo / "metrics").exists()
    assert summary["trials"] == here["trials"]

    def objectives(path: Path) -> list:
        return [{k: v for k, v in row.items() if k not in ("experiments", "experiment")}
                for row in json.loads((path / "reports/search/trials.json").read_text())]

    assert objectives(repo) == objectives(here_repo)


@pytest.mark.slow
def test_a_real_two_trial_study_runs_through_dvc_on_the_tiny_profile(tmp_path):
    repo = make_tiny_repo(tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # Two trials, four `dvc exp run`s (cheap + full each), one teacher: the knobs are pruning and
    # the int8 backend only (no data knob), and no trial can claim the accuracy target against a
    # reference of 100 % (so no confirmation seeds, each of which would retrain the teacher); the
    # slack promotes every cheap run. The machine's 2 cores are shared: keep it this small.
    params["controller"]["targets"] = {"max_accuracy_drop_pts": 0.0, "min_size_ratio": 1.0, "min_speedup": 0.0,
                                       "min_speedup_b1": None, "max_labelled_fraction": 1.0}
    params["controller"]["search"] = {"trials": 2, "startup_trials": 1, "teacher_every": 3, "confirm_seeds": 1,
                                      "cheap_fraction": 0.34, "promote_slack_pts": 1000.0, "knobs": {
                                          "prune.ratio": {"choices": [0.3, 0.5]},
                                          "quantize.backend": {"choices": ["torch", "onnxruntime"]}}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    save(Reference(teacher_dev_accuracy=1.0, seeds=[42], values=[1.0]), repo)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "search space"], repo)

    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        summary = ctl.sec_controller(repo=str(repo))

    assert summary["trials"] == ["COMPLETE", "COMPLETE"] and summary["recommended"] is None
    study = search.open_study(repo / search.STORAGE, ctl.load_controller_params(repo / "params.yaml").search)
    names = [run["experiment"] for t in study.trials for k, run in t.user_attrs.items() if k.startswith("run:")]
    shown = json.dumps(json.loads(run_cmd(["dvc", "exp", "show", "--json"], repo).stdout))
    assert names and all(name in shown for name in names)  # every run is a DVC experiment
    assert (repo / "reports/search/pareto.md").is_file() and (repo / "reports/search/pareto.png").is_file()


def test_the_report_shows_what_a_trial_stopped_after_its_cheap_pass_measured():
    import optuna

    from pipeline.reference import Reference
    from pipeline.search_report import stopped_early

    reference = Reference(0.66, [42], [0.66])
    pruned = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, params={"prune.ratio": 0.6},
        distributions={"prune.ratio": optuna.distributions.FloatDistribution(0.3, 0.7)},
        user_attrs={"run:cheap:42": {"accuracy": 0.5325, "size_ratio": 9.209, "speedup": 8.36, "speedup_b1": 7.267},
                    "pruned": "misses size"})
    failed = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={}, distributions={})
    rows = stopped_early([pruned, failed], reference)
    assert rows[1] == "## Stopped after the cheap pass"
    assert rows[-1] == f"| {pruned.number} | `prune.ratio=0.6` | 53.25 | +12.75 | 9.21 | 8.36 | 7.27 | misses size |"
    assert stopped_early([failed], reference) == []
