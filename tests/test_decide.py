"""The controller's decision function as a table of cases."""

import pytest

from pipeline.controller import override_value
from pipeline.decide import Knobs, State, Targets, adaptive_class_fraction, decide, first_stage, objective

TARGETS = Targets(max_accuracy_drop_pts=1.0, min_size_ratio=3.0, min_speedup=1.5, max_labelled_fraction=0.5)
KNOBS = Knobs(prune_ratio=0.3, selection_budget=1000, augment_fraction=0.25)


def deployed(delta=-0.5, size=4.0, speed=2.0, ce=0.8):
    return {"accuracy_delta_pts": delta, "size_ratio": size, "speedup": speed, "cross_entropy": ce}


CASES = [
    # name, metrics, labelled fraction, knobs, state, expected changes, stop, first stage, reason fragment
    ("targets met", deployed(), 0.3, KNOBS, State(), {}, True, None, "all targets met"),
    ("accuracy drop eases pruning", deployed(delta=-2.5), 0.3, KNOBS, State(), {"prune.ratio": 0.2}, False, "prune", "accuracy drop 2.50"),
    ("too big raises pruning", deployed(size=2.0), 0.3, KNOBS, State(), {"prune.ratio": 0.4}, False, "prune", "size below target"),
    ("too slow raises pruning", deployed(speed=1.1), 0.3, KNOBS, State(), {"prune.ratio": 0.4}, False, "prune", "latency below target"),
    ("too many labels cuts the budget", deployed(), 0.7, KNOBS, State(),
     {"active_select.budget": 800, "augment.fraction": 0.5}, False, "active_select", "labelled fraction 0.70"),
    ("data and size: most upstream stage wins", deployed(size=2.0), 0.7, KNOBS, State(),
     {"prune.ratio": 0.4, "active_select.budget": 800, "augment.fraction": 0.5}, False, "active_select", "budget 1000 -> 800"),
    ("bound reached", deployed(size=2.0), 0.3, KNOBS, State(iteration=3, max_iterations=3), {}, True, None, "max_iterations=3"),
    ("no improvement stops", deployed(size=2.0, ce=0.9), 0.3, KNOBS, State(iteration=1, best=(0.8, 0.3, 2.0)), {}, True, None, "did not improve"),
    ("knob at its bound stops", deployed(size=2.0), 0.3, Knobs(prune_ratio=0.8, selection_budget=10, augment_fraction=0.2), State(), {}, True, None, "bound"),
    ("pruning cannot go below zero", deployed(delta=-3.0), 0.3, Knobs(prune_ratio=0.0, selection_budget=10, augment_fraction=0.2), State(), {}, True, None, "bound"),
    ("accuracy miss aims augmentation at the worst class",
     {**deployed(delta=-2.0), "class_accuracy": {"entailment": 0.7, "neutral": 0.4, "contradiction": 0.7}}, 0.3, KNOBS, State(),
     {"prune.ratio": 0.2, "augment.class_fraction": {"entailment": 0.25, "neutral": 0.5, "contradiction": 0.25}},
     False, "augment", "more rewrites for neutral"),
    ("augmentation the grid found useless is turned down",
     {**deployed(delta=-2.0), "class_accuracy": {"entailment": 0.7, "neutral": 0.4, "contradiction": 0.7}}, 0.7,
     Knobs(prune_ratio=0.3, selection_budget=1000, augment_fraction=0.25, augment_helped=False,
           backtranslate_helped=False, backtranslate_fraction=0.25), State(),
     {"prune.ratio": 0.2, "augment.fraction": 0.0, "back_translate.fraction": 0.0, "active_select.budget": 800},
     False, "active_select", "did not help in the ablation grid"),
]


@pytest.mark.parametrize("name, metrics, fraction, knobs, state, changes, stop, stage, reason", CASES, ids=[c[0] for c in CASES])
def test_decide(name, metrics, fraction, knobs, state, changes, stop, stage, reason):
    decision = decide(metrics, fraction, knobs, TARGETS, state)
    assert decision.changes == changes
    assert decision.stop is stop
    assert decision.first_stage == stage
    assert reason in decision.reason


def test_lambdas_move_with_pressure():
    eased = decide(deployed(delta=-2.5), 0.3, KNOBS, TARGETS, State(lambda2=1.0))
    assert eased.lambda2 < 1.0
    pressed = decide(deployed(size=2.0), 0.7, KNOBS, TARGETS, State(lambda1=1.0, lambda2=1.0))
    assert pressed.lambda1 > 1.0 and pressed.lambda2 > 1.0


def test_objective_and_improvement_is_compared_under_current_lambdas():
    assert objective(0.8, 0.5, 4.0, 1.0, 2.0) == pytest.approx(0.8 + 0.5 + 0.5)
    # Better cross-entropy than the best run: keeps going.
    better = decide(deployed(size=2.0, ce=0.5), 0.3, KNOBS, TARGETS, State(iteration=1, best=(0.8, 0.3, 2.0)))
    assert not better.stop


def test_lambdas_act_inside_training_when_enabled():
    knobs = Knobs(prune_ratio=0.3, selection_budget=1000, augment_fraction=0.25, sparsity_weight=0.01,
                  augment_weight=0.5, backtranslate_weight=0.5)
    pressed = decide(deployed(size=2.0), 0.7, knobs, TARGETS, State())
    assert pressed.changes["fine_tune.sparsity_weight"] == 0.015  # more group lasso while fine-tuning
    assert pressed.changes["augment.weight"] == 0.75 and pressed.changes["back_translate.weight"] == 0.75
    assert pressed.first_stage == "active_select"
    eased = decide(deployed(delta=-2.0), 0.3, knobs, TARGETS, State())
    assert eased.changes == {"fine_tune.sparsity_weight": 0.005, "prune.ratio": 0.2}
    assert eased.first_stage == "fine_tune"


def test_first_stage_follows_the_dag():
    assert first_stage({"distill.alpha": 0.2, "prune.ratio": 0.1}) == "prune"
    assert first_stage({}) is None


def test_adaptive_class_fraction_raises_only_classes_below_the_mean():
    assert adaptive_class_fraction({"entailment": 0.6, "neutral": 0.6, "contradiction": 0.605}, 0.25, 0.25) is None
    raised = adaptive_class_fraction({"entailment": 0.8, "neutral": 0.5, "contradiction": 0.65}, 0.25, 0.25)
    assert raised == {"entailment": 0.25, "neutral": 0.5, "contradiction": 0.25 + 0.25 * (0.65 - 0.65) / 0.15}
    assert adaptive_class_fraction({}, 0.25, 0.25) is None


def test_override_values_use_dvc_set_grammar():
    assert override_value({"neutral": 0.5}) == "{neutral: 0.5}"
    assert override_value(0.25) == "0.25" and override_value("random") == '"random"'
