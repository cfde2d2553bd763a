"""Attention transfer (self-attention relations, MiniLMv2) between models of different head counts."""

from __future__ import annotations

import math

import pytest
import torch

from stages._attention_kd import (
    capture_projections,
    check_relation_heads,
    relation_log_probs,
    relation_loss,
    self_attention,
)
from stages._models import load_pretrained_classifier
from stages._params import DistillParams
from stages._pruning import prune_structured
from stages._training import PairCollator, build_dataset, step_loss
from stages.distill import distill, transfer_set


def test_relation_is_the_softmax_of_scaled_self_similarity_over_real_keys():
    x = torch.tensor([[[1.0, 0.0], [0.5, 2.0], [9.0, 9.0]]])  # (b=1, seq=3, width=2); token 3 is padding
    mask = torch.tensor([[1, 1, 0]])
    got = relation_log_probs(x, heads=1, key_mask=mask).exp()[0, 0]  # (seq, seq)
    for i in range(2):
        scores = [float(x[0, i] @ x[0, j]) / math.sqrt(2) for j in range(2)]
        z = sum(math.exp(s) for s in scores)
        assert got[i, :2].tolist() == pytest.approx([math.exp(s) / z for s in scores], rel=1e-5)
        assert got[i, 2] == 0.0  # a padded key gets no probability
    # Two relation heads of width 1 each: head 0 sees column 0 only.
    two = relation_log_probs(x, heads=2, key_mask=mask).exp()[0, 0, 0, :2]
    s0 = [1.0 * 1.0, 1.0 * 0.5]
    assert two.tolist() == pytest.approx([math.exp(s) / sum(map(math.exp, s0)) for s in s0], rel=1e-5)


def _kl_by_hand(s: torch.Tensor, t: torch.Tensor, heads: int, mask: torch.Tensor) -> float:
    """Mean over real query tokens and heads of KL(teacher row || student row), plain loops."""
    sp = relation_log_probs(s, heads, mask).exp()
    tp = relation_log_probs(t, heads, mask).exp()
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for h in range(heads):
            for i in range(s.shape[1]):
                if not mask[b, i]:
                    continue
                row = sum(
                    float(tp[b, h, i, j] * (tp[b, h, i, j].log() - sp[b, h, i, j].log()))
                    for j in range(s.shape[1]) if mask[b, j]
                )
                total, count = total + row, count + 1
    return total / count


def test_relation_loss_is_the_teacher_to_student_kl_across_widths():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    # Student attention width 4, teacher 6: two relation heads make (b, 2, seq, seq) maps in both.
    student = {(0, n): torch.randn(2, 4, 4) for n in ("query", "key", "value")}
    teacher = {(1, n): torch.randn(2, 4, 6) for n in ("query", "key", "value")}
    loss = relation_loss(student, teacher, [(0, 1)], mask, heads=2)
    expected = sum(_kl_by_hand(student[(0, n)], teacher[(1, n)], 2, mask) for n in ("query", "key", "value")) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert float(relation_loss(student, student, [(0, 0)], mask, heads=2)) == pytest.approx(0.0, abs=1e-6)
    # What padded positions hold changes nothing.
    padded = {k: v.clone() for k, v in student.items()}
    for v in padded.values():
        v[1, 2:] = 100.0
    assert float(relation_loss(padded, teacher, [(0, 1)], mask, heads=2)) == pytest.approx(float(loss), rel=1e-6)


def _pruned_pair(tiny_model_dir):
    teacher, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    student, _ = load_pretrained_classifier(tiny_model_dir, seed=0)
    # 3 of 4 heads in each layer: attention width 24, hidden size still 32.
    prune_structured(student, 0.25, importance="magnitude", prune_ffn=False)
    with torch.no_grad():  # a teacher whose attention differs from the student's starting point
        for layer in (0, 1):
            self_attention(teacher, layer).query.weight.mul_(3.0)
    return teacher, student, tok


def test_hooks_capture_each_models_own_width_and_are_removed(tiny_model_dir):
    teacher, student, tok = _pruned_pair(tiny_model_dir)
    enc = tok(["a man sleeps", "the dog"], ["he rests", "a cat"], padding=True, return_tensors="pt")
    with capture_projections(student, [0, 1]) as got:
        student(**enc)
    assert set(got) == {(layer, n) for layer in (0, 1) for n in ("query", "key", "value")}
    assert got[(1, "value")].shape == (2, enc["input_ids"].shape[1], 24)
    assert not self_attention(student, 0).query._forward_hooks  # nothing left behind
    check_relation_heads(student, teacher, [(0, 0), (1, 1)], heads=8)  # 24 and 32 both split in 8
    with pytest.raises(ValueError, match="attention width 24"):
        check_relation_heads(student, teacher, [(1, 1)], heads=16)


def test_step_loss_adds_exactly_the_weighted_relation_term(tiny_model_dir, pairs):
    teacher, student, tok = _pruned_pair(tiny_model_dir)
    teacher.eval()
    student.eval()  # no dropout: the two calls below must see the same forward
    batch = PairCollator(tok)([build_dataset(pairs.head(4), tok, 32)[i] for i in range(4)])
    pairs_ = [(0, 0), (1, 1), (2, 2)]  # hidden-state indices: embeddings, layer 0, layer 1
    plain, _ = step_loss(student, batch, alpha=0.5, temperature=2.0, teacher=teacher, layer_pairs=pairs_)
    with_attention, _ = step_loss(
        student, batch, alpha=0.5, temperature=2.0, teacher=teacher, layer_pairs=pairs_,
        attention_weight=0.5, attention_heads=8,
    )
    with capture_projections(student, [0, 1]) as s, capture_projections(teacher, [0, 1]) as t, torch.no_grad():
        student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch.get("token_type_ids"))
        teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch.get("token_type_ids"))
        term = relation_loss(s, t, [(0, 0), (1, 1)], batch["attention_mask"], heads=8)
    assert float(term) > 0
    assert float(with_attention - plain) == pytest.approx(0.5 * float(term), rel=1e-3)
    assert float(term) > 1e-3  # large enough that the check above is not float noise
    with_attention.backward()  # the term reaches the student's query projection
    assert self_attention(student, 0).query.weight.grad.abs().sum() > 0


def test_distill_with_attention_transfer_brings_the_student_relations_closer(tiny_model_dir, pairs, tmp_path):
    teacher, student, tok = _pruned_pair(tiny_model_dir)
    data = transfer_set(pairs, pairs.assign(label=-1), 0, 0)
    enc = tok(pairs["premise"].tolist(), pairs["hypothesis"].tolist(), padding=True, return_tensors="pt")

    def gap(model) -> float:
        model.eval()
        with capture_projections(model, [0, 1]) as s, capture_projections(teacher, [0, 1]) as t, torch.no_grad():
            model(**enc)
            teacher.eval()(**enc)
            return float(relation_loss(s, t, [(0, 0), (1, 1)], enc["attention_mask"], heads=8))

    before = gap(student)
    params = DistillParams(
        epochs=1, batch_size=8, max_steps=15, learning_rate=3e-3, transfer_size=0, layers=0, hidden_weight=0.0,
        attention_weight=1.0, attention_heads=8, trim_vocab=False,
    )
    student, _, metrics = distill(student, tok, teacher, data, params, max_length=32, seed=0, checkpoint_dir=tmp_path / "ck")
    assert metrics["attention_weight"] == 1.0 and metrics["train_steps"] == 15
    assert gap(student) < 0.8 * before
    bad = params.model_copy(update={"attention_heads": 5})
    with pytest.raises(ValueError, match="attention_heads=5"):
        distill(student, tok, teacher, data, bad, max_length=32, seed=0, checkpoint_dir=tmp_path / "ck2")
