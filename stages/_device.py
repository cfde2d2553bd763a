"""Where a stage computes, and in what precision it trains.

Every stage that runs a model picks its device once (`pick_device`), right after seeding, and
records it in its metrics (`seed_everything(..., device=...)` puts it under "run"). The setting is
the top-level param `device` (auto | cpu | cuda); the environment variable SEC_DEVICE overrides it,
so a worker or a test can force the CPU without editing params.yaml (DVC does not see the variable:
like `auto`, it changes where a run computes, not what it is asked to compute).

Models that cannot leave the CPU stay there whatever the device: torch's dynamic int8 modules
(fbgemm/qnnpack kernels only) and ONNX Runtime sessions (the CPU provider). `place` knows which.

Training precision (`train.precision`: fp32 | bf16 | fp16 | auto) maps onto the Trainer's
mixed-precision flags (autocast; the weights stay float32). `resolve_precision` turns `auto` into
what this device should use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_ENV = "SEC_DEVICE"


class DeviceError(RuntimeError):
    """The requested device or precision cannot be had on this machine; the message says why."""


def device_setting(param: str, environ: Mapping[str, str] = os.environ) -> str:
    """The effective setting: SEC_DEVICE when set (and non-empty), else the param."""
    setting = environ.get(DEVICE_ENV, "").strip() or param
    if setting not in DEVICES:
        source = DEVICE_ENV if environ.get(DEVICE_ENV, "").strip() else "param 'device'"
        raise DeviceError(f"{source}: expected one of {DEVICES}, got {setting!r}")
    return setting


def pick_device(param: str = "auto", *, environ: Mapping[str, str] = os.environ,
                cuda_available: bool | None = None) -> torch.device:
    """auto -> cuda when torch sees a CUDA GPU, else cpu; cpu/cuda as asked (cuda must exist)."""
    setting = device_setting(param, environ)
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if setting == "cuda" and not available:
        raise DeviceError("device 'cuda' was asked for, but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}; a CPU-only wheel? see README 'GPU')")
    if setting == "auto":
        setting = "cuda" if available else "cpu"
    return torch.device(setting)


def resolve_precision(setting: str, device: torch.device | str, *, bf16_supported: bool | None = None) -> str:
    """fp32 | bf16 | fp16 from a train.precision setting and the device it trains on.

    auto: bf16 on a CUDA GPU that supports it (Ampere and later), else fp16 on an older GPU.
    On the CPU, auto means fp32: bf16 autocast measured 0.72x the fp32 step rate (slower) for a
    MiniLM step on this machine's avx512_bf16 CPU without AMX (scripts/bench_precision.py, README),
    and the brief is to keep auto's choice on a CPU only where it pays. bf16 can still be asked
    for explicitly on a CPU.
    fp16 needs a GPU (no loss-scaling fp16 path on the CPU).
    """
    if setting not in PRECISIONS:
        raise DeviceError(f"train.precision: expected one of {PRECISIONS}, got {setting!r}")
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    if setting == "auto":
        if not on_gpu:
            return "fp32"
        supported = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        return "bf16" if supported else "fp16"
    if setting == "fp16" and not on_gpu:
        raise DeviceError("train.precision 'fp16' needs a CUDA device; use bf16 or fp32 on the CPU")
    return setting


def cpu_only(model) -> bool:
    """True for models whose kernels exist on the CPU only: torch dynamic int8, ONNX Runtime."""
    if not isinstance(model, torch.nn.Module):
        return True  # stages._models.OnnxModel: an ONNX Runtime session on the CPU provider
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def place(model, device: torch.device | str):
    """`model` on `device` when it can run there (in place, as nn.Module.to), else left on the CPU."""
    if cpu_only(model):
        return model
    return model.to(device)


def model_device(model) -> torch.device:
    """The device a model's weights are on (the CPU for models without torch parameters)."""
    parameters = getattr(model, "parameters", None)
    first = next(parameters(), None) if callable(parameters) else None
    return first.device if first is not None else torch.device("cpu")


def describe(device: torch.device | str) -> dict:
    """What a stage records about its device: the type, and the GPU's name on CUDA."""
    device = torch.device(device)
    info = {"device": device.type}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info
