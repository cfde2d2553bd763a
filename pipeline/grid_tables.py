"""The ablation grid's paper-style tables, built from `dvc exp show --json` and the runs' predictions.

`collect` flattens DVC's JSON into one record per baseline and experiment; `tables` builds Table 1
(main result + published anchors), Table 2 (data ablation), Table 3 (compression ablation),
Table 4 (label-fraction curve), the claims table and the stage-time table; `write_all` writes them
as markdown + CSV, with verdicts.json (what the controller reads), verdict_details.json, the
accuracy-vs-label-fraction rows and the PNGs. Nothing here runs DVC experiments, so
`python -m pipeline.grid tables` rewrites the tables at any time.

Seeds: a row's runs are its experiments `grid-<slug>-s<seed>` (pipeline.grid_variants), each
counted at the `seed` its params record; every accuracy is the mean over the row's seeds with a
95 % Student-t interval (pipeline.stats.mean_ci); a row with one seed shows its single value and
says n=1. Quality figures are TEST figures (the
test split reports); the verdicts and the claims' decisions come from the paired DEV comparison
(pipeline.grid_paired), never from test numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from pipeline.dag import STAGE_ORDER, upstream
from pipeline.grid_paired import Loader, compare_runs
from pipeline.grid_variants import (
    GRID,
    PROFILE_SETTINGS,
    TEACHER_TARGET,
    Variant,
    claims_for,
    grid_for,
    split_exp_name,
)
from pipeline.stats import mean_ci
from stages._io import write_atomic

TABLE_FILES = {
    "main": "table1_main",
    "data": "table2_data",
    "compression": "table3_compression",
    "curve": "table4_label_fraction",
    "claims": "claims",
    "compute": "stage_time",
}
MARKDOWN_ORDER = ("main", "data", "claims", "compression", "curve", "compute")
FRACTION_FILE = "accuracy_vs_label_fraction.json"
VERDICTS_FILE = "verdicts.json"
VERDICT_DETAILS_FILE = "verdict_details.json"
NOT_RUN = "not run"
# Stages whose `seconds` make up training time: those the teacher's / the deployed model's training
# needs, from dvc.yaml (prepare records no seconds; evaluate is not training).
TEACHER_STAGES = upstream("fine_tune")
DEPLOY_STAGES = upstream("quantize")
# Stages whose `seconds` a run's stage time sums: a teacher-only run stops at evaluate_teacher (its
# prune/distill/... metrics are the baseline's, carried along, so they are not its time); a full run
# runs them all (evaluate_timing: evaluate's second metrics file).
TEACHER_RUN_STAGES = upstream(TEACHER_TARGET)
FULL_RUN_STAGES = (*STAGE_ORDER, "evaluate_timing")
COMPRESSION_ROWS = (
    ("teacher", "teacher"),
    ("+pruning", "pruned"),
    ("+distillation", "distilled"),
    ("+quantization", "quantized"),
)


# --------------------------------------------------------------------------------------------
# Collecting `dvc exp show --json`.


def _flatten(value: object, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(sub, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def _record(rev_entry: dict, *, name: str, baseline: str, is_baseline: bool, state: str) -> dict:
    data = rev_entry.get("data") or {}
    params: dict = {}
    for path, content in (data.get("params") or {}).items():
        if isinstance(content, dict) and "data" in content:
            _flatten(content["data"], "" if path == "params.yaml" else f"{path}:", params)
    metrics: dict = {}
    for path, content in (data.get("metrics") or {}).items():
        if isinstance(content, dict) and "data" in content:
            _flatten(content["data"], Path(path).stem, metrics)
    error = rev_entry.get("error")
    return {
        "name": name,
        "rev": rev_entry.get("rev"),
        "baseline": baseline,
        "is_baseline": is_baseline,
        "state": state,
        "timestamp": data.get("timestamp"),
        "error": error.get("msg") if isinstance(error, dict) else error,
        "params": params,
        "metrics": metrics,
    }


def collect(exp_show_json: str | bytes | list) -> list[dict]:
    """`dvc exp show --json` (text or parsed) -> one flat record per baseline and experiment.

    DVC 3.x's format: a list of baselines (the first is "workspace", skipped), each
    {rev, name, data: {timestamp, params: {file: {data}}, metrics: {file: {data | error}}},
    experiments: [{name, executor: {state, local: {log, returncode, ...}} | null, revs: [{rev, name,
    error, data}]}]}. A record is {name, rev, baseline, is_baseline, state (baseline | queued |
    running | success | failed), timestamp, error, params: {dotted key: value},
    metrics: {"<file stem>.<dotted key>": value}}, e.g. metrics["evaluate.models.teacher.test.accuracy"].
    """
    data = json.loads(exp_show_json) if isinstance(exp_show_json, (str, bytes)) else exp_show_json
    records = []
    for entry in data or []:
        if entry.get("rev") == "workspace":
            continue
        baseline = entry.get("rev")
        records.append(
            _record(
                entry,
                name=entry.get("name") or str(baseline)[:7],
                baseline=baseline,
                is_baseline=True,
                state="baseline",
            )
        )
        for exp in entry.get("experiments") or []:
            revs = exp.get("revs") or []
            if not revs:
                continue
            head = revs[0]
            executor = exp.get("executor") or {}
            state = str(executor.get("state") or "").lower()
            if head.get("error"):
                state = "failed"
            elif not state:
                state = "success"  # finished long ago: the executor info is gone
            name = exp.get("name") or head.get("name") or str(head.get("rev"))[:7]
            records.append(_record(head, name=name, baseline=baseline, is_baseline=False, state=state))
    return records


# --------------------------------------------------------------------------------------------
# Tables.

PUBLISHED = [
    # Reference points from the literature: never measured here, never mixed into measured rows.
    {
        "system": "SEC paper (MNLI): BERT-base teacher",
        "size_mb": 420.0,
        "latency_ms_b32": 150.0,
        "note": "SEC paper: 420 MB, 150 ms per batch",
    },
    {
        "system": "SEC paper (MNLI): SEC model",
        "size_mb": 136.0,
        "latency_ms_b32": 80.0,
        "size_ratio_x": round(420 / 136, 2),
        "speedup_x": round(150 / 80, 2),
        "accuracy_delta_pts": 1.7,
        "data_saved_pct": 30.0,
        "note": "SEC paper: 420 -> 136 MB, 150 -> 80 ms per batch, +1.7 accuracy points with 30 % less labelled data",
    },
    {
        "system": "TinyBERT-4",
        "size_ratio_x": 7.5,
        "speedup_x": 9.4,
        "accuracy_delta_pts": -2.0,
        "note": "7.5x smaller, 9.4x faster than BERT-base, about -2 points on MNLI",
    },
    {
        "system": "oBERT",
        "speedup_x": 10.0,
        "note": "10x CPU speed-up at under 2 points accuracy loss (a bound, so no delta is given)",
    },
    {
        "system": "NNI pruning (BERT-base, MNLI)",
        "speedup_x": 2.87,
        "accuracy_delta_pts": -0.71,
        "note": "NNI pruning tutorial: movement + Taylor pruning, 85.1M -> 24.1M encoder params, x2.87 (A100, batch 128)",
    },
]


CI = ("_low", "_high")  # a column X with X_low and X_high is a mean (or a difference) with its 95 % CI


def _with_ci(*columns: str) -> list[str]:
    return [c for col in columns for c in (col, col + CI[0], col + CI[1])]


MAIN_COLUMNS = [
    "source", "system", "experiment", "status", "seeds", "labelled_examples", "label_fraction_pct",
    "train_minutes", "size_mb", "latency_ms_b32", *_with_ci("test_accuracy_pct"), "test_macro_f1_pct",
    "test_perplexity", "size_ratio_x", *_with_ci("speedup_x"), "accuracy_delta_pts", "data_saved_pct", "note",
]  # fmt: skip
DATA_COLUMNS = [
    "variant", "experiment", "status", "seeds", "description", "labelled_examples", "label_fraction_pct",
    "pseudo_rows", "train_rows", "fine_tune_minutes", "dev_accuracy_pct", *_with_ci("test_accuracy_pct"),
    "test_macro_f1_pct", "test_perplexity", "accuracy_delta_pts", "parent", "paired_seeds",
    *_with_ci("dev_delta_vs_parent_pts"), "p_mcnemar", "helped",
]  # fmt: skip
COMPRESSION_COLUMNS = [
    "step", "model", "experiment", "status", "seeds", "params", "params_ratio", "size_mb", "size_ratio_x",
    "latency_ms_b32", *_with_ci("speedup_x"), *_with_ci("test_accuracy_pct"), "test_macro_f1_pct",
    "test_perplexity", "accuracy_delta_pts",
]  # fmt: skip
CURVE_COLUMNS = [
    "variant", "experiment", "status", "seeds", "strategy", "budget", "labelled_examples", "label_fraction_pct",
    *_with_ci("test_accuracy_pct"), "test_macro_f1_pct", "accuracy_delta_pts",
]  # fmt: skip
CLAIM_COLUMNS = [
    "claim", "split", "baseline", "variant", "seeds", "examples", "baseline_accuracy_pct",
    "variant_accuracy_pct", *_with_ci("diff_pts"), "p_mcnemar", "verdict", "note",
]  # fmt: skip
COMPUTE_COLUMNS = ["variant", "experiments", "stage_minutes", "minutes_per_experiment"]

CAPTIONS = {
    "main": "Table 1. Main result: the all-labels teacher against the SEC deployed model (the quantized model of the "
    "`sec` experiments). Accuracy is on the TEST split, the mean over seeds with a 95 % t-interval (n=1: one seed, "
    "no interval). The accuracy delta (difference of the means) and data saved are against the all-labels teacher; "
    "the paired test of that difference is in the claims table. Size ratios are the `sec` runs' evaluate.json, "
    "speed ratios their evaluate_timing.json, each against its own teacher (the same architecture and size) in one "
    "process; the all-labels row's latency is that teacher's. Training time is the mean per run of the stages' "
    "`seconds`. Rows marked `published` are numbers quoted from the literature (their own models, data and "
    "hardware), not measured here.",
    "data": "Table 2. Data-efficiency ablation: each data variant's teacher (before compression). Test accuracy is the "
    "mean over seeds with a 95 % t-interval; the delta is against the all-labels teacher's mean. `helped` judges a "
    "row against its parent row on the DEV split: a paired bootstrap of the accuracy difference on the same dev "
    "examples, pooled over the seeds both rows ran (`paired_seeds`, resampled within each seed), with McNemar's exact "
    "p; `helped` when the 95 % interval lies above 0, `hurt` below, `not shown` when it contains 0.",
    "compression": "Table 3. Compression ablation, all from the `sec` experiments: each step adds one "
    "compression to the one above. Size ratios and accuracy deltas are evaluate.json's (test split), latency and "
    "speed-ups evaluate_timing.json's, each against that run's own teacher, averaged over seeds.",
    "curve": "Table 4. Active against random selection across label fractions (no augmentation), with the all-labels "
    "point: test accuracy, mean over seeds with a 95 % t-interval; the delta is against the all-labels teacher.",
    "claims": "Claims. Paired comparisons of the variant against the baseline row at the same seeds, pooled over "
    "those seeds (bootstrap within each seed, 95 % interval of the accuracy difference in points, McNemar's exact p "
    "on the same pairs). The DEV rows decide; the TEST rows report. `better` / `worse`: the interval excludes 0.",
    "compute": "Stage time. The sum of each experiment's stage `seconds` (wall time of each stage on the machine "
    "that ran it), per row over its seeds and in total. A stage DVC restored from its run-cache carries the seconds "
    "of the run that computed it, so this is what the results cost to compute, not how long the last session took; "
    "a teacher-only run counts its stages up to evaluate_teacher.",
}
CLAIM_WORDS = {"helped": "better", "hurt": "worse"}


def _num(value) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _metric(record: Mapping | None, key: str) -> float:
    return _num((record or {}).get("metrics", {}).get(key))


def _pct(value: float) -> float:
    return value * 100 if not math.isnan(value) else math.nan


def _round(value: float, digits: int = 2) -> float:
    return round(value, digits) if not math.isnan(value) else math.nan


def label_fraction(record: Mapping | None) -> float:
    """Labelled (gold) pairs over all pairs the run could have labelled (seed + pool)."""
    value = _metric(record, "active_select.label_fraction")
    if not math.isnan(value):
        return value
    labelled = _metric(record, "active_select.labelled_rows")
    total = _metric(record, "prepare.seed_rows") + _metric(record, "prepare.pool_rows")
    return labelled / total if total and not math.isnan(total) else math.nan


def teacher_metric(record: Mapping | None, key: str) -> float:
    """A teacher metric (`test.accuracy`, `size_mb`): the teacher-only evaluation, else evaluate.json's
    teacher (same model, same data)."""
    value = _metric(record, f"{TEACHER_TARGET}.models.teacher.{key}")
    return value if not math.isnan(value) else _metric(record, f"evaluate.models.teacher.{key}")


def model_metric(record: Mapping | None, model: str, key: str) -> float:
    """A model's metric: quality and size from evaluate.json, `latency_ms_b32` / `speedup` /
    `throughput_pairs_per_s` from evaluate_timing.json; the teacher's quality may come from evaluate_teacher."""
    if key in ("latency_ms_b32", "speedup", "throughput_pairs_per_s"):
        return _metric(record, f"evaluate_timing.models.{model}.{key}")
    if model == "teacher":
        return teacher_metric(record, key)
    return _metric(record, f"evaluate.models.{model}.{key}")


def train_minutes(record: Mapping | None, stages: Sequence[str]) -> float:
    values = [_metric(record, f"{stage}.seconds") for stage in stages]
    known = [v for v in values if not math.isnan(v)]
    return sum(known) / 60 if known else math.nan


# --------------------------------------------------------------------------------------------
# A row's runs.


@dataclass
class RowRuns:
    """A grid row's experiments: the usable runs by seed, the others' states, and a display label."""

    row: Variant
    ok: dict[int, dict] = field(default_factory=dict)
    other: dict[int, str] = field(default_factory=dict)  # seed -> queued | running | failed | ...
    label: str = ""

    @property
    def status(self) -> str:
        if self.ok:
            rest = ", ".join(f"s{seed} {state}" for seed, state in sorted(self.other.items()))
            return f"ok ({rest})" if rest else "ok"
        if self.other:
            return self.other[max(self.other)]  # the newest seed's state
        return NOT_RUN

    @property
    def seeds(self) -> int:
        return len(self.ok)

    def values(self, fn: Callable[[dict], float]) -> list[float]:
        out = [fn(rec) for _, rec in sorted(self.ok.items())]
        return [v for v in out if not math.isnan(v)]

    def mean(self, fn: Callable[[dict], float]) -> float:
        values = self.values(fn)
        return sum(values) / len(values) if values else math.nan

    def ci(self, fn: Callable[[dict], float]) -> tuple[float, float, float]:
        """(mean, low, high) over seeds; one value gives (v, nan, nan), none (nan, nan, nan)."""
        values = self.values(fn)
        return mean_ci(values) if values else (math.nan, math.nan, math.nan)


def _exp_label(row: Variant, seeds: Sequence[int]) -> str:
    if not seeds:
        return f"{row.row_name}-s*"
    if len(seeds) == 1:
        return f"{row.row_name}-s{seeds[0]}"
    return f"{row.row_name}-s{{{','.join(str(s) for s in seeds)}}}"


def _newest_by_name(records: Sequence[dict]) -> dict[str, dict]:
    """Experiments by name; with duplicates (several baselines), the newest."""
    out: dict[str, dict] = {}
    for rec in records:
        if rec.get("is_baseline"):
            continue
        old = out.get(rec["name"])
        if old is None or str(rec.get("timestamp") or "") >= str(old.get("timestamp") or ""):
            out[rec["name"]] = rec
    return out


def _usable(record: Mapping | None) -> bool:
    return record is not None and record.get("state") in ("success", "baseline")


def run_seed(record: Mapping, named: int) -> int:
    """The seed a run used: its params' `seed` (every grid run sets it); the one its name carries
    only when DVC recorded no params for it (a queued or failed run may have none)."""
    seed = record.get("params", {}).get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else named


def row_runs(records: Sequence[dict], grid: Sequence[Variant]) -> dict[str, RowRuns]:
    """Row name -> its runs by seed: experiments named `<row>-s<seed>` (names without a seed suffix,
    from before seeds were an axis, never count), each at the seed its params say. `sec` without
    any run falls back to the baseline commit's own metrics (the default params, committed) as a
    single seed."""
    stems = {v.row_name: v for v in grid}
    out = {v.name: RowRuns(v) for v in grid}
    for name, rec in _newest_by_name(records).items():
        parsed = split_exp_name(name)
        if parsed is None or parsed[0] not in stems:
            continue
        runs, seed = out[stems[parsed[0]].name], run_seed(rec, parsed[1])
        if _usable(rec):
            runs.ok[seed] = rec
        else:
            runs.other[seed] = str(rec.get("state") or "unknown")
    for runs in out.values():
        runs.label = _exp_label(runs.row, sorted(runs.ok) or sorted(runs.other))
    sec = out.get("sec")
    if sec is not None and not sec.ok and not sec.other:
        for base in records:
            if base.get("is_baseline") and not math.isnan(_metric(base, "evaluate.models.quantized.test.accuracy")):
                sec.ok[run_seed(base, 0)] = base
                sec.label = f"baseline {base['name']} ({str(base['rev'])[:7]})"
                break
    return out


def profile_of(records: Sequence[dict]) -> str:
    for rec in records:
        profile = rec.get("params", {}).get("profile")
        if profile in PROFILE_SETTINGS:
            return profile
    return "cpu"


def _default_budget(records: Sequence[dict], profile: str) -> int | None:
    for rec in records:
        if rec.get("is_baseline") and rec.get("params", {}).get("profile") == profile:
            budget = rec["params"].get("active_select.budget")
            if budget is not None:
                return int(budget)
    return None


def _ci_cells(column: str, triple: tuple[float, float, float], scale: float = 1.0, digits: int = 2) -> dict:
    mean, low, high = (v * scale if not math.isnan(v) else math.nan for v in triple)
    return {column: _round(mean, digits), column + CI[0]: _round(low, digits), column + CI[1]: _round(high, digits)}


def _diff(result: Mapping) -> tuple[float, float, float]:
    """(diff, low, high) in points of a grid_paired.compare_runs result (nan when it has none)."""
    return tuple(result.get(k, math.nan) for k in ("diff_pts", "low_pts", "high_pts"))


def _teacher_acc(rec: dict) -> float:
    return teacher_metric(rec, "test.accuracy")


# --------------------------------------------------------------------------------------------
# The tables.


@dataclass
class GridRuns:
    """What every table reads: the grid's rows and their runs, and the all-labels teacher's mean test
    accuracy that the accuracy deltas are taken against."""

    grid: Sequence[Variant]
    runs: dict[str, RowRuns]

    def of(self, name: str) -> RowRuns:
        """A row's runs; a row the grid lacks has none (every table then says "not run")."""
        found = self.runs.get(name)
        return found if found is not None else RowRuns(Variant("missing", ""))

    @cached_property
    def all_labels_accuracy(self) -> float:
        return self.of("all-labels").mean(_teacher_acc)

    def delta_pts(self, acc_mean: float) -> float:
        """Test accuracy points against the all-labels teacher's mean."""
        return _round(_pct(acc_mean - self.all_labels_accuracy))


def tables(
    records: Sequence[dict], grid: Sequence[Variant] | None = None, *, load: Loader | None = None
) -> dict[str, pd.DataFrame]:
    """The tables, keyed main | data | compression | curve | claims | compute; absent experiments say
    "not run". `load` reads the runs' prediction files for the paired comparisons (Table 2's `helped`
    and the claims); without it those say "n/a"."""
    if grid is None:
        profile = profile_of(records)
        grid = grid_for(profile, default_budget=_default_budget(records, profile))
    runs = GridRuns(grid, row_runs(records, grid))
    return {
        "main": main_table(runs), "data": data_table(runs, load), "compression": compression_table(runs),
        "curve": curve_table(runs), "claims": claims_table(runs, load), "compute": compute_table(runs),
    }  # fmt: skip


def main_table(runs: GridRuns) -> pd.DataFrame:
    """Table 1: the all-labels teacher and the SEC deployed model, then the published anchors."""
    all_runs, sec_runs = runs.of("all-labels"), runs.of("sec")
    all_labels = all_runs.mean(lambda r: _metric(r, "active_select.labelled_rows"))
    rows = []
    for system, rr, model, stages in (
        ("All-labels teacher", all_runs, "teacher", TEACHER_STAGES),
        ("SEC deployed (quantized)", sec_runs, "quantized", DEPLOY_STAGES),
    ):
        if model == "teacher":
            # Quality from its own (teacher-only) evaluation; latency is the architecture's, timed
            # in the `sec` runs (same model class and shape, same process as the deployed model).
            size = rr.mean(lambda r: teacher_metric(r, "size_mb"))
            latency = sec_runs.mean(lambda r: model_metric(r, "teacher", "latency_ms_b32"))
            size_ratio = 1.0 if rr.ok else math.nan
            speedup = (1.0, 1.0, 1.0) if rr.ok else (math.nan,) * 3  # its own reference, by definition
        else:
            size = rr.mean(lambda r, m=model: model_metric(r, m, "size_mb"))
            latency = rr.mean(lambda r, m=model: model_metric(r, m, "latency_ms_b32"))
            size_ratio = rr.mean(lambda r, m=model: model_metric(r, m, "size_ratio"))
            speedup = rr.ci(lambda r, m=model: model_metric(r, m, "speedup"))
        acc = rr.ci(lambda r, m=model: model_metric(r, m, "test.accuracy"))
        labelled = rr.mean(lambda r: _metric(r, "active_select.labelled_rows"))
        rows.append(
            {
                "source": "measured",
                "system": system,
                "experiment": rr.label,
                "status": rr.status,
                "seeds": rr.seeds,
                "labelled_examples": labelled,
                "label_fraction_pct": _round(_pct(rr.mean(label_fraction))),
                "train_minutes": _round(rr.mean(lambda r, s=stages: train_minutes(r, s))),
                "size_mb": _round(size, 3),
                "latency_ms_b32": _round(latency),
                **_ci_cells("test_accuracy_pct", acc, 100),
                "test_macro_f1_pct": _round(_pct(rr.mean(lambda r, m=model: model_metric(r, m, "test.macro_f1")))),
                "test_perplexity": _round(rr.mean(lambda r, m=model: model_metric(r, m, "test.perplexity")), 3),
                "size_ratio_x": _round(size_ratio, 3),
                **_ci_cells("speedup_x", speedup, 1, 3),
                "accuracy_delta_pts": runs.delta_pts(acc[0]),
                "data_saved_pct": _round(_pct(1 - labelled / all_labels)) if all_labels else math.nan,
                "note": "" if rr.ok else f"{rr.label}: {rr.status}",
            }
        )
    for ref in PUBLISHED:
        rows.append({"source": "published", "experiment": "", "status": "published", **ref})
    return pd.DataFrame(rows).reindex(columns=MAIN_COLUMNS)


def data_table(runs: GridRuns, load: Loader | None) -> pd.DataFrame:
    """Table 2: each data variant's teacher, and whether it helped over its parent row on dev."""
    rows = []
    for variant in (v for v in runs.grid if "data" in v.tables):
        rr = runs.of(variant.name)
        acc = rr.ci(_teacher_acc)
        pseudo = rr.mean(lambda r: _metric(r, "active_select.pseudo_rows"))
        if rr.ok and math.isnan(pseudo):
            pseudo = 0.0  # written before pseudo-labelling existed
        row = {
            "variant": variant.name,
            "experiment": rr.label,
            "status": rr.status,
            "seeds": rr.seeds,
            "description": variant.description,
            "labelled_examples": rr.mean(lambda r: _metric(r, "active_select.labelled_rows")),
            "label_fraction_pct": _round(_pct(rr.mean(label_fraction))),
            "pseudo_rows": pseudo,
            "train_rows": rr.mean(lambda r: _metric(r, "fine_tune.train_rows")),
            "fine_tune_minutes": _round(rr.mean(lambda r: _metric(r, "fine_tune.seconds")) / 60),
            "dev_accuracy_pct": _round(_pct(rr.mean(lambda r: teacher_metric(r, "dev.accuracy")))),
            **_ci_cells("test_accuracy_pct", acc, 100),
            "test_macro_f1_pct": _round(_pct(rr.mean(lambda r: teacher_metric(r, "test.macro_f1")))),
            "test_perplexity": _round(rr.mean(lambda r: teacher_metric(r, "test.perplexity")), 3),
            "accuracy_delta_pts": runs.delta_pts(acc[0]),
            "parent": variant.parent or "",
            "paired_seeds": math.nan,
            **_ci_cells("dev_delta_vs_parent_pts", (math.nan,) * 3),
            "p_mcnemar": math.nan,
            "helped": "",
        }
        if variant.parent:
            if load is None:
                result = {"verdict": "n/a", "seeds": []}
            else:
                result = compare_runs(runs.of(variant.parent).ok, rr.ok, "dev", load)
            row.update(
                {
                    "paired_seeds": len(result["seeds"]) if result["seeds"] else math.nan,
                    **_ci_cells("dev_delta_vs_parent_pts", _diff(result)),
                    "p_mcnemar": result.get("p_mcnemar", math.nan),
                    "helped": result["verdict"],
                }
            )
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=DATA_COLUMNS)


def compression_table(runs: GridRuns) -> pd.DataFrame:
    """Table 3: the `sec` runs' models, one compression step added per row."""
    sec_runs = runs.of("sec")
    rows = []
    for step, model in COMPRESSION_ROWS:

        def m(key: str, model=model) -> Callable[[dict], float]:
            return lambda r: model_metric(r, model, key)

        rows.append(
            {
                "step": step,
                "model": model,
                "experiment": sec_runs.label,
                "status": sec_runs.status,
                "seeds": sec_runs.seeds,
                "params": sec_runs.mean(m("params")),
                "params_ratio": _round(sec_runs.mean(m("params_ratio")), 3),
                "size_mb": _round(sec_runs.mean(m("size_mb")), 3),
                "size_ratio_x": _round(sec_runs.mean(m("size_ratio")), 3),
                "latency_ms_b32": _round(sec_runs.mean(m("latency_ms_b32"))),
                **_ci_cells("speedup_x", sec_runs.ci(m("speedup")), 1, 3),
                **_ci_cells("test_accuracy_pct", sec_runs.ci(lambda r, model=model: _metric(r, f"evaluate.models.{model}.test.accuracy")), 100),
                "test_macro_f1_pct": _round(_pct(sec_runs.mean(lambda r, model=model: _metric(r, f"evaluate.models.{model}.test.macro_f1")))),
                "test_perplexity": _round(sec_runs.mean(lambda r, model=model: _metric(r, f"evaluate.models.{model}.test.perplexity")), 3),
                "accuracy_delta_pts": _round(sec_runs.mean(lambda r, model=model: _metric(r, f"evaluate.models.{model}.test.accuracy_delta_pts"))),
            }
        )  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=COMPRESSION_COLUMNS)


CURVE_STRATEGIES = {"entropy": "active", "margin": "active (margin)", "all": "all-labels"}
CURVE_ORDER = {"random": 0, "active": 1, "active (margin)": 2, "all-labels": 3}


def curve_table(runs: GridRuns) -> pd.DataFrame:
    """Table 4: test accuracy against the label fraction, random then active, by budget."""
    rows = []
    for variant in (v for v in runs.grid if "curve" in v.tables):
        rr = runs.of(variant.name)
        budget = rr.mean(lambda r: _metric(r, "active_select.budget"))
        if variant.strategy == "all":
            budget = rr.mean(lambda r: _metric(r, "active_select.pool_rows"))
        elif math.isnan(budget):
            planned = variant.overrides.get("active_select.budget")
            budget = _num(planned) if planned is not None else math.nan
        acc = rr.ci(_teacher_acc)
        rows.append(
            {
                "variant": variant.name,
                "experiment": rr.label,
                "status": rr.status,
                "seeds": rr.seeds,
                "strategy": CURVE_STRATEGIES.get(variant.strategy, variant.strategy),
                "budget": budget,
                "labelled_examples": rr.mean(lambda r: _metric(r, "active_select.labelled_rows")),
                "label_fraction_pct": _round(_pct(rr.mean(label_fraction))),
                **_ci_cells("test_accuracy_pct", acc, 100),
                "test_macro_f1_pct": _round(_pct(rr.mean(lambda r: teacher_metric(r, "test.macro_f1")))),
                "accuracy_delta_pts": runs.delta_pts(acc[0]),
            }
        )
    rows.sort(key=lambda r: (CURVE_ORDER.get(r["strategy"], 9), math.inf if math.isnan(r["budget"]) else r["budget"]))
    return pd.DataFrame(rows).reindex(columns=CURVE_COLUMNS)


def claims_table(runs: GridRuns, load: Loader | None) -> pd.DataFrame:
    """The claims: each paired comparison of grid_variants.claims_for on dev (decides) and test (reports)."""
    rows = []
    for claim in claims_for(runs.grid):
        for split in ("dev", "test"):
            if load is None:
                result = {"seeds": [], "examples": math.nan, "verdict": "n/a", "note": "paired comparisons skipped"}
            else:
                result = compare_runs(
                    runs.of(claim.baseline).ok, runs.of(claim.variant).ok, split, load,
                    baseline_model=claim.baseline_model, variant_model=claim.variant_model,
                )  # fmt: skip
            rows.append(
                {
                    "claim": claim.name,
                    "split": split,
                    "baseline": claim.baseline if claim.baseline_model == "teacher" else f"{claim.baseline} ({claim.baseline_model})",
                    "variant": claim.variant if claim.variant_model == "teacher" else f"{claim.variant} ({claim.variant_model})",
                    "seeds": len(result["seeds"]) if result["seeds"] else math.nan,
                    "examples": result.get("examples") or math.nan,
                    "baseline_accuracy_pct": _round(result.get("baseline_accuracy_pct", math.nan)),
                    "variant_accuracy_pct": _round(result.get("variant_accuracy_pct", math.nan)),
                    **_ci_cells("diff_pts", _diff(result)),
                    "p_mcnemar": result.get("p_mcnemar", math.nan),
                    "verdict": CLAIM_WORDS.get(result["verdict"], result["verdict"]),
                    "note": result.get("note", ""),
                }
            )  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=CLAIM_COLUMNS)


def compute_table(runs: GridRuns) -> pd.DataFrame:
    """Stage time: each row's summed stage seconds over its runs, and the grid's total."""
    rows = []
    all_seconds: list[float] = []
    for variant in runs.grid:
        stages = TEACHER_RUN_STAGES if variant.teacher_only else FULL_RUN_STAGES
        minutes = [train_minutes(rec, stages) for rec in runs.of(variant.name).ok.values()]
        minutes = [m for m in minutes if not math.isnan(m)]
        all_seconds += [m * 60 for m in minutes]
        rows.append(_compute_row(variant.name, minutes))
    rows.append(_compute_row("total", [s / 60 for s in all_seconds]))
    return pd.DataFrame(rows).reindex(columns=COMPUTE_COLUMNS)


def _compute_row(name: str, minutes: Sequence[float]) -> dict:
    total = sum(minutes)
    return {
        "variant": name,
        "experiments": len(minutes),
        "stage_minutes": round(total, 1) if minutes else math.nan,
        "minutes_per_experiment": round(total / len(minutes), 1) if minutes else math.nan,
    }


def fraction_rows(curve: pd.DataFrame) -> list[dict]:
    """Table 4's rows that ran, as points for the accuracy-vs-label-fraction plot:
    {strategy, label_fraction (0..1), accuracy (% test, mean over seeds)}."""
    rows = []
    for row in curve.itertuples(index=False):
        if not row.status.startswith("ok") or math.isnan(row.label_fraction_pct) or math.isnan(row.test_accuracy_pct):
            continue
        rows.append(
            {
                "strategy": row.strategy,
                "label_fraction": round(row.label_fraction_pct / 100, 4),
                "accuracy": round(float(row.test_accuracy_pct), 2),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Writing.


INT_COLUMNS = {"labelled_examples", "pseudo_rows", "train_rows", "params", "budget", "seeds", "paired_seeds",
               "examples", "experiments"}  # fmt: skip


def _is_nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value, column: str = "") -> str:
    if _is_nan(value):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value).replace("|", "\\|") or " "
    if column in INT_COLUMNS:
        return f"{int(round(value)):,}"
    if column == "p_mcnemar":
        return "<0.001" if value < 0.001 else f"{value:.3f}"
    return f"{value:.2f}"


def _ci_cell(value, low, high, column: str) -> str:
    """`m [low, high]`; a mean without an interval (one seed) reads `m (n=1)`."""
    if _is_nan(value):
        return "–"
    if _is_nan(low) or _is_nan(high):
        return f"{_cell(value, column)} (n=1)"
    return f"{_cell(value, column)} [{_cell(low, column)}, {_cell(high, column)}]"


def to_markdown(frame: pd.DataFrame) -> str:
    """A markdown table; a column X with X_low and X_high becomes one `X (95 % CI)` column."""
    columns = [str(c) for c in frame.columns]
    merged = [c for c in columns if c + CI[0] in columns and c + CI[1] in columns]
    shown = [c for c in columns if not any(c in (m + CI[0], m + CI[1]) for m in merged)]
    header = "| " + " | ".join(f"{c} (95 % CI)" if c in merged else c for c in shown) + " |"
    rule = "|" + "|".join("---" for _ in shown) + "|"
    body = []
    for row in frame.to_dict("records"):
        cells = [
            _ci_cell(row[c], row[c + CI[0]], row[c + CI[1]], c) if c in merged else _cell(row[c], c) for c in shown
        ]
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *body])


def _stage_time_line(compute: pd.DataFrame) -> str:
    total = compute[compute["variant"] == "total"].iloc[0]
    if _is_nan(total["stage_minutes"]):
        return "No finished experiment carries stage times yet."
    minutes = float(total["stage_minutes"])
    return (
        f"Stage time: the grid's {int(total['experiments'])} finished experiments took {minutes:,.1f} min "
        f"({minutes / 60:.1f} h) in all; per row in the stage-time table below."
    )


def markdown(frames: dict[str, pd.DataFrame], title: str = "Ablation grid") -> str:
    parts = [
        f"# {title}",
        "",
        "Built by `python -m pipeline.grid tables` from `dvc exp show --json` and the experiments' prediction "
        "files; `not run` marks a grid row without a finished experiment (run `scripts/grid.sh --only NAME`). "
        "Experiments are `grid-<row>-s<seed>`; accuracy figures are test-split means over seeds with a 95 % "
        "t-interval, `(n=1)` marks a single seed; decisions (`helped`, verdicts.json) come from the dev split.",
        "",
    ]
    if "compute" in frames:
        parts += [_stage_time_line(frames["compute"]), ""]
    for key in MARKDOWN_ORDER:
        if key not in frames:
            continue
        frame = frames[key]
        parts += [f"## {CAPTIONS[key]}", ""]
        if key == "main":
            measured = frame[frame["source"] == "measured"].drop(columns=["source"])
            published = frame[frame["source"] == "published"].drop(columns=["source", "experiment", "status"])
            published = published.loc[:, published.notna().any() | published.columns.isin(["system", "note"])]
            parts += [
                "Measured here:",
                "",
                to_markdown(measured),
                "",
                "Published reference points (not measured here):",
                "",
                to_markdown(published),
                "",
            ]
        else:
            parts += [to_markdown(frame), ""]
    return "\n".join(parts)


def write_tables(frames: dict[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """tables.md (all tables with captions) and one CSV per table, each written atomically."""
    out = Path(out_dir)
    written = []
    for key, frame in frames.items():
        path = out / f"{TABLE_FILES.get(key, key)}.csv"
        write_atomic(path, frame.to_csv(index=False))
        written.append(path)
    path = out / "tables.md"
    write_atomic(path, markdown(frames))
    written.append(path)
    return written


def tradeoff_rows(records: Sequence[dict], grid: Sequence[Variant] | None = None) -> list[dict]:
    """Test accuracy / size / latency of every model the full-pipeline runs measured, for the Pareto plots.

    Teacher-only grid experiments are left out: they carry the baseline's evaluate.json.
    """
    teacher_only = {v.row_name for v in (grid or GRID) if v.teacher_only}
    rows = []
    for rec in records:
        parsed = split_exp_name(rec["name"]) if not rec.get("is_baseline") else None
        if not _usable(rec) or (parsed and parsed[0] in teacher_only) or rec["name"] in teacher_only:
            continue
        for model in ("teacher", "pruned", "distilled", "quantized"):
            acc = _metric(rec, f"evaluate.models.{model}.test.accuracy")
            size = _metric(rec, f"evaluate.models.{model}.size_mb")
            latency = _metric(rec, f"evaluate_timing.models.{model}.latency_ms_b32")
            if any(math.isnan(v) for v in (acc, size, latency)):
                continue
            rows.append({"model": model, "experiment": rec["name"], "accuracy": _round(_pct(acc)),
                         "size_mb": size, "latency_ms": latency})  # fmt: skip
    return rows


# Table 2 rows whose verdict the controller reads, and the component each one adds.
VERDICT_ROWS = {"active+synonym": "synonym", "active+backtranslation": "backtranslation", "active+pseudo": "pseudo",
                "active+generated": "generated"}
_VERDICT_BOOL = {"helped": True, "hurt": False, "not shown": None}


def verdicts(data_table: pd.DataFrame) -> dict[str, bool | None]:
    """component -> True (helped: the dev interval lies above 0), False (hurt: below 0) or None (not
    shown: it contains 0), from Table 2's paired dev comparison with the parent row.

    Components without a verdict (row not run, no predictions) are left out. The controller does
    not read this file: it searches the augmentation fractions itself (controller.search.knobs).
    """
    out: dict[str, bool | None] = {}
    for _, row in data_table.iterrows():
        component = VERDICT_ROWS.get(row["variant"])
        if component and row["helped"] in _VERDICT_BOOL:
            out[component] = _VERDICT_BOOL[row["helped"]]
    return out


def verdict_details(data_table: pd.DataFrame) -> dict[str, dict]:
    """verdicts.json with its evidence: component -> {verdict, split, diff_pts, low_pts, high_pts,
    p_mcnemar, seeds} (points of dev accuracy, variant minus parent)."""
    out = {}
    for _, row in data_table.iterrows():
        component = VERDICT_ROWS.get(row["variant"])
        if component and row["helped"] in _VERDICT_BOOL:
            out[component] = {
                "verdict": row["helped"],
                "split": "dev",
                "row": row["variant"],
                "parent": row["parent"],
                "diff_pts": _json_num(row["dev_delta_vs_parent_pts"]),
                "low_pts": _json_num(row["dev_delta_vs_parent_pts" + CI[0]]),
                "high_pts": _json_num(row["dev_delta_vs_parent_pts" + CI[1]]),
                "p_mcnemar": _json_num(row["p_mcnemar"]),
                "seeds": None if _is_nan(row["paired_seeds"]) else int(row["paired_seeds"]),
            }
    return out


def _json_num(value) -> float | None:
    return None if _is_nan(value) else round(float(value), 4)


def write_all(
    records: Sequence[dict],
    out_dir: str | Path,
    grid: Sequence[Variant] | None = None,
    *,
    load: Loader | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Tables (markdown + CSV), verdicts.json (+ verdict_details.json), the label-fraction rows and the
    PNGs under out_dir/plots. `load`: see `tables`."""
    from pipeline.plots import write_pngs

    frames = tables(records, grid, load=load)
    written = write_tables(frames, out_dir)
    for name, content in (
        (VERDICTS_FILE, verdicts(frames["data"])),
        (VERDICT_DETAILS_FILE, verdict_details(frames["data"])),
    ):
        path = Path(out_dir) / name
        write_atomic(path, json.dumps(content, indent=2, sort_keys=True) + "\n")
        written.append(path)
    fraction = fraction_rows(frames["curve"])
    path = Path(out_dir) / FRACTION_FILE
    write_atomic(path, json.dumps(fraction, indent=2) + "\n")
    written.append(path)
    if log is not None:
        missing = [f"{r.claim} ({r.split}): {r.note}" for r in frames["claims"].itertuples() if r.verdict == "n/a"]
        if missing:
            log("paired comparisons without a result:\n  " + "\n  ".join(missing))
    rows = tradeoff_rows(records, grid)
    if rows:
        written += write_pngs(rows, fraction, Path(out_dir) / "plots")
    return written
