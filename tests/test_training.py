import math

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from stages._models import load_pretrained_classifier
from stages._training import TrainConfig, sec_loss, train


def _log_softmax(row: list[float], t: float = 1.0) -> list[float]:
    """Plain-python log-softmax of row / t: the expectations below never call torch's loss code."""
    scaled = [x / t for x in row]
    top = max(scaled)
    log_z = top + math.log(sum(math.exp(x - top) for x in scaled))
    return [x - log_z for x in scaled]


def _ce(row: list[float], label: int) -> float:
    return -_log_softmax(row)[label]


def _kl(teacher: list[float], student: list[float], t: float) -> float:
    """KL(softmax(teacher/t) || softmax(student/t))."""
    log_p, log_q = _log_softmax(teacher, t), _log_softmax(student, t)
    return sum(math.exp(a) * (a - b) for a, b in zip(log_p, log_q))


def _loss(logits, labels, weight, teacher=None, alpha=0.0, temperature=1.0) -> float:
    return float(sec_loss(torch.tensor(logits), torch.tensor(labels), torch.tensor(weight),
                          None if teacher is None else torch.tensor(teacher), alpha, temperature))


STUDENT = [[1.0, 0.0, -1.0], [0.0, 0.5, 0.0], [0.3, -0.2, 2.0]]
TEACHER = [[0.0, 4.0, 0.0], [3.0, 0.0, -2.0], [0.0, 0.0, 0.5]]


def test_sec_loss_mixes_ce_and_kd_as_hand_computed():
    labels = [2, -1, 0]  # the middle row has no gold label: KD only
    alpha, t = 0.25, 2.0
    ce = (_ce(STUDENT[0], 2) + _ce(STUDENT[2], 0)) / 2  # over the 2 labelled rows
    kd = t * t * sum(_kl(TEACHER[i], STUDENT[i], t) for i in range(3)) / 3  # over all 3 rows
    expected = (1 - alpha) * ce + alpha * kd
    # The swaps a bug would make give other numbers, so the check below tells them apart.
    assert abs(expected - ((1 - alpha) * ce + alpha * kd / (t * t))) > 0.05  # T^2 forgotten
    assert abs(kd - t * t * sum(_kl(STUDENT[i], TEACHER[i], t) for i in range(3)) / 3) > 0.05  # KL reversed
    assert abs(expected - (alpha * ce + (1 - alpha) * kd)) > 0.05  # alpha swapped
    assert _loss(STUDENT, labels, [1.0] * 3, TEACHER, alpha, t) == pytest.approx(expected, rel=1e-5)


def test_sec_loss_is_kd_alone_without_labels_and_zero_when_student_matches_teacher():
    t = 3.0
    kd = t * t * sum(_kl(TEACHER[i], STUDENT[i], t) for i in range(3)) / 3
    assert _loss(STUDENT, [-1] * 3, [1.0] * 3, TEACHER, 0.4, t) == pytest.approx(kd, rel=1e-5)
    assert abs(_loss(STUDENT, [-1] * 3, [1.0] * 3, STUDENT, 0.4, t)) < 1e-6


def test_sec_loss_without_teacher_is_ce_over_labelled_rows():
    ce = (_ce(STUDENT[0], 1) + _ce(STUDENT[1], 2)) / 2
    assert _loss(STUDENT, [1, 2, -1], [1.0] * 3) == pytest.approx(ce, rel=1e-5)
    # alpha 0 ignores the teacher; a batch without labels and without KD has nothing to learn.
    assert _loss(STUDENT, [1, 2, -1], [1.0] * 3, TEACHER, 0.0, 2.0) == pytest.approx(ce, rel=1e-5)
    assert _loss(STUDENT, [-1] * 3, [1.0] * 3) == 0.0


def test_sec_loss_weight_is_an_absolute_per_row_scale():
    labels = [0, 1, 2]
    full = _loss(STUDENT, labels, [1.0] * 3)
    # A batch of only weight-0.5 rows counts half: the weight is not normalised away.
    assert _loss(STUDENT, labels, [0.5] * 3) == pytest.approx(full / 2, rel=1e-5)
    # Mixed batch: each labelled row's CE times its weight, over the number of labelled rows;
    # the unlabelled row neither adds CE nor counts in the denominator, whatever its weight.
    expected = (1.0 * _ce(STUDENT[0], 0) + 0.5 * _ce(STUDENT[1], 1)) / 2
    assert _loss(STUDENT, [0, 1, -1], [1.0, 0.5, 0.3]) == pytest.approx(expected, rel=1e-5)
    # A weight-0 row is labelled but adds nothing: the other row's CE over 2 rows.
    assert _loss(STUDENT, [0, 1, -1], [1.0, 0.0, 1.0]) == pytest.approx(_ce(STUDENT[0], 0) / 2, rel=1e-5)


class _KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated kill")


def test_killed_training_resumes_from_last_checkpoint(tiny_model_dir, pairs, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=8, max_steps=6, save_steps=2, max_length=32)
    ckpt = tmp_path / "ckpt"
    model, tok = load_pretrained_classifier(tiny_model_dir)
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, pairs, cfg, checkpoint_dir=ckpt, callbacks=[_KillAt(5)])
    assert (ckpt / "checkpoint-4").is_dir()

    model, tok = load_pretrained_classifier(tiny_model_dir)
    metrics = train(model, tok, pairs, cfg, checkpoint_dir=ckpt)
    assert metrics["resumed_from"] == "checkpoint-4"
    assert metrics["train_steps"] == 6
    assert not ckpt.exists()  # cleaned after success


def test_training_changes_weights_and_logs_curves(tiny_model_dir, pairs, tmp_path):
    model, tok = load_pretrained_classifier(tiny_model_dir)
    before = model.classifier.weight.detach().clone()
    cfg = TrainConfig(epochs=1, batch_size=8, max_steps=4, save_steps=2, max_length=32)
    metrics = train(model, tok, pairs, cfg, checkpoint_dir=tmp_path / "c", live_dir=tmp_path / "live",
                    teacher_logits=np.zeros((len(pairs), 3), dtype=np.float32))
    assert metrics["train_steps"] == 4 and np.isfinite(metrics["train_loss"])
    assert not torch.equal(before, model.classifier.weight)
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()


def test_sparsity_penalty_shrinks_prunable_groups(tiny_model_dir, pairs, tmp_path):
    from stages._architecture import group_norms

    def trained(sparsity_weight: float):
        torch.manual_seed(0)
        model, tok = load_pretrained_classifier(tiny_model_dir)
        cfg = TrainConfig(epochs=1, batch_size=8, max_steps=6, save_steps=6, max_length=32,
                          learning_rate=1e-2, sparsity_weight=sparsity_weight)
        train(model, tok, pairs, cfg, checkpoint_dir=tmp_path / f"c{sparsity_weight}")
        return group_norms(model).mean().item()

    assert trained(1.0) < trained(0.0)


def test_half_written_checkpoint_is_skipped(tmp_path):
    from stages._training import last_complete_checkpoint

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    (tmp_path / "checkpoint-10").mkdir()  # killed mid-save: weights but no trainer_state.json
    (tmp_path / "checkpoint-10" / "model.safetensors").write_text("partial")
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-2"
    assert not (tmp_path / "checkpoint-10").exists()
    assert last_complete_checkpoint(tmp_path / "missing") is None
