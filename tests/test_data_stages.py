import numpy as np
import pandas as pd
import pytest

from conftest import make_pairs
from stages._io import DataError, read_pairs, validate_pairs
from stages._params import ActiveSelectParams, DataParams
from stages.active_select import active_select, pick, uncertainty
from stages.prepare import load_mnli, prepare


def eval_pairs(n: int, seed: int = 0) -> pd.DataFrame:
    """An evaluation split sharing no pair with make_pairs' training pairs (prepare drops shared ones)."""
    return make_pairs(n, seed=seed).assign(premise=lambda f: "Test: " + f["premise"])


def data_params(**kw) -> DataParams:
    return DataParams(**{"dev_size": 0, "seed_size": 10, "pool_size": 20, "eval_size": 15, **kw})


def test_prepare_is_deterministic_and_keeps_oracle_apart():
    train, evaluation = make_pairs(50), eval_pairs(30, seed=1)
    frames, metrics = prepare(train, evaluation, data_params(), seed=3)
    again, _ = prepare(train, evaluation, data_params(), seed=3)
    for name in frames:
        pd.testing.assert_frame_equal(frames[name], again[name])
    assert len(frames["seed"]) == 10 and len(frames["pool"]) == 20 and len(frames["test"]) == 15
    assert (frames["pool"]["label"] == -1).all()
    assert frames["oracle"]["pool_id"].tolist() == frames["pool"]["pool_id"].tolist()
    assert set(frames["oracle"]["label"]) <= {0, 1, 2}
    seed_pairs = set(zip(frames["seed"].premise, frames["seed"].hypothesis))
    pool_pairs = set(zip(frames["pool"].premise, frames["pool"].hypothesis))
    assert not seed_pairs & pool_pairs
    assert metrics["seed_rows"] == 10


def test_prepare_holds_out_dev_before_anything_else():
    train, evaluation = make_pairs(60), eval_pairs(30, seed=1)
    frames, metrics = prepare(train, evaluation, data_params(dev_size=12, pool_size=0), seed=3)
    assert len(frames["dev"]) == 12 and metrics["dev_rows"] == 12
    pairs = lambda name: set(zip(frames[name].premise, frames[name].hypothesis))  # noqa: E731
    distinct = len(train.drop_duplicates(subset=["premise", "hypothesis"]))
    # dev, seed and pool are disjoint and together are every distinct training pair
    assert not pairs("dev") & (pairs("seed") | pairs("pool"))
    assert len(frames["dev"]) + len(frames["seed"]) + len(frames["pool"]) == distinct
    # row ids point back into the source files (the key paired tests join on)
    for name, source in (("dev", train), ("test", evaluation)):
        frame = frames[name]
        assert frame["row_id"].is_monotonic_increasing
        assert (source.loc[frame["row_id"], "premise"].to_numpy() == frame["premise"].to_numpy()).all()
        assert (source.loc[frame["row_id"], "label"].to_numpy() == frame["label"].to_numpy()).all()
    # the dev split does not depend on the seed/pool sizes drawn after it
    other, _ = prepare(train, evaluation, data_params(dev_size=12, seed_size=5, pool_size=7), seed=3)
    pd.testing.assert_frame_equal(frames["dev"], other["dev"])
    with pytest.raises(DataError, match="data.dev_size"):
        prepare(train, evaluation, data_params(dev_size=50, pool_size=0), seed=3)


def test_prepare_rejects_sizes_larger_than_the_split():
    with pytest.raises(DataError, match="data.seed_size"):
        prepare(make_pairs(20), eval_pairs(5), data_params(seed_size=15, pool_size=10), seed=0)


def test_load_mnli_from_local_dir(tmp_path):
    make_pairs(12).to_parquet(tmp_path / "train.parquet")
    make_pairs(6).to_json(tmp_path / "validation_matched.jsonl", orient="records", lines=True)
    trains, evaluation, origin = load_mnli(data_params(local_dir=str(tmp_path)))
    assert list(trains) == ["train"] and len(trains["train"]) == 12 and len(evaluation) == 6 and origin == str(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_mnli(data_params(local_dir=str(tmp_path / "missing")))
    (tmp_path / "train.parquet").unlink()
    with pytest.raises(DataError, match="no file for split 'train'"):
        load_mnli(data_params(local_dir=str(tmp_path)))


def test_uncertainty_orders_by_doubt():
    probs = np.array([[0.98, 0.01, 0.01], [0.34, 0.33, 0.33], [0.6, 0.4, 0.0]])
    for strategy in ("entropy", "margin"):
        scores = uncertainty(probs, strategy, seed=0)
        assert scores.argmax() == 1 and scores.argmin() == 0
    random_scores = uncertainty(probs, "random", seed=0)
    assert np.array_equal(random_scores, uncertainty(probs, "random", seed=0))


def test_pick_labels_from_oracle_only_what_was_picked():
    frames, _ = prepare(make_pairs(40), eval_pairs(10), data_params(pool_size=20, eval_size=5), seed=0)
    scores = np.arange(20, dtype=float)
    labelled, rest = pick(frames["seed"], frames["pool"], frames["oracle"], scores, budget=5)
    picked = labelled[labelled.source == "oracle"]
    assert len(picked) == 5 and len(rest) == 15 and (rest["label"] == -1).all()
    oracle = frames["oracle"].set_index("pool_id")["label"]
    top = frames["pool"].iloc[-5:]
    assert sorted(picked["label"].tolist()) == sorted(oracle.loc[top["pool_id"]].tolist())
    with pytest.raises(DataError, match="budget"):
        pick(frames["seed"], frames["pool"], frames["oracle"], scores, budget=21)


@pytest.mark.parametrize("strategy", ["entropy", "random"])
def test_active_select_end_to_end_on_tiny_model(strategy, tiny_model_dir, tmp_path):
    frames, _ = prepare(make_pairs(60), eval_pairs(10), data_params(seed_size=16, pool_size=30, eval_size=5), seed=0)
    params = ActiveSelectParams(strategy=strategy, budget=8, acquisition_epochs=1, batch_size=8, learning_rate=1e-4)
    labelled, rest, metrics = active_select(
        frames["seed"], frames["pool"], frames["oracle"], params,
        teacher=tiny_model_dir, max_length=32, seed=0, checkpoint_dir=tmp_path / "ck",
    )
    assert len(labelled) == 24 and len(rest) == 22
    validate_pairs(labelled, "labelled")  # labels are all real now
    assert metrics["strategy"] == strategy and ("acquisition" in metrics) == (strategy != "random")
    # The picks are the budget's top scores: none left in the pool scores higher than any picked.
    picked = labelled.loc[labelled["source"] == "oracle", "score"]
    assert len(picked) == 8 and picked.min() >= rest["score"].max()
    assert metrics["mean_score_picked"] == pytest.approx(picked.mean(), abs=1e-6)
    # (the pool's mean is of the unrounded scores; the stored ones keep SCORE_DECIMALS = 4)
    assert metrics["mean_score_pool"] == pytest.approx(pd.concat([picked, rest["score"]]).mean(), abs=1e-4)


def test_oracle_labels_never_reach_unlabelled_output(tmp_path, tiny_model_dir):
    frames, _ = prepare(make_pairs(40), eval_pairs(10), data_params(seed_size=10, pool_size=20, eval_size=5), seed=0)
    params = ActiveSelectParams(strategy="random", budget=5, acquisition_epochs=1, batch_size=8, learning_rate=1e-4)
    _, rest, _ = active_select(frames["seed"], frames["pool"], frames["oracle"], params,
                               teacher=tiny_model_dir, max_length=32, seed=0, checkpoint_dir=tmp_path)
    path = tmp_path / "rest.parquet"
    rest.to_parquet(path)
    assert (read_pairs(path, allow_unlabelled=True)["label"] == -1).all()


def test_all_strategy_labels_the_whole_pool_without_a_model(tmp_path):
    frames, _ = prepare(make_pairs(40), eval_pairs(10), data_params(seed_size=10, pool_size=20, eval_size=5), seed=0)
    params = ActiveSelectParams(strategy="all", budget=3, acquisition_epochs=1, batch_size=8, learning_rate=1e-4)
    labelled, rest, metrics = active_select(frames["seed"], frames["pool"], frames["oracle"], params,
                                            teacher="no-such-model", max_length=32, seed=0, checkpoint_dir=tmp_path)
    assert len(labelled) == 30 and len(rest) == 0 and metrics["label_fraction"] == 1.0
    assert "acquisition" not in metrics  # no model was needed, so none was loaded
    path = tmp_path / "rest.parquet"
    rest.to_parquet(path)
    assert len(read_pairs(path, allow_unlabelled=True, allow_empty=True)) == 0
    with pytest.raises(DataError, match="no rows"):
        read_pairs(path, allow_unlabelled=True)


def test_pseudo_labels_join_as_their_own_source_and_do_not_count_as_labels(tiny_model_dir, tmp_path):
    frames, _ = prepare(make_pairs(60), eval_pairs(10), data_params(seed_size=16, pool_size=30, eval_size=5), seed=0)
    params = ActiveSelectParams(strategy="random", budget=8, acquisition_epochs=1, batch_size=8, learning_rate=1e-4,
                                pseudo_size=5, pseudo_weight=0.3)
    labelled, rest, metrics = active_select(
        frames["seed"], frames["pool"], frames["oracle"], params,
        teacher=tiny_model_dir, max_length=32, seed=0, checkpoint_dir=tmp_path / "ck",
    )
    pseudo = labelled[labelled["source"] == "pseudo"]
    assert len(pseudo) == 5 and (pseudo["weight"] == 0.3).all() and pseudo["label"].between(0, 2).all()
    assert metrics["labelled_rows"] == 24 and metrics["pseudo_rows"] == 5 and len(rest) == 30 - 8 - 5
    assert 0 <= metrics["pseudo_label_accuracy"] <= 1
    assert metrics["label_fraction"] == round(24 / 46, 4)


@pytest.mark.parametrize("outliers", ["none", "datamap"])
def test_active_select_in_rounds_on_pretrained_embeddings(outliers, tiny_model_dir, tmp_path):
    """acquisition: embedding buys the budget in rounds through the real stage, reports each round
    (by class and by source file), needs no fine-tuning, and gives the same picks for the same seed."""
    frames, _ = prepare({"train": make_pairs(40), "train_20k": make_pairs(40, seed=1)}, eval_pairs(10),
                        data_params(seed_size=16, pool_size=40, eval_size=5, dev_size=4), seed=0)
    origin = frames["pool_origin"].set_index("pool_id")["origin"].loc[frames["pool"]["pool_id"]].to_numpy()
    assert set(origin) <= {"train", "train_20k"}
    params = ActiveSelectParams(strategy="margin", acquisition="embedding", round_size=3, outliers=outliers,
                                budget=8, acquisition_epochs=1, batch_size=8, learning_rate=1e-4)
    runs = [active_select(frames["seed"], frames["pool"], frames["oracle"], params, teacher=tiny_model_dir,
                          max_length=32, seed=0, checkpoint_dir=tmp_path / "unused", pool_origin=origin)
            for _ in range(2)]
    labelled, rest, metrics = runs[0]
    assert len(labelled) == 24 and len(rest) == 32
    validate_pairs(labelled, "labelled")
    rounds = metrics["acquisition"]["rounds"]
    assert [r["bought"] for r in rounds] == [3, 3, 2]
    assert sum(sum(r["by_source"].values()) for r in rounds) == 8
    picked = labelled.loc[labelled["source"] == "oracle"]
    assert sum(sum(r["by_class"].values()) for r in rounds) == len(picked)
    assert metrics["acquisition"]["kind"] == "embedding" and metrics["acquisition"]["rounds_seconds"] >= 0
    assert not (tmp_path / "unused").exists()  # nothing was fine-tuned
    assert labelled.equals(runs[1][0])


def test_active_select_names_a_budget_larger_than_the_pool(tiny_model_dir, tmp_path):
    frames, _ = prepare(make_pairs(40), eval_pairs(10), data_params(seed_size=10, pool_size=20, eval_size=5), seed=0)
    params = ActiveSelectParams(strategy="margin", acquisition="embedding", budget=21, acquisition_epochs=1,
                                batch_size=8, learning_rate=1e-4)
    with pytest.raises(DataError, match=r"active_select.budget \(21\) exceeds the pool \(20 rows\)"):
        active_select(frames["seed"], frames["pool"], frames["oracle"], params, teacher=tiny_model_dir,
                      max_length=32, seed=0, checkpoint_dir=tmp_path)
