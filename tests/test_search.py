"""The controller's search with a fake objective instead of `dvc exp run`: constraints, resume
after a kill, failed trials, confirmation over seeds, teacher reuse, cheap-pass pruning."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from pipeline import search
from pipeline.measure import Measurement
from pipeline.reference import Reference
from pipeline.search import RunRequest, Setup
from pipeline.search_space import SearchParams
from pipeline.targets import Targets, judge

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROWS = 400
TARGETS = Targets(max_accuracy_drop_pts=1.0, min_size_ratio=12.0, min_speedup=10.0, min_speedup_b1=10.0,
                  max_labelled_fraction=0.5)
REFERENCE = Reference(teacher_dev_accuracy=0.62, seeds=[42, 43, 44], values=[0.62, 0.62, 0.62])
SPACE = SearchParams.model_validate({
    "trials": 10, "sampler_seed": 1, "startup_trials": 3, "teacher_every": 3, "confirm_seeds": 2,
    "cheap_fraction": 0.25, "promote_slack_pts": 3.0,
    "knobs": {"active_select.budget": {"low": 5000, "high": 14000, "step": 3000},
              "prune.ratio": {"low": 0.3, "high": 0.7, "step": 0.1},
              "distill.layers": {"choices": [2, 3]}},
})
BASE = {"active_select.budget": 11000, "prune.ratio": 0.3, "distill.layers": 3, "distill.max_steps": 1000}


def setup(space: SearchParams = SPACE, reference: Reference = REFERENCE) -> Setup:
    return Setup(space=space, targets=TARGETS, reference=reference, base=BASE, seed=42)


def correct(count: int) -> np.ndarray:
    """Rows 0..count-1 right: nested sets, so a model with fewer right rows loses exactly those."""
    return np.arange(ROWS) < count


def noisy(count: int, *key: int, swaps: int = 20) -> np.ndarray:
    """`count` rows right, but which ones varies with `key` (config, seed) as between real runs:
    `swaps` right rows of the nested set turned wrong and as many wrong ones turned right."""
    rng = np.random.default_rng(key)
    c = correct(count)
    c[rng.choice(count, swaps, replace=False)] = False
    c[count + rng.choice(ROWS - count, swaps, replace=False)] = True
    return c


@dataclass
class Fake:
    """A made-up recipe: pruning and fewer layers make the model smaller and faster and cost
    accuracy; a bigger budget buys labels; cheap distillation costs 2 points; `seed_drop` points
    lost at the confirmation seeds; `fail_when` / `kill_at` make a run fail or the process die."""

    teacher: float = 0.62
    seed_drop: float = 0.0
    fail_when: float | None = None  # prune.ratio whose full run fails
    kill_at: int | None = None  # the run (counted from 0) during which the controller is "killed"
    requests: list[RunRequest] = field(default_factory=list)

    def truth(self, o: dict) -> dict:
        ratio, layers = o["prune.ratio"], o["distill.layers"]
        size = 5 + 20 * ratio + (4 if layers == 2 else 0)
        speed = 3 + 14 * ratio + (4 if layers == 2 else 0)
        accuracy = 0.625 - 0.05 * max(0.0, ratio - 0.4) - (0.02 if layers == 2 else 0.0)
        return {"size_ratio": size, "speedup": speed, "speedup_b1": speed - 1, "accuracy": accuracy,
                "labelled_fraction": (2000 + o["active_select.budget"]) / 27828}

    def __call__(self, request: RunRequest) -> Measurement:
        if self.kill_at is not None and len(self.requests) == self.kill_at:
            raise KeyboardInterrupt  # what a killed process leaves: no tell, the trial stays RUNNING
        self.requests.append(request)
        o = request.overrides
        if request.fidelity == "full" and o["prune.ratio"] == self.fail_when:
            raise RuntimeError("dvc exp run exited 255: ERROR: failed to reproduce 'distill'")
        t = self.truth(o)
        accuracy = t["accuracy"] - (0.02 if o["distill.max_steps"] < BASE["distill.max_steps"] else 0.0)
        if request.seed != 42:
            accuracy -= self.seed_drop / 100
        right = int(round(accuracy * ROWS))
        return Measurement(accuracy=right / ROWS, teacher_accuracy=self.teacher, size_ratio=t["size_ratio"],
                           speedup=t["speedup"], speedup_b1=t["speedup_b1"], labelled_fraction=t["labelled_fraction"],
                           size_mb=90 / t["size_ratio"], latency_ms_b32=350 / t["speedup"],
                           latency_ms_b1=40 / t["speedup_b1"],
                           deployed_correct=noisy(right, round(10 * o["prune.ratio"]), o["distill.layers"], request.seed),
                           teacher_correct=correct(int(round(self.teacher * ROWS))), rows="dev-rows")


def study(tmp_path, space: SearchParams = SPACE) -> optuna.Study:
    return search.open_study(tmp_path / "study.log", space)


def quiet(_: str) -> None:
    pass


def test_only_trials_that_meet_every_target_are_feasible_and_the_recommendation_is_one(tmp_path):
    fake = Fake()
    s = study(tmp_path)
    search.search(s, setup(), fake, trials=12, log=quiet)
    trials = s.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and any(not search.feasible(t) for t in complete)  # the constraints had something to refuse
    for t in complete:
        truth = fake.truth(t.params)
        met = judge(TARGETS, accuracy_drop_pts=REFERENCE.accuracy_drop_pts(t.values[0]), size_ratio=truth["size_ratio"],
                    speedup=truth["speedup"], speedup_b1=truth["speedup_b1"], labelled_fraction=truth["labelled_fraction"])
        assert search.feasible(t) == all(met.values()), (t.number, t.params, met)
    chosen = search.recommend(trials, TARGETS)
    assert chosen is not None and search.feasible(chosen) and search.confirmed(chosen)
    truth = fake.truth(chosen.params)
    assert truth["size_ratio"] >= 12 and truth["speedup"] >= 10 and truth["labelled_fraction"] <= 0.5
    # Every feasible trial ran three seeds (the full run and two confirmations).
    seeds = {r.seed for r in fake.requests if r.trial == chosen.number and r.fidelity != "cheap"}
    assert seeds == {42, 43, 44}


def test_a_killed_study_resumes_from_its_file_and_keeps_its_trials(tmp_path):
    killed = Fake(kill_at=7)
    s = study(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        search.search(s, setup(), killed, trials=10, log=quiet)
    before = s.get_trials()
    (interrupted,) = [t for t in before if t.state == TrialState.RUNNING]

    resumed = study(tmp_path)  # a new process: everything comes from the journal file
    assert [t.number for t in resumed.get_trials()] == [t.number for t in before]
    fake = Fake()
    search.search(resumed, setup(), fake, trials=3, log=quiet)
    after = resumed.get_trials()
    assert len(after) == len(before) + 3
    for old in before:  # finished trials are kept as they were
        if old.state != TrialState.RUNNING:
            assert after[old.number].state == old.state and after[old.number].values == old.values
    assert after[interrupted.number].state == TrialState.FAIL
    assert "interrupted" in after[interrupted.number].user_attrs["error"]
    retry = after[len(before)]
    assert retry.user_attrs["retry_of"] == interrupted.number and retry.params == interrupted.params
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_a_failed_run_is_a_failed_trial_and_the_study_goes_on(tmp_path):
    fake = Fake(fail_when=0.5)
    s = study(tmp_path)
    s.enqueue_trial({"active_select.budget": 8000, "prune.ratio": 0.5, "distill.layers": 2})
    states = search.search(s, setup(), fake, trials=5, log=quiet)
    assert states[0] == TrialState.FAIL and len(states) == 5
    failed = s.get_trials()[0]
    assert "failed to reproduce 'distill'" in failed.user_attrs["error"] and failed.values is None
    # The study went on: every later trial ran, and some finished (complete, or pruned after its cheap pass).
    assert {r.trial for r in fake.requests} >= {1, 2, 3, 4}
    assert any(state in (TrialState.COMPLETE, TrialState.PRUNED) for state in states[1:])
    # A failed trial is never recommended.
    chosen = search.recommend(s.get_trials(), TARGETS)
    assert chosen is None or chosen.number != 0


def test_a_trial_whose_accuracy_falls_at_the_other_seeds_is_not_confirmed_nor_chosen(tmp_path):
    # At seed 42 the trial is within the point; at the two confirmation seeds 4 points lower.
    fake = Fake(seed_drop=4.0)
    s = study(tmp_path)
    s.enqueue_trial({"active_select.budget": 8000, "prune.ratio": 0.4, "distill.layers": 2})
    search.search(s, setup(), fake, trials=8, log=quiet)
    claimed = [t for t in s.get_trials() if "confirmation" in t.user_attrs]
    assert claimed  # some trials claimed the target on their first seed
    for t in claimed:
        assert t.user_attrs["confirmation"]["confirmed"] is False and not search.feasible(t)
    assert search.recommend(s.get_trials(), TARGETS) is None


def test_confirmation_refuses_a_loss_beyond_the_target_against_its_own_teachers():
    # The pinned reference is 0.60 and the mean deployed accuracy 0.5975 (0.25 points below: the
    # mean meets the target), but these runs' own teachers scored 0.66 on the same examples: the
    # paired loss (6.25 points) lies beyond the 1 point allowed, beyond noise.
    reference = Reference(teacher_dev_accuracy=0.60, seeds=[1], values=[0.60])
    runs = [Measurement(accuracy=0.5975, teacher_accuracy=0.66, size_ratio=15, speedup=11, speedup_b1=11,
                        labelled_fraction=0.4, size_mb=6, latency_ms_b32=30, latency_ms_b1=3,
                        deployed_correct=correct(239), teacher_correct=correct(264), rows="r")] * 3
    result = search.confirm(runs, reference, TARGETS, resamples=2000)
    assert result["drop_pts"] == pytest.approx(0.25) and result["verdict"] == "hurt" and result["confirmed"] is False
    # Against teachers of the same accuracy, the same models are confirmed.
    same = [Measurement(**{**vars(r), "teacher_correct": correct(239), "teacher_accuracy": 0.5975}) for r in runs]
    assert search.confirm(same, reference, TARGETS, resamples=2000)["confirmed"] is True


def test_a_more_accurate_trial_within_noise_does_not_beat_a_smaller_faster_one(tmp_path):
    fake = Fake()
    s = study(tmp_path)
    # Both meet every target: 0.6 is 1 dev example more accurate on each seed than 0.7, which is
    # smaller and faster. One example in 400 is noise: 0.7 is recommended.
    s.enqueue_trial({"active_select.budget": 8000, "prune.ratio": 0.6, "distill.layers": 3})
    s.enqueue_trial({"active_select.budget": 8000, "prune.ratio": 0.7, "distill.layers": 3})
    search.search(s, setup(), fake, trials=2, log=quiet)
    a, b = s.get_trials()
    assert search.feasible(a) and search.feasible(b) and a.values[0] > b.values[0]
    assert search.paired_verdict(a, b) == "not shown"
    assert search.recommend([a, b], TARGETS).number == b.number


def test_compression_trials_keep_the_teacher_knobs_and_every_third_samples_them(tmp_path):
    fake = Fake()
    s = study(tmp_path)
    search.search(s, setup(), fake, trials=9, log=quiet)
    trials = s.get_trials()
    held = [t for t in trials if t.user_attrs["teacher_knobs"] == "held"]
    sampled = [t for t in trials if t.user_attrs["teacher_knobs"] == "sampled"]
    assert [t.number for t in sampled] == [0, 3, 6] and len(held) == 6  # 0 is the baseline
    # Before any trial completed, held trials use the repository's budget: its teacher.
    assert trials[1].params["active_select.budget"] == BASE["active_select.budget"]
    for t in held:
        best = search.incumbent([p for p in trials if p.number < t.number], TARGETS)
        expected = best.params if best is not None else BASE
        assert t.params["active_select.budget"] == expected["active_select.budget"]
    assert len({t.params["prune.ratio"] for t in held}) > 1  # the compression knobs still moved


def test_the_first_trial_is_the_repositorys_recipe(tmp_path):
    fake = Fake()
    s = study(tmp_path)
    search.search(s, setup(), fake, trials=1, log=quiet)
    (first,) = s.get_trials()
    assert first.params == {k: BASE[k] for k in SPACE.knobs} and first.user_attrs["baseline"] is True


def test_a_cheap_run_that_misses_what_steps_cannot_change_is_pruned_without_the_full_run(tmp_path):
    fake = Fake()
    s = study(tmp_path)
    s.enqueue_trial({"active_select.budget": 8000, "prune.ratio": 0.3, "distill.layers": 3})  # 11x: too big
    states = search.search(s, setup(), fake, trials=1, log=quiet)
    assert states == [TrialState.PRUNED]
    assert [(r.fidelity, r.overrides["distill.max_steps"]) for r in fake.requests] == [("cheap", 250)]
    assert "size" in s.get_trials()[0].user_attrs["pruned"]
    # Promoted: a cheap run that meets size/speed/labels and is within the slack runs full steps.
    s2 = study(tmp_path / "b")
    s2.enqueue_trial({"active_select.budget": 8000, "prune.ratio": 0.6, "distill.layers": 3})
    fake2 = Fake()
    search.search(s2, setup(), fake2, trials=1, log=quiet)
    assert [r.fidelity for r in fake2.requests] == ["cheap", "full", "confirm", "confirm"]
    assert {r.overrides["seed"] for r in fake2.requests} == {42, 43, 44}


def test_every_run_sets_every_knob_the_seed_and_the_steps():
    params = {"active_select.budget": 8000, "prune.ratio": 0.6000000000000001, "distill.layers": 2}
    assert search.overrides(setup(), params, 43, 250) == {
        "active_select.budget": 8000, "prune.ratio": 0.6, "distill.layers": 2, "distill.max_steps": 250, "seed": 43}


def test_bad_search_spaces_are_refused_with_the_key():
    with pytest.raises(ValueError, match="choices"):
        SearchParams.model_validate({"knobs": {"prune.ratio": {}}})
    with pytest.raises(ValueError, match="seed"):
        SearchParams.model_validate({"knobs": {"seed": {"choices": [1, 2]}}})
    with pytest.raises(ValueError, match="low <= high"):
        SearchParams.model_validate({"knobs": {"prune.ratio": {"low": 0.7, "high": 0.3}}})


def test_knob_names_that_are_no_param_are_refused_naming_the_file(tmp_path):
    from conftest import REPO

    space = SearchParams.model_validate({"knobs": {"prune.ratioo": {"choices": [0.3]}}})
    with pytest.raises(ValueError, match=r"params.yaml.*prune.ratioo"):
        search.base_values(REPO / "params.yaml", space)


def test_a_value_the_profile_gives_is_written_as_null_so_the_run_cache_matches_the_committed_run(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("prune:\n  ratio: 0.3\ndistill:\n  layers: null\n  max_steps: null\n")
    keys = search.profile_keys(params, ["prune.ratio", "distill.layers", "distill.max_steps", "active_select.budget"])
    assert keys == {"distill.layers", "distill.max_steps", "active_select.budget"}
    s = Setup(space=SPACE, targets=TARGETS, reference=REFERENCE, base=BASE, seed=42, from_profile=keys)
    same = search.overrides(s, {"active_select.budget": 11000, "prune.ratio": 0.3, "distill.layers": 3}, 42, 1000)
    assert same == {"active_select.budget": None, "prune.ratio": 0.3, "distill.layers": None,
                    "distill.max_steps": None, "seed": 42}
    other = search.overrides(s, {"active_select.budget": 8000, "prune.ratio": 0.3, "distill.layers": 2}, 43, 250)
    assert other == {"active_select.budget": 8000, "prune.ratio": 0.3, "distill.layers": 2,
                     "distill.max_steps": 250, "seed": 43}
    study = search.open_study(tmp_path / "study.log", SPACE)
    assert search.pin_profile_keys(study, keys) == keys
    assert search.pin_profile_keys(study, frozenset()) == keys  # a later start keeps the first start's view


def test_with_targets_no_trial_meets_the_nearest_is_named_by_its_relative_shortfall(tmp_path):
    from pipeline import search_report

    unreachable = Targets(max_accuracy_drop_pts=1.0, min_size_ratio=40.0, min_speedup=30.0, min_speedup_b1=30.0,
                          max_labelled_fraction=0.5)
    s = study(tmp_path, SPACE.model_copy(update={"cheap_fraction": 1.0}))
    search.search(s, Setup(space=SPACE.model_copy(update={"cheap_fraction": 1.0}), targets=unreachable,
                           reference=REFERENCE, base=BASE, seed=42), Fake(), trials=6, log=quiet)
    trials = s.get_trials()
    assert search.recommend(trials, unreachable) is None
    near = search.nearest(trials, unreachable)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    by_hand = {t.number: (max(0, t.constraints["size"]) / 40 + max(0, t.constraints["latency"]) / 30
                          + max(0, t.constraints["latency_b1"]) / 30 + max(0, t.constraints["accuracy"]) / 1.0
                          + max(0, t.constraints["data"]) / 0.5) for t in complete}
    assert near.number == min(by_hand, key=lambda n: (by_hand[n], -trials[n].values[0], n))
    assert search.shortfall(near, unreachable) == pytest.approx(by_hand[near.number])
    assert search.incumbent(trials, unreachable).number == near.number
    text = search_report.markdown(s, unreachable, REFERENCE)
    assert "None: no trial meets every target" in text and f"trial {near.number} (experiment" in text


def test_a_continued_study_does_not_replay_the_draws_of_its_first_start(tmp_path):
    space = SPACE.model_copy(update={"startup_trials": 50, "teacher_every": 1, "cheap_fraction": 1.0})
    s = study(tmp_path, space)
    search.search(s, setup(space), Fake(), trials=4, log=quiet)
    first = [t.params for t in s.get_trials()[1:4]]  # trial 0 is the queued baseline
    search.search(search.open_study(tmp_path / "study.log", space), setup(space), Fake(), trials=3, log=quiet)
    again = [t.params for t in s.get_trials()[4:7]]
    assert len(again) == 3 and again != first


def test_an_enqueued_configuration_is_the_next_trial_and_bad_keys_or_values_are_refused(tmp_path):
    s = study(tmp_path)
    search.search(s, setup(), Fake(), trials=1, log=quiet)  # the baseline
    assert search.enqueue(s, SPACE, {"prune.ratio": 0.5, "distill.layers": 2}) == {"prune.ratio": 0.5, "distill.layers": 2}
    search.search(s, setup(), Fake(), trials=1, log=quiet)
    trial = s.get_trials()[-1]
    assert trial.params["prune.ratio"] == 0.5 and trial.params["distill.layers"] == 2 and trial.user_attrs["enqueued"]
    assert "active_select.budget" in trial.params  # the knob left out was sampled
    with pytest.raises(ValueError, match="distill.student"):
        search.enqueue(s, SPACE, {"distill.student": "pruned"})
    with pytest.raises(ValueError, match="prune.ratio=0.95"):
        search.enqueue(s, SPACE, {"prune.ratio": 0.95})


def test_the_report_lists_a_configuration_drawn_twice_once_and_names_the_repeat(tmp_path):
    from pipeline import search_report

    space = SPACE.model_copy(update={"cheap_fraction": 1.0})
    s = study(tmp_path, space)
    search.search(s, setup(space), Fake(), trials=1, log=quiet)  # the baseline, trial 0
    search.enqueue(s, space, {"active_select.budget": 11000, "prune.ratio": 0.30000000000000004, "distill.layers": 3})
    search.search(s, setup(space), Fake(), trials=1, log=quiet)
    text = search_report.markdown(s, TARGETS, REFERENCE)
    assert "trial 1 = trial 0" in text
    front_rows = [line for line in text.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(front_rows) == 1 and "0.30000000000000004" not in text


def test_the_report_shows_a_trial_off_the_front_and_the_trial_that_beats_it(tmp_path):
    from pipeline import search_report

    space = SPACE.model_copy(update={"cheap_fraction": 1.0})
    s = study(tmp_path, space)
    search.search(s, setup(space), Fake(), trials=1, log=quiet)  # the baseline, trial 0: prune 0.3
    # In Fake, prune 0.4 keeps the accuracy and is smaller and faster: it beats the baseline.
    search.enqueue(s, space, {"active_select.budget": 11000, "prune.ratio": 0.4, "distill.layers": 3})
    search.search(s, setup(space), Fake(), trials=1, log=quiet)
    text = search_report.markdown(s, TARGETS, REFERENCE)
    front, behind = text.split("Off the front")
    assert [line.split(" |")[0] for line in front.splitlines() if re.match(r"\| \d+ \|", line)] == ["| 1"]
    behind_rows = [line for line in behind.splitlines() if line.startswith("| 0 |")]
    assert len(behind_rows) == 1 and behind_rows[0].endswith("| trial 1 |")
