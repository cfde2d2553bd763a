"""Keep a finished run's comparable files in git, so another machine can pair with it later.

    python -m pipeline.reference_run                        # . -> reports/reference_run
    python -m pipeline.reproducibility reports/reference_run . --cross-machine   # on another CPU

A run's per-example predictions are DVC outputs: they live in the local cache and the DVC remote,
and a fresh clone on another machine has neither. Without them, two runs on different CPUs can
only be compared by their accuracies, unpaired. This copies what `pipeline.reproducibility` reads
(dvc.lock, metrics/*.json, the dvclive summaries and predictions/evaluate*/, about 2 MB on the cpu
profile) into a directory that git tracks; that directory is itself a run the comparison accepts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.reproducibility import PREDICTION_DIRS, metric_files


class SnapshotError(FileNotFoundError):
    """The run lacks a file a comparison needs; the message names it."""


def snapshot(run: str | Path, out: str | Path) -> list[str]:
    """Copy `run`'s dvc.lock, metrics and predictions into `out` (replaced whole); the paths copied."""
    run, out = Path(run), Path(out)
    if not (run / "dvc.lock").is_file():
        raise SnapshotError(f"{run / 'dvc.lock'}: not found (run the pipeline first)")
    files = ["dvc.lock", *metric_files(run)]
    for directory in PREDICTION_DIRS:
        found = sorted((run / directory).glob("*.parquet"))
        if not found:
            raise SnapshotError(f"{run / directory}: no predictions (run `dvc repro evaluate` first)")
        files += [str(p.relative_to(run)) for p in found]
    # Built beside `out` and swapped in whole: a killed copy never leaves half a reference run.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel in files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / rel, staging / rel)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=".", help="a checkout that ran the pipeline")
    parser.add_argument("--out", default="reports/reference_run")
    args = parser.parse_args(argv)
    try:
        files = snapshot(args.run, args.out)
    except SnapshotError as err:
        print(f"reference_run: {err}", file=sys.stderr)
        return 2
    print(f"reference_run: {len(files)} files from {args.run} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
