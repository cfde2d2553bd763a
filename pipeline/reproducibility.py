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


def lock_hashes(lock_path: Path) -> dict[str, str]:
    """{output path: md5} for every data and model output in a dvc.lock (not timing outputs, not
    metrics files: those are compared value by value, timings left out)."""
    lock = yaml.safe_load(lock_path.read_text()) or {}
    hashes = {}
    for stage, entry in (lock.get("stages") or {}).items():
        for out in entry.get("outs") or []:
            # Metrics files hold timings beside the values: they are compared value by value.
            if out["path"] not in TIMING_OUTPUTS and not out["path"].startswith(("metrics/", "dvclive/")) \
                    or out["path"].startswith("dvclive/") and out["path"].endswith("/plots"):
                hashes[out["path"]] = out.get("md5") or out.get("hash", "")
    return hashes


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


def differences(run_a: str | Path, run_b: str | Path, *, common_only: bool = False) -> list[str]:
    """Every output hash and non-timing metric value that differs between two runs.

    common_only: compare only the outputs and metrics files both runs have (one run went further
    down the pipeline than the other, e.g. `dvc repro evaluate_teacher`)."""
    run_a, run_b = Path(run_a), Path(run_b)
    diffs = []
    hashes_a, hashes_b = lock_hashes(run_a / "dvc.lock"), lock_hashes(run_b / "dvc.lock")
    paths = set(hashes_a) & set(hashes_b) if common_only else set(hashes_a) | set(hashes_b)
    for path in sorted(paths):
        if hashes_a.get(path) != hashes_b.get(path):
            diffs.append(f"output {path}: {hashes_a.get(path)} != {hashes_b.get(path)}")
    files_a, files_b = metric_files(run_a), metric_files(run_b)
    for name in sorted(set(files_a) & set(files_b) if common_only else set(files_a) | set(files_b)):
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
    parser.add_argument("--common-only", action="store_true",
                        help="compare only the outputs and metrics both runs have")
    args = parser.parse_args(argv)
    diffs = differences(args.run_a, args.run_b, common_only=args.common_only)
    hashes_a, hashes_b = lock_hashes(Path(args.run_a) / "dvc.lock"), lock_hashes(Path(args.run_b) / "dvc.lock")
    outputs = len(set(hashes_a) & set(hashes_b)) if args.common_only else len(hashes_a)
    if diffs:
        print(f"{len(diffs)} difference(s):")
        print("\n".join(f"  {d}" for d in diffs))
        return 1
    files = metric_files(Path(args.run_a)).keys() & metric_files(Path(args.run_b)).keys()
    print(f"identical: {outputs} data/model output hashes in dvc.lock and every non-timing value of "
          f"{len(files)} metrics files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
