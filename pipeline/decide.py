"""The synergy controller's decision: a pure function of metrics, targets and state.

SEC's objective is  min  L_task + λ1·R_data + λ2·R_model.  Here, measured after `evaluate`:
  L_task  = the deployed model's validation cross-entropy,
  R_data  = labelled pairs used / pairs available (the data bill),
  R_model = deployed model size / teacher size (the model bill).
λ1 is data pressure (smaller selection budget, more augmentation), λ2 compression pressure (higher
pruning ratio, more distillation). Each iteration the controller compares the metrics with the
targets and with the last accepted iteration, moves one or both pressures, and turns that into
params changes; DVC then reruns exactly the stages downstream of the most upstream change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Pipeline order, so a decision can name the most upstream stage its changes invalidate.
STAGE_ORDER = [
    "prepare", "active_select", "augment", "back_translate", "fine_tune", "evaluate_teacher",
    "prune", "distill", "quantize", "evaluate", "report_plots",
]


@dataclass(frozen=True)
class Targets:
    max_accuracy_drop_pts: float = 1.0  # deployed vs teacher, accuracy points
    min_size_ratio: float = 3.0  # teacher size / deployed size
    min_speedup: float = 1.5  # teacher latency / deployed latency
    max_labelled_fraction: float = 0.5  # labelled pairs / pairs available


@dataclass(frozen=True)
class Knobs:
    """The params the controller may move, with their current values and bounds."""

    prune_ratio: float
    selection_budget: int
    augment_fraction: float
    # λ2 inside training (fine_tune.sparsity_weight) and λ1 inside training (loss weight of
    # augmented / back-translated rows against gold ones). A sparsity weight of 0 stays off.
    sparsity_weight: float = 0.0
    augment_weight: float = 1.0
    backtranslate_weight: float = 1.0
    prune_step: float = 0.1
    prune_max: float = 0.8
    budget_step: float = 0.2  # relative change of the selection budget
    augment_step: float = 0.25
    budget_min: int = 1
    # Measured by the ablation grid (pipeline/grid_tables.py): did synonym augmentation / back-translation
    # raise the teacher's accuracy over active selection alone? None = not measured.
    augment_helped: bool | None = None
    backtranslate_helped: bool | None = None
    backtranslate_fraction: float = 0.0


@dataclass(frozen=True)
class State:
    iteration: int = 0
    max_iterations: int = 3
    lambda1: float = 1.0
    lambda2: float = 1.0
    # (cross_entropy, labelled_fraction, size_ratio) of the best accepted iteration; its objective
    # is recomputed under the current λs so that iterations are compared on one scale.
    best: tuple[float, float, float] | None = None
    tolerance: float = 1e-3


@dataclass(frozen=True)
class Decision:
    changes: dict[str, object]
    reason: str
    stop: bool
    objective: float
    first_stage: str | None = None
    improved: bool = True  # better than the best accepted iteration (or the first one)
    lambda1: float = 1.0
    lambda2: float = 1.0
    misses: list[str] = field(default_factory=list)


def objective(cross_entropy: float, labelled_fraction: float, size_ratio: float, lambda1: float, lambda2: float) -> float:
    """L_task + λ1·R_data + λ2·R_model, with R_model = 1 / size_ratio (deployed size / teacher size)."""
    return cross_entropy + lambda1 * labelled_fraction + lambda2 / size_ratio


def target_misses(deployed: dict, labelled_fraction: float, targets: Targets) -> list[str]:
    misses = []
    if -deployed["accuracy_delta_pts"] > targets.max_accuracy_drop_pts:
        misses.append("accuracy")
    if deployed["size_ratio"] < targets.min_size_ratio:
        misses.append("size")
    if deployed["speedup"] < targets.min_speedup:
        misses.append("latency")
    if labelled_fraction > targets.max_labelled_fraction:
        misses.append("data")
    return misses


def adaptive_class_fraction(class_accuracy: dict[str, float], base: float, step: float) -> dict[str, float] | None:
    """Raise the augmentation fraction only for the classes below the mean per-class accuracy.

    class_accuracy: label name -> recall from the last evaluation. A class `gap` points below the
    mean gets base + step * gap / max_gap (the worst class the full step); the others keep `base`.
    None when the classes are even (nothing to adapt).
    """
    if not class_accuracy:
        return None
    mean = sum(class_accuracy.values()) / len(class_accuracy)
    gaps = {name: mean - acc for name, acc in class_accuracy.items()}
    worst = max(gaps.values())
    if worst <= 0.01:  # within a point of each other
        return None
    return {name: round(min(1.0, base + step * max(0.0, gap) / worst), 4) for name, gap in gaps.items()}


def first_stage(changes: dict[str, object]) -> str | None:
    sections = {key.split(".", 1)[0] for key in changes}
    for stage in STAGE_ORDER:
        if stage in sections:
            return stage
    return None


def decide(deployed: dict, labelled_fraction: float, knobs: Knobs, targets: Targets, state: State) -> Decision:
    """What to change next, and why; `stop` ends the loop.

    deployed: evaluate's metrics of the deployed model (accuracy_delta_pts, size_ratio, speedup,
    cross_entropy). Stops when targets are met, when the objective did not improve on the best
    accepted iteration, or at max_iterations: the loop is bounded whatever the metrics do.
    """
    j = objective(deployed["cross_entropy"], labelled_fraction, deployed["size_ratio"], state.lambda1, state.lambda2)
    best_j = objective(*state.best, state.lambda1, state.lambda2) if state.best else None
    misses = target_misses(deployed, labelled_fraction, targets)
    improved = best_j is None or j <= best_j - state.tolerance
    base = {"objective": round(j, 4), "misses": misses, "lambda1": state.lambda1, "lambda2": state.lambda2, "improved": improved}

    if not misses:
        return Decision({}, "all targets met", True, **base)
    if not improved:
        return Decision({}, f"objective {j:.4f} did not improve on the best run's {best_j:.4f}; stopping", True, **base)
    if state.iteration >= state.max_iterations:
        return Decision({}, f"reached max_iterations={state.max_iterations} with targets missed: {', '.join(misses)}", True, **base)

    changes: dict[str, object] = {}
    reasons = []
    lambda1, lambda2 = state.lambda1, state.lambda2
    if "accuracy" in misses:
        # Compression went too far: ease λ2 and give the pruned model back some capacity.
        lambda2 = round(lambda2 * 0.5, 4)
        if knobs.sparsity_weight > 0:
            changes["fine_tune.sparsity_weight"] = round(knobs.sparsity_weight * 0.5, 8)
        new_ratio = round(max(0.0, knobs.prune_ratio - knobs.prune_step), 4)
        if new_ratio != knobs.prune_ratio:
            changes["prune.ratio"] = new_ratio
            reasons.append(f"accuracy drop {-deployed['accuracy_delta_pts']:.2f} pts > {targets.max_accuracy_drop_pts}: prune.ratio {knobs.prune_ratio} -> {new_ratio}")
    elif "size" in misses or "latency" in misses:
        # Accuracy has room: raise compression pressure.
        lambda2 = round(lambda2 * 1.5, 4)
        if knobs.sparsity_weight > 0:
            changes["fine_tune.sparsity_weight"] = round(knobs.sparsity_weight * 1.5, 8)
        new_ratio = round(min(knobs.prune_max, knobs.prune_ratio + knobs.prune_step), 4)
        if new_ratio != knobs.prune_ratio:
            changes["prune.ratio"] = new_ratio
            what = " and ".join(m for m in ("size", "latency") if m in misses)
            reasons.append(f"{what} below target with accuracy within bounds: prune.ratio {knobs.prune_ratio} -> {new_ratio}")
    if "accuracy" in misses or "data" in misses:
        # The data side: augmentation that the grid measured as useless is turned down; otherwise
        # it is aimed at the classes the deployed model gets wrong most.
        if knobs.augment_helped is False and knobs.augment_fraction > 0:
            changes["augment.fraction"] = 0.0
            reasons.append("synonym augmentation did not help in the ablation grid: augment.fraction -> 0")
        if knobs.backtranslate_helped is False and knobs.backtranslate_fraction > 0:
            changes["back_translate.fraction"] = 0.0
            reasons.append("back-translation did not help in the ablation grid: back_translate.fraction -> 0")
        per_class = adaptive_class_fraction(deployed.get("class_accuracy") or {}, knobs.augment_fraction, knobs.augment_step)
        if per_class and knobs.augment_helped is not False:
            changes["augment.class_fraction"] = per_class
            worst = min(deployed["class_accuracy"], key=deployed["class_accuracy"].get)
            reasons.append(f"adaptive augmentation: more rewrites for {worst} (accuracy {deployed['class_accuracy'][worst]:.2f})")
    if "data" in misses:
        # Too many labels bought: raise data pressure, and let augmentation make up for them.
        lambda1 = round(lambda1 * 1.5, 4)
        new_budget = max(knobs.budget_min, int(knobs.selection_budget * (1 - knobs.budget_step)))
        changes["active_select.budget"] = new_budget
        if knobs.augment_helped is not False:
            changes["augment.fraction"] = round(min(1.0, knobs.augment_fraction + knobs.augment_step), 4)
        # Fewer gold labels: synthetic rows may count for more, never more than a gold row.
        for key, weight in (("augment.weight", knobs.augment_weight), ("back_translate.weight", knobs.backtranslate_weight)):
            if weight < 1.0:
                changes[key] = round(min(1.0, weight * 1.5), 4)
        reasons.append(f"labelled fraction {labelled_fraction:.2f} > {targets.max_labelled_fraction}: budget {knobs.selection_budget} -> {new_budget}, more augmentation")
    if not changes:
        return Decision({}, f"targets missed ({', '.join(misses)}) but every knob is at its bound", True, **base)
    base.update(lambda1=lambda1, lambda2=lambda2)
    return Decision(changes, "; ".join(reasons), False, first_stage=first_stage(changes), **base)
