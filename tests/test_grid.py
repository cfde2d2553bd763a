"""The ablation grid (pipeline/grid.py, grid_variants.py, grid_tables.py): variants, `dvc exp show --json` parsing, the four tables.

The fast tests read tests/data/grid_exp_show.json, a trimmed copy of a real `dvc exp show --json`
(DVC 3.67) of the tiny-profile grid (deps/outs dropped; one failed non-grid experiment kept to show
DVC's failure format). The slow test runs two variants end to end in a scratch repository.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline import grid, grid_tables, grid_variants

FIXTURE = Path(__file__).parent / "data" / "grid_exp_show.json"
TINY_NAMES = [
    "all-labels", "random", "active", "active+synonym", "active+backtranslation", "active+pseudo", "sec",
    "random@6", "active@6",
]  # fmt: skip


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
    assert [v.name for v in _tiny_grid()] == TINY_NAMES
    cpu = grid_variants.grid_for("cpu")
    assert [v.name for v in grid_variants.GRID] == [v.name for v in cpu]
    # The profile's own budget (cpu: 2000) is the `random` / `active` row, not a second experiment.
    assert [v.name for v in cpu if "@" in v.name] == [
        "random@4000", "random@5880", "active@4000", "active@5880", "active@5880+steps"
    ]
    # Fewer labels without fewer steps: the all-labels teacher's 2 epochs of 9,830 rows at batch 16.
    matched = next(v for v in cpu if v.name == "active@5880+steps")
    assert matched.overrides["fine_tune.max_steps"] == 1230 and matched.tables == ("data",)
    assert not any("+steps" in v.name for v in _tiny_grid())
    pseudo = next(v for v in cpu if v.name == "active+pseudo")
    assert pseudo.overrides["active_select.pseudo_size"] == 2000
    assert next(v for v in _tiny_grid() if v.name == "active+pseudo").overrides["active_select.pseudo_size"] == 12
    assert next(v for v in cpu if v.name == "sec").overrides == {}
    assert next(v for v in cpu if v.name == "all-labels").overrides["active_select.strategy"] == "all"
    for variant in cpu + _tiny_grid():
        # Valid git ref components: no '@', '+', spaces, '..' etc.
        assert re.fullmatch(r"grid-[a-z0-9]+(-[a-z0-9]+)*", variant.exp_name), variant.exp_name
    assert grid_variants.slug("active+synonym") == "active-synonym" and grid_variants.slug("random@2000") == "random-b2000"
    assert len({v.exp_name for v in cpu}) == len(cpu)


def test_select_by_name_slug_experiment_or_table():
    tiny = _tiny_grid()
    assert [v.name for v in grid_variants.select(tiny, ["active", "random"])] == ["random", "active"]  # grid order
    assert [v.name for v in grid_variants.select(tiny, ["grid-active-synonym", "active-b6"])] == ["active+synonym", "active@6"]
    assert [v.name for v in grid_variants.select(tiny, ["curve"])] == ["all-labels", "random", "active", "random@6", "active@6"]
    assert grid_variants.select(tiny, None) == tiny
    with pytest.raises(grid_variants.GridError, match="unknown grid variant 'bogus'"):
        grid_variants.select(tiny, ["bogus"])


def test_queue_command_sets_params_and_appends_missing_keys():
    params = {"profile": "tiny", "active_select": {"strategy": "entropy", "budget": None}, "augment": {"fraction": None},
              "back_translate": {"fraction": None}}  # fmt: skip
    pseudo = next(v for v in _tiny_grid() if v.name == "active+pseudo")
    cmd = grid.queue_command(pseudo, params)
    assert cmd[:6] == ["dvc", "exp", "run", "--queue", "-n", "grid-active-pseudo"]
    sets = cmd[7::2]
    assert "active_select.strategy=entropy" in sets and "augment.fraction=0" in sets
    assert "+active_select.pseudo_size=12" in sets  # not in params.yaml: Hydra append
    params["active_select"]["pseudo_size"] = 0
    assert "active_select.pseudo_size=12" in grid.queue_command(pseudo, params)[7::2]
    synonym = next(v for v in _tiny_grid() if v.name == "active+synonym")
    assert "augment.fraction=null" in grid.set_args(synonym, params)
    assert grid.set_args(next(v for v in _tiny_grid() if v.name == "sec"), params, profile="cpu") == [
        "-S",
        "profile=cpu",
    ]
    assert grid.set_args(next(v for v in _tiny_grid() if v.name == "sec"), params, profile="tiny") == []


def test_data_only_variants_stop_at_the_teacher_evaluation():
    stages = {"fine_tune", "evaluate_teacher", "evaluate"}
    by_name = {v.name: v for v in _tiny_grid()}
    assert [n for n, v in by_name.items() if grid.target_for(v, stages)] == [
        "all-labels", "random", "active", "active+synonym", "active+backtranslation", "active+pseudo", "random@6", "active@6",
    ]  # fmt: skip
    assert grid.target_for(by_name["sec"], stages) is None  # the compression table needs everything
    assert grid.target_for(by_name["active"], stages, full=True) is None
    assert grid.target_for(by_name["active"], {"fine_tune", "evaluate"}) is None  # no such stage: run it all
    cmd = grid.queue_command(by_name["active"], {"active_select": {}}, target="evaluate_teacher")
    assert cmd[-1] == "evaluate_teacher" and "+augment.fraction=0" in cmd
    stages_here = grid.pipeline_stages(Path(__file__).resolve().parents[1])
    assert {"prepare", "fine_tune", "evaluate"} <= stages_here
    # Tables read the teacher from the teacher-only evaluation first, else from evaluate.json.
    rec = {"metrics": {"evaluate_teacher.models.teacher.accuracy": 0.5, "evaluate.models.teacher.accuracy": 0.1}}
    assert grid_tables.teacher_metric(rec, "accuracy") == 0.5
    assert grid_tables.teacher_metric({"metrics": {"evaluate.models.teacher.accuracy": 0.1}}, "accuracy") == 0.1


def test_parse_queue_status_and_stage_summary():
    text = (
        "Task     Name               Created    Status\n"
        "73e1fb2  grid-bad           01:24 PM   Failed\n"
        "5b2aa1a  grid-random        01:20 PM   Success\n"
        "9deed64  grid-random-again  01:24 PM   Running\n\n"
        "Worker status: 1 active, 0 idle"
    )
    tasks, active = grid.parse_queue_status(text)
    assert [(t.id, t.name, t.status) for t in tasks] == [
        ("73e1fb2", "grid-bad", "Failed"), ("5b2aa1a", "grid-random", "Success"), ("9deed64", "grid-random-again", "Running"),
    ]  # fmt: skip
    assert active == 1
    log = (
        "Stage 'prepare' is cached - skipping run, checking out outputs\n"
        "Stage 'augment' didn't change, skipping\n"
        "Running stage 'fine_tune':\n> python -m stages.fine_tune\n"
    )
    assert grid.stage_summary(log) == {"ran": ["fine_tune"], "restored": ["prepare"], "unchanged": ["augment"]}


# ---------------------------------------------------------------------------------- collect


def test_collect_flattens_the_real_exp_show_json(shown, records):
    baseline = shown[1]
    assert shown[0]["rev"] == "workspace" and "experiments" in baseline
    assert records[0]["is_baseline"] and records[0]["state"] == "baseline" and records[0]["rev"] == baseline["rev"]
    named = _by_name(records)
    for name in TINY_NAMES:
        rec = named[grid_variants.EXP_PREFIX + grid_variants.slug(name)]
        assert rec["state"] == "success" and rec["baseline"] == baseline["rev"] and not rec["is_baseline"]
        assert 0 <= rec["metrics"]["evaluate_teacher.models.teacher.accuracy"] <= 1
        # Data-only variants stopped at evaluate_teacher (no evaluate.json); the others ran it all.
        full = name in ("all-labels", "sec")
        assert ("evaluate.models.quantized.accuracy" in rec["metrics"]) == full, name
        assert rec["metrics"]["active_select.labelled_rows"] > 0
        assert rec["params"]["profile"] == "tiny"
    assert named["grid-all-labels"]["params"]["active_select.strategy"] == "all"
    assert named["grid-random-b6"]["params"]["active_select.budget"] == 6
    assert named["grid-active-pseudo"]["metrics"]["active_select.pseudo_rows"] > 0
    assert named["grid-sec"]["metrics"]["fine_tune.rows_by_source.gold"] > 0  # nested keys flattened
    failed = named["grid-bad"]
    assert failed["state"] == "failed" and failed["error"]
    # Text input parses the same; queued/running states come from the executor.
    assert grid_tables.collect(json.dumps(shown)) == records
    queued = copy.deepcopy(shown)
    queued[1]["experiments"][0]["executor"]["state"] = "queued"
    assert grid_tables.collect(queued)[1]["state"] == "queued"


# ---------------------------------------------------------------------------------- tables


def test_tables_from_the_tiny_grid(records):
    named = _by_name(records)
    frames = grid_tables.tables(records)
    assert set(frames) == {"main", "data", "compression", "curve"}

    main = frames["main"]
    measured = main[main["source"] == "measured"].set_index("system")
    teacher = named["grid-all-labels"]["metrics"]
    sec = named["grid-sec"]["metrics"]
    row = measured.loc["All-labels teacher"]
    assert row["status"] == "ok" and row["experiment"] == "grid-all-labels"
    assert row["accuracy_pct"] == pytest.approx(teacher["evaluate.models.teacher.accuracy"] * 100, abs=0.01)
    assert row["label_fraction_pct"] == pytest.approx(100.0)
    assert row["size_ratio_x"] == pytest.approx(1.0) and row["accuracy_delta_pts"] == pytest.approx(0.0)
    seconds = sum(teacher[f"{s}.seconds"] for s in grid_tables.TEACHER_STAGES)
    assert row["train_minutes"] == pytest.approx(seconds / 60, abs=0.01)
    row = measured.loc["SEC deployed (quantized)"]
    assert row["size_mb"] == pytest.approx(sec["evaluate.models.quantized.size_mb"], abs=1e-3)
    assert row["size_ratio_x"] == pytest.approx(
        teacher["evaluate.models.teacher.size_mb"] / sec["evaluate.models.quantized.size_mb"], abs=1e-3
    )
    delta = (sec["evaluate.models.quantized.accuracy"] - teacher["evaluate.models.teacher.accuracy"]) * 100
    assert row["accuracy_delta_pts"] == pytest.approx(delta, abs=0.01)
    assert row["data_saved_pct"] == pytest.approx(
        (1 - sec["active_select.labelled_rows"] / teacher["active_select.labelled_rows"]) * 100, abs=0.01
    )
    published = main[main["source"] == "published"]
    assert len(published) == len(grid_tables.PUBLISHED) and (published["status"] == "published").all()
    assert published["accuracy_pct"].isna().all()  # published rows carry no measured numbers
    sec_paper = published.set_index("system").loc["SEC paper (MNLI): SEC model"]
    assert sec_paper["size_mb"] == 136 and sec_paper["accuracy_delta_pts"] == 1.7 and sec_paper["data_saved_pct"] == 30

    data = frames["data"].set_index("variant")
    assert list(data.index) == [
        "all-labels",
        "random",
        "active",
        "active+synonym",
        "active+backtranslation",
        "active+pseudo",
        "sec",
    ]
    assert (data["status"] == "ok").all()
    assert (
        data.loc["active+pseudo", "pseudo_rows"] == named["grid-active-pseudo"]["metrics"]["active_select.pseudo_rows"]
    )
    assert data.loc["random", "pseudo_rows"] == 0
    assert data.loc["sec", "train_rows"] == sec["fine_tune.train_rows"]
    synonym = data.loc["active+synonym"]
    expected = synonym["accuracy_pct"] - data.loc["active", "accuracy_pct"]
    assert synonym["parent"] == "active" and synonym["delta_vs_parent_pts"] == pytest.approx(expected, abs=0.02)
    assert synonym["helped"] == ("yes" if expected > 0.5 else "no" if expected < -0.5 else "noise")
    assert data.loc["random", "helped"] == "" and data.loc["all-labels", "accuracy_delta_pts"] == 0

    comp = frames["compression"]
    assert list(comp["step"]) == ["teacher", "+pruning", "+distillation", "+quantization"]
    assert list(comp["model"]) == ["teacher", "pruned", "distilled", "quantized"]
    assert (comp["experiment"] == "grid-sec").all()
    quantized = comp.set_index("model").loc["quantized"]
    assert quantized["params"] == sec["evaluate.models.quantized.params"]
    assert quantized["speedup_x"] == sec["evaluate.models.quantized.speedup"]

    curve = frames["curve"]
    assert list(curve["variant"]) == ["random@6", "random", "active@6", "active", "all-labels"]
    assert list(curve["budget"]) == [6, 12, 6, 12, 36]
    assert list(curve["label_fraction_pct"]) == [50.0, 60.0, 50.0, 60.0, 100.0]


def test_missing_and_failed_experiments_are_marked_not_crashes(records):
    kept = _drop(records, "grid-sec", "grid-random-b6", "grid-all-labels")
    for rec in kept:
        if rec["name"] == "grid-active":
            rec["state"] = "failed"
    frames = grid_tables.tables(kept)
    main = frames["main"].set_index("system")
    assert main.loc["SEC deployed (quantized)", "status"] == grid_tables.NOT_RUN
    assert math.isnan(main.loc["SEC deployed (quantized)", "accuracy_pct"])
    assert "not run" in main.loc["All-labels teacher", "note"]
    assert (frames["compression"]["status"] == grid_tables.NOT_RUN).all()
    data = frames["data"].set_index("variant")
    assert data.loc["active", "status"] == "failed" and math.isnan(data.loc["active", "accuracy_pct"])
    assert data.loc["active+synonym", "helped"] == "n/a"  # its parent failed
    assert math.isnan(data.loc["random", "accuracy_delta_pts"])  # no all-labels row to compare with
    curve = frames["curve"].set_index("variant")
    assert curve.loc["random@6", "status"] == grid_tables.NOT_RUN and curve.loc["random@6", "budget"] == 6
    rows = grid_tables.fraction_rows(kept)
    assert {r["strategy"] for r in rows} == {"random", "active"}  # only experiments that ran
    # Nothing at all: every measured row says "not run".
    empty = grid_tables.tables([], grid_variants.grid_for("tiny"))
    assert (empty["data"]["status"] == grid_tables.NOT_RUN).all() and (empty["curve"]["status"] == grid_tables.NOT_RUN).all()


def test_sec_falls_back_to_the_baseline_commit_metrics(records):
    sec = _by_name(records)["grid-sec"]
    kept = _drop(records, "grid-sec")
    kept[0] = {**kept[0], "metrics": sec["metrics"]}  # the baseline commit has the default params' metrics
    comp = grid_tables.tables(kept)["compression"]
    assert (comp["status"] == "ok").all() and comp["experiment"].iloc[0].startswith("baseline ")
    assert comp["accuracy_pct"].iloc[-1] == pytest.approx(
        sec["metrics"]["evaluate.models.quantized.accuracy"] * 100, abs=0.01
    )


def test_write_tables_markdown_csv_and_fraction_rows(records, tmp_path):
    kept = _drop(records, "grid-active-b6")
    written = grid_tables.write_all(kept, tmp_path / "grid")
    names = sorted(p.name for p in written)
    assert names == sorted([
        "table1_main.csv", "table2_data.csv", "table3_compression.csv", "table4_label_fraction.csv", "tables.md",
        grid_tables.FRACTION_FILE, "verdicts.json", "accuracy_vs_size.png", "accuracy_vs_latency.png", "accuracy_vs_data_fraction.png",
    ])  # fmt: skip
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written if p.suffix == ".png")
    # The Pareto plots use only full-pipeline runs: teacher-only experiments carry stale compression metrics.
    experiments = {row["experiment"] for row in grid_tables.tradeoff_rows(kept, _tiny_grid())}
    assert "grid-random" not in experiments and experiments
    assert not list((tmp_path / "grid").glob(".*"))  # no temporary files left behind
    md = (tmp_path / "grid" / "tables.md").read_text()
    for caption in grid_tables.CAPTIONS.values():
        assert caption in md
    assert "Published reference points (not measured here)" in md and "| active@6 | grid-active-b6 | not run |" in md
    main = pd.read_csv(tmp_path / "grid" / "table1_main.csv")
    assert list(main.columns) == grid_tables.MAIN_COLUMNS and set(main["source"]) == {"measured", "published"}
    curve = pd.read_csv(tmp_path / "grid" / "table4_label_fraction.csv")
    assert list(curve["status"]) == ["ok", "ok", "not run", "ok", "ok"]
    rows = json.loads((tmp_path / "grid" / grid_tables.FRACTION_FILE).read_text())
    assert all(set(r) == {"strategy", "label_fraction", "accuracy"} for r in rows)
    assert {"strategy": "all-labels", "label_fraction": 1.0} in [
        {k: r[k] for k in ("strategy", "label_fraction")} for r in rows
    ]
    assert all(0 < r["label_fraction"] <= 1 and 0 <= r["accuracy"] <= 100 for r in rows)
    assert len(rows) == 4  # active@6 did not run


def test_main_tables_from_saved_json(tmp_path, capsys):
    assert grid.main(["tables", "--json", str(FIXTURE), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "tables.md").is_file() and "wrote" in capsys.readouterr().out
    assert (
        grid.main(["list", "--repo", str(Path(__file__).resolve().parents[1]), "--profile", "tiny", "--only", "curve"])
        == 0
    )
    assert "grid-random-b6" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_grid_runs_two_variants_in_a_tiny_repo_then_reruns_cheaply(tmp_path):
    from conftest import make_tiny_repo, run_cmd

    repo = make_tiny_repo(tmp_path)
    out = tmp_path / "grid"
    summary = grid.run(["active", "random"], repo=repo, out_dir=out, poll_s=3, timeout_s=1200)
    assert summary["failed"] == [] and sorted(summary["queued"]) == ["grid-active", "grid-random"]
    assert all(info["status"] == "Success" for info in summary["experiments"].values())

    names = {r["name"] for r in grid_tables.collect(run_cmd(["dvc", "exp", "show", "--json"], repo).stdout)}
    assert {"grid-active", "grid-random"} <= names
    data = pd.read_csv(out / "table2_data.csv").set_index("variant")
    for variant in ("random", "active"):
        assert data.loc[variant, "status"] == "ok"
        assert 0 <= data.loc[variant, "accuracy_pct"] <= 100 and data.loc[variant, "labelled_examples"] == 36
    assert data.loc["sec", "status"] == grid_tables.NOT_RUN
    rows = json.loads((out / grid_tables.FRACTION_FILE).read_text())
    assert {r["strategy"] for r in rows} == {"random", "active"}

    # A second run of a finished grid runs nothing and rewrites the tables.
    again = grid.run(["active", "random"], repo=repo, out_dir=out, poll_s=3)
    assert again["queued"] == [] and again["experiments"] == {}
    # --rerun queues it again: the stages upstream of fine_tune come from DVC's run-cache.
    rerun = grid.run(["random"], repo=repo, out_dir=out, poll_s=3, rerun=True, timeout_s=1200)
    stages = rerun["experiments"]["grid-random"]
    assert rerun["failed"] == [] and {"prepare", "active_select", "augment", "back_translate"} <= set(
        stages["restored"]
    )
    assert not {"prepare", "active_select"} & set(stages["ran"])


def test_verdicts_say_which_component_helped_over_its_parent():
    table = pd.DataFrame([
        {"variant": "active+synonym", "helped": "no"},
        {"variant": "active+backtranslation", "helped": "yes"},
        {"variant": "active+pseudo", "helped": "n/a"},
        {"variant": "random", "helped": ""},
    ])  # fmt: skip
    assert grid_tables.verdicts(table) == {"synonym": False, "backtranslation": True}
    # Within the noise band a component has not shown that it helps: the controller turns it down.
    noisy = pd.DataFrame([{"variant": "active+backtranslation", "helped": grid_tables.helped_word(0.19)}])
    assert grid_tables.verdicts(noisy) == {"backtranslation": False}
    assert [grid_tables.helped_word(d) for d in (0.6, -0.6, 0.0, float("nan"))] == ["yes", "no", "noise", "n/a"]
