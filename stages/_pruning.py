"""Structured pruning of BERT / MPNet classifiers: whole attention heads and FFN channels.

torch-pruning's dependency graph says what each cut touches: dropping a head's query rows also
drops the matching key and value rows and the attention-output columns; dropping an FFN channel
drops an intermediate row and an output column. Its Group{Taylor,Magnitude}Importance scores the
channels. This module then picks, per layer, exactly which heads and channels go, so every layer
keeps floor(n * (1 - ratio)) of each (at least one) and the kept heads are known by index.
(MetaPruner's own selection rounds head counts up, can drop every head of a layer, and only prunes
heads when the same group also prunes channels, so it is not used.)

The hidden size (residual stream) is never pruned; neither are embeddings, pooler or classifier.
The shapes that result, and the module surgery both pruning and model loading need, live in
stages/_architecture.py.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch_pruning as tp
from torch import nn
from transformers import PreTrainedModel

from stages._architecture import (
    Layout,
    describe_architecture,
    encoder_layers,
    keep_bias_heads,
    kept_heads_of,
    layout_of,
    set_head_count,
    sync_config,
)

IMPORTANCES = ("taylor", "magnitude")


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
    Also sets model.config.intermediate_size to the pruned width (see `sync_config`); that config
    object may be shared, so build other models from a fresh one.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    if importance not in IMPORTANCES:
        raise ValueError(f"unknown importance {importance!r}; expected one of {IMPORTANCES}")
    if importance == "taylor" and not calibration_batches:
        raise ValueError("taylor importance needs calibration_batches (labelled batches)")
    layout = layout_of(model)
    was_training = model.training
    model.eval()  # no dropout: the traced graph and the Taylor scores are deterministic
    graph = _dependency_graph(model)
    if importance == "taylor":
        _accumulate_gradients(model, calibration_batches)
        scorer = tp.importance.GroupTaylorImportance()
    else:
        scorer = tp.importance.GroupMagnitudeImportance(p=2)
    for layer in encoder_layers(model):
        if prune_heads:
            survivors = _prune_heads(graph, scorer, layer, layout, ratio)
            if survivors is not None and model.config.model_type == "mpnet":
                attention, n_heads = layer.get_submodule(layout.attention), model.config.num_attention_heads
                keep_bias_heads(attention, kept_heads_of(attention, n_heads)[survivors], n_heads)
        if prune_ffn:
            _prune_ffn(graph, scorer, layer, layout, ratio)
    model.zero_grad(set_to_none=True)  # calibration gradients must not leak into recovery training
    model.train(was_training)
    architecture = describe_architecture(model)
    sync_config(model, architecture)
    return architecture


# --- pruning steps ---------------------------------------------------------------------------


def _prune_heads(
    graph: tp.DependencyGraph, scorer: tp.importance.Importance, layer: nn.Module, layout: Layout, ratio: float
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
    set_head_count(attention, kept)
    return torch.tensor(sorted(set(range(heads)) - set(dropped.tolist())))


def _prune_ffn(
    graph: tp.DependencyGraph, scorer: tp.importance.Importance, layer: nn.Module, layout: Layout, ratio: float
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
