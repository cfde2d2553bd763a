"""The shapes of a structurally pruned BERT / MPNet encoder: read them, rebuild them, measure them.

Pruned shapes differ per layer, which a Hugging Face config cannot say, so `describe_architecture`
writes them into a JSON-able dict and `apply_architecture` resizes a model built from the unpruned
config until the pruned state dict loads strictly. Loading a pruned or distilled model needs this
module, not the pruning algorithm (stages/_pruning.py): so a change to how heads are chosen reruns
prune and what follows it, not every stage that loads a model.

MPNet: the encoder computes one relative position bias, shape (batch, n_heads, q, k) with the
unpruned head count, and adds it to every layer's scores. A pruned MPNet layer therefore becomes a
`KeptHeadsMPNetSelfAttention`, which takes the slice of that bias for the heads it kept; the kept
head indices (into the unpruned heads) are stored in the architecture dict.

`group_norms` (the λ2 group lasso of fine_tune) measures the same groups pruning removes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention


@dataclass(frozen=True)
class Layout:
    """Where the prunable Linears sit inside one encoder layer (paths relative to the layer)."""

    attention: str  # the self-attention module (holds num_attention_heads etc.)
    qkv: tuple[str, str, str]  # its query/key/value Linears: hidden -> heads * head_size
    attention_out: str  # Linear heads * head_size -> hidden
    intermediate: str = "intermediate.dense"  # Linear hidden -> intermediate_size
    output: str = "output.dense"  # Linear intermediate_size -> hidden


LAYOUTS = {
    "bert": Layout("attention.self", ("query", "key", "value"), "attention.output.dense"),
    "mpnet": Layout("attention.attn", ("q", "k", "v"), "attention.attn.o"),
}


class KeptHeadsMPNetSelfAttention(MPNetSelfAttention):
    """MPNet self-attention that lost heads: it reads only its kept heads' share of the shared bias.

    `kept_heads` (heads,) holds indices into the unpruned heads. It is a non-persistent buffer, so
    state dicts keep the stock MPNet keys; the architecture dict is where it is saved, and
    `apply_architecture` sets it again. Pruned modules get this class by `__class__` assignment:
    weights and attributes stay as they are, only `forward` changes.
    """

    kept_heads: torch.Tensor

    def forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
        if position_bias is not None:  # (batch, n_heads, q, k) -> (batch, heads, q, k)
            position_bias = position_bias.index_select(1, self.kept_heads)
        return super().forward(hidden_states, attention_mask, position_bias, output_attentions, **kwargs)


def describe_architecture(model: PreTrainedModel) -> dict:
    """The per-layer shapes of `model`, JSON-able; with its unpruned config it rebuilds the model.

    {"model_type": "mpnet", "hidden_size": 768, "head_size": 64,
     "layers": [{"heads": 8, "intermediate_size": 2150, "kept_heads": [0, 2, ...]}, ...]}
    "kept_heads" (indices into the unpruned heads) is there for MPNet only: its shared position
    bias has a channel per unpruned head. BERT heads need no identity, only their count.
    """
    layout = layout_of(model)
    layers = []
    for layer in encoder_layers(model):
        attention = layer.get_submodule(layout.attention)
        spec = {
            "heads": attention.num_attention_heads,
            "intermediate_size": layer.get_submodule(layout.intermediate).out_features,
        }
        if model.config.model_type == "mpnet":
            spec["kept_heads"] = kept_heads_of(attention, model.config.num_attention_heads).tolist()
        layers.append(spec)
    head_size = encoder_layers(model)[0].get_submodule(layout.attention).attention_head_size
    return {
        "model_type": model.config.model_type,
        "hidden_size": model.config.hidden_size,
        "head_size": head_size,
        "layers": layers,
    }


def apply_architecture(model: PreTrainedModel, arch: dict) -> None:
    """Resize a model built from the unpruned config to `arch`, in place, ready for load_state_dict.

    Resized Linears are freshly initialised: the pruned weights come from the state dict.
    """
    layout = layout_of(model)
    _check_compatible(model, arch)
    hidden, head_size = arch["hidden_size"], arch["head_size"]
    for layer, spec in zip(encoder_layers(model), arch["layers"], strict=True):
        width = spec["heads"] * head_size
        attention = layer.get_submodule(layout.attention)
        for name in layout.qkv:
            _resize(layer, f"{layout.attention}.{name}", hidden, width)
        _resize(layer, layout.attention_out, width, hidden)
        _resize(layer, layout.intermediate, hidden, spec["intermediate_size"])
        _resize(layer, layout.output, spec["intermediate_size"], hidden)
        set_head_count(attention, spec["heads"])
        if "kept_heads" in spec:
            keep_bias_heads(attention, torch.tensor(spec["kept_heads"]), model.config.num_attention_heads)
    sync_config(model, arch)


# --- module surgery shared by pruning and rebuilding -----------------------------------------


def set_head_count(attention: nn.Module, heads: int) -> None:
    """Attributes the HF attention forward reads; head size (and so the score scaling) is kept."""
    attention.num_attention_heads = heads
    attention.all_head_size = heads * attention.attention_head_size


def kept_heads_of(attention: nn.Module, n_heads: int) -> torch.Tensor:
    """Indices into the unpruned heads of the heads `attention` still has, shape (heads,)."""
    if isinstance(attention, KeptHeadsMPNetSelfAttention):
        return attention.kept_heads.cpu()
    return torch.arange(n_heads)


def keep_bias_heads(attention: MPNetSelfAttention, kept: torch.Tensor, n_heads: int) -> None:
    """Make `attention` read the shared position bias channels `kept` (of `n_heads`) only."""
    if not isinstance(attention, KeptHeadsMPNetSelfAttention):
        if torch.equal(kept, torch.arange(n_heads)):
            return  # all heads kept: the stock module is right as is
        attention.__class__ = KeptHeadsMPNetSelfAttention
    device = attention.q.weight.device
    attention.register_buffer("kept_heads", kept.to(device=device, dtype=torch.long), persistent=False)


def _resize(layer: nn.Module, path: str, in_features: int, out_features: int) -> None:
    """Replace the Linear at `path` with a fresh one of the given shape (same dtype, device, bias)."""
    old = layer.get_submodule(path)
    if (old.in_features, old.out_features) == (in_features, out_features):
        return
    new = nn.Linear(in_features, out_features, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    parent, _, name = path.rpartition(".")
    setattr(layer.get_submodule(parent), name, new)


def sync_config(model: PreTrainedModel, arch: dict) -> None:
    """Make config.intermediate_size true when every layer has the same FFN width.

    config.num_attention_heads stays the unpruned count: modules derive the head size from it, and
    MPNet's position bias still has that many channels. The per-layer truth is `arch`.
    """
    widths = {spec["intermediate_size"] for spec in arch["layers"]}
    if len(widths) == 1:
        model.config.intermediate_size = widths.pop()


def layout_of(model: PreTrainedModel) -> Layout:
    model_type = model.config.model_type
    if model_type not in LAYOUTS:
        raise ValueError(f"pruning supports {sorted(LAYOUTS)} models, not {model_type!r}")
    if getattr(model.config, "add_cross_attention", False):
        raise ValueError("pruning supports encoder-only models (no cross-attention)")
    return LAYOUTS[model_type]


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    return model.base_model.encoder.layer


def _check_compatible(model: PreTrainedModel, arch: dict) -> None:
    """`arch` must describe this very config: same model type, hidden size, head size, depth."""
    config = model.config
    expected = {
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "head_size": config.hidden_size // config.num_attention_heads,
        "layers": config.num_hidden_layers,
    }
    found = {**{k: arch.get(k) for k in expected}, "layers": len(arch.get("layers", []))}
    if found != expected:
        raise ValueError(f"architecture {found} does not fit this model's config {expected}")


def group_norms(model: PreTrainedModel) -> torch.Tensor:
    """L2 norm of every group structured pruning can remove: each head and each FFN channel.

    A head's group is its rows of Q, K and V (+ biases) and its columns of the attention output;
    an FFN channel's is its row of the intermediate Linear (+ bias) and its column of the output
    Linear. Returns a 1-d tensor (total heads + total channels). Group lasso on these (their mean,
    weighted by λ2 during fine-tuning) drives whole groups towards zero, so removing them later
    costs less accuracy.
    """
    layout = layout_of(model)
    norms = []
    for layer in encoder_layers(model):
        attention = layer.get_submodule(layout.attention)
        head_size = attention.attention_head_size
        heads = attention.num_attention_heads
        sq = torch.zeros(heads, device=next(layer.parameters()).device)
        for path in layout.qkv:
            linear = layer.get_submodule(f"{layout.attention}.{path}")
            sq = sq + linear.weight.pow(2).view(heads, head_size, -1).sum(dim=(1, 2))  # (heads,)
            if linear.bias is not None:
                sq = sq + linear.bias.pow(2).view(heads, head_size).sum(dim=1)
        out = layer.get_submodule(layout.attention_out).weight  # (hidden, heads * head_size)
        sq = sq + out.pow(2).view(out.shape[0], heads, head_size).sum(dim=(0, 2))
        norms.append(sq.sqrt())
        inter = layer.get_submodule(layout.intermediate)  # (intermediate, hidden)
        ffn_sq = inter.weight.pow(2).sum(dim=1) + layer.get_submodule(layout.output).weight.pow(2).sum(dim=0)
        if inter.bias is not None:
            ffn_sq = ffn_sq + inter.bias.pow(2)
        norms.append(ffn_sq.sqrt())
    return torch.cat(norms)
