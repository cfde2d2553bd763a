"""The ablation grid's variants: what each of its DVC experiments sets, for each profile.

GRID is the cpu profile's grid (its rows); `grid_for(profile)` builds any profile's:
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

Seeds are an axis: a repeat of a row differs from it only in the top-level `seed`. The rows that
carry a claim (`Variant.claim`: all-labels, random, active, random@N and active@N at the largest
curve budget, i.e. 70 % of the labels, and sec) run at `grid.seeds` seeds (params.yaml, default 3):
the params.yaml seed, seed+1, seed+2, ...; every other row runs at the params.yaml seed only.
`seeded(rows, base_seed, seeds)` expands rows into runs, one experiment each.

Experiment names: `grid-<slug>-s<seed>` for every run, the base seed included (`grid-active-s42`,
`grid-active-s43`, `grid-random-b5181-s44`). One scheme with no special case: the seed a run used
is always in its name, and experiments from before seeds were an axis (`grid-active`, on a
pipeline without the dev split) never count as a repeat.

pipeline.grid runs them; pipeline.grid_tables turns their `dvc exp show` records into tables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, ConfigDict, Field

from stages._profiles import PROFILES

EXP_PREFIX = "grid-"
TABLES = ("main", "data", "compression", "curve")
# The distinct training pairs of the offline files the cpu and gpu profiles pool: train.parquet
# (9,830) and train_20k.parquet (19,998), after prepare drops repeats and test pairs (prepare.json's
# `train_pairs_available`; tests/test_grid.py checks it against the committed metrics). A profile
# with `pool_size: 0` pools every pair left after dev and seed, a count only the data knows.
OFFLINE_PAIRS = 29_828
# Per profile, what the grid chooses rather than derives. curve_fractions: the label fractions of the
# label-fraction curve (labelled pairs over labelable ones); tiny's seed set alone is 40 % of its
# pairs, so its curve starts at 50 %. The largest is the claim point (70 %) whose random@N /
# active@N rows are claims. pseudo_size: pool pairs pseudo-labelled in `active+pseudo`, at most the
# pool left after the profile's budget. matched_steps: whether the grid has `active@N+steps`, the
# claim budget trained for the all-labels teacher's optimizer steps (matched_steps(profile)).
# generated_labels / generated_transfer: the generate stage's counts in the rows that measure its
# two uses (0: no such row; tiny's grid runs in the tests, which have no language model to start).
PROFILE_SETTINGS: dict[str, dict] = {
    "cpu": {"pseudo_size": 2000, "curve_fractions": (0.30, 0.51, 0.70), "matched_steps": True,
            "generated_labels": 150, "generated_transfer": 300},
    "gpu": {"pseudo_size": 1500, "curve_fractions": (0.30, 0.51, 0.70), "matched_steps": False,
            "generated_labels": 300, "generated_transfer": 1000},
    "tiny": {"pseudo_size": 12, "curve_fractions": (0.50, 0.70), "matched_steps": False,
             "generated_labels": 0, "generated_transfer": 0},
}


def labelable_pairs(profile: str) -> int:
    """Pairs a run of `profile` could label, seed + pool (the dev split comes out before either is
    drawn), from stages._profiles.PROFILES; a pool of 0 (all) counts OFFLINE_PAIRS."""
    data = PROFILES[profile]["data"]
    if data["pool_size"]:
        return data["seed_size"] + data["pool_size"]
    return OFFLINE_PAIRS - data["dev_size"]


def curve_budgets(profile: str) -> tuple[int, ...]:
    """Pool pairs to label so that seed + budget is each of the profile's curve fractions of the
    labelable pairs (rounded to a pair); a fraction the seed set alone reaches has no point."""
    labelable, seed = labelable_pairs(profile), PROFILES[profile]["data"]["seed_size"]
    budgets = (round(f * labelable) - seed for f in PROFILE_SETTINGS[profile]["curve_fractions"])
    return tuple(b for b in budgets if b > 0)


def matched_steps(profile: str) -> int | None:
    """The all-labels teacher's optimizer steps (every labelable pair, no augmentation: the Trainer's
    ceil(epochs * ceil(rows / batch))), or None when the profile's grid has no `+steps` row."""
    if not PROFILE_SETTINGS[profile]["matched_steps"]:
        return None
    fine_tune = PROFILES[profile]["fine_tune"]
    return math.ceil(fine_tune["epochs"] * math.ceil(labelable_pairs(profile) / fine_tune["batch_size"]))


def scored_for(budget: int, profile: str) -> dict[str, object]:
    """The override an entropy row at `budget` needs: every pool pair scored (candidates 0) when the
    profile scores fewer candidates than it buys (active_select refuses such a budget)."""
    candidates = PROFILES[profile]["active_select"]["candidates"]
    return {"active_select.candidates": 0} if 0 < candidates < budget else {}


DEFAULT_SEEDS = 3


class GridParams(BaseModel):
    """params.yaml's `grid:` section (no DVC stage reads it: changing it reruns nothing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seeds: int = Field(default=DEFAULT_SEEDS, ge=1, le=20)  # repeats of the claim rows


# Data-only variants (Tables 2 and 4) need the teacher alone: they reproduce up to this stage.
TEACHER_TARGET = "evaluate_teacher"
# "No augmentation" means none anywhere: neither of the teacher's training data (augment,
# back_translate) nor of the distillation transfer set (augment_pool, which only a --full run
# reaches). The +synonym / +back-translation rows change the teacher's data alone, so they also keep
# augment_pool off: against `active` they differ in one thing. Only `sec` (the defaults) has it on.
NO_POOL_AUGMENTATION = {"augment_pool.fraction": 0}
NO_AUGMENTATION = {"augment.fraction": 0, "back_translate.fraction": 0, **NO_POOL_AUGMENTATION}


class GridError(RuntimeError):
    """A grid command failed; the message names the experiment and what to look at."""


@dataclass(frozen=True)
class Variant:
    """A grid row; with `seed` set, one run of it (one DVC experiment)."""

    name: str
    description: str
    overrides: dict[str, object] = field(default_factory=dict)
    tables: tuple[str, ...] = ()
    parent: str | None = None  # the row a data component is judged against in Table 2
    claim: bool = False  # carries a claim: runs at every seed of `grid.seeds`
    seed: int | None = None  # None: the row; an int: its run at that seed

    @property
    def row_name(self) -> str:
        """The row's experiment stem, `grid-<slug>`: each run appends `-s<seed>`."""
        return EXP_PREFIX + slug(self.name)

    @property
    def exp_name(self) -> str:
        return self.row_name if self.seed is None else f"{self.row_name}-s{self.seed}"

    def at_seed(self, seed: int) -> Variant:
        return replace(self, seed=int(seed))

    @property
    def teacher_only(self) -> bool:
        """Needs only its teacher (Tables 1, 2, 4 read the teacher's quality; Table 1's size and speed
        ratios come from the `sec` run, which times its teacher of the same architecture in one
        process with the deployed model): the compression stages can be skipped."""
        return bool(self.tables) and "compression" not in self.tables

    @property
    def strategy(self) -> str:
        return str(self.overrides.get("active_select.strategy", "entropy"))


_SEED_SUFFIX = re.compile(r"^(?P<row>.+)-s(?P<seed>\d+)$")


def split_exp_name(name: str) -> tuple[str, int] | None:
    """`grid-active-s43` -> ("grid-active", 43); None for a name without a seed suffix."""
    match = _SEED_SUFFIX.match(name or "")
    return (match["row"], int(match["seed"])) if match else None


def seeded(rows: Sequence[Variant], base_seed: int, seeds: int = DEFAULT_SEEDS) -> list[Variant]:
    """Every run of `rows`, seed-major: all rows at the base seed first, then the claim rows' repeats,
    so a queue stopped half-way has left a complete one-seed grid rather than three seeds of a few rows."""
    if seeds < 1:
        raise GridError(f"seeds must be at least 1, got {seeds}")
    out = []
    for i in range(seeds):
        out += [row.at_seed(base_seed + i) for row in rows if i == 0 or row.claim]
    return out


def slug(name: str) -> str:
    """A git-ref-safe experiment suffix: `active+synonym` -> `active-synonym`, `random@2000` -> `random-b2000`."""
    text = name.lower().replace("@", "-b").replace("+", "-")
    text = re.sub(r"[^a-z0-9-]+", "-", text)
    return re.sub(r"-{2,}", "-", text).strip("-")


def grid_for(
    profile: str = "cpu", *, budgets: Sequence[int] | None = None, default_budget: int | None = None
) -> list[Variant]:
    """The ordered rows for `profile`; `default_budget` is the budget random/active run at (None: the profile's).

    The largest curve budget is the claim point (70 % of the labels with the profile's budgets).
    """
    if profile not in PROFILE_SETTINGS:
        raise GridError(f"unknown profile {profile!r}; expected one of {sorted(PROFILE_SETTINGS)}")
    settings = PROFILE_SETTINGS[profile]
    if default_budget is None:
        default_budget = PROFILES[profile]["active_select"]["budget"]
    points = [int(b) for b in (budgets if budgets is not None else curve_budgets(profile))]
    claim_budget = max(points) if points else None
    at_budget = {"active_select.budget": None}  # null: the profile's budget (or params.yaml's value)
    variants = [
        Variant(
            "all-labels",
            "every pool pair labelled, no augmentation (the teacher baseline)",
            {"active_select.strategy": "all", **NO_AUGMENTATION},
            ("main", "data", "curve"),
            claim=True,
        ),
        Variant(
            "random",
            "random selection at the profile's budget, no augmentation",
            {"active_select.strategy": "random", **at_budget, **NO_AUGMENTATION},
            ("data", "curve"),
            claim=True,
        ),
        Variant(
            "active",
            "entropy (active) selection at the profile's budget, no augmentation",
            {"active_select.strategy": "entropy", **at_budget, **NO_AUGMENTATION},
            ("data", "curve"),
            parent="random",
            claim=True,
        ),
        Variant(
            "active+synonym",
            "active + synonym augmentation (the profile's fraction)",
            {"active_select.strategy": "entropy", "augment.fraction": None, "back_translate.fraction": 0, **NO_POOL_AUGMENTATION},
            ("data",),
            parent="active",
        ),
        Variant(
            "active+backtranslation",
            "active + back-translation (the profile's fraction)",
            {"active_select.strategy": "entropy", "augment.fraction": 0, "back_translate.fraction": None, **NO_POOL_AUGMENTATION},
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
            claim=True,
        ),
    ]
    # The generate stage's two uses (docs/generate.md), each against the row it adds to, over seeds.
    if settings["generated_labels"]:
        variants.append(Variant(
            "active+generated",
            f"active + label-conditioned pairs the language model wrote for {settings['generated_labels']} labelled "
            "premises, kept where the acquisition model agrees (generate use b), no augmentation",
            {"active_select.strategy": "entropy", **NO_AUGMENTATION, "active_select.keep_model": True,
             "generate.label_count": settings["generated_labels"]},
            ("data",),
            parent="active",
            claim=True,
        ))
    if settings["generated_transfer"]:
        variants.append(Variant(
            "sec+generated-transfer",
            f"default params + {settings['generated_transfer']} transfer pairs the language model wrote, soft labels "
            "from the teacher (generate use a): judged on the deployed model against sec's",
            {"generate.transfer_count": settings["generated_transfer"]},
            (),
            parent="sec",
            claim=True,
        ))
    for strategy, label in (("random", "random"), ("entropy", "active")):
        for budget in points:
            if budget == default_budget:
                continue  # the `random` / `active` row is this point
            scored = scored_for(budget, profile) if strategy == "entropy" else {}
            variants.append(
                Variant(
                    f"{label}@{budget}",
                    f"{label} selection of {budget} pool pairs, no augmentation",
                    {"active_select.strategy": strategy, "active_select.budget": budget, **scored, **NO_AUGMENTATION},
                    ("curve",),
                    claim=budget == claim_budget,
                )
            )
    steps = matched_steps(profile)
    if steps and claim_budget is not None:
        same_budget = f"active@{claim_budget}" if claim_budget != default_budget else "active"
        variants.append(
            Variant(
                f"active@{claim_budget}+steps",
                f"active selection of {claim_budget} pool pairs trained for the all-labels teacher's "
                f"{steps} optimizer steps, no augmentation",
                {
                    "active_select.strategy": "entropy",
                    "active_select.budget": claim_budget,
                    **scored_for(claim_budget, profile),
                    **NO_AUGMENTATION,
                    "fine_tune.max_steps": steps,
                },
                ("data",),
                parent=same_budget,  # the same labels at the usual steps: what the extra steps bought
            )
        )
    return variants


GRID: list[Variant] = grid_for("cpu")


@dataclass(frozen=True)
class Claim:
    """A paired comparison the grid reports: `variant` against `baseline` (rows of the grid), each
    judged on the named model's predictions (teacher: evaluate_teacher's, else evaluate's)."""

    name: str
    baseline: str
    variant: str
    baseline_model: str = "teacher"
    variant_model: str = "teacher"


def claims_for(rows: Sequence[Variant]) -> list[Claim]:
    """The claims the grid's rows can test: active vs random at equal budget (the profile's, and the
    70 % point), 70 % of the labels vs all labels, the deployed model vs the all-labels teacher."""
    names = {v.name for v in rows}
    top = {v.strategy: v.name for v in rows if v.claim and "@" in v.name and "curve" in v.tables}
    random_70, active_70 = top.get("random", "random"), top.get("entropy", "active")
    out = [Claim("active vs random at the profile's budget", "random", "active")]
    if (random_70, active_70) != ("random", "active"):
        out.append(Claim(f"active vs random at equal budget ({active_70} vs {random_70})", random_70, active_70))
    out += [
        Claim(f"{active_70} (fewer labels) vs all labels", "all-labels", active_70),
        Claim("SEC deployed (quantized) vs the all-labels teacher", "all-labels", "sec", variant_model="quantized"),
        Claim("generated label-conditioned pairs (use b): active+generated vs active", "active", "active+generated"),
        Claim("generated transfer pairs (use a): deployed model with them vs sec's", "sec", "sec+generated-transfer",
              baseline_model="quantized", variant_model="quantized"),
    ]
    return [c for c in out if c.baseline in names and c.variant in names]


def select(variants: Sequence[Variant], only: Iterable[str] | None) -> list[Variant]:
    """The variants (rows or runs) named in `only`: a row name, its slug or experiment stem (every
    seed of it), a run's experiment name (that seed only), or a table: main|data|compression|curve."""
    if not only:
        return list(variants)
    wanted = set()
    for item in only:
        key = item.strip()
        matches = [
            v for v in variants
            if key in (v.name, v.row_name, v.exp_name, slug(v.name)) or key in v.tables
        ]  # fmt: skip
        if not matches:
            known = ", ".join(dict.fromkeys(v.name for v in variants))
            raise GridError(f"unknown grid variant {key!r}; known: {known} (or a table: {', '.join(TABLES)})")
        wanted.update(v.exp_name for v in matches)
    return [v for v in variants if v.exp_name in wanted]
