"""The synergy controller's decision: a pure function of measurements, targets and state.

SEC's objective is  min  L_task + λ1·R_data + λ2·R_model.  Here, measured after `evaluate`:
  L_task  = the deployed model's DEV cross-entropy,
  R_data  = labelled pairs used / pairs available (the data bill),
  R_model = deployed model size / teacher size (the model bill).
λ1 is data pressure (smaller selection budget, more augmentation), λ2 compression pressure (higher
pruning ratio, more distillation). Each iteration the controller compares the metrics with the
targets and with the best accepted iteration, moves one or both pressures, and turns that into
params changes; DVC then reruns exactly the stages downstream of the most upstream change.

Only DEV numbers enter (`measured_from_metrics` never looks at a `test` key): the test split
reports, it never chooses. The accuracy target is judged against a `Reference` pinned at the start
of the controller run, not against the current teacher, because the loop's data decisions retrain
the teacher: a relative target could be "met" by making the teacher worse. And an iteration whose
deployed model is worse on dev beyond noise (a paired `Comparison` the controller computes from
per-example predictions) is never accepted, whatever its objective says.

Which iteration is better, in order: one whose dev accuracy fell beyond noise loses; one that
meets all targets beats one that misses any; then the lower objective (by more than `tolerance`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.dag import STAGE_ORDER
from pipeline.targets import Targets, judge

__all__ = [
    "STAGE_ORDER", "Best", "Comparison", "Decision", "Knobs", "Measured", "Reference", "State", "Targets",
    "adaptive_class_fraction", "decide", "first_stage", "measured_from_metrics", "objective", "target_misses",
]

@dataclass(frozen=True)
class Measured:
    """One iteration's measurements of the deployed model: DEV split only."""

    accuracy: float  # deployed model, dev, 0..1
    cross_entropy: float  # deployed model, dev
    size_ratio: float  # teacher size / deployed size (evaluate.json)
    speedup: float  # teacher latency / deployed latency (evaluate_timing.json)
    labelled_fraction: float  # labelled pairs / pairs available
    # teacher / deployed batch-1 p50 latency (evaluate_timing.json); None when not timed.
    speedup_b1: float | None = None
    class_accuracy: Mapping[str, float] = field(default_factory=dict)  # deployed, dev, per class
    # This iteration's teacher on dev. Recorded, and pinned at iteration 0; never a target by
    # itself, since the loop's own data changes move it.
    teacher_accuracy: float | None = None


def measured_from_metrics(evaluate: dict, timing: dict, deployed: str, labelled_fraction: float) -> Measured:
    """The contract's metrics/evaluate.json and metrics/evaluate_timing.json -> Measured.

    Reads `models.<name>.dev`, the model-level size ratio and the timing file's speedup; the
    `test` entries are not looked at.
    """
    model = evaluate["models"][deployed]
    dev = model["dev"]
    teacher = evaluate["models"].get("teacher")
    return Measured(
        accuracy=float(dev["accuracy"]),
        cross_entropy=float(dev["cross_entropy"]),
        size_ratio=float(model["size_ratio"]),
        speedup=float(timing["models"][deployed]["speedup"]),
        speedup_b1=(float(timing["models"][deployed]["speedup_b1_p50"])
                    if "speedup_b1_p50" in timing["models"][deployed] else None),
        labelled_fraction=float(labelled_fraction),
        class_accuracy={str(k): float(v) for k, v in (dev.get("class_accuracy") or {}).items()},
        teacher_accuracy=float(teacher["dev"]["accuracy"]) if teacher else None,
    )


@dataclass(frozen=True)
class Reference:
    """Pinned at iteration 0 of a controller run; nothing the loop does can move it."""

    teacher_accuracy: float  # the teacher's dev accuracy then
    deployed_accuracy: float  # the deployed model's dev accuracy then

    @classmethod
    def pin(cls, measured: Measured) -> Reference:
        if measured.teacher_accuracy is None:
            raise ValueError("evaluate.json has no teacher: the accuracy reference cannot be pinned")
        return cls(teacher_accuracy=measured.teacher_accuracy, deployed_accuracy=measured.accuracy)

    def accuracy_floor(self, targets: Targets) -> float:
        """The lowest deployed dev accuracy (0..1) that meets the accuracy target."""
        return self.teacher_accuracy - targets.max_accuracy_drop_pts / 100


@dataclass(frozen=True)
class Comparison:
    """Paired bootstrap over the dev examples of the deployed model's correctness (0/1):
    this iteration minus the best accepted one (accuracy as a fraction, 0..1)."""

    diff: float
    low: float
    high: float
    verdict: str  # pipeline.stats.verdict: "helped" | "hurt" | "not shown"
    against: str | None = None  # the best accepted iteration's experiment
    rows: int = 0


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
class Best:
    """The best accepted iteration so far: what its objective is recomputed from (under the
    current λs, so iterations are compared on one scale), and whether it met every target."""

    cross_entropy: float
    labelled_fraction: float
    size_ratio: float
    met_targets: bool

    @classmethod
    def of(cls, measured: Measured, met_targets: bool) -> Best:
        return cls(measured.cross_entropy, measured.labelled_fraction, measured.size_ratio, met_targets)


@dataclass(frozen=True)
class State:
    iteration: int = 0
    max_iterations: int = 3
    lambda1: float = 1.0
    lambda2: float = 1.0
    best: Best | None = None
    tolerance: float = 1e-3


@dataclass(frozen=True)
class Decision:
    changes: dict[str, object]
    reason: str
    stop: bool
    objective: float
    first_stage: str | None = None
    improved: bool = True  # accepted: better than the best accepted iteration (or the first one)
    lambda1: float = 1.0
    lambda2: float = 1.0
    misses: list[str] = field(default_factory=list)
    accuracy_drop_pts: float = 0.0  # pinned teacher dev accuracy - deployed dev accuracy, points


def objective(cross_entropy: float, labelled_fraction: float, size_ratio: float, lambda1: float, lambda2: float) -> float:
    """L_task + λ1·R_data + λ2·R_model, with R_model = 1 / size_ratio (deployed size / teacher size)."""
    return cross_entropy + lambda1 * labelled_fraction + lambda2 / size_ratio


def accuracy_drop_pts(measured: Measured, reference: Reference) -> float:
    # Rounded so that float noise (0.60 - 0.59 = 0.01000...02) cannot turn a met target into a miss.
    return round((reference.teacher_accuracy - measured.accuracy) * 100, 6)


def target_misses(measured: Measured, targets: Targets, reference: Reference) -> list[str]:
    """The targets `measured` misses (pipeline.targets.judge), in judge's order."""
    verdicts = judge(targets, accuracy_drop_pts=accuracy_drop_pts(measured, reference), size_ratio=measured.size_ratio,
                     speedup=measured.speedup, speedup_b1=measured.speedup_b1,
                     labelled_fraction=measured.labelled_fraction)
    return [name for name, met in verdicts.items() if met is False]


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
    """The most upstream stage named by a changed params section (pipeline order: dvc.yaml's)."""
    sections = {key.split(".", 1)[0] for key in changes}
    for stage in STAGE_ORDER:
        if stage in sections:
            return stage
    return None


def decide(measured: Measured, knobs: Knobs, targets: Targets, state: State, reference: Reference,
           comparison: Comparison | None = None) -> Decision:
    """What to change next, and why; `stop` ends the loop.

    measured: this iteration's dev measurements. reference: pinned at iteration 0 (for iteration
    0 itself, `Reference.pin(measured)`). comparison: this iteration vs the best accepted one on
    the deployed model's dev predictions; None when there is no accepted iteration yet.
    `improved` says whether this iteration is accepted as the new best (see the module docstring
    for the order). Stops when targets are met, when the iteration is not accepted, or at
    max_iterations: the loop is bounded whatever the metrics do.
    """
    j = objective(measured.cross_entropy, measured.labelled_fraction, measured.size_ratio, state.lambda1, state.lambda2)
    best = state.best
    best_j = objective(best.cross_entropy, best.labelled_fraction, best.size_ratio, state.lambda1, state.lambda2) if best else None
    misses = target_misses(measured, targets, reference)
    met = not misses
    hurt = comparison is not None and comparison.verdict == "hurt"
    if best is None:
        improved = not hurt
    elif hurt:
        improved = False
    elif met != best.met_targets:
        improved = met  # met targets win over any objective
    else:
        improved = j <= best_j - state.tolerance
    drop = accuracy_drop_pts(measured, reference)
    base = {"objective": round(j, 4), "misses": misses, "lambda1": state.lambda1, "lambda2": state.lambda2,
            "improved": improved, "accuracy_drop_pts": drop}

    if hurt:
        assert comparison is not None
        return Decision({}, (
            f"rejected: deployed dev accuracy fell beyond noise against {comparison.against or 'the best accepted iteration'} "
            f"({comparison.diff * 100:+.2f} pts, 95% CI [{comparison.low * 100:+.2f}, {comparison.high * 100:+.2f}]); stopping"
        ), True, **base)
    if met:
        if improved:
            return Decision({}, "all targets met", True, **base)
        return Decision({}, (
            f"all targets met, but objective {j:.4f} did not improve on the best accepted iteration's {best_j:.4f}, "
            "which met them too; stopping"
        ), True, **base)
    if not improved:
        if best is not None and best.met_targets:
            why = f"the best accepted iteration met every target and this one misses {', '.join(misses)}"
        else:
            why = f"objective {j:.4f} did not improve on the best run's {best_j:.4f}"
        return Decision({}, f"{why}; stopping", True, **base)
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
            reasons.append(
                f"dev accuracy {measured.accuracy * 100:.2f} is {drop:.2f} pts below the pinned teacher's "
                f"{reference.teacher_accuracy * 100:.2f} (> {targets.max_accuracy_drop_pts}): "
                f"prune.ratio {knobs.prune_ratio} -> {new_ratio}")
    elif "size" in misses or "latency" in misses or "latency_b1" in misses:
        # Accuracy has room: raise compression pressure.
        lambda2 = round(lambda2 * 1.5, 4)
        if knobs.sparsity_weight > 0:
            changes["fine_tune.sparsity_weight"] = round(knobs.sparsity_weight * 1.5, 8)
        new_ratio = round(min(knobs.prune_max, knobs.prune_ratio + knobs.prune_step), 4)
        if new_ratio != knobs.prune_ratio:
            changes["prune.ratio"] = new_ratio
            what = " and ".join(m for m in ("size", "latency", "latency_b1") if m in misses)
            reasons.append(f"{what} below target with accuracy within bounds: prune.ratio {knobs.prune_ratio} -> {new_ratio}")
    if "accuracy" in misses or "data" in misses:
        # The data side: augmentation that the grid measured as useless is turned down; otherwise
        # it is aimed at the classes the deployed model gets wrong most (on dev).
        if knobs.augment_helped is False and knobs.augment_fraction > 0:
            changes["augment.fraction"] = 0.0
            reasons.append("synonym augmentation did not help in the ablation grid: augment.fraction -> 0")
        if knobs.backtranslate_helped is False and knobs.backtranslate_fraction > 0:
            changes["back_translate.fraction"] = 0.0
            reasons.append("back-translation did not help in the ablation grid: back_translate.fraction -> 0")
        per_class = adaptive_class_fraction(dict(measured.class_accuracy), knobs.augment_fraction, knobs.augment_step)
        if per_class and knobs.augment_helped is not False:
            changes["augment.class_fraction"] = per_class
            worst = min(measured.class_accuracy, key=measured.class_accuracy.get)
            reasons.append(f"adaptive augmentation: more rewrites for {worst} (dev accuracy {measured.class_accuracy[worst]:.2f})")
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
        reasons.append(f"labelled fraction {measured.labelled_fraction:.2f} > {targets.max_labelled_fraction}: "
                       f"budget {knobs.selection_budget} -> {new_budget}, more augmentation")
    if not changes:
        return Decision({}, f"targets missed ({', '.join(misses)}) but every knob is at its bound", True, **base)
    base.update(lambda1=lambda1, lambda2=lambda2)
    return Decision(changes, "; ".join(reasons), False, first_stage=first_stage(changes), **base)
