"""Do two runs of the pipeline agree? Output hashes from dvc.lock, and metrics apart from timings.

    python -m pipeline.reproducibility RUN_A RUN_B     # two checkouts that each ran `dvc repro`

The contract (README "Reproducibility"): on one machine, the same commit and params give the same
md5 for every data and model output in dvc.lock and the same value for every metric, except
timings. Timings are the outputs in TIMING_OUTPUTS (they embed latencies) and the metric keys
TIMING_KEY matches (seconds, latency, throughput, speed-up). Exit 0 when the runs agree, 1 with
every difference listed otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

# Outputs whose content is (or is drawn from) a latency measurement.
TIMING_OUTPUTS = frozenset({
    "metrics/evaluate_timing.json", "plots/evaluate/tradeoff.json", "reports/report.md", "reports/plots",
})
TIMING_KEY = re.compile(r"(seconds|runtime|latency|throughput|speedup|per_second|minutes)", re.IGNORECASE)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", help="a checkout that ran the pipeline")
    parser.add_argument("run_b")
    parser.add_argument("--stages", help="comma-separated stages to compare (default: all in dvc.lock)")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
