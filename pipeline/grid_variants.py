"""The ablation grid's variants: what each of its DVC experiments sets, for each profile.

GRID is the cpu profile's grid; `grid_for(profile)` builds any profile's:
  all-labels              every pool pair labelled, no augmentation: the teacher baseline
  random, active          random / entropy selection at the profile's budget, no augmentation
  active+synonym          + synonym augmentation (the profile's fraction), no back-translation
  active+backtranslation  + back-translation, no synonym augmentation
  active+pseudo           + pseudo-labelled pool pairs, no augmentation
  sec                     no overrides: the default params (active + synonym + back-translation
                          + pruning + distillation + quantization). The compression ablation rows
                          (+pruning, +distillation, +quantization) are its evaluate.json models.
  random@N, active@N      the label-fraction curve (no augmentation); a budget equal to the
                          profile's is the `random` / `active` row itself and is not queued twice.
  active@N+steps          the largest active budget trained for the all-labels teacher's steps.

pipeline.grid runs them; pipeline.grid_tables turns their `dvc exp show` records into tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from stages._profiles import PROFILES

EXP_PREFIX = "grid-"
TABLES = ("main", "data", "compression", "curve")
# Profile-dependent sizes. curve_budgets: pool pairs labelled for the label-fraction curve. cpu has
# 1,000 seed + 8,830 pool pairs, so 2000 / 4000 / 5880 give 30.5 / 50.9 / 70.0 % of the 9,830
# labels; gpu assumes the offline pairs too (2,000 seed + 7,830 pool: 30.5 / 50.9 / 71.2 %); tiny has
# 24 seed + 36 pool pairs (6 / 12 -> 50 / 60 %). pseudo_size: pool pairs pseudo-labelled in
# `active+pseudo`, at most the pool left after the profile's budget. matched_steps: the optimizer
# steps of the all-labels teacher (cpu: 9,830 rows / batch 16 = 615 a epoch, 2 epochs), given to the
# largest active budget in `active@N+steps` so fewer labels do not also mean fewer steps (None: no
# such row).
PROFILE_SETTINGS: dict[str, dict] = {
    "cpu": {"pseudo_size": 2000, "curve_budgets": (2000, 4000, 5880), "matched_steps": 1230},
    "gpu": {"pseudo_size": 1500, "curve_budgets": (1000, 3000, 5000), "matched_steps": None},
    "tiny": {"pseudo_size": 12, "curve_budgets": (6, 12), "matched_steps": None},
}

# Data-only variants (Tables 2 and 4) need the teacher alone: they reproduce up to this stage.
TEACHER_TARGET = "evaluate_teacher"
NO_AUGMENTATION = {"augment.fraction": 0, "back_translate.fraction": 0}


class GridError(RuntimeError):
    """A grid command failed; the message names the experiment and what to look at."""


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: dict[str, object] = field(default_factory=dict)
    tables: tuple[str, ...] = ()
    parent: str | None = None  # the row a data component is judged against in Table 2

    @property
    def exp_name(self) -> str:
        return EXP_PREFIX + slug(self.name)

    @property
    def teacher_only(self) -> bool:
        """Needs only its teacher (Tables 1, 2, 4 read the teacher's quality; Table 1's size and speed
        ratios come from the `sec` run, which times its teacher of the same architecture in one
        process with the deployed model): the compression stages can be skipped."""
        return bool(self.tables) and "compression" not in self.tables

    @property
    def strategy(self) -> str:
        return str(self.overrides.get("active_select.strategy", "entropy"))


def slug(name: str) -> str:
    """A git-ref-safe experiment suffix: `active+synonym` -> `active-synonym`, `random@2000` -> `random-b2000`."""
    text = name.lower().replace("@", "-b").replace("+", "-")
    text = re.sub(r"[^a-z0-9-]+", "-", text)
    return re.sub(r"-{2,}", "-", text).strip("-")


def grid_for(
    profile: str = "cpu", *, budgets: Sequence[int] | None = None, default_budget: int | None = None
) -> list[Variant]:
    """The ordered grid for `profile`; `default_budget` is the budget random/active run at (None: the profile's)."""
    if profile not in PROFILE_SETTINGS:
        raise GridError(f"unknown profile {profile!r}; expected one of {sorted(PROFILE_SETTINGS)}")
    settings = PROFILE_SETTINGS[profile]
    if default_budget is None:
        default_budget = PROFILES[profile]["active_select"]["budget"]
    at_budget = {"active_select.budget": None}  # null: the profile's budget (or params.yaml's value)
    variants = [
        Variant(
            "all-labels",
            "every pool pair labelled, no augmentation (the teacher baseline)",
            {"active_select.strategy": "all", **NO_AUGMENTATION},
            ("main", "data", "curve"),
        ),
        Variant(
            "random",
            "random selection at the profile's budget, no augmentation",
            {"active_select.strategy": "random", **at_budget, **NO_AUGMENTATION},
            ("data", "curve"),
        ),
        Variant(
            "active",
            "entropy (active) selection at the profile's budget, no augmentation",
            {"active_select.strategy": "entropy", **at_budget, **NO_AUGMENTATION},
            ("data", "curve"),
            parent="random",
        ),
        Variant(
            "active+synonym",
            "active + synonym augmentation (the profile's fraction)",
            {"active_select.strategy": "entropy", "augment.fraction": None, "back_translate.fraction": 0},
            ("data",),
            parent="active",
        ),
        Variant(
            "active+backtranslation",
            "active + back-translation (the profile's fraction)",
            {"active_select.strategy": "entropy", "augment.fraction": 0, "back_translate.fraction": None},
            ("data",),
            parent="active",
        ),
        Variant(
            "active+pseudo",
            f"active + {settings['pseudo_size']} pseudo-labelled pool pairs, no augmentation",
            {
                "active_select.strategy": "entropy",
                **NO_AUGMENTATION,
                "active_select.pseudo_size": settings["pseudo_size"],
            },
            ("data",),
            parent="active",
        ),
        Variant(
            "sec",
            "default params: active + synonym + back-translation, pruned, distilled, quantized",
            {},
            ("main", "data", "compression"),
            parent="active+synonym",
        ),
    ]
    for strategy, label in (("random", "random"), ("entropy", "active")):
        for budget in budgets if budgets is not None else settings["curve_budgets"]:
            if budget == default_budget:
                continue  # the `random` / `active` row is this point
            variants.append(
                Variant(
                    f"{label}@{budget}",
                    f"{label} selection of {budget} pool pairs, no augmentation",
                    {"active_select.strategy": strategy, "active_select.budget": int(budget), **NO_AUGMENTATION},
                    ("curve",),
                )
            )
    if settings["matched_steps"]:
        budget = max(budgets if budgets is not None else settings["curve_budgets"])
        variants.append(
            Variant(
                f"active@{budget}+steps",
                f"active selection of {budget} pool pairs trained for the all-labels teacher's "
                f"{settings['matched_steps']} optimizer steps, no augmentation",
                {
                    "active_select.strategy": "entropy", "active_select.budget": int(budget), **NO_AUGMENTATION,
                    "fine_tune.max_steps": settings["matched_steps"],
                },
                ("data",),
            )
        )
    return variants


GRID: list[Variant] = grid_for("cpu")


def select(variants: Sequence[Variant], only: Iterable[str] | None) -> list[Variant]:
    """The variants named in `only` (name, experiment name, slug or a table: main|data|compression|curve)."""
    if not only:
        return list(variants)
    wanted = set()
    for item in only:
        key = item.strip()
        matches = [v for v in variants if key in (v.name, v.exp_name, slug(v.name)) or key in v.tables]
        if not matches:
            known = ", ".join(v.name for v in variants)
            raise GridError(f"unknown grid variant {key!r}; known: {known} (or a table: {', '.join(TABLES)})")
        wanted.update(v.name for v in matches)
    return [v for v in variants if v.name in wanted]

