"""Intermediate-layer attention transfer for distillation: self-attention relations (MiniLMv2).

Matching attention maps head by head (TinyBERT) needs the same heads in both models; pruning
leaves the student fewer (8 of the teacher's 12 here), so the attention width differs (256 vs
384). MiniLMv2 (Wang et al., 2021) transfers *relations* instead: the queries of a layer (b, seq,
width) are split into R "relation heads" of width / R each, whatever the model's own head count,
and softmax(Q Q^T / sqrt(width / R)) (b, R, seq, seq) is the query-query relation; likewise
key-key and value-value. Those maps have the same shape in both models, so the student's can
learn the teacher's with a KL divergence. R must divide both attention widths.

The Q/K/V projections are read with forward hooks during the models' normal forward passes, so
nothing is computed twice.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

PROJECTIONS = ("query", "key", "value")


def unwrap(model):
    """The model itself when DistributedDataParallel (or similar) wraps it as `.module`."""
    return getattr(model, "module", model)


def self_attention(model, layer: int):
    """The self-attention block of encoder layer `layer` (BERT-family: .query/.key/.value)."""
    return model.base_model.encoder.layer[layer].attention.self


def attention_width(model, layer: int) -> int:
    return self_attention(model, layer).query.out_features


@contextlib.contextmanager
def capture_projections(model, layers: list[int]) -> Iterator[dict[tuple[int, str], torch.Tensor]]:
    """Collect {(layer, "query"|"key"|"value"): output (b, seq, width)} during forwards inside."""
    captured: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for layer in layers:
        block = self_attention(model, layer)
        for name in PROJECTIONS:
            def hook(_module, _inputs, output, key=(layer, name)):
                captured[key] = output
            handles.append(getattr(block, name).register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def relation_log_probs(x: torch.Tensor, heads: int, key_mask: torch.Tensor) -> torch.Tensor:
    """log softmax(X_r X_r^T / sqrt(d_r)) per relation head r: x (b, seq, width) -> (b, heads, seq, seq).

    key_mask (b, seq), 1 on tokens: padded positions get no probability as keys.
    """
    b, seq, width = x.shape
    if width % heads:
        raise ValueError(f"attention width {width} does not split into {heads} relation heads")
    d = width // heads
    xr = x.view(b, seq, heads, d).transpose(1, 2)  # (b, heads, seq, d)
    scores = xr @ xr.transpose(-1, -2) / math.sqrt(d)  # (b, heads, seq, seq)
    scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores.float(), dim=-1)


def relation_loss(
    student: dict[tuple[int, str], torch.Tensor],
    teacher: dict[tuple[int, str], torch.Tensor],
    pairs: list[tuple[int, int]],
    attention_mask: torch.Tensor,
    heads: int,
) -> torch.Tensor:
    """Mean over layer pairs (student layer, teacher layer) and Q/K/V of
    KL(teacher relation || student relation), averaged over real query tokens and relation heads.

    attention_mask (b, seq): 1 on tokens, 0 on padding.
    """
    mask = attention_mask.float()  # (b, seq)
    denominator = mask.sum().clamp(min=1) * heads
    losses = []
    for s_layer, t_layer in pairs:
        for name in PROJECTIONS:
            s = relation_log_probs(student[(s_layer, name)], heads, attention_mask)
            t = relation_log_probs(teacher[(t_layer, name)], heads, attention_mask)
            kl_rows = F.kl_div(s, t, reduction="none", log_target=True).sum(-1)  # (b, heads, seq)
            losses.append((kl_rows * mask[:, None, :]).sum() / denominator)
    return torch.stack(losses).mean()


def check_relation_heads(student, teacher, pairs: list[tuple[int, int]], heads: int) -> None:
    """Refuse, naming the layer, a relation head count that does not divide both attention widths."""
    for s_layer, t_layer in pairs:
        for model, layer, who in ((student, s_layer, "student"), (teacher, t_layer, "teacher")):
            width = attention_width(model, layer)
            if heads < 1 or width % heads:
                raise ValueError(
                    f"distill.attention_heads={heads} does not divide the {who}'s attention width {width} "
                    f"(layer {layer}); pick a divisor of both models' widths"
                )
