"""int8 quantization shared by the quantize stage and `load_model`."""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

SCHEMES = ("dynamic_int8",)


def quantize_model(model: nn.Module, scheme: str) -> nn.Module:
    """Dynamic int8: Linear weights stored as int8, activations quantized per batch at run time.

    Embeddings and LayerNorms stay float32 (dynamic quantization has no int8 kernel for them).
    """
    if scheme != "dynamic_int8":
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {SCHEMES}")
    return quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


def count_parameters(model: nn.Module) -> int:
    """Float parameters plus the int8 weights and biases that quantized Linears hold as packed params."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if callable(weight) and not isinstance(module, nn.Linear):  # torch.ao dynamic quantized Linear
            total += weight().numel()
            bias = module.bias()
            total += bias.numel() if bias is not None else 0
    return total
