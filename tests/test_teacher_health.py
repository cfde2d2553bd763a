"""The teacher's head, its health check, and the larger pool (issue: a teacher that learns).

- Mean pooling is the head the offline sentence-transformers checkpoints get; cls is kept for a
  checkpoint without a pooling config; the choice survives save/load.
- A model that cannot learn fails the dev check with an error naming the stage, its accuracy,
  chance and the params; one that learns passes; the loss-below-1.0 step is recorded.
- prepare pools several training files, drops a pair that is also in the test file (after
  normalising case, spacing and punctuation) and a pair repeated across files, and draws dev from
  the files `dev_from` names.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_pairs
from stages._heads import POOLING_KEY, resolve_pooling
from stages._health import ModelDidNotLearnError, chance_accuracy, dev_health
from stages._io import ModelError
from stages._models import load_model, load_pretrained_classifier, save_model
from stages._params import DataParams
from stages._training import TrainConfig, train
from stages.active_select import SCORE_DECIMALS, candidate_positions, pick
from stages.fine_tune import fine_tune
from stages.prepare import prepare


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the head ---------------------------------------------------------------------------------


def test_the_offline_model_gets_mean_pooling_and_no_pooler():
    from stages._models import resolve_model

    path = resolve_model("minilm-l6")  # the PyPI package's all-MiniLM-L6-v2 (1_Pooling: mean)
    assert resolve_pooling("auto", path) == "mean"
    model, _ = load_pretrained_classifier("minilm-l6", seed=0)
    assert getattr(model.config, POOLING_KEY) == "mean"
    assert model.base_model.pooler is None  # its untrained pooler is not built, not counted
    assert not any("pooler" in name for name, _ in model.named_parameters())


def test_auto_reads_the_checkpoint_and_cls_keeps_the_pooler(tiny_model_dir, tiny_cls_model_dir):
    mean, _ = load_pretrained_classifier(tiny_model_dir, seed=0)
    cls, _ = load_pretrained_classifier(tiny_cls_model_dir, seed=0)
    forced, _ = load_pretrained_classifier(tiny_model_dir, seed=0, pooling="cls")
    assert (mean.config.sec_pooling, cls.config.sec_pooling, forced.config.sec_pooling) == ("mean", "cls", "cls")
    assert mean.base_model.pooler is None and cls.base_model.pooler is not None
    with pytest.raises(ValueError, match="mean, cls or auto"):
        resolve_pooling("max", tiny_model_dir)


def test_mean_head_ignores_padding_and_survives_save_and_load(tiny_model_dir, tmp_path):
    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    model.eval()
    alone = tok(["the man sleeps"], ["a man is asleep"], return_tensors="pt")
    padded = tok(["the man sleeps", "the woman is walking in the park today"],
                 ["a man is asleep", "nobody is walking in the park"], padding=True, return_tensors="pt")
    with torch.no_grad():
        # The first pair padded to the second's length: padding must not move its logits.
        assert torch.allclose(model(**alone).logits[0], model(**padded).logits[0], atol=1e-5)
    save_model(model, tok, tmp_path / "m", {"stage": "fine_tune"})
    again, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(model(**padded).logits, again(**padded).logits)
    assert again.config.sec_pooling == "mean"


def test_a_model_saved_by_the_previous_version_is_refused_with_the_stage_to_rerun(tiny_model_dir, tmp_path):
    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    save_model(model, tok, tmp_path / "old", {"stage": "fine_tune"})
    info = json.loads((tmp_path / "old" / "sec.json").read_text())
    (tmp_path / "old" / "sec.json").write_text(json.dumps({**info, "format_version": 2}))
    with pytest.raises(ModelError, match=r"old.*format_version 2.*dvc repro fine_tune"):
        load_model(tmp_path / "old")


# -- learning, and the check that it happened --------------------------------------------------


def _learnable(n: int, seed: int) -> pd.DataFrame:
    return make_pairs(n, seed=seed).assign(source="gold", weight=1.0)


def test_head_learning_rate_gets_its_own_optimizer_groups(tiny_model_dir, tmp_path):
    from stages._training import SecTrainer, TrainingArguments

    model, _ = load_pretrained_classifier(tiny_model_dir, seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, use_cpu=True, report_to="none")
    optimizer = SecTrainer(model=model, args=args, head_learning_rate=3e-3).create_optimizer()
    head = {id(p) for p in model.classifier.parameters()}
    for group in optimizer.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1, "a group mixes head and encoder parameters"
        assert group["lr"] == (3e-3 if in_head == {True} else 1e-4)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_a_model_that_learns_passes_and_records_when_its_loss_left_chance(tiny_model_dir, tmp_path):
    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    cfg = TrainConfig(epochs=6, batch_size=8, learning_rate=2e-3, head_learning_rate=1e-2, warmup_ratio=0.1,
                      seed=0, max_length=24, save_steps=500)
    metrics = fine_tune(model, tok, _learnable(120, seed=1), cfg, checkpoint_dir=tmp_path / "ckpt",
                        dev=_learnable(60, seed=2), min_dev_accuracy=0.6)
    assert metrics["health"]["dev_accuracy"] >= 0.6 > metrics["health"]["dev_chance"]
    assert metrics["loss_below_1_step"] is not None and 0 < metrics["loss_below_1_step"] <= metrics["train_steps"]
    assert 0 < metrics["loss_below_1_fraction"] <= 1


def test_a_model_that_cannot_learn_stops_the_stage_naming_accuracy_chance_and_params(tiny_model_dir, tmp_path):
    # A learning rate of 1e-9: the weights do not move, the fresh head stays a coin-flipper.
    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=8, learning_rate=1e-9, seed=0, max_length=24, save_steps=500)
    dev = _learnable(60, seed=2)
    with pytest.raises(ModelDidNotLearnError) as caught:
        fine_tune(model, tok, _learnable(40, seed=1), cfg, checkpoint_dir=tmp_path / "ckpt", dev=dev,
                  min_dev_accuracy=0.6)
    message = str(caught.value)
    assert "stage fine_tune" in message and "fine_tune.min_dev_accuracy = 60.0%" in message
    assert f"chance, the most common label, is {chance_accuracy(dev['label'].to_numpy()):.1%}" in message
    assert "fine_tune.learning_rate" in message and "fine_tune.head_learning_rate" in message
    # The same model passes when the check is off (0), reporting its accuracy all the same.
    report = dev_health(model, tok, dev, stage="fine_tune", section="fine_tune", min_accuracy=0.0, max_length=24)
    assert report["dev_accuracy"] < 0.6 and report["dev_rows"] == 60


def test_train_reports_no_loss_step_when_the_loss_never_fell_below_one(tiny_model_dir, tmp_path):
    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    cfg = TrainConfig(epochs=1, batch_size=8, learning_rate=1e-9, seed=0, max_length=24, save_steps=500)
    metrics = train(model, tok, _learnable(40, seed=1), cfg, checkpoint_dir=tmp_path / "ckpt")
    assert metrics["loss_below_1_step"] is None and metrics["loss_below_1_fraction"] is None


# -- the pool ----------------------------------------------------------------------------------


def _data(**kw) -> DataParams:
    return DataParams(**{"dev_size": 10, "seed_size": 10, "pool_size": 0, "eval_size": 0, **kw})


def _file(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["premise", "hypothesis", "label"])


def test_prepare_drops_a_training_pair_that_is_also_in_the_test_file_and_a_repeated_one():
    first = make_pairs(40, seed=1).drop_duplicates(["premise", "hypothesis"]).reset_index(drop=True)
    second = make_pairs(40, seed=2).drop_duplicates(["premise", "hypothesis"]).reset_index(drop=True)
    second = second[~second.set_index(["premise", "hypothesis"]).index.isin(
        first.set_index(["premise", "hypothesis"]).index)].reset_index(drop=True)
    test = _file([("The cat naps.", "A cat sleeps.", 0), ("Two dogs run.", "Dogs are running.", 0)])
    # In a training file with other case, spacing and quotes (train_20k was detokenized):
    leaked = ("the  cat naps .", "A cat `sleeps' .", 2)
    repeated = tuple(first.iloc[0][["premise", "hypothesis", "label"]])
    second = pd.concat([second, _file([leaked, repeated])], ignore_index=True)

    frames, metrics = prepare({"a": first, "b": second}, test, _data(), seed=0)
    assert metrics["removed_test_pairs"] == 1 and metrics["removed_repeated_pairs"] == 1
    kept = pd.concat([frames[name] for name in ("seed", "pool", "dev")])
    assert "the  cat naps ." not in set(kept["premise"])
    assert len(frames["seed"]) + len(frames["pool"]) + len(frames["dev"]) == len(first) + len(second) - 2
    assert metrics["train_pairs_read"] == {"a": len(first), "b": len(second)}


def test_dev_comes_from_the_files_dev_from_names_and_stays_put_across_seeds():
    first, second = make_pairs(30, seed=1), make_pairs(30, seed=2).assign(premise=lambda f: "B: " + f["premise"])
    trains = {"a": first.drop_duplicates(["premise", "hypothesis"]), "b": second.drop_duplicates(["premise", "hypothesis"])}
    test = make_pairs(6, seed=9).assign(premise=lambda f: "T: " + f["premise"])
    frames, metrics = prepare(trains, test, _data(dev_from=["b"], split_seed=7), seed=0)
    assert frames["dev"]["premise"].str.startswith("B: ").all() and metrics["dev_from"] == ["b"]
    other, _ = prepare(trains, test, _data(dev_from=["b"], split_seed=7), seed=5)
    assert other["dev"].equals(frames["dev"])  # split_seed fixed: the run's seed does not move dev
    with pytest.raises(Exception, match="dev_from"):
        prepare(trains, test, _data(dev_from=["c"]), seed=0)


# -- acquisition: a candidate subset, and scores that do not carry a CPU's last bits ------------


def test_candidates_limit_what_is_scored_and_picked_and_scores_are_rounded():
    positions = candidate_positions(100, 30, seed=0)
    assert len(positions) == 30 and np.all(np.diff(positions) > 0)
    assert np.array_equal(candidate_positions(100, 0, seed=0), np.arange(100))
    pool = pd.DataFrame({"pool_id": range(6), "premise": list("abcdef"), "hypothesis": list("abcdef"),
                         "label": -1, "source": "pool", "weight": 1.0})
    oracle = pool[["pool_id"]].assign(label=[0, 1, 2, 0, 1, 2])
    seed_set = pool.iloc[:0].drop(columns="pool_id")
    scores = np.array([0.3, np.nan, 0.9 + 1e-9, np.nan, 0.9, 0.1])
    labelled, rest = pick(seed_set, pool, oracle, scores, budget=2)
    assert sorted(labelled["premise"]) == ["c", "e"]  # never an unscored (NaN) row
    # Two CPUs' scores 1e-9 apart round to one stored value, so the files hash the same.
    assert labelled["score"].tolist() == [round(0.9, SCORE_DECIMALS)] * 2
    with pytest.raises(Exception, match="candidates"):
        pick(seed_set, pool, oracle, scores, budget=5)
    assert rest["score"].isna().sum() == 2


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_onnx_export_computes_either_head_within_the_parity_tolerance(tiny_model_dir, tmp_path, pooling):
    from stages import _onnx

    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0, pooling=pooling)
    torch.manual_seed(3)
    with torch.no_grad():  # a head with weight, so that a wrong pooling would show in the logits
        model.classifier.weight.normal_(0, 1.0)
    save_model(model.eval(), tok, tmp_path / "model", {"stage": "distill"})
    _onnx.export_model_dir(tmp_path / "model", tmp_path / "onnx", precision="fp32", optimize=True, max_length=24)
    assert _onnx.check_parity(model, tok, tmp_path / "onnx", max_length=24, tolerance=1e-3) <= 1e-3
    # The same graph with the other head would not pass: the check can fail.
    other, _ = load_pretrained_classifier(tiny_model_dir, seed=0, pooling="cls" if pooling == "mean" else "mean")
    other.load_state_dict(model.state_dict(), strict=False)
    assert _onnx.logit_difference(other, tok, tmp_path / "onnx", max_length=24) > 1e-3
