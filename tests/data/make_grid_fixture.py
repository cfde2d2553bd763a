"""Writes tests/data/grid_exp_show.json: a `dvc exp show --json` of a seeded tiny-profile grid.

The layout is DVC 3.x's, copied from a real `dvc exp show --json` of the tiny grid (workspace
entry, one baseline, experiments with executor info, a failed experiment's error); the numbers are
set here by hand so that the tests can check means and intervals with a calculator. The metrics
follow the contracts in stages/ (evaluate_teacher.json / evaluate.json with dev and test per model,
timings in evaluate_timing.json). Teacher-only runs carry the baseline's prune/distill/quantize/
evaluate metrics, as real ones do (they stop at evaluate_teacher).

    python tests/data/make_grid_fixture.py   # from the repository root
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("grid_exp_show.json")
BASE_SEED = 42
SEED_ROWS, POOL_ROWS, DEV_ROWS, TEST_ROWS = 24, 36, 12, 30

# Teacher TEST accuracy per row and seed (dev = test + 0.05). Hand-checkable: all-labels 50/52/54
# (mean 52, sd 2), random 40/42/44 (mean 42), active 44/45/49 (mean 46, sd sqrt(7)).
TEACHER_TEST = {
    "all-labels": {42: 0.50, 43: 0.52, 44: 0.54},
    "random": {42: 0.40, 43: 0.42, 44: 0.44},
    "active": {42: 0.44, 43: 0.45, 44: 0.49},
    "active+synonym": {42: 0.47},
    "active+backtranslation": {42: 0.46},
    "active+pseudo": {42: 0.41},
    "sec": {42: 0.48, 43: 0.49, 44: 0.50},
    "random@6": {42: 0.38},
    "active@6": {42: 0.39},
    "random@18": {42: 0.45, 43: 0.46, 44: 0.47},
    "active@18": {42: 0.48, 43: 0.50, 44: 0.52},
}
# sec's compressed models (test accuracy) and speed-ups per seed; quantized 45/46/47, 2.0/2.2/2.4x.
SEC_MODELS = {
    "pruned": {42: 0.47, 43: 0.48, 44: 0.49},
    "distilled": {42: 0.46, 43: 0.47, 44: 0.48},
    "quantized": {42: 0.45, 43: 0.46, 44: 0.47},
}
SPEEDUP = {"teacher": 1.0, "pruned": 1.3, "distilled": 1.8, "quantized": {42: 2.0, 43: 2.2, 44: 2.4}}
SIZE_MB = {"teacher": 0.1, "pruned": 0.07, "distilled": 0.05, "quantized": 0.02}
PARAMS = {"teacher": 23907, "pruned": 17115, "distilled": 11871, "quantized": 11871}
# Stage seconds of every run: teacher-only runs count 3 + 1 + 1 + 5 = 10 s, full runs 10 + 4 + 2 + 1 = 17 s.
SECONDS = {"active_select": 3.0, "augment": 1.0, "back_translate": 1.0, "fine_tune": 5.0,
           "prune": 4.0, "distill": 2.0, "quantize": 1.0}  # fmt: skip
BASELINE_SECONDS = 100.0  # the baseline's prune/distill/quantize: never a teacher-only run's time
OVERRIDES = {  # what grid_for("tiny") sets (checked by the tests against the code)
    "all-labels": {"active_select.strategy": "all", "augment.fraction": 0, "back_translate.fraction": 0, "augment_pool.fraction": 0},
    "random": {"active_select.strategy": "random", "augment.fraction": 0, "back_translate.fraction": 0, "augment_pool.fraction": 0},
    "active": {"active_select.strategy": "entropy", "augment.fraction": 0, "back_translate.fraction": 0, "augment_pool.fraction": 0},
    "active+synonym": {"active_select.strategy": "entropy", "back_translate.fraction": 0, "augment_pool.fraction": 0},
    "active+backtranslation": {"active_select.strategy": "entropy", "augment.fraction": 0, "augment_pool.fraction": 0},
    "active+pseudo": {"active_select.strategy": "entropy", "augment.fraction": 0, "back_translate.fraction": 0,
                      "active_select.pseudo_size": 12, "augment_pool.fraction": 0},
    "sec": {},
    "random@6": {"active_select.strategy": "random", "active_select.budget": 6, "augment.fraction": 0,
                 "back_translate.fraction": 0, "augment_pool.fraction": 0},
    "active@6": {"active_select.strategy": "entropy", "active_select.budget": 6, "augment.fraction": 0,
                 "back_translate.fraction": 0, "augment_pool.fraction": 0},
    "random@18": {"active_select.strategy": "random", "active_select.budget": 18, "augment.fraction": 0,
                  "back_translate.fraction": 0, "augment_pool.fraction": 0},
    "active@18": {"active_select.strategy": "entropy", "active_select.budget": 18, "augment.fraction": 0,
                  "back_translate.fraction": 0, "augment_pool.fraction": 0},
}  # fmt: skip
SLUGS = {"all-labels": "all-labels", "random": "random", "active": "active", "active+synonym": "active-synonym",
         "active+backtranslation": "active-backtranslation", "active+pseudo": "active-pseudo", "sec": "sec",
         "random@6": "random-b6", "active@6": "active-b6", "random@18": "random-b18", "active@18": "active-b18"}  # fmt: skip
FULL_ROWS = {"sec"}


def sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def quality(acc: float) -> dict:
    return {"accuracy": acc, "macro_f1": round(acc - 0.1, 4), "cross_entropy": 1.05, "perplexity": 2.8577}


# An experiment's params are trimmed to what the grid sets or reads (the baseline keeps them all).
EXPERIMENT_SECTIONS = (
    "profile",
    "seed",
    "threads",
    "data",
    "model",
    "active_select",
    "augment",
    "back_translate",
    "fine_tune",
)


def base_params(seed: int, trimmed: bool = False) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if trimmed:
        params = {key: value for key, value in params.items() if key in EXPERIMENT_SECTIONS}
    params["profile"] = "tiny"
    params["seed"] = seed
    params["data"]["local_dir"] = "/tmp/tiny/mnli"
    params["model"]["teacher"] = "/tmp/tiny/tiny-bert"
    return params


def set_dotted(params: dict, key: str, value) -> None:
    node = params
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def evaluate_metrics(seed: int, accs: dict[str, float], teacher_acc: float) -> tuple[dict, dict]:
    quality_models, timing_models = {}, {}
    for model in ("teacher", "pruned", "distilled", "quantized"):
        acc = teacher_acc if model == "teacher" else accs[model]
        entry = {
            "dev": {**quality(round(acc + 0.05, 4)), "accuracy_delta_pts": round((acc - teacher_acc) * 100, 2)},
            "test": {**quality(acc), "accuracy_delta_pts": round((acc - teacher_acc) * 100, 2)},
            "size_mb": SIZE_MB[model],
            "params": PARAMS[model],
            "size_ratio": round(SIZE_MB["teacher"] / SIZE_MB[model], 3),
            "params_ratio": round(PARAMS["teacher"] / PARAMS[model], 3),
        }
        quality_models[model] = entry
        speedup = SPEEDUP[model][seed] if isinstance(SPEEDUP[model], dict) else SPEEDUP[model]
        timing_models[model] = {"latency_ms_b32": round(20.0 / speedup, 2), "throughput_pairs_per_s": round(
            32 / (20.0 / speedup) * 1000, 1), "speedup": speedup}  # fmt: skip
    evaluate = {"models": quality_models, "dev_rows": DEV_ROWS, "test_rows": TEST_ROWS, "threads": 2, "seed": seed}
    timing = {"models": timing_models, "threads": 2, "device": "cpu", "latency_batches": 8, "latency_repeats": 2}
    return evaluate, timing


def metrics_for(row: str, seed: int, baseline_metrics: dict | None) -> dict:
    overrides = OVERRIDES[row]
    strategy = overrides.get("active_select.strategy", "entropy")
    budget = POOL_ROWS if strategy == "all" else overrides.get("active_select.budget", 12)
    labelled = SEED_ROWS + budget
    pseudo = overrides.get("active_select.pseudo_size", 0)
    augmented = 0 if overrides.get("augment.fraction") == 0 else labelled // 2
    backtranslated = 0 if overrides.get("back_translate.fraction") == 0 else 6
    teacher_acc = TEACHER_TEST[row][seed]
    metrics = {
        "metrics/prepare.json": {"seed_rows": SEED_ROWS, "pool_rows": POOL_ROWS, "dev_rows": DEV_ROWS,
                                 "test_rows": TEST_ROWS, "source": "/tmp/tiny/mnli"},
        "metrics/active_select.json": {"strategy": strategy, "budget": budget, "labelled_rows": labelled,
                                       "label_fraction": round(labelled / (SEED_ROWS + POOL_ROWS), 4),
                                       "pool_rows": POOL_ROWS, "pseudo_rows": pseudo,
                                       "unlabelled_rows": POOL_ROWS - budget, "seconds": SECONDS["active_select"]},
        "metrics/augment.json": {"n_input": labelled, "n_output": labelled + augmented, "seconds": SECONDS["augment"]},
        "metrics/back_translate.json": {"n_kept": backtranslated, "seconds": SECONDS["back_translate"]},
        "metrics/fine_tune.json": {"train_rows": labelled + pseudo + augmented + backtranslated, "train_steps": 4,
                                   "rows_by_source": {"gold": SEED_ROWS, "oracle": budget}, "train_seconds": 4.2,
                                   "seconds": SECONDS["fine_tune"]},
        "metrics/evaluate_teacher.json": {
            "models": {"teacher": {"dev": quality(round(teacher_acc + 0.05, 4)), "test": quality(teacher_acc),
                                   "size_mb": SIZE_MB["teacher"], "params": PARAMS["teacher"]}},
            "dev_rows": DEV_ROWS, "test_rows": TEST_ROWS, "threads": 2, "seed": seed,
        },
    }  # fmt: skip
    if row in FULL_ROWS or baseline_metrics is None:
        # The baseline commit's own compressed models score 30 %: the fallback test tells them apart.
        accs = (
            {m: 0.30 for m in SEC_MODELS} if baseline_metrics is None else {m: SEC_MODELS[m][seed] for m in SEC_MODELS}
        )
        evaluate, timing = evaluate_metrics(seed, accs, teacher_acc)
        metrics["metrics/prune.json"] = {"seconds": SECONDS["prune"], "prune_seconds": 1.0}
        metrics["metrics/distill.json"] = {"seconds": SECONDS["distill"]}
        metrics["metrics/quantize.json"] = {"seconds": SECONDS["quantize"]}
        metrics["metrics/evaluate.json"] = evaluate
        metrics["metrics/evaluate_timing.json"] = timing
        if baseline_metrics is None:  # the baseline commit: its own (slow) compression stages
            for stage in ("prune", "distill", "quantize"):
                metrics[f"metrics/{stage}.json"]["seconds"] = BASELINE_SECONDS
    else:  # a teacher-only run carries the baseline's later metrics
        for path in ("metrics/prune.json", "metrics/distill.json", "metrics/quantize.json", "metrics/evaluate.json",
                     "metrics/evaluate_timing.json"):  # fmt: skip
            metrics[path] = copy.deepcopy(baseline_metrics[path])
    return {path: {"data": data} for path, data in metrics.items()}


def rev_data(rev: str, timestamp: str, params: dict, metrics: dict) -> dict:
    return {"rev": rev, "timestamp": timestamp, "params": {"params.yaml": {"data": params}}, "metrics": metrics,
            "deps": {}, "outs": {}, "meta": {}}  # fmt: skip


def experiment(name: str, rev: str, data: dict, state: str = "success", error: dict | None = None) -> dict:
    task = sha("task" + name)
    return {
        "revs": [{"rev": rev, "name": name, "data": data, "error": error, "experiments": None}],
        "executor": {"state": state, "name": "dvc-task" if state == "success" else None, "local": {
            "root": None, "log": f"/tmp/tiny/repo/.dvc/tmp/exps/run/{task}/{task}.out", "pid": 5000,
            "returncode": 0 if state == "success" else 255, "task_id": task}},
        "name": name,
    }  # fmt: skip


def build() -> list:
    baseline_rev = sha("baseline")
    baseline_raw = metrics_for("sec", BASE_SEED, None)
    baseline_metrics = {path: entry["data"] for path, entry in baseline_raw.items()}
    workspace = {"rev": "workspace", "name": None, "error": None, "experiments": None,
                 "data": rev_data("workspace", None, base_params(BASE_SEED), baseline_raw)}  # fmt: skip
    experiments = []
    minute = 0
    for seed_index in range(3):
        seed = BASE_SEED + seed_index
        for row, by_seed in TEACHER_TEST.items():
            if seed not in by_seed:
                continue
            minute += 1
            name = f"grid-{SLUGS[row]}-s{seed}"
            params = base_params(seed, trimmed=True)
            for key, value in OVERRIDES[row].items():
                set_dotted(params, key, value)
            data = rev_data(sha(name), f"2026-12-01T10:{minute:02d}:00", params,
                            metrics_for(row, seed, baseline_metrics))  # fmt: skip
            experiments.append(experiment(name, sha(name), data))
    # An experiment from before seeds were an axis (no -s suffix): never a repeat of `active`.
    legacy = metrics_for("active", BASE_SEED, baseline_metrics)
    legacy["metrics/evaluate_teacher.json"]["data"]["models"]["teacher"]["test"]["accuracy"] = 0.99
    experiments.append(experiment("grid-active", sha("legacy"), rev_data(
        sha("legacy"), "2026-11-20T09:00:00", base_params(BASE_SEED, trimmed=True), legacy)))  # fmt: skip
    # A failed experiment, as DVC shows one.
    bad = rev_data(sha("bad"), "2026-12-01T09:00:00", base_params(BASE_SEED, trimmed=True), {})
    experiments.append(experiment("grid-bad", sha("bad"), bad, "failed", {"msg": "Experiment run failed", "type": ""}))
    experiments.reverse()  # newest first, as dvc exp show lists them
    baseline = {"rev": baseline_rev, "name": "master", "error": None, "experiments": experiments,
                "data": rev_data(baseline_rev, "2026-12-01T08:00:00", base_params(BASE_SEED), baseline_raw)}  # fmt: skip
    return [workspace, baseline]


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {OUT}")
