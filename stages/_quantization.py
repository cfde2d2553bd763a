"""int8 quantization shared by the quantize stage and `load_model`."""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import (
    default_dynamic_qconfig,
    float_qparams_weight_only_qconfig,
    per_channel_dynamic_qconfig,
    quantize_dynamic,
)

# Linear weight qconfig per scheme. Per-tensor shares one scale over a whole weight matrix, so the
# rows with small weights lose most of their precision; per-channel gives each output row its own
# scale at the same int8 size and speed (on the run-4 student: -0.53 points per-tensor, +0.03
# per-channel against float32, all 9,815 validation pairs).
SCHEMES = {"dynamic_int8": default_dynamic_qconfig, "dynamic_int8_per_channel": per_channel_dynamic_qconfig}


def quantize_model(model: nn.Module, scheme: str, embeddings: bool = False) -> nn.Module:
    """Dynamic int8: Linear weights stored as int8, activations quantized per batch at run time.

    `scheme` picks per-tensor or per-channel (per output row) weight scales.
    `embeddings`: the embedding tables too, as weight-only int8 with a float scale and offset per
    row (lookups dequantize the rows they fetch). On a small BERT the word embeddings are half the
    parameters, so this is where most of the size goes. LayerNorms stay float32.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    spec: dict = {nn.Linear: SCHEMES[scheme]}
    if embeddings:
        spec[nn.Embedding] = float_qparams_weight_only_qconfig
    return quantize_dynamic(model.eval(), spec, dtype=torch.qint8)


def scheme_of(model: nn.Module) -> str:
    """The SCHEMES key a quantized model was made with, read off its int8 Linear weights."""
    for module in model.modules():
        if type(module).__module__.startswith("torch.ao") and type(module).__name__ == "Linear":
            per_channel = module.weight().qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
            return "dynamic_int8_per_channel" if per_channel else "dynamic_int8"
    raise ValueError("model has no int8 Linear layers")


def count_parameters(model: nn.Module) -> int:
    """Float parameters plus the int8 weights and biases that quantized Linears hold as packed params."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(module, nn.Linear):  # torch.ao quantized Linear / Embedding
            total += weight().numel()
            bias = getattr(module, "bias", None)
            bias = bias() if callable(bias) else None
            total += bias.numel() if bias is not None else 0
    return total
