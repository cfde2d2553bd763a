"""Structured pruning (stages._pruning) on tiny BERT and MPNet classifiers built from configs.

Beyond shapes, the pruned model is checked against the unpruned one with the dropped heads and
FFN channels zeroed out: the two must give the same logits, which catches a head paired with the
wrong key/value/output slice or (MPNet) the wrong channel of the shared position bias.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, BertConfig, MPNetConfig

from stages._architecture import apply_architecture, describe_architecture
from stages._pruning import prune_structured
from stages._quantization import count_parameters

REPO = Path(__file__).resolve().parents[1]
# initializer_range well above BERT's 0.02, so that a wrong head or bias slice moves the logits visibly.
TINY = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "num_labels": 3, "max_position_embeddings": 64, "initializer_range": 0.3}
CONFIGS = {"bert": BertConfig, "mpnet": MPNetConfig}
# Per model type: (self-attention path, query name, attention-output path) inside an encoder layer.
PATHS = {"bert": ("attention.self", "query", "attention.output.dense"),
         "mpnet": ("attention.attn", "q", "attention.attn.o")}


def tiny_config(model_type: str):
    """A fresh config object each time: pruning updates model.config.intermediate_size in place."""
    return CONFIGS[model_type](**TINY)


def tiny_model(model_type: str, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(model_type)).eval()


def batch(seed: int = 0, size: int = 4, length: int = 12) -> dict:
    """Token ids avoid 0/1 (the pad ids); the last two positions of row 0 are padding."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[0, -2:] = 0
    return {
        "input_ids": torch.randint(5, TINY["vocab_size"], (size, length), generator=g),
        "attention_mask": mask,
        "labels": torch.randint(0, 3, (size,), generator=g),
    }


def logits(model, b: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


def layers(model):
    return model.base_model.encoder.layer


def kept_rows(pruned: torch.Tensor, original: torch.Tensor, block: int) -> list[int]:
    """Which `block`-row slices of `original` (out, in) survive, in order, in `pruned`."""
    blocks = original.view(-1, block, original.shape[1])
    return [next(i for i, b in enumerate(blocks) if torch.equal(b, p)) for p in pruned.view(-1, block, pruned.shape[1])]


def zero_dropped(original, pruned, model_type: str):
    """A copy of `original` whose dropped heads and FFN channels are silenced, not removed.

    Zeroing the attention-output columns of a head (and the FFN-output columns of a channel) takes
    it out of the sum exactly, so this copy must compute what the pruned model computes.
    """
    reference = copy.deepcopy(original)
    attention, query, attention_out = PATHS[model_type]
    head_size = TINY["hidden_size"] // TINY["num_attention_heads"]
    with torch.no_grad():
        for ref, new in zip(layers(reference), layers(pruned), strict=True):
            heads = kept_rows(new.get_submodule(f"{attention}.{query}").weight,
                              ref.get_submodule(f"{attention}.{query}").weight, head_size)
            columns = torch.ones(TINY["hidden_size"], dtype=torch.bool)
            for h in heads:
                columns[h * head_size : (h + 1) * head_size] = False
            ref.get_submodule(attention_out).weight[:, columns] = 0
            channels = kept_rows(new.intermediate.dense.weight, ref.intermediate.dense.weight, 1)
            dropped = torch.ones(TINY["intermediate_size"], dtype=torch.bool)
            dropped[channels] = False
            ref.output.dense.weight[:, dropped] = 0
    return reference


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
@pytest.mark.parametrize("importance", ["taylor", "magnitude"])
def test_half_ratio_halves_heads_and_ffn_and_matches_the_silenced_original(model_type, importance):
    original = tiny_model(model_type)
    model = copy.deepcopy(original)
    arch = prune_structured(model, 0.5, calibration_batches=[batch(1), batch(2)], importance=importance)

    assert [(spec["heads"], spec["intermediate_size"]) for spec in arch["layers"]] == [(2, 32), (2, 32)]
    assert count_parameters(model) < count_parameters(original)
    assert arch == describe_architecture(model)
    assert json.loads(json.dumps(arch)) == arch
    assert model.config.intermediate_size == 32
    assert model.config.num_attention_heads == 4  # per-layer head counts live in `arch` only
    for layer in layers(model):
        attention = layer.get_submodule(PATHS[model_type][0])
        assert (attention.num_attention_heads, attention.all_head_size) == (2, 16)
    assert all(p.grad is None for p in model.parameters())

    out = logits(model, batch(3))
    assert out.shape == (4, 3)
    torch.testing.assert_close(out, logits(zero_dropped(original, model, model_type), batch(3)), atol=1e-5, rtol=0)


def test_mpnet_layers_keep_their_own_slice_of_the_shared_position_bias():
    model = tiny_model("mpnet")
    arch = prune_structured(model, 0.5, importance="magnitude", prune_ffn=False)
    bias_weight = model.base_model.encoder.relative_attention_bias.weight
    assert bias_weight.shape == (32, 4)  # (buckets, unpruned heads): shared, never pruned
    for layer, spec in zip(layers(model), arch["layers"], strict=True):
        assert spec["intermediate_size"] == 64
        assert layer.attention.attn.kept_heads.tolist() == spec["kept_heads"]
        assert len(spec["kept_heads"]) == spec["heads"] == 2


def test_heads_pruned_twice_map_back_to_the_original_heads():
    original = tiny_model("mpnet")
    model = copy.deepcopy(original)
    prune_structured(model, 0.5, importance="magnitude")
    arch = prune_structured(model, 0.5, importance="magnitude")  # 4 -> 2 -> 1 heads, 64 -> 32 -> 16
    assert [(spec["heads"], spec["intermediate_size"]) for spec in arch["layers"]] == [(1, 16), (1, 16)]
    torch.testing.assert_close(logits(model, batch()), logits(zero_dropped(original, model, "mpnet"), batch()),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_ratio_zero_changes_nothing(model_type):
    original = tiny_model(model_type)
    model = copy.deepcopy(original)
    arch = prune_structured(model, 0.0, calibration_batches=[batch()])
    assert arch == describe_architecture(original)
    assert [(spec["heads"], spec["intermediate_size"]) for spec in arch["layers"]] == [(4, 64), (4, 64)]
    assert count_parameters(model) == count_parameters(original)
    state, original_state = model.state_dict(), original.state_dict()
    assert state.keys() == original_state.keys()
    assert all(torch.equal(state[k], original_state[k]) for k in state)
    assert type(layers(model)[0].get_submodule(PATHS[model_type][0])) is type(
        layers(original)[0].get_submodule(PATHS[model_type][0]))


def test_heads_only_and_ffn_only():
    heads_only = tiny_model("bert")
    arch = prune_structured(heads_only, 0.5, importance="magnitude", prune_ffn=False)
    assert [(spec["heads"], spec["intermediate_size"]) for spec in arch["layers"]] == [(2, 64), (2, 64)]
    ffn_only = tiny_model("bert")
    arch = prune_structured(ffn_only, 0.25, importance="magnitude", prune_heads=False)
    assert [(spec["heads"], spec["intermediate_size"]) for spec in arch["layers"]] == [(4, 48), (4, 48)]


def test_every_layer_keeps_at_least_one_head():
    model = tiny_model("bert")
    arch = prune_structured(model, 0.99, importance="magnitude")
    assert [(spec["heads"], spec["intermediate_size"]) for spec in arch["layers"]] == [(1, 1), (1, 1)]
    assert logits(model, batch()).shape == (4, 3)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="calibration_batches"):
        prune_structured(tiny_model("bert"), 0.3)  # taylor needs data
    with pytest.raises(ValueError, match="ratio"):
        prune_structured(tiny_model("bert"), 1.0, importance="magnitude")
    with pytest.raises(ValueError, match="importance"):
        prune_structured(tiny_model("bert"), 0.3, importance="random")
    arch = describe_architecture(tiny_model("bert"))
    with pytest.raises(ValueError, match="does not fit"):
        apply_architecture(tiny_model("mpnet"), arch)


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_pruned_model_trains(model_type):
    model = tiny_model(model_type)
    prune_structured(model, 0.5, calibration_batches=[batch(1)])
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(**batch(2)).loss
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True)]
    assert sum(changed) > len(changed) // 2


_RELOAD = """
import json, sys, torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification
from stages._architecture import apply_architecture
folder = sys.argv[1]
model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder))
apply_architecture(model, json.load(open(folder + "/arch.json")))
model.load_state_dict(load_file(folder + "/model.safetensors"), strict=True)
batch = torch.load(folder + "/batch.pt")
with torch.no_grad():
    print(json.dumps(model.eval()(**batch).logits.tolist()))
"""


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_pruned_model_reloads_in_a_fresh_process(model_type, tmp_path):
    model = tiny_model(model_type)
    model.config.save_pretrained(tmp_path)  # the unpruned config: apply_architecture does the rest
    arch = prune_structured(model, 0.5, calibration_batches=[batch(1)])
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    inputs = {k: v for k, v in batch(2).items() if k != "labels"}
    torch.save(inputs, tmp_path / "batch.pt")
    expected = logits(model, inputs)

    result = subprocess.run([sys.executable, "-c", _RELOAD, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, check=True)
    reloaded = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(reloaded, expected, atol=1e-5, rtol=0)


def test_pruned_model_round_trips_through_the_pipeline_model_format(tiny_model_dir, tmp_path):
    from stages._models import load_model, load_pretrained_classifier, save_model

    model, tokenizer = load_pretrained_classifier(tiny_model_dir)
    arch = prune_structured(model.eval(), 0.5, importance="magnitude")
    save_model(model, tokenizer, tmp_path / "pruned", {"stage": "prune", "architecture": arch})
    reloaded, _ = load_model(tmp_path / "pruned")
    assert describe_architecture(reloaded) == arch
    enc = tokenizer(["A man is eating."], ["Nobody is eating."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**enc).logits, model(**enc).logits, atol=1e-6, rtol=0)
