import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from stages._models import load_pretrained_classifier
from stages._training import TrainConfig, sec_loss, train


def test_sec_loss_weighted_ce_ignores_unlabelled_rows():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    labels = torch.tensor([0, 0, -1])
    weight = torch.tensor([1.0, 0.0, 1.0])
    # Row 1 has weight 0 and row 2 no label: only row 0 counts.
    expected = torch.nn.functional.cross_entropy(logits[:1], labels[:1])
    assert torch.allclose(sec_loss(logits, labels, weight, None, 0.0, 1.0), expected)


def test_sec_loss_kd_term_is_zero_when_student_matches_teacher():
    logits = torch.randn(4, 3)
    labels = torch.full((4,), -1)
    loss = sec_loss(logits, labels, torch.ones(4), logits.clone(), alpha=0.5, temperature=2.0)
    assert loss.abs() < 1e-6
    other = sec_loss(logits, labels, torch.ones(4), torch.randn(4, 3), alpha=0.5, temperature=2.0)
    assert other > 0


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
    from stages._pruning import group_norms

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
