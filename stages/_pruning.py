"""Structured pruning of BERT / MPNet classifiers: whole attention heads and FFN channels.

torch-pruning's dependency graph says what each cut touches: dropping a head's query rows also
drops the matching key and value rows and the attention-output columns; dropping an FFN channel
drops an intermediate row and an output column. Its Group{Taylor,Magnitude}Importance scores the
channels. This module then picks, per layer, exactly which heads and channels go, so every layer
keeps floor(n * (1 - ratio)) of each (at least one) and the kept heads are known by index.
(MetaPruner's own selection rounds head counts up, can drop every head of a layer, and only prunes
heads when the same group also prunes channels, so it is not used.)

The hidden size (residual stream) is never pruned; neither are embeddings, pooler or classifier.

The pruned shapes differ per layer, which a Hugging Face config cannot say, so
`describe_architecture` writes them into a JSON-able dict and `apply_architecture` resizes a model
built from the unpruned config until the pruned state dict loads strictly.

MPNet: the encoder computes one relative position bias, shape (batch, n_heads, q, k) with the
unpruned head count, and adds it to every layer's scores. A pruned MPNet layer therefore becomes a
`KeptHeadsMPNetSelfAttention`, which takes the slice of that bias for the heads it kept; the kept
head indices (into the unpruned heads) are stored in the architecture dict.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from transformers import PreTrainedModel
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention

IMPORTANCES = ("taylor", "magnitude")


@dataclass(frozen=True)
class _Layout:
    """Where the prunable Linears sit inside one encoder layer (paths relative to the layer)."""

    attention: str  # the self-attention module (holds num_attention_heads etc.)
    qkv: tuple[str, str, str]  # its query/key/value Linears: hidden -> heads * head_size
    attention_out: str  # Linear heads * head_size -> hidden
    intermediate: str = "intermediate.dense"  # Linear hidden -> intermediate_size
    output: str = "output.dense"  # Linear intermediate_size -> hidden


_LAYOUTS = {
    "bert": _Layout("attention.self", ("query", "key", "value"), "attention.output.dense"),
    "mpnet": _Layout("attention.attn", ("q", "k", "v"), "attention.attn.o"),
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


def prune_structured(
    model: PreTrainedModel,
    ratio: float,
    *,
    calibration_batches: list[dict] | None = None,
    importance: str = "taylor",
    prune_heads: bool = True,
    prune_ffn: bool = True,
) -> dict:
    """Remove `ratio` of the attention heads and of the FFN channels of every layer, in place.

    Each layer keeps floor(n * (1 - ratio)) heads (at least one) and as many FFN channels, ranked
    by torch-pruning's group importance: "taylor" = |weight * gradient| summed over the whole group,
    gradients accumulated over `calibration_batches` (dicts of tensors with `labels`);
    "magnitude" = L2 norm of the group's weights, no data needed. Returns the architecture dict.
    Also sets model.config.intermediate_size to the pruned width (see `_sync_config`); that config
    object may be shared, so build other models from a fresh one.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; expected one of {IMPORTANCES}")
    if importance == "taylor" and not calibration_batches:
        raise ValueError("taylor importance needs calibration_batches (labelled batches)")
    layout = _layout(model)
    was_training = model.training
    model.eval()  # no dropout: the traced graph and the Taylor scores are deterministic
    graph = _dependency_graph(model)
    if importance == "taylor":
        _accumulate_gradients(model, calibration_batches)
        scorer = tp.importance.GroupTaylorImportance()
    else:
        scorer = tp.importance.GroupMagnitudeImportance(p=2)
    for layer in _layers(model):
        if prune_heads:
            survivors = _prune_heads(graph, scorer, layer, layout, ratio)
            if survivors is not None and model.config.model_type == "mpnet":
                attention, n_heads = layer.get_submodule(layout.attention), model.config.num_attention_heads
                _keep_bias_heads(attention, _kept_heads(attention, n_heads)[survivors], n_heads)
        if prune_ffn:
            _prune_ffn(graph, scorer, layer, layout, ratio)
    model.zero_grad(set_to_none=True)  # calibration gradients must not leak into recovery training
    model.train(was_training)
    architecture = describe_architecture(model)
    _sync_config(model, architecture)
    return architecture


def describe_architecture(model: PreTrainedModel) -> dict:
    """The per-layer shapes of `model`, JSON-able; with its unpruned config it rebuilds the model.

    {"model_type": "mpnet", "hidden_size": 768, "head_size": 64,
     "layers": [{"heads": 8, "intermediate_size": 2150, "kept_heads": [0, 2, ...]}, ...]}
    "kept_heads" (indices into the unpruned heads) is there for MPNet only: its shared position
    bias has a channel per unpruned head. BERT heads need no identity, only their count.
    """
    layout = _layout(model)
    layers = []
    for layer in _layers(model):
        attention = layer.get_submodule(layout.attention)
        spec = {
            "heads": attention.num_attention_heads,
            "intermediate_size": layer.get_submodule(layout.intermediate).out_features,
        }
        if model.config.model_type == "mpnet":
            spec["kept_heads"] = _kept_heads(attention, model.config.num_attention_heads).tolist()
        layers.append(spec)
    head_size = _layers(model)[0].get_submodule(layout.attention).attention_head_size
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
    layout = _layout(model)
    _check_compatible(model, arch)
    hidden, head_size = arch["hidden_size"], arch["head_size"]
    for layer, spec in zip(_layers(model), arch["layers"], strict=True):
        width = spec["heads"] * head_size
        attention = layer.get_submodule(layout.attention)
        for name in layout.qkv:
            _resize(layer, f"{layout.attention}.{name}", hidden, width)
        _resize(layer, layout.attention_out, width, hidden)
        _resize(layer, layout.intermediate, hidden, spec["intermediate_size"])
        _resize(layer, layout.output, spec["intermediate_size"], hidden)
        _set_head_count(attention, spec["heads"])
        if "kept_heads" in spec:
            _keep_bias_heads(attention, torch.tensor(spec["kept_heads"]), model.config.num_attention_heads)
    _sync_config(model, arch)


# --- pruning steps ---------------------------------------------------------------------------


def _prune_heads(
    graph: tp.DependencyGraph, scorer: tp.importance.Importance, layer: nn.Module, layout: _Layout, ratio: float
) -> torch.Tensor | None:
    """Drop the least important whole heads of one layer (q/k/v rows + attention-output columns).

    Returns the surviving heads as sorted indices into the layer's heads before this call, shape
    (kept,), or None if nothing was dropped.
    """
    attention = layer.get_submodule(layout.attention)
    query = attention.get_submodule(layout.qkv[0])
    heads, head_size = attention.num_attention_heads, attention.attention_head_size
    kept = _n_kept(heads, ratio)
    if kept == heads:
        return None
    group = _full_group(graph, query, layer)
    head_scores = scorer(group).view(heads, head_size).mean(1)  # (heads,)
    dropped = head_scores.argsort()[: heads - kept]
    offsets = torch.arange(head_size, device=dropped.device)
    channels = (dropped[:, None] * head_size + offsets).flatten()  # (dropped * head_size,)
    graph.get_pruning_group(query, tp.prune_linear_out_channels, idxs=channels.tolist()).prune()
    _set_head_count(attention, kept)
    return torch.tensor(sorted(set(range(heads)) - set(dropped.tolist())))


def _prune_ffn(
    graph: tp.DependencyGraph, scorer: tp.importance.Importance, layer: nn.Module, layout: _Layout, ratio: float
) -> None:
    """Drop the least important FFN channels of one layer (intermediate rows + output columns)."""
    dense = layer.get_submodule(layout.intermediate)
    channels = dense.out_features
    kept = _n_kept(channels, ratio)
    if kept == channels:
        return
    scores = scorer(_full_group(graph, dense, layer))  # (channels,)
    dropped = scores.argsort()[: channels - kept]
    graph.get_pruning_group(dense, tp.prune_linear_out_channels, idxs=dropped.tolist()).prune()


def _n_kept(n: int, ratio: float) -> int:
    """floor(n * (1 - ratio)), at least 1; the epsilon keeps 10 * (1 - 0.9) = 0.99999... at 1."""
    return max(1, math.floor(n * (1 - ratio) + 1e-9))


def _full_group(graph: tp.DependencyGraph, root: nn.Linear, layer: nn.Module):
    """The group of all output channels of `root`, checked to stay inside its own encoder layer.

    A weight outside the layer in the group would mean the traced graph coupled layers (e.g. an
    MPNet position bias that was not detached) and pruning would cut the wrong thing.
    """
    group = graph.get_pruning_group(root, tp.prune_linear_out_channels, idxs=list(range(root.out_features)))
    own = set(layer.modules())
    names = {module: name for name, module in graph.model.named_modules()}
    strangers = [names[d.target.module] for d, _ in group
                 if isinstance(d.target.module, (nn.Linear, nn.Embedding, nn.LayerNorm))
                 and d.target.module not in own]
    if strangers:
        raise RuntimeError(f"pruning {names[root]} would also cut {strangers}")
    return group


def _dependency_graph(model: PreTrainedModel) -> tp.DependencyGraph:
    """Trace `model` once on a dummy batch; the graph maps each cut to everything it touches."""
    device = next(model.parameters()).device
    example = {
        "input_ids": torch.full((2, 8), (model.config.pad_token_id or 0) + 1, dtype=torch.long, device=device),
        "attention_mask": torch.ones((2, 8), dtype=torch.long, device=device),
    }
    with _position_bias_detached(model):
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example, output_transform=lambda out: out.logits.sum(), verbose=False
        )


@contextmanager
def _position_bias_detached(model: PreTrainedModel) -> Iterator[None]:
    """While tracing MPNet, hand the layers its shared relative position bias detached.

    Traced, the one bias tensor that is added to every layer's scores ties all layers' heads and the
    bias embedding into a single group; detached, it is a constant and each layer stands alone.
    """
    if model.config.model_type != "mpnet":
        yield
        return
    encoder = model.base_model.encoder
    compute = encoder.compute_position_bias
    encoder.compute_position_bias = lambda *args, **kwargs: compute(*args, **kwargs).detach()
    try:
        yield
    finally:
        del encoder.compute_position_bias  # the instance attribute; the class method shows again


def _accumulate_gradients(model: PreTrainedModel, batches: list[dict]) -> None:
    """Sum d(loss)/d(weight) over the calibration batches into .grad (for Taylor importance)."""
    device = next(model.parameters()).device
    accepted = set(inspect.signature(model.forward).parameters)
    model.zero_grad(set_to_none=True)
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k in accepted}
        model(**inputs).loss.backward()


# --- module surgery shared by pruning and rebuilding -----------------------------------------


def _set_head_count(attention: nn.Module, heads: int) -> None:
    """Attributes the HF attention forward reads; head size (and so the score scaling) is kept."""
    attention.num_attention_heads = heads
    attention.all_head_size = heads * attention.attention_head_size


def _kept_heads(attention: nn.Module, n_heads: int) -> torch.Tensor:
    """Indices into the unpruned heads of the heads `attention` still has, shape (heads,)."""
    if isinstance(attention, KeptHeadsMPNetSelfAttention):
        return attention.kept_heads.cpu()
    return torch.arange(n_heads)


def _keep_bias_heads(attention: MPNetSelfAttention, kept: torch.Tensor, n_heads: int) -> None:
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


def _sync_config(model: PreTrainedModel, arch: dict) -> None:
    """Make config.intermediate_size true when every layer has the same FFN width.

    config.num_attention_heads stays the unpruned count: modules derive the head size from it, and
    MPNet's position bias still has that many channels. The per-layer truth is `arch`.
    """
    widths = {spec["intermediate_size"] for spec in arch["layers"]}
    if len(widths) == 1:
        model.config.intermediate_size = widths.pop()


def _layout(model: PreTrainedModel) -> _Layout:
    model_type = model.config.model_type
    if model_type not in _LAYOUTS:
        raise ValueError(f"pruning supports {sorted(_LAYOUTS)} models, not {model_type!r}")
    if getattr(model.config, "add_cross_attention", False):
        raise ValueError("pruning supports encoder-only models (no cross-attention)")
    return _LAYOUTS[model_type]


def _layers(model: PreTrainedModel) -> nn.ModuleList:
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
    layout = _layout(model)
    norms = []
    for layer in _layers(model):
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
