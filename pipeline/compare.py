"""`sec compare A B`: did B help over A? Paired tests on per-example predictions.

A and B are each a git commit/branch/tag, a DVC experiment name (as `dvc exp show` lists it), a
directory of prediction Parquet files, or a model directory (scored here on the prepared splits);
or a comma-separated list of those, one per seed: seed i of A is paired with seed i of B on the same
row_ids and the pooled examples are bootstrapped within seeds.

Layers, so the grid and the controller can reuse the statistics without DVC:
  compare_predictions(a_frames, b_frames): pure (pandas + numpy), one split;
  resolve_rev / read_at_rev: git and DVC only (a rev or experiment name -> commit -> Parquet);
  load_predictions: picks the source kind and the model, names the file in every error.
The DEV split decides; the test split is printed for the report only. Callers that choose
(controller, grid verdicts) must pass dev frames only.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.stats import mcnemar_exact, paired_bootstrap, verdict
from stages._io import LABEL_NAMES, DataError
from stages.evaluate import PROB_COLUMNS, SPLITS  # the prediction files' contract, defined where they are written

PREDICTION_COLUMNS = ("row_id", "label", "pred", *PROB_COLUMNS)
METRICS = ("accuracy", "macro_f1", "cross_entropy")
LOWER_IS_BETTER = frozenset({"cross_entropy"})
DEFAULT_MODEL = "quantized"
FALLBACK_MODEL = "teacher"
_K = len(LABEL_NAMES)
# float32 probabilities underflow to 0 where a logit is far below the others; clip there so one
# such example costs -log(tiny) ~ 87 nats instead of infinity.
_PROB_FLOOR = float(np.finfo(np.float32).tiny)


class CompareError(DataError):
    """The two sides cannot be compared (missing file, unknown rev, different rows or labels)."""


# ---------------------------------------------------------------------------------------------
# Pure part: per-example values and the comparison of one split.


def macro_f1(codes: np.ndarray, axis: int | None = None) -> float | np.ndarray:
    """Macro-F1 over the 3 classes from codes gold * 3 + pred; vectorised over rows when 2-D.

    A class absent from both gold and predictions counts as F1 0, as in evaluate.py
    (f1_score(..., labels=[0, 1, 2])). Works as a `paired_bootstrap` statistic (axis=1).
    """
    codes = np.asarray(codes, dtype=np.int64)
    rows = codes.reshape(1, -1) if codes.ndim == 1 else codes
    if codes.ndim == 2 and axis not in (1, -1):
        raise ValueError("macro_f1: a 2-D input is reduced along axis 1")
    r = rows.shape[0]
    # One bincount for all rows: row i's codes are shifted into their own block of 9 cells.
    shifted = rows + (np.arange(r, dtype=np.int64) * _K * _K)[:, None]
    confusion = np.bincount(shifted.ravel(), minlength=r * _K * _K).reshape(r, _K, _K)  # [row, gold, pred]
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    denom = confusion.sum(axis=2) + confusion.sum(axis=1)
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)
    result = f1.mean(axis=1)
    return float(result[0]) if codes.ndim == 1 else result


def _source(frame: pd.DataFrame, fallback: str) -> str:
    return str(frame.attrs.get("source", fallback))


def check_predictions(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The contract's columns, unique row_ids, labels and predictions in 0..2; sorted by row_id."""
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise CompareError(f"{source}: missing column(s) {missing}; found {list(frame.columns)}")
    if len(frame) == 0:
        raise CompareError(f"{source}: no rows")
    if frame["row_id"].duplicated().any():
        dup = frame.loc[frame["row_id"].duplicated(), "row_id"].iloc[0]
        raise CompareError(f"{source}: row_id {dup} appears more than once")
    for col in ("label", "pred"):
        bad = ~frame[col].isin(range(_K))
        if bad.any():
            raise CompareError(f"{source}: column {col!r} has {frame.loc[bad, col].iloc[0]!r}, expected 0..{_K - 1}")
    out = frame.sort_values("row_id", kind="stable").reset_index(drop=True)
    out.attrs["source"] = source
    return out


def _per_example(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    gold = frame["label"].to_numpy(np.int64)
    pred = frame["pred"].to_numpy(np.int64)
    probs = frame[list(PROB_COLUMNS)].to_numpy(np.float64)
    return {
        "accuracy": (gold == pred).astype(np.float64),
        "macro_f1": gold * _K + pred,
        "cross_entropy": -np.log(np.maximum(probs[np.arange(len(gold)), gold], _PROB_FLOOR)),
    }


def _as_list(frames) -> list[pd.DataFrame]:
    return [frames] if isinstance(frames, pd.DataFrame) else list(frames)


def pair_frames(a_frames, b_frames) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Check and sort both sides; refuse (naming both files) when a seed's row_ids or gold labels differ."""
    a_list, b_list = _as_list(a_frames), _as_list(b_frames)
    if not a_list or len(a_list) != len(b_list):
        raise CompareError(f"A has {len(a_list)} seed(s) and B has {len(b_list)}: give one B per A, in seed order")
    a_out, b_out = [], []
    for i, (a, b) in enumerate(zip(a_list, b_list)):
        a = check_predictions(a, _source(a, f"A[{i}]"))
        b = check_predictions(b, _source(b, f"B[{i}]"))
        sa, sb = a.attrs["source"], b.attrs["source"]
        ids_a, ids_b = a["row_id"].to_numpy(), b["row_id"].to_numpy()
        if len(ids_a) != len(ids_b) or not np.array_equal(ids_a, ids_b):
            only_a = np.setdiff1d(ids_a, ids_b)
            only_b = np.setdiff1d(ids_b, ids_a)
            raise CompareError(
                f"row_ids differ between {sa} ({len(ids_a)} rows) and {sb} ({len(ids_b)} rows): "
                f"{len(only_a)} only in A (e.g. {only_a[:3].tolist()}), {len(only_b)} only in B "
                f"(e.g. {only_b[:3].tolist()}); were they evaluated on the same split?"
            )
        differ = a["label"].to_numpy() != b["label"].to_numpy()
        if differ.any():
            row = int(a["row_id"].to_numpy()[differ][0])
            raise CompareError(
                f"gold labels differ between {sa} and {sb} on {int(differ.sum())} row(s), e.g. row_id {row}"
            )
        a_out.append(a)
        b_out.append(b)
    return a_out, b_out


def compare_predictions(
    a_frames: pd.DataFrame | Sequence[pd.DataFrame],
    b_frames: pd.DataFrame | Sequence[pd.DataFrame],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Paired comparison of B against A on ONE split; frames follow the predictions contract.

    a_frames / b_frames: one frame, or one per seed (seed i of A paired with seed i of B). Seeds are
    pooled; the bootstrap resamples within each seed. Every metric is computed on the pooled
    examples (macro-F1 from the pooled confusion matrix). `frame.attrs["source"]`, when set, names
    the file in errors. Returns
      {"rows": pooled examples, "seeds": k, "rows_per_seed": [...], "confidence": 0.95,
       "metrics": {"accuracy" | "macro_f1" | "cross_entropy":
                   {"a", "b", "diff" (B - A), "low", "high", "verdict", "mcnemar_p" (accuracy only),
                    "higher_is_better"}}}
    verdict: "helped" when B is better (higher accuracy / macro-F1, LOWER cross-entropy) with the
    whole interval on that side of 0, "hurt" when worse, else "not shown".
    """
    a_list, b_list = pair_frames(a_frames, b_frames)
    a_vals = [_per_example(f) for f in a_list]
    b_vals = [_per_example(f) for f in b_list]
    groups = np.concatenate([np.full(len(f), i) for i, f in enumerate(a_list)])
    statistics: dict[str, Callable] = {"accuracy": np.mean, "macro_f1": macro_f1, "cross_entropy": np.mean}
    metrics = {}
    for name, statistic in statistics.items():
        a = np.concatenate([v[name] for v in a_vals])
        b = np.concatenate([v[name] for v in b_vals])
        diff, low, high = paired_bootstrap(
            a,
            b,
            statistic,
            resamples=resamples,
            seed=seed,
            confidence=confidence,
            groups=groups if len(a_list) > 1 else None,
        )
        lower_better = name in LOWER_IS_BETTER
        entry = {
            "a": float(statistic(a)),
            "b": float(statistic(b)),
            "diff": diff,
            "low": low,
            "high": high,
            # For a lower-is-better metric B helped when the whole interval of B - A is below 0.
            "verdict": verdict(-high, -low) if lower_better else verdict(low, high),
            "higher_is_better": not lower_better,
        }
        if name == "accuracy":
            entry["mcnemar_p"] = mcnemar_exact(a.astype(bool), b.astype(bool))
        metrics[name] = entry
    return {
        "rows": int(groups.size),
        "seeds": len(a_list),
        "rows_per_seed": [len(f) for f in a_list],
        "confidence": confidence,
        "metrics": metrics,
    }


# ---------------------------------------------------------------------------------------------
# Git and DVC: a rev or experiment name -> commit -> Parquet at that commit.


def _git(args: list[str], repo: str | Path | None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)


def resolve_rev(name: str, repo: str | Path | None = None) -> str:
    """A commit, branch, tag, full ref or DVC experiment name -> the commit's full sha.

    Experiments live under refs/exps/<2 hex>/<rest of baseline sha>/<name>. A name found under
    several baselines resolves to the one whose baseline is HEAD, as `dvc exp` itself does;
    otherwise it is ambiguous and the error lists the refs to pick from.
    """
    done = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"], repo)
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout.strip()
    refs = _git(["for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/"], repo)
    if refs.returncode != 0:
        raise CompareError(f"{name!r}: not a directory, and git cannot read this repository: {refs.stderr.strip()}")
    matches = []
    for line in refs.stdout.splitlines():
        sha, _, ref = line.partition(" ")
        parts = ref.split("/")
        if len(parts) == 5 and parts[4] == name:  # refs/exps/ab/cdef.../name, not refs/exps/exec/...
            matches.append((sha, ref, parts[2] + parts[3]))
    if len(matches) > 1:
        head = _git(["rev-parse", "HEAD"], repo).stdout.strip()
        on_head = [m for m in matches if m[2] == head]
        if len(on_head) == 1:
            matches = on_head
        else:
            listed = ", ".join(ref for _, ref, _ in matches)
            raise CompareError(f"experiment name {name!r} is ambiguous (none on HEAD's baseline): pass one of {listed}")
    if not matches:
        raise CompareError(
            f"{name!r}: not a directory, a git commit/branch/tag, or a DVC experiment of this repository "
            "(see `dvc exp list --all-commits`)"
        )
    return matches[0][0]


def read_at_rev(path: str, rev: str, repo: str | Path | None = None) -> pd.DataFrame | None:
    """The Parquet file `path` (a DVC-tracked output or a git file) as of commit `rev`; None if absent.

    Reads through DVC's cache (dvc.api.open), so an experiment's outputs need not be checked out.
    """
    import dvc.api
    from dvc.exceptions import DvcException, PathMissingError

    try:
        with dvc.api.open(path, repo=None if repo is None else str(repo), rev=rev, mode="rb") as handle:
            data = handle.read()
    except (FileNotFoundError, PathMissingError):
        # DVC raises the same error for a path that is not there and for an output whose data is
        # not in the local cache; only the first may fall back to another file.
        if _tracked_at_rev(path, rev, repo):
            raise CompareError(
                f"{path} at {rev[:10]}: tracked there, but its data is not in the local DVC cache "
                f"(fetch it: `dvc exp pull <remote> <experiment>` or `dvc pull`)"
            ) from None
        return None
    except DvcException as err:
        raise CompareError(f"{path} at {rev[:10]}: DVC cannot read it: {err}") from None
    try:
        return pd.read_parquet(io.BytesIO(data))
    except (ValueError, OSError) as err:
        raise CompareError(f"{path} at {rev[:10]}: not a Parquet file: {err}") from None


def _tracked_at_rev(path: str, rev: str, repo: str | Path | None) -> bool:
    """Whether `path` is a DVC output (or inside one) or a git file at `rev`, from metadata alone."""
    from dvc.exceptions import DvcException
    from dvc.fs import DVCFileSystem

    try:
        return bool(DVCFileSystem(repo=None if repo is None else str(repo), rev=rev).exists(path))
    except (DvcException, OSError):
        return False


# ---------------------------------------------------------------------------------------------
# Sources: what one side's spec points at, and its predictions per split.


def prediction_file(model: str, split: str, stage: str = "evaluate") -> str:
    """Where `stage` (evaluate or evaluate_teacher) writes `model`'s per-example predictions on
    `split`, relative to the repository root: stages/evaluate.py names them `<model>-<split>.parquet`
    in the directory dvc.yaml gives it, predictions/<stage>. Every reader builds the path here."""
    return f"predictions/{stage}/{model}-{split}.parquet"


def prediction_paths(model: str, split: str) -> list[str]:
    """Where the pipeline writes `model`'s predictions, relative to the repository root: evaluate's
    file, and for the teacher also evaluate_teacher's (a teacher-only run has only that one)."""
    paths = [prediction_file(model, split)]
    if model == FALLBACK_MODEL:
        paths.append(prediction_file(FALLBACK_MODEL, split, "evaluate_teacher"))
    return paths


@dataclass
class Source:
    """One side's spec for one seed: a rev/experiment, a predictions directory or a model directory."""

    spec: str
    kind: str  # "rev", "predictions", "model"
    location: str  # commit sha or directory
    repo: str | Path | None = None
    # Frames already read (choose_model probes what load_predictions then reads) or scored.
    _cache: dict[tuple[str, str], tuple[pd.DataFrame, str] | None] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return f"{self.spec} ({self.location[:10]})" if self.kind == "rev" else self.spec

    def read(self, model: str, split: str) -> tuple[pd.DataFrame, str] | None:
        """(frame, where it came from) for `model` on `split`, or None when this source lacks it.

        A model directory is scored (once per split) whatever `model` says: it is the model."""
        key = ("", split) if self.kind == "model" else (model, split)
        if key not in self._cache:
            self._cache[key] = self._read(model, split)
        return self._cache[key]

    def _read(self, model: str, split: str) -> tuple[pd.DataFrame, str] | None:
        if self.kind == "model":
            frame = score_model_dir(self.location, split, self.repo)
            return frame, f"{self.spec} scored on data/prepared/{split}.parquet"
        if self.kind == "rev":
            for path in prediction_paths(model, split):
                frame = read_at_rev(path, self.location, self.repo)
                if frame is not None:
                    return frame, f"{path}@{self.spec}"
            return None
        directory = Path(self.location)
        for rel in _directory_candidates(model, split):
            path = directory / rel
            if path.is_file():
                try:
                    return pd.read_parquet(path), str(path)
                except (ValueError, OSError) as err:
                    raise CompareError(f"{path}: not a Parquet file: {err}") from None
        return None


def _directory_candidates(model: str, split: str) -> list[str]:
    """A predictions directory may be predictions/evaluate itself, predictions/, or a checkout root."""
    full = prediction_paths(model, split)  # predictions/<stage>/<model>-<split>.parquet
    return [Path(full[0]).name, *(str(Path(p).relative_to("predictions")) for p in full), *full]


def make_source(spec: str, repo: str | Path | None = None) -> Source:
    """A directory on disk wins over a rev of the same name; a directory with config.json (and no
    predictions) is a model to score."""
    path = Path(spec) if repo is None or Path(spec).is_absolute() else Path(repo) / spec
    if path.is_dir():
        has_predictions = any(path.glob("*.parquet")) or any(
            (path / d).is_dir() for d in ("evaluate", "evaluate_teacher", "predictions")
        )
        if not has_predictions and (path / "config.json").is_file():
            return Source(spec, "model", str(path), repo)
        return Source(spec, "predictions", str(path), repo)
    return Source(spec, "rev", resolve_rev(spec, repo), repo)


def score_model_dir(directory: str | Path, split: str, repo: str | Path | None = None) -> pd.DataFrame:
    """Score a model directory on data/prepared/<split>.parquet -> a predictions frame (contract columns)."""
    from stages._inference import predict_logits, softmax
    from stages._io import read_pairs
    from stages._models import load_model
    from stages._params import load_params

    root = Path(repo) if repo is not None else Path()
    params = load_params(root / "params.yaml")
    data = read_pairs(root / "data" / "prepared" / f"{split}.parquet")
    if "row_id" not in data.columns:
        raise CompareError(f"{root / 'data/prepared' / f'{split}.parquet'}: no row_id column (rerun prepare)")
    model, tokenizer = load_model(directory)
    logits = predict_logits(
        model,
        tokenizer,
        data["premise"].tolist(),
        data["hypothesis"].tolist(),
        batch_size=params.evaluate.batch_size,
        max_length=params.model.max_length,
        desc=f"score {directory} {split}",
    )
    probs = softmax(logits.astype(np.float64)).astype(np.float32)
    frame = pd.DataFrame(
        {
            "row_id": data["row_id"].to_numpy(np.int64),
            "label": data["label"].to_numpy(np.int64),
            "pred": logits.argmax(axis=1).astype(np.int64),
        }
    )
    for column, values in zip(PROB_COLUMNS, probs.T):
        frame[column] = values
    return frame.sort_values("row_id", kind="stable").reset_index(drop=True)


def choose_model(sources: Sequence[Source], requested: str | None, split: str) -> str:
    """The model whose predictions are compared: `requested`, else quantized when every rev /
    predictions source has it, else teacher (data-only experiments stop at evaluate_teacher).

    One model for every source, so a quantized model is never silently compared with a teacher.
    """
    if requested is not None:
        return requested
    readable = [s for s in sources if s.kind != "model"]
    if all(s.read(DEFAULT_MODEL, split) is not None for s in readable):
        return DEFAULT_MODEL
    return FALLBACK_MODEL


def load_predictions(sources: Sequence[Source], model: str, split: str, side: str) -> list[pd.DataFrame]:
    frames = []
    for source in sources:
        found = source.read(model, split)
        if found is None:
            looked = ", ".join(
                prediction_paths(model, split) if source.kind == "rev" else _directory_candidates(model, split)
            )
            raise CompareError(
                f"{side} {source.label}: no predictions of model {model!r} on {split} (looked for {looked})"
            )
        frame, where = found
        frame = frame.copy()
        frame.attrs["source"] = where
        frames.append(frame)
    return frames


def compare_sources(
    a_spec: str,
    b_spec: str,
    *,
    model: str | None = None,
    splits: Sequence[str] = SPLITS,
    resamples: int = 10_000,
    seed: int = 0,
    repo: str | Path | None = None,
) -> dict:
    """Resolve both (comma-separated) specs, load each split's predictions, compare them."""
    a_sources = [make_source(s.strip(), repo) for s in a_spec.split(",") if s.strip()]
    b_sources = [make_source(s.strip(), repo) for s in b_spec.split(",") if s.strip()]
    if not a_sources or len(a_sources) != len(b_sources):
        raise CompareError(
            f"A lists {len(a_sources)} seed(s) and B lists {len(b_sources)}: give one B per A, in seed order"
        )
    chosen = choose_model([*a_sources, *b_sources], model, splits[0])
    out = {
        "a": [{"spec": s.spec, "kind": s.kind, "location": s.location} for s in a_sources],
        "b": [{"spec": s.spec, "kind": s.kind, "location": s.location} for s in b_sources],
        "model": chosen,
        "resamples": resamples,
        "seed": seed,
        "splits": {},
    }
    for split in splits:
        a_frames = load_predictions(a_sources, chosen, split, "A")
        b_frames = load_predictions(b_sources, chosen, split, "B")
        result = compare_predictions(a_frames, b_frames, resamples=resamples, seed=seed)
        result["files"] = {"a": [f.attrs["source"] for f in a_frames], "b": [f.attrs["source"] for f in b_frames]}
        out["splits"][split] = result
    return out


# ---------------------------------------------------------------------------------------------
# Text output.

_TITLES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "cross_entropy": "cross-entropy"}


def _fmt(value: float, metric: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    # Accuracy and macro-F1 in percent (differences in points), cross-entropy in nats.
    if metric == "cross_entropy":
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}"


def format_report(result: dict) -> str:
    def side(entries: list[dict]) -> str:
        return ", ".join(e["spec"] + (f" ({e['location'][:10]})" if e["kind"] == "rev" else "") for e in entries)

    lines = [
        f"A: {side(result['a'])}",
        f"B: {side(result['b'])}",
        f"model: {result['model']}   resamples: {result['resamples']}   seed: {result['seed']}",
        "B - A with its paired-bootstrap 95% CI; accuracy and macro-F1 in %, differences in points, "
        "cross-entropy in nats (lower is better); helped / hurt = B better / worse with the CI excluding 0.",
    ]
    for split, res in result["splits"].items():
        role = "decides" if split == "dev" else "reported only"
        lines.append("")
        lines.append(
            f"{split} ({role}): {res['rows_per_seed'][0] if res['seeds'] == 1 else res['rows_per_seed']} rows, {res['seeds']} seed(s)"
        )
        lines.append(f"  {'metric':<14}{'A':>9}{'B':>9}{'B-A':>9}  {'95% CI':<20}{'McNemar p':>10}  verdict")
        for name in METRICS:
            m = res["metrics"][name]
            ci = f"[{_fmt(m['low'], name, True)}, {_fmt(m['high'], name, True)}]"
            p = f"{m['mcnemar_p']:.4g}" if "mcnemar_p" in m else "-"
            lines.append(
                f"  {_TITLES[name]:<14}{_fmt(m['a'], name):>9}{_fmt(m['b'], name):>9}{_fmt(m['diff'], name, True):>9}"
                f"  {ci:<20}{p:>10}  {m['verdict']}"
            )
    return "\n".join(lines)


def run_cli(args) -> int:
    """`sec compare` (wired in pipeline/cli.py)."""
    splits = SPLITS if args.split == "both" else (args.split,)
    result = compare_sources(args.a, args.b, model=args.model, splits=splits, resamples=args.resamples, seed=args.seed)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
