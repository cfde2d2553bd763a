"""The student's shape: evenly spaced layers, a trimmed vocabulary, hidden-state KD."""

import subprocess
import sys

import pytest
import torch

from conftest import REPO, make_pairs
from stages._architecture import describe_architecture
from stages._models import load_model, load_pretrained_classifier, save_model
from stages._params import QuantizeParams
from stages._student import evenly_spaced_layers, keep_layers, layer_map, trim_vocabulary, used_token_ids
from stages._training import hidden_state_loss
from stages.quantize import quantize


def test_evenly_spaced_layers_keep_the_top_one():
    assert evenly_spaced_layers(6, 3) == [1, 3, 5]
    assert evenly_spaced_layers(12, 4) == [2, 5, 8, 11]
    assert evenly_spaced_layers(6, 0) == list(range(6)) == evenly_spaced_layers(6, 9)
    assert layer_map([1, 3, 5]) == [(0, 0), (1, 2), (2, 4), (3, 6)]


def test_keep_layers_rejects_indices_outside_the_encoder(tiny_model_dir):
    model, _ = load_pretrained_classifier(tiny_model_dir)
    with pytest.raises(ValueError, match="2 layers"):
        keep_layers(model, [0, 5])


def test_hidden_state_loss_ignores_padding():
    student = (torch.zeros(1, 3, 4),)
    teacher = (torch.tensor([[[1.0] * 4, [1.0] * 4, [100.0] * 4]]),)  # third token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert float(hidden_state_loss(student, teacher, [(0, 0)], mask)) == pytest.approx(1.0)


def _logits(model, tok, pairs):
    enc = tok(pairs["premise"].tolist(), pairs["hypothesis"].tolist(), padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def test_trimmed_vocabulary_keeps_predictions_on_its_corpus_and_reloads(tiny_model_dir, tmp_path):
    model, tok = load_pretrained_classifier(tiny_model_dir)
    model.eval()
    corpus = make_pairs(30)
    expected = _logits(model, tok, corpus)
    keep_layers(model, [1])
    expected_small = _logits(model, tok, corpus)
    model, small_tok = trim_vocabulary(model, tok, used_token_ids(tok, corpus["premise"].tolist(), corpus["hypothesis"].tolist()))
    assert model.config.vocab_size == len(small_tok) < len(tok)
    assert small_tok.pad_token_id == tok.pad_token_id == 0  # [PAD] sorts first and stays first
    assert torch.allclose(_logits(model, small_tok, corpus), expected_small, atol=1e-5)
    assert not torch.allclose(expected_small, expected)  # one layer fewer really changed the model
    # An unseen word still splits into character pieces instead of [UNK].
    assert small_tok.unk_token not in small_tok.tokenize("zebra")

    # Saved with its architecture, reloaded in a fresh process, and int8 (embeddings too).
    save_model(model, small_tok, tmp_path / "student", {"stage": "distill", "architecture": describe_architecture(model)})
    quantized, metrics = quantize(load_model(tmp_path / "student")[0], QuantizeParams())
    assert metrics["quantized_embeddings"] == 3
    save_model(quantized, small_tok, tmp_path / "q", {"stage": "quantize", "quantization": "dynamic_int8"})
    code = (
        "from stages._models import load_model; import pandas as pd, torch; "
        f"m, t = load_model({str(tmp_path / 'q')!r}); "
        "print(m.config.num_hidden_layers, m.config.vocab_size, len(t))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert out[-3:] == ["1", str(len(small_tok)), str(len(small_tok))]


def test_a_capped_vocabulary_keeps_the_most_frequent_tokens_and_still_spells_every_word(tiny_model_dir):
    from stages._student import most_frequent, token_counts

    model, tok = load_pretrained_classifier(tiny_model_dir)
    corpus = make_pairs(30)
    counts = token_counts(tok, corpus["premise"].tolist(), corpus["hypothesis"].tolist())
    assert set(counts) == used_token_ids(tok, corpus["premise"].tolist(), corpus["hypothesis"].tolist())
    cap = len(counts) // 2
    keep = most_frequent(counts, cap)
    assert len(keep) == cap and min(counts[i] for i in keep) >= max(counts[i] for i in set(counts) - keep)
    assert most_frequent(counts, 0) == set(counts)
    full, _ = trim_vocabulary(load_pretrained_classifier(tiny_model_dir)[0], tok, set(counts))
    capped, small_tok = trim_vocabulary(model, tok, keep)
    assert capped.config.vocab_size < full.config.vocab_size
    # The dropped tokens' words split into kept pieces: nothing in the corpus becomes [UNK].
    ids = small_tok(corpus["premise"].tolist(), corpus["hypothesis"].tolist())["input_ids"]
    assert small_tok.unk_token_id not in {i for row in ids for i in row}


def test_a_vocabulary_cap_without_trimming_is_refused():
    from pydantic import ValidationError

    from stages._params import DistillParams

    base = {"transfer_size": 0, "layers": 1, "hidden_weight": 0.0, "epochs": 1.0, "batch_size": 8, "max_steps": 1,
            "learning_rate": 1e-4}
    assert DistillParams.model_validate({**base, "trim_vocab": True, "vocab_size": 100}).vocab_size == 100
    with pytest.raises(ValidationError, match="trim_vocab"):
        DistillParams.model_validate({**base, "trim_vocab": False, "vocab_size": 100})
