"""`sec compare`: the pure comparison, directories of predictions, model directories and revs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from conftest import REPO, make_pairs, run_cmd
from pipeline import compare
from pipeline.cli import main
from pipeline.compare import CompareError, compare_predictions, compare_sources, macro_f1, resolve_rev


def preds(labels, pred, *, row_ids=None, gold_prob=None) -> pd.DataFrame:
    """A predictions frame (contract columns); gold_prob: probability on the gold class (rest split evenly)."""
    labels = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    n = len(labels)
    row_ids = np.arange(100, 100 + n) if row_ids is None else np.asarray(row_ids)
    gold_prob = np.full(n, 0.5) if gold_prob is None else np.asarray(gold_prob, dtype=float)
    probs = np.repeat(((1 - gold_prob) / 2)[:, None], 3, axis=1)
    probs[np.arange(n), labels] = gold_prob
    frame = pd.DataFrame({"row_id": row_ids.astype(np.int64), "label": labels, "pred": pred})
    for i, name in enumerate(("entailment", "neutral", "contradiction")):
        frame[f"prob_{name}"] = probs[:, i].astype(np.float32)
    return frame


def pair_with(only_a: int, only_b: int, both: int, neither: int, seed: int = 0):
    """Frames for A and B with the given correct/incorrect counts (labels cycle over the classes)."""
    n = only_a + only_b + both + neither
    labels = np.arange(n) % 3
    wrong = (labels + 1) % 3
    a_ok = np.array([True] * only_a + [False] * only_b + [True] * both + [False] * neither)
    b_ok = np.array([False] * only_a + [True] * only_b + [True] * both + [False] * neither)
    perm = np.random.default_rng(seed).permutation(n)  # mix the kinds over classes and row_ids
    a_ok, b_ok = a_ok[perm], b_ok[perm]
    a = preds(labels, np.where(a_ok, labels, wrong), gold_prob=np.where(a_ok, 0.6, 0.2))
    b = preds(labels, np.where(b_ok, labels, wrong), gold_prob=np.where(b_ok, 0.8, 0.3))
    return a, b


def test_compare_predictions_values_match_independent_computation():
    a, b = pair_with(only_a=1, only_b=6, both=30, neither=13)
    res = compare_predictions(a, b, resamples=500)
    m = res["metrics"]
    assert res["rows"] == 50 and res["seeds"] == 1
    assert m["accuracy"]["a"] == pytest.approx(31 / 50) and m["accuracy"]["b"] == pytest.approx(36 / 50)
    assert m["accuracy"]["diff"] == pytest.approx(5 / 50)
    assert m["accuracy"]["mcnemar_p"] == pytest.approx(0.125)  # b=1, c=6 discordant
    for side, frame in (("a", a), ("b", b)):
        expected_f1 = f1_score(frame["label"], frame["pred"], average="macro", labels=[0, 1, 2])
        assert m["macro_f1"][side] == pytest.approx(expected_f1)
        gold_p = frame[["prob_entailment", "prob_neutral", "prob_contradiction"]].to_numpy()[
            np.arange(50), frame["label"]
        ]
        assert m["cross_entropy"][side] == pytest.approx(-np.log(gold_p.astype(np.float64)).mean())
    assert m["cross_entropy"]["higher_is_better"] is False


def test_verdicts_follow_each_metrics_direction():
    a, b = pair_with(only_a=5, only_b=120, both=200, neither=100)
    m = compare_predictions(a, b, resamples=1000)["metrics"]
    assert m["accuracy"]["low"] > 0 and m["accuracy"]["verdict"] == "helped"
    assert m["macro_f1"]["verdict"] == "helped"
    # B puts more probability on the gold class: its cross-entropy is LOWER, which is a help.
    assert m["cross_entropy"]["high"] < 0 and m["cross_entropy"]["verdict"] == "helped"
    m_rev = compare_predictions(b, a, resamples=1000)["metrics"]
    assert {m_rev[k]["verdict"] for k in m_rev} == {"hurt"}
    same = compare_predictions(a, a.copy(), resamples=200)["metrics"]
    assert {same[k]["verdict"] for k in same} == {"not shown"}
    assert same["accuracy"]["mcnemar_p"] == 1.0


def test_rows_are_paired_by_row_id_not_position():
    a, b = pair_with(only_a=0, only_b=20, both=20, neither=20)
    shuffled = b.sample(frac=1.0, random_state=3)
    assert compare_predictions(a, shuffled, resamples=200) == compare_predictions(a, b, resamples=200)


def test_mismatched_row_ids_or_labels_are_refused_naming_the_files():
    a, b = pair_with(only_a=2, only_b=3, both=10, neither=5)
    a.attrs["source"] = "predictions/evaluate/quantized-dev.parquet@exp-a"
    other = b.copy()
    other.loc[0, "row_id"] = 9999
    other.attrs["source"] = "runs/b/quantized-dev.parquet"
    with pytest.raises(
        CompareError, match=r"row_ids differ.*quantized-dev.parquet@exp-a.*runs/b/quantized-dev.parquet.*9999"
    ):
        compare_predictions(a, other)
    with pytest.raises(CompareError, match="row_ids differ"):
        compare_predictions(a, b.iloc[:-1])
    relabelled = b.copy()
    relabelled.loc[3, "label"] = (relabelled.loc[3, "label"] + 1) % 3
    with pytest.raises(CompareError, match=r"gold labels differ .* 1 row\(s\), e.g. row_id 103"):
        compare_predictions(a, relabelled)
    with pytest.raises(CompareError, match="missing column"):
        compare_predictions(a, b.drop(columns="prob_neutral"))
    with pytest.raises(CompareError, match="appears more than once"):
        compare_predictions(pd.concat([a, a.iloc[:1]]), pd.concat([b, b.iloc[:1]]))


def test_seeds_are_paired_pooled_and_resampled_within_seed():
    # Seed 0: B beats A on every example; seed 1: B equals A. Seeds use different rows.
    labels = np.arange(60) % 3
    wrong = (labels + 1) % 3
    a0, b0 = preds(labels, wrong), preds(labels, labels)
    a1 = preds(labels, labels, row_ids=np.arange(500, 560))
    b1 = a1.copy()
    res = compare_predictions([a0, a1], [b0, b1], resamples=500)
    assert res["seeds"] == 2 and res["rows_per_seed"] == [60, 60] and res["rows"] == 120
    acc = res["metrics"]["accuracy"]
    # Within-seed resampling keeps 60 rows of each seed, so every resample's difference is 0.5.
    assert (acc["diff"], acc["low"], acc["high"]) == pytest.approx((0.5, 0.5, 0.5))
    assert acc["mcnemar_p"] == pytest.approx(2 * 0.5**60)
    with pytest.raises(CompareError, match="row_ids differ"):  # seeds paired in the wrong order
        compare_predictions([a0, a1], [b1, b0])
    with pytest.raises(CompareError, match="one B per A"):
        compare_predictions([a0, a1], [b0])


def test_macro_f1_vectorised_rows_match_sklearn():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, size=(4, 40))
    pred = rng.integers(0, 3, size=(4, 40))
    pred[3] = 0  # classes 1 and 2 never predicted: their F1 is 0, still averaged in
    got = macro_f1(gold * 3 + pred, axis=1)
    expected = [f1_score(g, p, average="macro", labels=[0, 1, 2], zero_division=0) for g, p in zip(gold, pred)]
    assert got == pytest.approx(expected)
    assert macro_f1(gold[0] * 3 + pred[0]) == pytest.approx(expected[0])


def write_predictions(root: Path, frames: dict[str, pd.DataFrame]) -> Path:
    for rel, frame in frames.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path)
    return root


def _two_dirs(tmp_path: Path):
    dev_a, dev_b = pair_with(only_a=3, only_b=40, both=100, neither=57)
    test_a, test_b = pair_with(only_a=10, only_b=12, both=100, neither=78, seed=1)
    # A: a checkout-like root with predictions/evaluate; B: predictions/evaluate itself.
    a = write_predictions(
        tmp_path / "a",
        {
            "predictions/evaluate/quantized-dev.parquet": dev_a,
            "predictions/evaluate/quantized-test.parquet": test_a,
        },
    )
    b = write_predictions(tmp_path / "b", {"quantized-dev.parquet": dev_b, "quantized-test.parquet": test_b})
    return a, b


def test_directories_of_predictions_through_the_cli(tmp_path, capsys):
    a, b = _two_dirs(tmp_path)
    assert main(["compare", str(a), str(b), "--resamples", "300"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"A: {a}" and out[1] == f"B: {b}"
    assert out[2] == "model: quantized   resamples: 300   seed: 0"
    dev = out.index("dev (decides): 200 rows, 1 seed(s)")
    assert out[dev + 1].split() == ["metric", "A", "B", "B-A", "95%", "CI", "McNemar", "p", "verdict"]
    acc = out[dev + 2].split()
    assert acc[:4] == ["accuracy", "51.50", "70.00", "+18.50"] and acc[-1] == "helped"
    assert out[dev + 3].startswith("  macro-F1") and out[dev + 4].startswith("  cross-entropy")
    test = out.index("test (reported only): 200 rows, 1 seed(s)")
    assert out[test + 2].split()[:4] == ["accuracy", "55.00", "56.00", "+1.00"]
    assert out[test + 2].endswith("not shown")

    assert main(["compare", str(a), str(b), "--split", "dev", "--resamples", "300", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["splits"]) == ["dev"] and result["model"] == "quantized"
    acc = result["splits"]["dev"]["metrics"]["accuracy"]
    assert acc["diff"] == pytest.approx(0.185) and acc["verdict"] == "helped"
    assert result["splits"]["dev"]["files"]["a"] == [str(a / "predictions/evaluate/quantized-dev.parquet")]


def test_teacher_fallback_and_missing_predictions(tmp_path, capsys):
    dev_a, dev_b = pair_with(only_a=3, only_b=4, both=10, neither=3)
    a = write_predictions(tmp_path / "a", {"evaluate_teacher/teacher-dev.parquet": dev_a})  # data-only experiment
    b = write_predictions(
        tmp_path / "b", {"evaluate/teacher-dev.parquet": dev_b, "evaluate/quantized-dev.parquet": dev_b}
    )
    result = compare_sources(str(a), str(b), splits=["dev"], resamples=100)
    # One model for both sides: A has no quantized predictions, so both compare teachers.
    assert result["model"] == "teacher"
    assert result["splits"]["dev"]["files"]["b"] == [str(b / "evaluate/teacher-dev.parquet")]
    with pytest.raises(CompareError, match=r"A .*no predictions of model 'quantized' on dev"):
        compare_sources(str(a), str(b), model="quantized", splits=["dev"], resamples=100)
    # Through the CLI the error is one line on stderr and exit status 2.
    assert main(["compare", str(a), str(b), "--split", "test"]) == 2
    assert "no predictions of model 'teacher' on test" in capsys.readouterr().err


def test_cli_refuses_mismatched_rows_naming_the_files(tmp_path, capsys):
    dev_a, dev_b = pair_with(only_a=3, only_b=4, both=10, neither=3)
    a = write_predictions(tmp_path / "a", {"quantized-dev.parquet": dev_a})
    b = write_predictions(tmp_path / "b", {"quantized-dev.parquet": dev_b.iloc[2:]})
    assert main(["compare", str(a), str(b), "--split", "dev"]) == 2
    err = capsys.readouterr().err
    assert (
        "row_ids differ" in err and str(a / "quantized-dev.parquet") in err and str(b / "quantized-dev.parquet") in err
    )


def test_comma_separated_seed_lists(tmp_path):
    dirs = {}
    for s in range(2):
        a, b = pair_with(only_a=2, only_b=30, both=50, neither=18, seed=s)
        dirs[f"a{s}"] = write_predictions(tmp_path / f"a{s}", {"quantized-dev.parquet": a})
        dirs[f"b{s}"] = write_predictions(tmp_path / f"b{s}", {"quantized-dev.parquet": b})
    result = compare_sources(f"{dirs['a0']},{dirs['a1']}", f"{dirs['b0']},{dirs['b1']}", splits=["dev"], resamples=200)
    dev = result["splits"]["dev"]
    assert dev["seeds"] == 2 and dev["rows"] == 200
    assert dev["metrics"]["accuracy"]["diff"] == pytest.approx(0.28)
    with pytest.raises(CompareError, match="one B per A"):
        compare_sources(f"{dirs['a0']},{dirs['a1']}", str(dirs["b0"]), splits=["dev"])


def test_model_directory_is_scored_on_the_prepared_split(tiny_model_dir, tmp_path):
    repo = tmp_path / "repo"
    (repo / "data/prepared").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    dev = make_pairs(24, seed=2)
    dev["row_id"] = np.arange(1000, 1024, dtype=np.int64)[::-1]  # unsorted on disk
    dev.to_parquet(repo / "data/prepared/dev.parquet")
    scored = compare.score_model_dir(tiny_model_dir, "dev", repo)
    assert list(scored.columns) == list(compare.PREDICTION_COLUMNS)
    assert scored["row_id"].is_monotonic_increasing and len(scored) == 24
    probs = scored[list(compare.PROB_COLUMNS)].to_numpy()
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (scored["pred"].to_numpy() == probs.argmax(axis=1)).all()
    # The model directory against its own predictions on disk: identical, nothing shown.
    write_predictions(tmp_path / "p", {"quantized-dev.parquet": scored})
    result = compare_sources(tiny_model_dir, str(tmp_path / "p"), splits=["dev"], resamples=100, repo=repo)
    assert result["a"][0]["kind"] == "model"
    m = result["splits"]["dev"]["metrics"]
    assert m["accuracy"]["diff"] == 0 and m["cross_entropy"]["diff"] == pytest.approx(0, abs=1e-6)
    assert m["accuracy"]["verdict"] == "not shown"


# --- revs and experiment names ---------------------------------------------------------------


@pytest.fixture
def git_repo(tmp_path) -> tuple[Path, list[str]]:
    repo = tmp_path / "g"
    repo.mkdir()
    run_cmd(["git", "init", "-q"], repo)
    shas = []
    for i in range(2):
        (repo / "f.txt").write_text(str(i))
        run_cmd(["git", "add", "f.txt"], repo)
        run_cmd(["git", "commit", "-qm", f"c{i}"], repo)
        shas.append(run_cmd(["git", "rev-parse", "HEAD"], repo).stdout.strip())
    run_cmd(["git", "tag", "first", shas[0]], repo)
    return repo, shas


def _exp_ref(repo: Path, baseline: str, name: str, target: str) -> str:
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
    run_cmd(["git", "update-ref", ref, target], repo)
    return ref


def test_resolve_rev_commits_tags_and_experiment_names(git_repo):
    repo, (first, head) = git_repo
    assert resolve_rev("HEAD", repo) == head
    assert resolve_rev("first", repo) == first
    assert resolve_rev(first[:8], repo) == first
    _exp_ref(repo, first, "lush-kite", head)
    assert resolve_rev("lush-kite", repo) == head
    # The same name under two baselines: the one on HEAD's baseline wins, as in `dvc exp`.
    _exp_ref(repo, head, "dup", head)
    ref_old = _exp_ref(repo, first, "dup", first)
    assert resolve_rev("dup", repo) == head
    assert resolve_rev(ref_old, repo) == first  # a full ref picks either
    _exp_ref(repo, first, "twice", first)
    # A made-up baseline that is neither commit: two hex digits that differ from both hashes' first two
    # (a fixed "ab" + first[2:] failed in CI on a day `first` happened to start with "ab").
    other = next(p for p in ("ab", "cd", "ef") if p not in (first[:2], head[:2])) + first[2:]
    _exp_ref(repo, other, "twice", head)
    with pytest.raises(CompareError, match="'twice' is ambiguous"):
        resolve_rev("twice", repo)
    with pytest.raises(CompareError, match="'nope': not a directory, a git commit"):
        resolve_rev("nope", repo)


def test_rev_sources_read_predictions_through_dvc_api(git_repo, monkeypatch):
    repo, (first, head) = git_repo
    _exp_ref(repo, head, "exp-b", head)
    dev_a, dev_b = pair_with(only_a=1, only_b=9, both=20, neither=10)
    stored = {
        (first, "predictions/evaluate_teacher/teacher-dev.parquet"): dev_a,
        (head, "predictions/evaluate_teacher/teacher-dev.parquet"): dev_b,
    }
    calls = []

    class Opened:
        def __init__(self, data):
            self.data = data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return self.data

    def fake_open(path, repo=None, rev=None, mode="r"):
        calls.append((path, rev, mode))
        if (rev, path) not in stored:
            raise FileNotFoundError(path)
        return Opened(stored[(rev, path)].to_parquet())

    import dvc.api

    monkeypatch.setattr(dvc.api, "open", fake_open)
    monkeypatch.setattr(compare, "_tracked_at_rev", lambda *a: False)
    result = compare_sources("first", "exp-b", splits=["dev"], resamples=200, repo=repo)
    assert result["model"] == "teacher"  # neither rev has quantized predictions
    assert [s["location"] for s in result["a"] + result["b"]] == [first, head]
    assert result["splits"]["dev"]["files"]["b"] == ["predictions/evaluate_teacher/teacher-dev.parquet@exp-b"]
    assert result["splits"]["dev"]["metrics"]["accuracy"]["diff"] == pytest.approx(8 / 40)
    assert all(mode == "rb" and rev in (first, head) for _, rev, mode in calls)  # always by full sha
    assert compare.read_at_rev("predictions/evaluate/quantized-dev.parquet", first, repo) is None


def test_real_git_dvc_repo_experiment_against_head(tmp_path):
    """End to end through git and DVC (a few seconds): predictions as a `dvc add`-ed directory."""
    repo = tmp_path / "r"
    repo.mkdir()
    run_cmd(["git", "init", "-q"], repo)
    run_cmd(["dvc", "init", "-q"], repo)
    dev_a, dev_b = pair_with(only_a=2, only_b=12, both=30, neither=16)
    shas = []
    for frame in (dev_a, dev_b):
        write_predictions(repo, {"predictions/evaluate_teacher/teacher-dev.parquet": frame})
        run_cmd(["dvc", "add", "-q", "predictions/evaluate_teacher"], repo)
        run_cmd(["git", "add", "-A"], repo)
        run_cmd(["git", "commit", "-qm", "predictions"], repo)
        shas.append(run_cmd(["git", "rev-parse", "HEAD"], repo).stdout.strip())
    _exp_ref(repo, shas[1], "exp-a", shas[0])  # an experiment on HEAD's baseline holding A's predictions
    result = compare_sources("exp-a", "HEAD", splits=["dev"], resamples=200, repo=repo)
    assert result["model"] == "teacher" and result["a"][0]["location"] == shas[0]
    assert result["splits"]["dev"]["metrics"]["accuracy"]["diff"] == pytest.approx(10 / 60)
    # Tracked at the rev but its data gone from the cache: an error, not a silent fallback.
    shutil.rmtree(repo / ".dvc" / "cache")
    with pytest.raises(CompareError, match="not in the local DVC cache"):
        compare_sources("exp-a", "HEAD", splits=["dev"], resamples=200, repo=repo)
