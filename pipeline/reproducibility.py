"""Do two runs of the pipeline agree? Output hashes from dvc.lock, and metrics apart from timings.

    python -m pipeline.reproducibility RUN_A RUN_B     # two checkouts that each ran `dvc repro`

The contract (README "Reproducibility"): on one machine, the same commit and params give the same
md5 for every data and model output in dvc.lock and the same value for every metric, except
timings. Timings are the outputs in TIMING_OUTPUTS (they embed latencies) and the metric keys
TIMING_KEY matches (seconds, latency, throughput, speed-up). Exit 0 when the runs agree, 1 with
every difference listed otherwise.

    python -m pipeline.reproducibility RUN_A RUN_B --cross-machine [--json reports/cross_machine.json]

Across CPU models bit-identity cannot hold (oneDNN/fbgemm/ONNX Runtime pick other kernels with
AVX2, AVX-512 or VNNI), so --cross-machine asks instead whether the runs are equally good: for every
model and split with predictions in both runs, the paired accuracy difference B - A on the same
row_ids with its paired-bootstrap 95% interval, the exact McNemar p, and the share of examples whose
predicted label agrees; "equivalent within noise" when the interval contains 0, else "differs". It
also prints the CPU each run recorded (run.cpu in the stages' metrics) and which data outputs kept
their hash (they should, as long as the same pairs are chosen). Exit 0 when every model and split
is equivalent, 1 otherwise, 2 on bad input (a missing run, file, or rows that do not pair).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.compare import SPLITS, CompareError, pair_frames, prediction_paths
from pipeline.stats import mcnemar_exact, paired_bootstrap
from stages._io import write_json

# Outputs whose content is (or is drawn from) a latency measurement.
TIMING_OUTPUTS = frozenset({
    "metrics/evaluate_timing.json", "plots/evaluate/tradeoff.json", "reports/report.md", "reports/plots",
})
TIMING_KEY = re.compile(r"(seconds|runtime|latency|throughput|speedup|per_second|minutes)", re.IGNORECASE)
# The stages whose outputs are data: their hashes should not depend on the CPU (active_select's picks
# come from a model, so its hash holds only while the same pairs are chosen).
DATA_STAGES = ("prepare", "active_select", "augment", "back_translate", "augment_pool")
# Display order of the evaluated models; any other model found is listed after these.
MODELS = ("teacher", "pruned", "distilled", "quantized", "onnx_fp32", "onnx_int8")
PREDICTION_DIRS = ("predictions/evaluate", "predictions/evaluate_teacher")
EQUIVALENT, DIFFERS = "equivalent within noise", "differs"
CONFIDENCE = 0.95


def _hashed(path: str) -> bool:
    """Data, models, predictions and training curves; not timing outputs, not metrics files."""
    if path in TIMING_OUTPUTS:
        return False
    if path.startswith("dvclive/"):
        return path.endswith("/plots")
    return not path.startswith("metrics/")


def lock_hashes(lock_path: Path, stages: set[str] | None = None) -> dict[str, str]:
    """{output path: md5} for every data and model output in a dvc.lock (not timing outputs, not
    metrics files: those are compared value by value, timings left out)."""
    lock = yaml.safe_load(lock_path.read_text()) or {}
    hashes = {}
    for stage, entry in (lock.get("stages") or {}).items():
        if stages is not None and stage not in stages:
            continue
        for out in entry.get("outs") or []:
            # Metrics files hold timings beside the values: they are compared value by value.
            if _hashed(out["path"]):
                hashes[out["path"]] = out.get("md5") or out.get("hash", "")
    return hashes


def stage_outputs(lock_path: Path, stages: set[str]) -> set[str]:
    """Every output path (metrics included) of `stages` in a dvc.lock."""
    lock = yaml.safe_load(lock_path.read_text()) or {}
    return {out["path"] for name, entry in (lock.get("stages") or {}).items() if name in stages
            for out in entry.get("outs") or []}


def strip_timings(value):
    """The metrics with every timing key removed (recursively)."""
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if not TIMING_KEY.search(str(k))}
    if isinstance(value, list):
        return [strip_timings(v) for v in value]
    return value


def metric_files(run: Path) -> dict[str, Path]:
    """Every metrics JSON a run wrote: metrics/*.json and the dvclive summaries."""
    files = sorted(run.glob("metrics/*.json")) + sorted(run.glob("dvclive/*/metrics.json"))
    return {str(p.relative_to(run)): p for p in files if str(p.relative_to(run)) not in TIMING_OUTPUTS}


def _flat(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def differences(run_a: str | Path, run_b: str | Path, *, stages: set[str] | None = None) -> list[str]:
    """Every output hash and non-timing metric value that differs between two runs.

    stages: compare only these stages' outputs and metrics (e.g. when one checkout ran
    `dvc repro evaluate_teacher` only: the lock entries of the stages it did not run are still the
    committed ones)."""
    run_a, run_b = Path(run_a), Path(run_b)
    diffs = []
    hashes_a, hashes_b = lock_hashes(run_a / "dvc.lock", stages), lock_hashes(run_b / "dvc.lock", stages)
    for path in sorted(set(hashes_a) | set(hashes_b)):
        if hashes_a.get(path) != hashes_b.get(path):
            diffs.append(f"output {path}: {hashes_a.get(path)} != {hashes_b.get(path)}")
    files_a, files_b = metric_files(run_a), metric_files(run_b)
    names = set(files_a) | set(files_b)
    if stages is not None:
        written = stage_outputs(run_a / "dvc.lock", stages) | stage_outputs(run_b / "dvc.lock", stages)
        names = {n for n in names if n in written}
    for name in sorted(names):
        if name not in files_a or name not in files_b:
            diffs.append(f"metrics {name}: only in {'A' if name in files_a else 'B'}")
            continue
        flat_a = _flat(strip_timings(json.loads(files_a[name].read_text())))
        flat_b = _flat(strip_timings(json.loads(files_b[name].read_text())))
        for key in sorted(set(flat_a) | set(flat_b)):
            if flat_a.get(key) != flat_b.get(key):
                diffs.append(f"metric {name}: {key}: {flat_a.get(key)!r} != {flat_b.get(key)!r}")
    return diffs


# ---------------------------------------------------------------------------------------------
# --cross-machine: equally good rather than identical.


def require_run(run: Path) -> None:
    """A run is a directory with a dvc.lock; say which path is missing rather than a traceback."""
    if not run.is_dir():
        raise CompareError(f"{run}: no such directory")
    if not (run / "dvc.lock").is_file():
        raise CompareError(f"{run / 'dvc.lock'}: file not found (did this checkout run the pipeline?)")


def recorded_cpus(run: Path) -> dict[str, dict | None]:
    """{stage: run.cpu or None} from metrics/*.json. evaluate spreads its run info at the top level
    instead of under "run"; runs older than stages._determinism.cpu_info record none."""
    cpus = {}
    for name, path in metric_files(run).items():
        if not name.startswith("metrics/"):
            continue  # dvclive summaries hold training curves, no run info
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CompareError(f"{path}: not JSON: {err}") from None
        info = metrics.get("run", metrics)
        cpus[path.stem] = info.get("cpu") if isinstance(info, dict) else None
    return cpus


def describe_cpu(cpu: dict | None) -> str:
    """'AMD EPYC [avx2 avx512f ...]': the model and the ISA extensions that pick float kernels."""
    if not cpu:
        return "not recorded"
    isa = cpu.get("isa") or {}
    flags = " ".join(flag for flag, present in isa.items() if present) if isa else "ISA unknown"
    return f"{cpu.get('model', '?')} [{flags or 'no AVX2/AVX-512'}]"


def cpu_lines(side: str, cpus: dict[str, dict | None]) -> list[str]:
    """One line when every stage recorded the same CPU, else one per CPU naming its stages (a
    stage cached from an earlier run, or run elsewhere, shows up here)."""
    groups: dict[str, list[str]] = {}
    for stage, cpu in sorted(cpus.items()):
        groups.setdefault(describe_cpu(cpu), []).append(stage)
    if not groups:
        return [f"cpu {side}: not recorded (no metrics/*.json)"]
    if len(groups) == 1:
        return [f"cpu {side}: {next(iter(groups))}"]
    return [f"cpu {side}: {cpu}: {', '.join(stages)}" for cpu, stages in groups.items()]


def data_outputs(run_a: Path, run_b: Path) -> list[dict]:
    """Each data stage output's md5 in both runs and whether it is the same."""
    hashes_a = lock_hashes(run_a / "dvc.lock", set(DATA_STAGES))
    hashes_b = lock_hashes(run_b / "dvc.lock", set(DATA_STAGES))
    return [{"path": path, "a": hashes_a.get(path), "b": hashes_b.get(path),
             "identical": hashes_a.get(path) == hashes_b.get(path)}
            for path in sorted(set(hashes_a) | set(hashes_b))]


def prediction_files(run: Path) -> dict[tuple[str, str], Path]:
    """{(model, split): Parquet file} where `sec compare` would read them (predictions/evaluate
    first, the teacher also from predictions/evaluate_teacher)."""
    names = {tuple(path.stem.rsplit("-", 1)) for d in PREDICTION_DIRS for path in (run / d).glob("*-*.parquet")}
    files = {}
    for model, split in names:
        if split not in SPLITS:
            continue
        found = [run / rel for rel in prediction_paths(model, split) if (run / rel).is_file()]
        if found:
            files[(model, split)] = found[0]
    if not files:
        looked = ", ".join(str(run / d) for d in PREDICTION_DIRS)
        raise CompareError(f"{run}: no prediction files (<model>-dev.parquet / -test.parquet in {looked})")
    return files


def _model_order(key: tuple[str, str]) -> tuple:
    model, split = key
    return (MODELS.index(model) if model in MODELS else len(MODELS), model, SPLITS.index(split))


def read_predictions(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (ValueError, OSError) as err:
        raise CompareError(f"{path}: not a Parquet file: {err}") from None
    frame.attrs["source"] = str(path)  # pair_frames names it in every refusal
    return frame


def equivalence(low: float, high: float) -> str:
    """Equivalent when the interval contains 0: B - A is no larger than what resampling the same
    examples gives, which is all a change of float kernels should cost."""
    return EQUIVALENT if low <= 0 <= high else DIFFERS


def compare_model(path_a: Path, path_b: Path, *, resamples: int) -> dict:
    """Accuracy of B - A on the same rows (refused, naming the files, when the row_ids or gold
    labels differ), its paired-bootstrap interval, McNemar's p and the share of equal predictions."""
    (a,), (b,) = pair_frames(read_predictions(path_a), read_predictions(path_b))
    correct_a = (a["pred"] == a["label"]).to_numpy(np.float64)
    correct_b = (b["pred"] == b["label"]).to_numpy(np.float64)
    diff, low, high = paired_bootstrap(correct_a, correct_b, resamples=resamples, confidence=CONFIDENCE)
    return {
        "rows": len(a),
        "accuracy_a": float(correct_a.mean()),
        "accuracy_b": float(correct_b.mean()),
        "diff": diff,
        "low": low,
        "high": high,
        "mcnemar_p": mcnemar_exact(correct_a, correct_b),
        "agreement": float((a["pred"].to_numpy() == b["pred"].to_numpy()).mean()),
        "verdict": equivalence(low, high),
        "files": {"a": str(path_a), "b": str(path_b)},
    }


def cross_machine(run_a: str | Path, run_b: str | Path, *, resamples: int = 10_000) -> dict:
    """The --cross-machine comparison of two runs (accuracies and intervals as fractions)."""
    run_a, run_b = Path(run_a), Path(run_b)
    for run in (run_a, run_b):
        require_run(run)
    files_a, files_b = prediction_files(run_a), prediction_files(run_b)
    models = []
    for model, split in sorted(set(files_a) & set(files_b), key=_model_order):
        compared = compare_model(files_a[(model, split)], files_b[(model, split)], resamples=resamples)
        models.append({"model": model, "split": split, **compared})
    if not models:
        raise CompareError(f"no model has predictions on the same split in both {run_a} and {run_b}")
    only = [{"model": model, "split": split, "only_in": "A" if (model, split) in files_a else "B"}
            for model, split in sorted(set(files_a) ^ set(files_b), key=_model_order)]
    return {
        "a": str(run_a),
        "b": str(run_b),
        "cpu": {"a": recorded_cpus(run_a), "b": recorded_cpus(run_b)},
        "data_outputs": data_outputs(run_a, run_b),
        "models": models,
        "only_in_one_run": only,
        "confidence": CONFIDENCE,
        "resamples": resamples,
        "equivalent": all(m["verdict"] == EQUIVALENT for m in models),
    }


def _pts(value: float, signed: bool = False) -> str:
    return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}"


def format_cross_machine(result: dict) -> str:
    """The readable table: CPUs, data hashes, then one row per model and split."""
    lines = [f"A: {result['a']}", f"B: {result['b']}"]
    lines += cpu_lines("A", result["cpu"]["a"]) + cpu_lines("B", result["cpu"]["b"])
    lines += ["", f"data outputs ({', '.join(DATA_STAGES)}):"]
    for out in result["data_outputs"]:
        if out["identical"]:
            state = f"identical  {out['a']}"
        elif out["a"] is None or out["b"] is None:
            state = f"only in {'A' if out['b'] is None else 'B'}"
        else:
            state = f"differs    A {out['a']}  B {out['b']}"
        lines.append(f"  {out['path']:<36}{state}")
    if not result["data_outputs"]:
        lines.append("  none in either dvc.lock")
    lines += [
        "",
        f"accuracy of B - A on the same rows, in points, paired-bootstrap {result['confidence']:.0%} CI "
        f"({result['resamples']} resamples); agree = share of examples with the same predicted label:",
        f"  {'model':<12}{'split':<6}{'rows':>6}{'acc A':>8}{'acc B':>8}{'B-A':>8}  {'95% CI':<18}"
        f"{'McNemar p':>10}{'agree':>9}  verdict",
    ]
    for m in result["models"]:
        ci = f"[{_pts(m['low'], True)}, {_pts(m['high'], True)}]"
        lines.append(
            f"  {m['model']:<12}{m['split']:<6}{m['rows']:>6}{_pts(m['accuracy_a']):>8}{_pts(m['accuracy_b']):>8}"
            f"{_pts(m['diff'], True):>8}  {ci:<18}{m['mcnemar_p']:>10.3g}{_pts(m['agreement']) + '%':>9}  {m['verdict']}"
        )
    for o in result["only_in_one_run"]:
        lines.append(f"  {o['model']:<12}{o['split']:<6}only in {o['only_in']}: not compared")
    differ = [f"{m['model']} {m['split']}" for m in result["models"] if m["verdict"] != EQUIVALENT]
    lines.append("")
    if differ:
        lines.append(f"{len(differ)} of {len(result['models'])} model/split pairs differ: {', '.join(differ)}")
    else:
        lines.append(f"equivalent within noise: all {len(result['models'])} model/split pairs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", help="a checkout that ran the pipeline")
    parser.add_argument("run_b")
    parser.add_argument("--stages", help="comma-separated stages to compare (default: all in dvc.lock)")
    parser.add_argument("--cross-machine", action="store_true",
                        help="runs on different CPUs: paired accuracy tests per model instead of identical hashes")
    parser.add_argument("--json", metavar="OUT", help="with --cross-machine: also write the result to OUT")
    parser.add_argument("--resamples", type=int, default=10_000, help="paired-bootstrap resamples (--cross-machine)")
    args = parser.parse_args(argv)
    if args.cross_machine and args.stages:
        parser.error("--stages selects what must be identical; --cross-machine compares every model's predictions")
    if args.json and not args.cross_machine:
        parser.error("--json goes with --cross-machine")
    try:
        if args.cross_machine:
            return _main_cross_machine(args)
        for run in (Path(args.run_a), Path(args.run_b)):
            require_run(run)
    except CompareError as err:
        print(f"reproducibility: error: {err}", file=sys.stderr)
        return 2
    stages = set(args.stages.split(",")) if args.stages else None
    diffs = differences(args.run_a, args.run_b, stages=stages)
    outputs = len(lock_hashes(Path(args.run_a) / "dvc.lock", stages))
    if diffs:
        print(f"{len(diffs)} difference(s):")
        print("\n".join(f"  {d}" for d in diffs))
        return 1
    which = ", ".join(sorted(stages)) if stages else "every stage"
    print(f"identical: {outputs} data/model output hashes in dvc.lock and every non-timing metric ({which})")
    return 0


def _main_cross_machine(args) -> int:
    result = cross_machine(args.run_a, args.run_b, resamples=args.resamples)
    print(format_cross_machine(result))
    if args.json:
        write_json(result, args.json)
    return 0 if result["equivalent"] else 1

if __name__ == "__main__":
    sys.exit(main())
