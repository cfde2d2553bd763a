"""The classification head every pipeline model has: which token summary it reads, and its class.

A sentence-transformers checkpoint (both offline models: all-MiniLM-L6-v2, all-mpnet-base-v2) was
trained for *masked-mean* pooling: its `1_Pooling/config.json` says so, and its BERT pooler (dense +
tanh on [CLS]) was never trained (bias all zero, weights a fresh N(0, 0.009) draw). Reading that
pooler puts a random dense + tanh between the encoder and a random linear head, a saddle the
teacher sat on at chance loss for half its training, for as long as float noise decided. So:

  pooling "mean": mean of the last hidden states over real tokens -> dropout -> linear
  pooling "cls":  the architecture's own head (BERT: pooler on [CLS] -> dropout -> linear), for a
                  hub model whose pooler *is* trained
  pooling "auto": the checkpoint's sentence-transformers pooling config when it has one, else cls

The choice is stored in the model's config.json (`sec_pooling`), so every later stage (pruning,
distillation, quantization, ONNX export, `sec predict`) rebuilds the same head from the directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers import AutoModelForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

POOLING_KEY = "sec_pooling"
POOLINGS = ("mean", "cls")
_ST_POOLING = "1_Pooling/config.json"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden (batch, seq, width), attention_mask (batch, seq) of 1/0 -> (batch, width)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _read_st_pooling(config_file: Path) -> str:
    mode = json.loads(config_file.read_text())
    if mode.get("pooling_mode_mean_tokens"):
        return "mean"
    if mode.get("pooling_mode_cls_token"):
        return "cls"
    raise ValueError(f"{config_file}: pooling mode {mode} is neither mean nor cls, which this pipeline supports")


def _hub_st_pooling(repo_id: str) -> Path | None:
    """The hub checkpoint's sentence-transformers pooling file, or None (offline, or it has none)."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, _ST_POOLING))
    except Exception:  # noqa: BLE001 - no such file, no network, HF_HUB_OFFLINE: fall back to cls
        return None


def resolve_pooling(pooling: str, path: str, config=None) -> str:
    """'mean' | 'cls' for a checkpoint at `path` (a directory or a hub id)."""
    if pooling in POOLINGS:
        return pooling
    if pooling != "auto":
        raise ValueError(f"model.pooling must be mean, cls or auto, got {pooling!r}")
    if config is not None and getattr(config, POOLING_KEY, None) in POOLINGS:
        return getattr(config, POOLING_KEY)  # a directory this pipeline wrote
    local = Path(path) / _ST_POOLING
    found = local if local.is_file() else (None if Path(path).exists() else _hub_st_pooling(path))
    return _read_st_pooling(found) if found is not None else "cls"


def _mean_pooling_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                          inputs_embeds=None, labels=None, output_hidden_states=None, output_attentions=None,
                          **kwargs):
    """Encoder -> masked mean (batch, width) -> dropout -> linear (batch, labels)."""
    reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
    if attention_mask is None:
        attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
    encoder_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "inputs_embeds": inputs_embeds}
    if token_type_ids is not None:
        encoder_inputs["token_type_ids"] = token_type_ids
    if position_ids is not None:
        encoder_inputs["position_ids"] = position_ids
    out = self.base_model(**encoder_inputs, output_hidden_states=output_hidden_states,
                          output_attentions=output_attentions, return_dict=True, **kwargs)
    logits = self.classifier(self.head_dropout(mean_pool(out.last_hidden_state, attention_mask)))
    loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1)) if labels is not None else None
    return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


def _replace_head(self, config):
    # The architecture's own head is replaced: BERT's pooler goes (its weights would be dead
    # weight in every size figure), MPNet's dense + tanh head becomes one linear layer.
    if getattr(self.base_model, "pooler", None) is not None:
        self.base_model.pooler = None
    dropout = getattr(config, "classifier_dropout", None)
    self.head_dropout = nn.Dropout(dropout if dropout is not None else config.hidden_dropout_prob)
    self.classifier = nn.Linear(config.hidden_size, config.num_labels)
    self.classifier.weight.data.normal_(0.0, getattr(config, "initializer_range", 0.02))
    self.classifier.bias.data.zero_()
    self.num_labels = config.num_labels


_MEAN_CLASSES: dict[type, type] = {}


def classifier_class(config) -> type:
    """The sequence-classification class for a config: the architecture's own (cls), or its
    mean-pooling subclass (config.sec_pooling == "mean")."""
    base = AutoModelForSequenceClassification._model_mapping[type(config)]
    if getattr(config, POOLING_KEY, "cls") != "mean":
        return base
    if base not in _MEAN_CLASSES:
        def __init__(self, config):
            base.__init__(self, config)
            _replace_head(self, config)

        _MEAN_CLASSES[base] = type(
            f"MeanPooled{base.__name__}", (base,),
            {"__init__": __init__, "forward": _mean_pooling_forward,
             # the checkpoint's untrained pooler / old head is not loaded: no "unused weights" warning
             "_keys_to_ignore_on_load_unexpected": [r"pooler\.", r"classifier\.(dense|out_proj)\."],
             "__module__": __name__},
        )
    return _MEAN_CLASSES[base]


def head_parameter_names(model) -> set[str]:
    """Names of the head's parameters (what `head_learning_rate` trains): the classifier, and
    BERT's pooler where the head reads it."""
    return {name for name, _ in model.named_parameters() if name.startswith("classifier.") or ".pooler." in name}
