"""The ablation grid (pipeline/grid.py, grid_variants.py, grid_tables.py, grid_paired.py): variants and
their seeds, queue commands, `dvc exp show --json` parsing, the tables, the paired verdicts.

The fast tests read tests/data/grid_exp_show.json, written by tests/data/make_grid_fixture.py: DVC
3.x's layout (from a real `dvc exp show --json` of the tiny grid) with hand-set numbers, the claim
rows at seeds 42, 43, 44, the others at 42, one failed experiment and one from before seeds were an
axis. Paired comparisons get prediction frames made here through an injected loader (no DVC). The
slow test runs two rows at two seeds end to end in a scratch repository.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import grid, grid_paired, grid_tables, grid_variants
from stages._profiles import PROFILES

FIXTURE = Path(__file__).parent / "data" / "grid_exp_show.json"
REPO = Path(__file__).resolve().parents[1]
TINY_NAMES = [
    "all-labels", "random", "active", "active+synonym", "active+backtranslation", "active+pseudo", "sec",
    "random@6", "random@18", "active@6", "active@18",
]  # fmt: skip
TINY_CLAIMS = ["all-labels", "random", "active", "sec", "random@18", "active@18"]
# Student-t 97.5 % quantile with 2 degrees of freedom: the half-width of a 3-seed interval is T2 * sd / sqrt(3).
T2 = 4.302652729749464


@pytest.fixture(autouse=True)
def fast_bootstrap(monkeypatch):
    # 1,000 resamples instead of 10,000: the comparisons here are far from 0 or exactly 0.
    monkeypatch.setattr(grid_paired, "RESAMPLES", 1000)


@pytest.fixture
def shown() -> list:
    return json.loads(FIXTURE.read_text())


@pytest.fixture
def records(shown) -> list[dict]:
    return grid_tables.collect(shown)


def _tiny_grid():
    return grid_variants.grid_for("tiny")


def _by_name(records):
    return {r["name"]: r for r in records}


def _drop(records, *names):
    return [r for r in records if r["name"] not in names]


# ---------------------------------------------------------------------------------- the grid


def test_grid_rows_names_and_profile_scaling():
    tiny = _tiny_grid()
    assert [v.name for v in tiny] == TINY_NAMES
    assert [v.name for v in tiny if v.claim] == TINY_CLAIMS
    cpu = grid_variants.grid_for("cpu")
    assert [v.name for v in grid_variants.GRID] == [v.name for v in cpu]
    assert next(v for v in cpu if v.name == "sec").overrides == {}
    assert next(v for v in cpu if v.name == "all-labels").overrides["active_select.strategy"] == "all"
    assert (
        grid_variants.slug("active+synonym") == "active-synonym" and grid_variants.slug("random@2000") == "random-b2000"
    )
    # Custom budgets: the largest is the claim point; the profile's own budget is not repeated.
    custom = grid_variants.grid_for("tiny", budgets=[6, 12, 24])
    assert [v.name for v in custom if v.claim and "@" in v.name] == ["random@24", "active@24"]
    assert "random@12" not in {v.name for v in custom}


@pytest.mark.parametrize("profile", sorted(grid_variants.PROFILE_SETTINGS))
def test_curve_budgets_hit_their_label_fractions_of_the_profiles_own_sizes(profile):
    """Each curve point labels its fraction of what the profile can label (seed + pool; dev is held
    out first), read off stages._profiles.PROFILES: a profile's sizes change, the points follow."""
    data, select = PROFILES[profile]["data"], PROFILES[profile]["active_select"]
    pool = data["pool_size"] or grid_variants.OFFLINE_PAIRS - data["dev_size"] - data["seed_size"]
    labelable = data["seed_size"] + pool
    fractions = [f for f in grid_variants.PROFILE_SETTINGS[profile]["curve_fractions"]
                 if f * labelable > data["seed_size"]]
    rows = grid_variants.grid_for(profile)
    budgets = [v.overrides["active_select.budget"] for v in rows if v.name.startswith("random@")]
    if select["budget"] in grid_variants.curve_budgets(profile):
        budgets = sorted([*budgets, select["budget"]])  # that point is the `random` row itself
    assert [(data["seed_size"] + b) / labelable for b in budgets] == pytest.approx(fractions, abs=1 / labelable)
    assert max(budgets) <= pool
    top = max(budgets)
    generated = {"active+generated", "sec+generated-transfer"} if profile != "tiny" else set()
    assert {v.name for v in rows if v.claim} == {"all-labels", "random", "active", "sec", f"random@{top}", f"active@{top}", *generated}
    # Every entropy row can spend its budget: scored candidates (0: all of them) at least the budget.
    for v in rows:
        if v.strategy == "entropy" and v.overrides.get("active_select.budget"):
            candidates = v.overrides.get("active_select.candidates", select["candidates"])
            assert candidates == 0 or candidates >= v.overrides["active_select.budget"], v.name
    # Pseudo-labels come from the pool the profile's budget leaves.
    pseudo = next(v for v in rows if v.name == "active+pseudo").overrides["active_select.pseudo_size"]
    assert 0 < pseudo <= pool - select["budget"]


def test_the_matched_steps_row_trains_for_the_all_labels_teachers_steps():
    # cpu: all 27,828 labelable pairs (29,828 - 2,000 dev) in batches of 16 for one epoch.
    fine_tune = PROFILES["cpu"]["fine_tune"]
    labelable = grid_variants.OFFLINE_PAIRS - PROFILES["cpu"]["data"]["dev_size"]
    steps = math.ceil(fine_tune["epochs"] * math.ceil(labelable / fine_tune["batch_size"]))
    cpu = grid_variants.grid_for("cpu")
    top = max(v.overrides["active_select.budget"] for v in cpu if v.name.startswith("active@"))
    matched = next(v for v in cpu if v.name.endswith("+steps"))
    assert matched.name == f"active@{top}+steps" and matched.overrides["fine_tune.max_steps"] == steps
    assert matched.overrides["active_select.budget"] == top and matched.tables == ("data",)
    assert matched.parent == f"active@{top}" and not matched.claim
    assert not any("+steps" in v.name for v in _tiny_grid())


def test_offline_pair_count_matches_the_committed_prepare_metrics():
    """OFFLINE_PAIRS is what prepare counted on the offline files the cpu profile pools: when the data
    changes and prepare reruns, this says the constant is stale."""
    path = REPO / "metrics" / "prepare.json"
    prepared = json.loads(path.read_text()) if path.is_file() else {}
    if sorted(prepared.get("train_pairs_by_split", {})) != sorted(PROFILES["cpu"]["data"]["train_splits"]):
        pytest.skip("metrics/prepare.json is not of the cpu profile's training files")
    assert grid_variants.OFFLINE_PAIRS == prepared["train_pairs_available"]


def test_seeded_runs_names_order_and_suffix_parsing():
    tiny = _tiny_grid()
    runs = grid_variants.seeded(tiny, 42, 3)
    # Seed-major: the whole grid at the base seed first, then the claim rows' repeats.
    assert [v.exp_name for v in runs[: len(tiny)]] == [v.row_name + "-s42" for v in tiny]
    assert [v.name for v in runs[len(tiny) :]] == TINY_CLAIMS * 2
    assert [v.seed for v in runs[len(tiny) :]] == [43] * 6 + [44] * 6
    assert len(runs) == len(tiny) + 2 * len(TINY_CLAIMS)
    names = [v.exp_name for v in runs]
    assert len(set(names)) == len(names)
    assert "grid-active-s43" in names and "grid-random-b18-s44" in names and "grid-active-synonym-s42" in names
    assert "grid-active-synonym-s43" not in names  # not a claim row: the base seed only
    cpu_runs = grid_variants.seeded(grid_variants.GRID, 42, 3)
    for run in runs + cpu_runs:
        # Valid git ref components (no '@', '+', spaces, '..'), and the name says its seed.
        assert re.fullmatch(r"grid-[a-z0-9]+(-[a-z0-9]+)*-s\d+", run.exp_name), run.exp_name
        assert grid_variants.split_exp_name(run.exp_name) == (run.row_name, run.seed)
    assert any(re.fullmatch(r"grid-active-b\d+-steps-s42", v.exp_name) for v in cpu_runs)
    assert grid_variants.split_exp_name("grid-active") is None  # pre-seed experiments never parse
    assert [v.exp_name for v in grid_variants.seeded(tiny, 42, 1)] == [v.row_name + "-s42" for v in tiny]
    with pytest.raises(grid_variants.GridError):
        grid_variants.seeded(tiny, 42, 0)


def test_select_by_name_slug_experiment_or_table():
    tiny = _tiny_grid()
    assert [v.name for v in grid_variants.select(tiny, ["active", "random"])] == ["random", "active"]  # grid order
    assert [v.name for v in grid_variants.select(tiny, ["grid-active-synonym", "active-b6"])] == [
        "active+synonym",
        "active@6",
    ]
    assert [v.name for v in grid_variants.select(tiny, ["curve"])] == [
        "all-labels", "random", "active", "random@6", "random@18", "active@6", "active@18",
    ]  # fmt: skip
    assert grid_variants.select(tiny, None) == tiny
    with pytest.raises(grid_variants.GridError, match="unknown grid variant 'bogus'"):
        grid_variants.select(tiny, ["bogus"])
    runs = grid_variants.seeded(tiny, 42, 3)
    # A row name selects every seed of that row (not `active+synonym`); an experiment name one seed.
    assert [v.exp_name for v in grid_variants.select(runs, ["active"])] == [
        "grid-active-s42", "grid-active-s43", "grid-active-s44",
    ]  # fmt: skip
    assert [v.exp_name for v in grid_variants.select(runs, ["grid-active-s43"])] == ["grid-active-s43"]


def test_queue_command_sets_seed_and_params_and_appends_missing_keys():
    params = {"profile": "tiny", "seed": 42, "active_select": {"strategy": "entropy", "budget": None},
              "augment": {"fraction": None}, "back_translate": {"fraction": None}}  # fmt: skip
    pseudo = next(v for v in _tiny_grid() if v.name == "active+pseudo").at_seed(42)
    cmd = grid.queue_command(pseudo, params)
    assert cmd[:6] == ["dvc", "exp", "run", "--queue", "-n", "grid-active-pseudo-s42"]
    sets = cmd[7::2]
    assert all(flag == "-S" for flag in cmd[6::2])
    assert "seed=42" in sets  # the base seed is set too: the name and the params agree
    assert 'active_select.strategy="entropy"' in sets and "augment.fraction=0" in sets  # pipeline._dvc_env.override_value
    assert "+active_select.pseudo_size=12" in sets  # not in params.yaml: Hydra append
    params["active_select"]["pseudo_size"] = 0
    assert "active_select.pseudo_size=12" in grid.queue_command(pseudo, params)[7::2]
    active = next(v for v in _tiny_grid() if v.name == "active")
    assert ["-S", "seed=44"] == grid.set_args(active.at_seed(44), params)[:2]
    assert "+seed=44" in grid.set_args(active.at_seed(44), {"active_select": {}})
    assert not any(s.startswith(("seed=", "+seed=")) for s in grid.set_args(active, params))  # a row, not a run
    synonym = next(v for v in _tiny_grid() if v.name == "active+synonym")
    assert "augment.fraction=null" in grid.set_args(synonym, params)
    sec = next(v for v in _tiny_grid() if v.name == "sec").at_seed(43)
    assert grid.set_args(sec, params, profile="cpu") == ["-S", 'profile="cpu"', "-S", "seed=43"]
    assert grid.set_args(sec, params, profile="tiny") == ["-S", "seed=43"]


def _repo(tmp_path, params: dict, stages=("prepare", "fine_tune", "evaluate_teacher", "evaluate")) -> Path:
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: {"cmd": "true"} for s in stages}}))
    return tmp_path


def test_repo_runs_read_seed_and_grid_seeds_with_override(tmp_path):
    repo = _repo(tmp_path, {"profile": "tiny", "seed": 7, "grid": {"seeds": 2}, "active_select": {"budget": None}})
    profile, runs = grid.repo_runs(repo)
    assert profile == "tiny"
    assert {v.seed for v in runs if v.name == "active"} == {7, 8}
    assert {v.seed for v in runs if v.name == "active+synonym"} == {7}
    assert {v.seed for v in grid.repo_runs(repo, seeds=4)[1] if v.name == "sec"} == {7, 8, 9, 10}
    # No grid section: 3 seeds.
    repo = _repo(tmp_path, {"profile": "tiny", "seed": 42})
    assert {v.seed for v in grid.repo_runs(repo)[1] if v.name == "all-labels"} == {42, 43, 44}
    for bad in ({"seeds": 0}, {"seeds": 3, "bogus": 1}):
        _repo(tmp_path, {"profile": "tiny", "seed": 42, "grid": bad})
        with pytest.raises(grid_variants.GridError, match="grid"):
            grid.repo_runs(tmp_path)


def test_queue_skips_finished_runs_and_queues_the_missing_seeds(tmp_path, records, monkeypatch):
    repo = _repo(tmp_path, {"profile": "tiny", "seed": 42, "grid": {"seeds": 3}, "active_select": {"budget": None},
                            "augment": {"fraction": None}, "back_translate": {"fraction": None}})  # fmt: skip
    shown = [r for r in records if r["name"] not in ("grid-active-s43", "grid-random-s44")]
    for rec in shown:
        if rec["name"] == "grid-random-s43":
            rec["state"] = "failed"
    calls = []

    def fake_dvc(args, repo=".", check=True, lock_retries=3):
        calls.append(list(args))
        return grid.subprocess.CompletedProcess(["dvc", *args], 0, "", "")

    monkeypatch.setattr(grid, "dvc", fake_dvc)
    monkeypatch.setattr(grid, "exp_show", lambda repo=".": [])
    monkeypatch.setattr(grid, "collect", lambda _: shown)
    logged = []
    queued = grid.queue(["active", "random"], repo=repo, log=logged.append)
    assert [v.exp_name for v in queued] == ["grid-random-s43", "grid-active-s43", "grid-random-s44"]
    runs = [c for c in calls if c[:3] == ["exp", "run", "--queue"]]
    assert [c[c.index("-n") + 1] for c in runs] == ["grid-random-s43", "grid-active-s43", "grid-random-s44"]
    for cmd in runs:
        seed = cmd[cmd.index("-n") + 1].rsplit("-s", 1)[1]
        assert cmd[cmd.index(f"seed={seed}") - 1] == "-S"
        assert cmd[-1] == "evaluate_teacher"  # data-only rows stop at the teacher's evaluation
    assert ["queue", "remove", "grid-random-s43"] in calls  # the failed one is removed, then queued again
    assert any("grid-active-s42: already done" in line for line in logged)


def test_data_only_variants_stop_at_the_teacher_evaluation():
    stages = {"fine_tune", "evaluate_teacher", "evaluate"}
    by_name = {v.name: v for v in _tiny_grid()}
    assert [n for n, v in by_name.items() if grid.target_for(v, stages)] == [n for n in TINY_NAMES if n != "sec"]
    assert grid.target_for(by_name["sec"], stages) is None  # the compression table needs everything
    assert grid.target_for(by_name["active"], stages, full=True) is None
    assert grid.target_for(by_name["active"], {"fine_tune", "evaluate"}) is None  # no such stage: run it all
    cmd = grid.queue_command(by_name["active"].at_seed(42), {"active_select": {}}, target="evaluate_teacher")
    assert cmd[-1] == "evaluate_teacher" and "+augment.fraction=0" in cmd
    assert {"prepare", "fine_tune", "evaluate"} <= grid.pipeline_stages(REPO)
    # Tables read the teacher from the teacher-only evaluation first, else from evaluate.json.
    rec = {
        "metrics": {"evaluate_teacher.models.teacher.test.accuracy": 0.5, "evaluate.models.teacher.test.accuracy": 0.1}
    }
    assert grid_tables.teacher_metric(rec, "test.accuracy") == 0.5
    assert (
        grid_tables.teacher_metric({"metrics": {"evaluate.models.teacher.test.accuracy": 0.1}}, "test.accuracy") == 0.1
    )


def test_parse_queue_status_and_stage_summary():
    text = (
        "Task     Name               Created    Status\n"
        "73e1fb2  grid-bad           01:24 PM   Failed\n"
        "5b2aa1a  grid-random-s42    01:20 PM   Success\n"
        "9deed64  grid-random-s43    01:24 PM   Running\n\n"
        "Worker status: 1 active, 0 idle"
    )
    tasks, active = grid.parse_queue_status(text)
    assert [(t.id, t.name, t.status) for t in tasks] == [
        ("73e1fb2", "grid-bad", "Failed"), ("5b2aa1a", "grid-random-s42", "Success"), ("9deed64", "grid-random-s43", "Running"),
    ]  # fmt: skip
    assert active == 1
    log = (
        "Stage 'prepare' is cached - skipping run, checking out outputs\n"
        "Stage 'augment' didn't change, skipping\n"
        "Running stage 'fine_tune':\n> python -m stages.fine_tune\n"
    )
    assert grid.stage_summary(log) == {"ran": ["fine_tune"], "restored": ["prepare"], "unchanged": ["augment"]}



def test_wait_outlasts_a_task_briefly_missing_from_the_queue_status(monkeypatch):
    # CI once saw `dvc queue status` leave out a queued task for one poll while the worker took it:
    # `wait` then called it finished ("Unknown") and the grid reported a run that succeeded as failed.
    T = grid.Task
    polls = iter([
        ([T("a1b2c3d", "grid-x", "Running"), T("b2c3d4e", "grid-y", "Queued")], 1),
        ([T("a1b2c3d", "grid-x", "Success")], 1),  # grid-y missing for one poll
        ([T("a1b2c3d", "grid-x", "Success"), T("b2c3d4e", "grid-y", "Running")], 1),
        ([T("a1b2c3d", "grid-x", "Success"), T("b2c3d4e", "grid-y", "Success")], 0),
    ])  # fmt: skip
    monkeypatch.setattr(grid, "queue_status", lambda repo: next(polls))
    monkeypatch.setattr(grid.time, "sleep", lambda s: None)
    final = grid.wait(["a1b2c3d", "b2c3d4e"], ".", log=lambda m: None)
    assert {t.name: t.status for t in final.values()} == {"grid-x": "Success", "grid-y": "Success"}

    # A task that stays gone is finished in an unknown state after MISSING_POLLS polls, not waited on forever.
    gone = [([T("a1b2c3d", "grid-x", "Success")], 0)] * grid.MISSING_POLLS
    polls = iter([([T("a1b2c3d", "grid-x", "Success"), T("b2c3d4e", "grid-y", "Queued")], 1), *gone])
    final = grid.wait(["a1b2c3d", "b2c3d4e"], ".", log=lambda m: None)
    assert {t.name: t.status for t in final.values()} == {"grid-x": "Success", "grid-y": "Unknown"}


# ---------------------------------------------------------------------------------- collect


def test_collect_flattens_the_exp_show_json(shown, records):
    baseline = shown[1]
    assert shown[0]["rev"] == "workspace" and "experiments" in baseline
    assert records[0]["is_baseline"] and records[0]["state"] == "baseline" and records[0]["rev"] == baseline["rev"]
    named = _by_name(records)
    for run in grid_variants.seeded(_tiny_grid(), 42, 3):
        rec = named[run.exp_name]
        assert rec["state"] == "success" and rec["baseline"] == baseline["rev"] and not rec["is_baseline"]
        assert rec["params"]["seed"] == run.seed and rec["params"]["profile"] == "tiny"
        for key, value in run.overrides.items():
            if value is not None:
                assert rec["params"][key] == value, (run.exp_name, key)
        assert 0 <= rec["metrics"]["evaluate_teacher.models.teacher.test.accuracy"] <= 1
        assert rec["metrics"]["active_select.labelled_rows"] > 0
    assert named["grid-sec-s43"]["metrics"]["evaluate_timing.models.quantized.speedup"] == 2.2
    assert named["grid-sec-s43"]["metrics"]["fine_tune.rows_by_source.gold"] > 0  # nested keys flattened
    assert named["grid-active-pseudo-s42"]["metrics"]["active_select.pseudo_rows"] == 12
    failed = named["grid-bad"]
    assert failed["state"] == "failed" and failed["error"]
    assert named["grid-active"]["state"] == "success"  # from before seeds: parsed, never counted (below)
    # Text input parses the same; queued/running states come from the executor.
    assert grid_tables.collect(json.dumps(shown)) == records
    queued = copy.deepcopy(shown)
    for exp in queued[1]["experiments"]:
        if exp["name"] == "grid-sec-s44":
            exp["executor"]["state"] = "queued"
    assert _by_name(grid_tables.collect(queued))["grid-sec-s44"]["state"] == "queued"


def test_a_runs_seed_is_read_from_its_params_not_its_name(records):
    # A run named for seed 44 whose params say 45 (renamed, or queued by hand): it ran at 45.
    moved = copy.deepcopy(records)
    rec = next(r for r in moved if r["name"] == "grid-active-s44")
    rec["params"]["seed"] = 45
    runs = grid_tables.row_runs(moved, _tiny_grid())["active"]
    assert sorted(runs.ok) == [42, 43, 45] and runs.label == "grid-active-s{42,43,45}"
    # No params recorded (DVC has none for a queued run yet): the seed its name carries.
    del rec["params"]["seed"]
    rec["state"] = "queued"
    assert grid_tables.row_runs(moved, _tiny_grid())["active"].other == {44: "queued"}


# ---------------------------------------------------------------------------------- tables


def test_tables_give_mean_and_t_interval_over_seeds(records):
    frames = grid_tables.tables(records)
    assert set(frames) == {"main", "data", "compression", "curve", "claims", "compute"}

    data = frames["data"].set_index("variant")
    assert list(data.index) == [
        "all-labels", "random", "active", "active+synonym", "active+backtranslation", "active+pseudo", "sec",
    ]  # fmt: skip
    assert (data["status"] == "ok").all()
    # all-labels: test accuracy 50 / 52 / 54 -> mean 52, sd 2.
    half = T2 * 2 / math.sqrt(3)
    row = data.loc["all-labels"]
    assert row["seeds"] == 3 and row["experiment"] == "grid-all-labels-s{42,43,44}"
    assert row["test_accuracy_pct"] == 52.0
    assert (row["test_accuracy_pct_low"], row["test_accuracy_pct_high"]) == (round(52 - half, 2), round(52 + half, 2))
    assert (row["test_accuracy_pct_low"], row["test_accuracy_pct_high"]) == (47.03, 56.97)
    # active: 44 / 45 / 49 -> mean 46, sd sqrt(7). The pre-seed `grid-active` (99 %) is not a repeat.
    half = T2 * math.sqrt(7) / math.sqrt(3)
    row = data.loc["active"]
    assert row["test_accuracy_pct"] == 46.0 and row["seeds"] == 3
    assert row["test_accuracy_pct_low"] == pytest.approx(46 - half, abs=0.006) == 39.43
    assert row["accuracy_delta_pts"] == -6.0  # against the all-labels mean
    assert row["dev_accuracy_pct"] == 51.0  # dev shown beside the test figures, never mixed into them
    # One seed: the single value, no interval.
    row = data.loc["active+synonym"]
    assert row["seeds"] == 1 and row["test_accuracy_pct"] == 47.0 and math.isnan(row["test_accuracy_pct_low"])
    assert row["experiment"] == "grid-active-synonym-s42"
    assert data.loc["active+pseudo", "pseudo_rows"] == 12 and data.loc["random", "pseudo_rows"] == 0
    # Without prediction files no verdict: `n/a` for rows with a parent, empty for those without.
    assert data.loc["active", "helped"] == "n/a" and data.loc["random", "helped"] == ""

    main = frames["main"]
    measured = main[main["source"] == "measured"].set_index("system")
    row = measured.loc["SEC deployed (quantized)"]
    # quantized 45 / 46 / 47 (sd 1), speed-up 2.0 / 2.2 / 2.4 from evaluate_timing.json (sd 0.2).
    assert (row["test_accuracy_pct"], row["test_accuracy_pct_low"]) == (46.0, round(46 - T2 / math.sqrt(3), 2))
    assert row["speedup_x"] == pytest.approx(2.2)
    assert row["speedup_x_low"] == pytest.approx(2.2 - T2 * 0.2 / math.sqrt(3), abs=1e-3)
    assert row["size_ratio_x"] == 5.0 and row["latency_ms_b32"] == pytest.approx(
        (10 + 20 / 2.2 + 20 / 2.4) / 3, abs=0.01
    )
    assert row["accuracy_delta_pts"] == -6.0 and row["data_saved_pct"] == 40.0  # 36 of 60 labels
    assert row["seeds"] == 3
    teacher = measured.loc["All-labels teacher"]
    assert teacher["latency_ms_b32"] == 20.0  # the sec runs' teacher, timed beside the deployed model
    assert teacher["label_fraction_pct"] == 100.0 and teacher["accuracy_delta_pts"] == 0.0
    assert teacher["train_minutes"] == pytest.approx(10 / 60, abs=0.01)
    published = main[main["source"] == "published"]
    assert len(published) == len(grid_tables.PUBLISHED) and (published["status"] == "published").all()
    assert published["test_accuracy_pct"].isna().all()  # published rows carry no measured numbers

    comp = frames["compression"].set_index("model")
    assert list(comp.index) == ["teacher", "pruned", "distilled", "quantized"]
    assert (comp["experiment"] == "grid-sec-s{42,43,44}").all()
    assert comp.loc["pruned", "test_accuracy_pct"] == 48.0 and comp.loc["pruned", "accuracy_delta_pts"] == -1.0
    assert comp.loc["quantized", "speedup_x"] == pytest.approx(2.2) and comp.loc["quantized", "size_ratio_x"] == 5.0

    curve = frames["curve"]
    assert list(curve["variant"]) == [
        "random@6",
        "random",
        "random@18",
        "active@6",
        "active",
        "active@18",
        "all-labels",
    ]
    assert list(curve["label_fraction_pct"]) == [50.0, 60.0, 70.0, 50.0, 60.0, 70.0, 100.0]
    assert list(curve["seeds"]) == [1, 3, 3, 1, 3, 3, 3]
    assert curve.set_index("variant").loc["active@18", "test_accuracy_pct"] == 50.0

    # Stage time: teacher-only runs 10 s each (their carried-along 100-second baseline compression
    # stages do not count), sec runs 17 s; 20 teacher-only + 3 sec runs.
    compute = frames["compute"].set_index("variant")
    assert compute.loc["all-labels", "experiments"] == 3 and compute.loc["all-labels", "stage_minutes"] == 0.5
    assert compute.loc["sec", "stage_minutes"] == round(51 / 60, 1)
    assert compute.loc["total", "experiments"] == 23
    assert compute.loc["total", "stage_minutes"] == round((20 * 10 + 3 * 17) / 60, 1)


def test_missing_and_failed_experiments_are_marked_not_crashes(records):
    kept = _drop(records, "grid-sec-s42", "grid-sec-s43", "grid-sec-s44", "grid-random-b6-s42",
                 "grid-all-labels-s42", "grid-all-labels-s43", "grid-all-labels-s44")  # fmt: skip
    for rec in kept:
        if rec["name"] in ("grid-active-s42", "grid-active-s43", "grid-active-s44", "grid-random-s44"):
            rec["state"] = "failed"
    kept = [r for r in kept if not r["is_baseline"]]  # no baseline metrics to fall back on either
    frames = grid_tables.tables(kept, _tiny_grid())
    main = frames["main"].set_index("system")
    assert main.loc["SEC deployed (quantized)", "status"] == grid_tables.NOT_RUN
    assert math.isnan(main.loc["SEC deployed (quantized)", "test_accuracy_pct"])
    assert "not run" in main.loc["All-labels teacher", "note"]
    assert (frames["compression"]["status"] == grid_tables.NOT_RUN).all()
    data = frames["data"].set_index("variant")
    assert data.loc["active", "status"] == "failed" and math.isnan(data.loc["active", "test_accuracy_pct"])
    assert data.loc["active", "seeds"] == 0
    # Two of three seeds: the mean of the two, the failed one named in the status.
    assert data.loc["random", "status"] == "ok (s44 failed)" and data.loc["random", "seeds"] == 2
    assert data.loc["random", "test_accuracy_pct"] == 41.0
    assert math.isnan(data.loc["random", "accuracy_delta_pts"])  # no all-labels row to compare with
    curve = frames["curve"].set_index("variant")
    assert curve.loc["random@6", "status"] == grid_tables.NOT_RUN and curve.loc["random@6", "budget"] == 6
    assert curve.loc["random@6", "experiment"] == "grid-random-b6-s*"
    rows = grid_tables.fraction_rows(frames["curve"])
    assert {r["strategy"] for r in rows} == {"random", "active"}  # only rows that ran
    # Nothing at all: every measured row says "not run", and no stage time.
    empty = grid_tables.tables([], _tiny_grid())
    assert (empty["data"]["status"] == grid_tables.NOT_RUN).all() and (
        empty["curve"]["status"] == grid_tables.NOT_RUN
    ).all()
    assert empty["compute"].set_index("variant").loc["total", "experiments"] == 0
    assert "No finished experiment" in grid_tables.markdown(empty)


def test_sec_falls_back_to_the_baseline_commit_metrics(records):
    kept = _drop(records, "grid-sec-s42", "grid-sec-s43", "grid-sec-s44")
    comp = grid_tables.tables(kept)["compression"]
    assert (comp["status"] == "ok").all() and comp["experiment"].iloc[0].startswith("baseline master")
    assert (comp["seeds"] == 1).all()
    assert comp["test_accuracy_pct"].iloc[-1] == 30.0  # the baseline's own quantized model


def _preds(correct: np.ndarray, offset: int = 0) -> pd.DataFrame:
    """Predictions by the contract: gold labels cycle 0,1,2; a wrong prediction is the next class."""
    n = len(correct)
    label = np.arange(n) % 3
    pred = np.where(correct, label, (label + 1) % 3)
    probs = np.full((n, 3), 0.2, dtype=np.float32)
    probs[np.arange(n), pred] = 0.6
    return pd.DataFrame({"row_id": np.arange(offset, offset + n, dtype=np.int64), "label": label.astype(np.int64),
                         "pred": pred.astype(np.int64), "prob_entailment": probs[:, 0],
                         "prob_neutral": probs[:, 1], "prob_contradiction": probs[:, 2]})  # fmt: skip


class FakeLoader:
    """Predictions per (experiment name, split, model), recording every call; missing -> None."""

    def __init__(self, frames: dict):
        self.frames = frames
        self.calls = []

    def __call__(self, record, split, model="teacher"):
        self.calls.append((record["name"], split, model))
        return self.frames.get((record["name"], split, model))


def _verdict_frames(n: int = 200, test_flip: bool = False) -> dict:
    """Dev: active beats random at every seed (all right vs half right), synonym beats active,
    back-translation loses to it, pseudo matches it; test the same unless `test_flip` reverses it."""
    half = np.arange(n) % 2 == 0
    every, none = np.ones(n, bool), np.zeros(n, bool)
    frames = {}
    for split in ("dev", "test"):
        good, bad = (none, every) if split == "test" and test_flip else (every, none)
        for seed in (42, 43, 44):
            frames[(f"grid-random-s{seed}", split, "teacher")] = _preds(half)
            frames[(f"grid-active-s{seed}", split, "teacher")] = _preds(half | good[:n] if seed != 42 else half)
        frames[("grid-active-synonym-s42", split, "teacher")] = _preds(half | good)
        frames[("grid-active-backtranslation-s42", split, "teacher")] = _preds(half & bad)
        frames[("grid-active-pseudo-s42", split, "teacher")] = _preds(half)
    return frames


def test_verdicts_come_from_the_paired_dev_comparison(records):
    load = FakeLoader(_verdict_frames())
    frames = grid_tables.tables(records, load=load)
    data = frames["data"].set_index("variant")
    # active vs random: pooled over 3 seeds; s42 identical, s43/s44 all right vs half right:
    # (0 + 50 + 50) / 3 points.
    row = data.loc["active"]
    assert row["paired_seeds"] == 3 and row["dev_delta_vs_parent_pts"] == pytest.approx(100 / 3, abs=0.01)
    assert row["dev_delta_vs_parent_pts_low"] > 0 and row["helped"] == "helped" and row["p_mcnemar"] < 1e-6
    # active+synonym vs active: only seed 42 ran both (the parent's other seeds are not paired).
    row = data.loc["active+synonym"]
    assert (
        row["paired_seeds"] == 1 and row["dev_delta_vs_parent_pts"] == pytest.approx(50.0) and row["helped"] == "helped"
    )
    row = data.loc["active+backtranslation"]
    assert row["dev_delta_vs_parent_pts"] == pytest.approx(-50.0) and row["helped"] == "hurt"
    row = data.loc["active+pseudo"]
    assert row["dev_delta_vs_parent_pts"] == 0 and row["helped"] == "not shown" and row["p_mcnemar"] == 1.0
    assert data.loc["sec", "helped"] == "n/a"  # no predictions for sec in this loader
    assert grid_tables.verdicts(frames["data"]) == {"synonym": True, "backtranslation": False, "pseudo": None}
    details = grid_tables.verdict_details(frames["data"])
    assert details["backtranslation"]["verdict"] == "hurt" and details["backtranslation"]["split"] == "dev"
    assert details["backtranslation"]["high_pts"] < 0 and details["backtranslation"]["seeds"] == 1
    # Table 2 reads dev only; the test split must not move a verdict.
    table2_calls = [
        c for c in load.calls if c[0].startswith(("grid-active-synonym", "grid-active-back", "grid-active-pseudo"))
    ]
    assert table2_calls and {split for _, split, _ in table2_calls} == {"dev"}
    flipped = grid_tables.tables(records, load=FakeLoader(_verdict_frames(test_flip=True)))["data"]
    assert grid_tables.verdicts(flipped) == grid_tables.verdicts(frames["data"])


def test_paired_comparison_edge_cases():
    same = {42: {"name": "a42"}, 43: {"name": "a43"}}
    other = {42: {"name": "b42"}, 43: {"name": "b43"}}
    frames = {("a42", "dev", "teacher"): _preds(np.ones(30, bool)), ("b42", "dev", "teacher"): _preds(np.ones(30, bool)),
              ("a43", "dev", "teacher"): _preds(np.ones(30, bool)),
              ("b43", "dev", "teacher"): _preds(np.ones(30, bool), offset=1000)}  # fmt: skip
    # A seed with one side's predictions missing is left out and named; different rows refuse to pair.
    result = grid_paired.compare_runs(same, {42: other[42]}, "dev", FakeLoader(frames))
    assert result["seeds"] == [42] and result["verdict"] == "not shown" and result["examples"] == 30
    result = grid_paired.compare_runs(same, other, "dev", FakeLoader(frames))
    assert result["verdict"] == "n/a" and "row_id" in result["note"]
    missing = dict(frames)
    del missing[("b43", "dev", "teacher")]
    result = grid_paired.compare_runs(same, other, "dev", FakeLoader(missing))
    assert result["seeds"] == [42] and "s43: no dev predictions" in result["note"]
    assert grid_paired.compare_runs({}, other, "dev", FakeLoader(frames))["verdict"] == "n/a"

    def broken(record, split, model):
        raise RuntimeError("not in the local DVC cache")

    result = grid_paired.compare_runs(same, other, "dev", broken)
    assert result["verdict"] == "n/a" and "not in the local DVC cache" in result["note"]
    assert grid_paired.prediction_path("teacher", "dev") == "predictions/evaluate_teacher/teacher-dev.parquet"
    assert grid_paired.prediction_path("quantized", "test") == "predictions/evaluate/quantized-test.parquet"


def test_claims_table_on_dev_and_test(records):
    frames = _verdict_frames()
    n = 200
    half = np.arange(n) % 2 == 0
    for seed in (42, 43, 44):
        for split in ("dev", "test"):
            frames[(f"grid-all-labels-s{seed}", split, "teacher")] = _preds(np.ones(n, bool))
            frames[(f"grid-random-b18-s{seed}", split, "teacher")] = _preds(half)
            frames[(f"grid-active-b18-s{seed}", split, "teacher")] = _preds(half)
            frames[(f"grid-sec-s{seed}", split, "quantized")] = _preds(half)
    load = FakeLoader(frames)
    claims = grid_tables.tables(records, load=load)["claims"]
    assert list(claims["split"]) == ["dev", "test"] * 4
    by = claims.set_index(["baseline", "variant", "split"])
    assert by.loc[("random", "active", "dev"), "verdict"] == "better"
    assert by.loc[("random", "active", "test"), "seeds"] == 3
    assert by.loc[("random@18", "active@18", "dev"), "verdict"] == "not shown"
    row = by.loc[("all-labels", "active@18", "test")]
    assert row["verdict"] == "worse" and row["diff_pts"] == pytest.approx(-50.0) and row["examples"] == 3 * n
    assert row["baseline_accuracy_pct"] == 100.0 and row["variant_accuracy_pct"] == 50.0
    assert by.loc[("all-labels", "sec (quantized)", "dev"), "verdict"] == "worse"
    assert ("grid-sec-s43", "test", "quantized") in load.calls  # the deployed model's predictions, not sec's teacher


def test_write_tables_markdown_csv_verdicts_and_fraction_rows(records, tmp_path):
    kept = _drop(records, "grid-active-b6-s42")
    written = grid_tables.write_all(kept, tmp_path / "grid", load=FakeLoader(_verdict_frames()))
    names = sorted(p.name for p in written)
    assert names == sorted([
        "table1_main.csv", "table2_data.csv", "table3_compression.csv", "table4_label_fraction.csv", "claims.csv",
        "stage_time.csv", "tables.md", grid_tables.FRACTION_FILE, "verdicts.json", "verdict_details.json",
        "accuracy_vs_size.png", "accuracy_vs_latency.png", "accuracy_vs_data_fraction.png",
    ])  # fmt: skip
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written if p.suffix == ".png")
    # The controller reads booleans (True helped, False hurt, None not shown).
    verdicts = json.loads((tmp_path / "grid" / "verdicts.json").read_text())
    assert verdicts == {"synonym": True, "backtranslation": False, "pseudo": None}
    details = json.loads((tmp_path / "grid" / "verdict_details.json").read_text())
    assert (
        details["pseudo"]["verdict"] == "not shown"
        and details["pseudo"]["low_pts"] <= 0 <= details["pseudo"]["high_pts"]
    )
    # The Pareto plots use only full-pipeline runs: teacher-only experiments carry stale compression metrics.
    experiments = {row["experiment"] for row in grid_tables.tradeoff_rows(kept, _tiny_grid())}
    assert experiments == {"master", "grid-sec-s42", "grid-sec-s43", "grid-sec-s44"}
    assert not list((tmp_path / "grid").glob(".*"))  # no temporary files left behind
    md = (tmp_path / "grid" / "tables.md").read_text()
    for caption in grid_tables.CAPTIONS.values():
        assert caption in md
    assert "Published reference points (not measured here)" in md and "| active@6 | grid-active-b6-s* | not run |" in md
    assert "52.00 [47.03, 56.97]" in md and "47.00 (n=1)" in md and "test_accuracy_pct (95 % CI)" in md
    assert "Stage time: the grid's 22 finished experiments took 4.0 min" in md
    main = pd.read_csv(tmp_path / "grid" / "table1_main.csv")
    assert list(main.columns) == grid_tables.MAIN_COLUMNS and set(main["source"]) == {"measured", "published"}
    curve = pd.read_csv(tmp_path / "grid" / "table4_label_fraction.csv")
    assert list(curve["status"]) == ["ok", "ok", "ok", "not run", "ok", "ok", "ok"]
    claims = pd.read_csv(tmp_path / "grid" / "claims.csv")
    assert list(claims.columns) == grid_tables.CLAIM_COLUMNS and len(claims) == 8
    rows = json.loads((tmp_path / "grid" / grid_tables.FRACTION_FILE).read_text())
    assert all(set(r) == {"strategy", "label_fraction", "accuracy"} for r in rows)
    assert {"strategy": "all-labels", "label_fraction": 1.0, "accuracy": 52.0} in rows
    assert len(rows) == 6  # active@6 did not run


def test_main_tables_from_saved_json_and_list(tmp_path, capsys):
    assert grid.main(["tables", "--json", str(FIXTURE), "--out-dir", str(tmp_path), "--no-paired"]) == 0
    assert (tmp_path / "tables.md").is_file() and "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "verdicts.json").read_text()) == {}  # nothing paired, nothing decided
    assert grid.main(["list", "--repo", str(REPO), "--profile", "tiny", "--only", "curve", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "grid-random-b6-s" in out and "grid-random-b18-s" in out
    seed = int(grid.read_params(REPO).get("seed", 42))
    assert f"grid-random-b18-s{seed + 1}" in out and f"grid-random-b6-s{seed + 1}" not in out
    assert f"grid-random-b18-s{seed + 2}" not in out  # --seeds 2


# ---------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_grid_runs_two_rows_at_two_seeds_in_a_tiny_repo_then_reruns_cheaply(tmp_path):
    from conftest import make_tiny_repo, run_cmd

    repo = make_tiny_repo(tmp_path)
    seed = int(grid.read_params(repo)["seed"])
    out = tmp_path / "grid"
    names = [f"grid-{row}-s{s}" for s in (seed, seed + 1) for row in ("random", "active")]
    summary = grid.run(["active", "random"], repo=repo, out_dir=out, seeds=2, poll_s=3, timeout_s=2400)
    assert summary["failed"] == [] and sorted(summary["queued"]) == sorted(names)
    assert all(info["status"] == "Success" for info in summary["experiments"].values())

    shown = grid_tables.collect(run_cmd(["dvc", "exp", "show", "--json"], repo).stdout)
    assert set(names) <= {r["name"] for r in shown}
    assert {r["params"]["seed"] for r in shown if r["name"] in names} == {seed, seed + 1}
    data = pd.read_csv(out / "table2_data.csv").set_index("variant")
    for variant in ("random", "active"):
        assert data.loc[variant, "status"] == "ok" and data.loc[variant, "seeds"] == 2
        assert 0 <= data.loc[variant, "test_accuracy_pct"] <= 100 and data.loc[variant, "labelled_examples"] == 36
    assert data.loc["sec", "status"] == grid_tables.NOT_RUN
    # The paired dev comparison read both seeds' prediction files through DVC: its difference is the
    # two rows' dev accuracies (evaluate_teacher.json, same dev rows at each seed), its verdict the
    # side of 0 its interval lies on.
    active = data.loc["active"]
    assert active["paired_seeds"] == 2
    assert active["dev_delta_vs_parent_pts"] == pytest.approx(
        active["dev_accuracy_pct"] - data.loc["random", "dev_accuracy_pct"], abs=0.02)
    low, high = active["dev_delta_vs_parent_pts_low"], active["dev_delta_vs_parent_pts_high"]
    assert active["helped"] == ("helped" if low > 0 else "hurt" if high < 0 else "not shown")
    claims = pd.read_csv(out / "claims.csv")
    first = claims[claims["baseline"] == "random"].set_index("split")
    assert first.loc["dev", "seeds"] == 2 and first.loc["test", "seeds"] == 2
    rows = json.loads((out / grid_tables.FRACTION_FILE).read_text())
    assert {r["strategy"] for r in rows} == {"random", "active"}

    # A second run of a finished grid runs nothing and rewrites the tables.
    again = grid.run(["active", "random"], repo=repo, out_dir=out, seeds=2, poll_s=3)
    assert again["queued"] == [] and again["experiments"] == {}
    # --rerun of one seed queues only it: the stages upstream of fine_tune come from DVC's run-cache.
    rerun = grid.run([f"grid-random-s{seed}"], repo=repo, out_dir=out, seeds=2, poll_s=3, rerun=True, timeout_s=1200)
    assert rerun["queued"] == [f"grid-random-s{seed}"]
    stages = rerun["experiments"][f"grid-random-s{seed}"]
    assert rerun["failed"] == [] and {"prepare", "active_select", "augment", "back_translate"} <= set(
        stages["restored"]
    )
    assert not {"prepare", "active_select"} & set(stages["ran"])


def test_a_relative_data_dir_is_made_absolute_for_queued_runs(tmp_path):
    # Queued experiments run in a copy under .dvc/tmp/exps/: `../shared/...` would point inside it.
    repo = tmp_path / "work" / "repo"
    repo.mkdir(parents=True)
    params = {"seed": 42, "data": {"local_dir": "../shared/data/mnli"}, "active_select": {}}
    active = next(v for v in _tiny_grid() if v.name == "active").at_seed(43)
    cmd = grid.queue_command(active, params, repo=repo)
    assert cmd[cmd.index(f'data.local_dir="{tmp_path / "work" / "shared" / "data" / "mnli"}"') - 1] == "-S"
    # Absolute, null (the hub) or no repo given: nothing added.
    for data in ({"local_dir": "/data/mnli"}, {"local_dir": None}):
        assert not any("data.local_dir" in a for a in grid.queue_command(active, {**params, "data": data}, repo=repo))
    assert not any("data.local_dir" in a for a in grid.queue_command(active, params))
