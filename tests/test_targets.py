"""The targets have one home, params.yaml's controller.targets, and one loader."""

import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from pipeline.search_space import SearchParams
from pipeline.targets import Targets, TargetsError, load_controller_params, load_targets


def test_the_repository_targets_are_the_published_ones():
    # README and scripts/benchmark.py state these (issue 11): >= 12x smaller, >= 10x faster at batch 32
    # and at batch 1, <= 1.0 point.
    assert load_targets(REPO / "params.yaml") == Targets(
        max_accuracy_drop_pts=1.0, min_size_ratio=12.0, min_speedup=10.0, min_speedup_b1=10.0, max_labelled_fraction=0.5)


def test_load_targets_reads_the_file_it_is_given(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"controller": {"deployed_model": "onnx_int8", "targets": {
        "max_accuracy_drop_pts": 0.5, "min_size_ratio": 4.0, "min_speedup": 2.0, "max_labelled_fraction": 0.3}}}))
    assert load_targets(path).min_size_ratio == 4.0
    assert load_controller_params(path).deployed_model == "onnx_int8"
    assert load_controller_params(path).search is None  # the targets alone are enough for a reader


@pytest.mark.parametrize("controller", [None, {"deployed_model": "quantized"}, {"targets": {"min_size_ratio": 10.0}},
                                        {"targets": {"max_accuracy_drop_pts": 1, "min_size_ratio": 10, "min_speedup": 8,
                                                     "max_labelled_fraction": 0.5, "min_speed": 8}}])
def test_missing_or_invalid_targets_are_refused_not_defaulted(tmp_path, controller):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"profile": "cpu", **({"controller": controller} if controller else {})}))
    with pytest.raises(TargetsError, match="params.yaml"):
        load_targets(path)


def test_the_loader_imports_without_prefect():
    # scripts/benchmark.py imports it; it must not drag Prefect (slow, starts settings) along.
    code = "import sys, pipeline.targets; assert 'prefect' not in sys.modules, 'prefect imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_the_repository_search_space_validates_and_names_only_pipeline_params():
    from pipeline.search import base_values

    space = load_controller_params(REPO / "params.yaml").search
    assert space is not None and "prune.ratio" in space.knobs
    base, seed = base_values(REPO / "params.yaml", space)
    assert set(base) == {*space.knobs, "distill.max_steps"} and isinstance(seed, int)
    # Every knob the default profile leaves out of its study is a param the search can still set.
    data_knobs = SearchParams.model_validate({"knobs": {"active_select.budget": {"low": 5000, "high": 11000},
                                                        "augment_pool.fraction": {"choices": [0.0, 0.25]}}})
    assert set(base_values(REPO / "params.yaml", data_knobs)[0]) == {"active_select.budget", "augment_pool.fraction",
                                                                      "distill.max_steps"}


def test_margins_and_judge_agree_at_and_around_each_target():
    from pipeline.targets import judge, margins

    targets = Targets(max_accuracy_drop_pts=1.0, min_size_ratio=12.0, min_speedup=10.0, min_speedup_b1=10.0,
                      max_labelled_fraction=0.5)
    for drop, size, speed, b1, labels in [(1.0, 12.0, 10.0, 10.0, 0.5), (1.01, 11.9, 9.99, 10.5, 0.51), (0.2, 20, 15, 9, 0.1)]:
        kwargs = dict(accuracy_drop_pts=drop, size_ratio=size, speedup=speed, speedup_b1=b1, labelled_fraction=labels)
        distance, met = margins(targets, **kwargs), judge(targets, **kwargs)
        assert {k: v <= 0 for k, v in distance.items()} == met
    assert margins(targets, accuracy_drop_pts=0.5, size_ratio=15.0, speedup=8.0)["latency"] == pytest.approx(2.0)
    assert margins(targets, accuracy_drop_pts=0.5, size_ratio=15.0, speedup=8.0)["data"] is None
