"""int8 quantization shared by the quantize stage and `load_model`."""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig, quantize_dynamic

SCHEMES = ("dynamic_int8",)


def quantize_model(model: nn.Module, scheme: str, embeddings: bool = False) -> nn.Module:
    """Dynamic int8: Linear weights stored as int8, activations quantized per batch at run time.

    `embeddings`: the embedding tables too, as weight-only int8 with a float scale and offset per
    row (lookups dequantize the rows they fetch). On a small BERT the word embeddings are half the
    parameters, so this is where most of the size goes. LayerNorms stay float32.
    """
    if scheme != "dynamic_int8":
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {SCHEMES}")
    spec: dict = {nn.Linear: default_dynamic_qconfig}
    if embeddings:
        spec[nn.Embedding] = float_qparams_weight_only_qconfig
    return quantize_dynamic(model.eval(), spec, dtype=torch.qint8)


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
