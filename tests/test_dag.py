"""pipeline.dag: the stages come from dvc.yaml, in an order DVC could run them, and every list of
stages in pipeline/ follows them (the flow, the controller, the GPU slots and check, the grid)."""

from __future__ import annotations

import yaml

from pipeline import dag, flows, gpu_check, grid_tables
from pipeline.grid_variants import TEACHER_TARGET


def test_the_stages_are_dvc_yamls_in_an_order_dvc_could_run_them():
    assert dag.STAGE_ORDER == tuple(yaml.safe_load(dag.DVC_YAML.read_text())["stages"])
    for i, name in enumerate(dag.STAGE_ORDER):
        later = dag.STAGE_ORDER[i + 1:]
        producers = [other for other in later if dag._reads(dag.STAGES[name], dag.STAGES[other])]
        assert not producers, f"{name} reads outputs of {producers}, which come after it in dvc.yaml"
    assert flows.STAGE_ORDER is dag.STAGE_ORDER


def test_upstream_follows_deps_to_outs(tmp_path):
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump({"stages": {
        "a": {"cmd": "x", "outs": ["data/a"]},
        "b": {"cmd": "x", "deps": ["data/a/part.parquet"], "outs": [{"data/b.parquet": {"cache": False}}]},
        "side": {"cmd": "x", "deps": ["data/a"], "metrics": [{"metrics/side.json": {"cache": False}}]},
        "c": {"cmd": "x", "deps": ["data/b.parquet", "data/ab"], "params": ["device", {"other.yaml": ["k"]}]},
    }}))
    stages = dag.read_stages(path)
    assert dag.upstream("c", stages) == ("a", "b", "c")  # data/ab is not under data/a
    assert dag.upstream("side", stages) == ("a", "side") and dag.upstream("a", stages) == ("a",)
    assert stages["c"].params == ("device", "k")


def test_the_gpu_stages_are_those_that_read_the_device_and_the_gpu_check_covers_each():
    assert dag.GPU_STAGES == {"active_select", "fine_tune", "prune", "distill", "evaluate_teacher", "evaluate"}
    assert flows.GPU_STAGES is dag.GPU_STAGES
    assert set(gpu_check.DEVICE_RECORDS) == dag.GPU_STAGES  # a new accelerator stage needs its device record


def test_the_grids_stage_time_sums_follow_the_dag():
    assert TEACHER_TARGET in dag.STAGE_ORDER
    # A teacher-only run stops at evaluate_teacher: it runs neither augment_pool nor any compression.
    assert grid_tables.TEACHER_RUN_STAGES == (
        "prepare", "active_select", "augment", "back_translate", "generate", "fine_tune", TEACHER_TARGET)
    assert set(grid_tables.FULL_RUN_STAGES) >= set(dag.STAGE_ORDER)
    assert {"augment_pool", "prune", "distill", "quantize"} <= set(grid_tables.DEPLOY_STAGES)
    assert "evaluate" not in grid_tables.DEPLOY_STAGES and "export" not in grid_tables.DEPLOY_STAGES
