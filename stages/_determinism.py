"""One call that makes a stage's run a function of (code, params, inputs, machine) only.

Every stage calls `seed_everything(params.seed, params.threads)` right after loading its params,
before any model, head, sampler or augmenter exists. What it pins:
  - python `random`, numpy's global RNG, torch (CPU and every CUDA device), via transformers'
    `set_seed` (nlpaug draws from python `random`; stages that need their own streams derive
    them from the seed, e.g. stages._text.sample_rows);
  - the CPU thread count: floating-point sums are split across threads, so a different count
    can round differently. It is a param (`threads`) and is recorded in each stage's metrics;
  - deterministic kernels where torch has them (`use_deterministic_algorithms`, warn_only: a
    kernel without a deterministic version warns instead of failing), cuDNN autotuning off, and
    cuBLAS' fixed-size workspace (CUBLAS_WORKSPACE_CONFIG) on GPUs.
What it cannot pin: results across CPU models (different SIMD paths in oneDNN/MKL and fbgemm),
across thread counts, across torch versions, and CPU vs GPU. See README "Reproducibility".
"""

from __future__ import annotations

import os

import torch


def seed_everything(seed: int, threads: int, device: torch.device | str | None = None) -> dict:
    """Seed every RNG, fix the thread count, pick deterministic kernels. Returns what it set.

    `device`: the stage's device (stages._device.pick_device), recorded beside the rest, so every
    stage's metrics say where it computed (results on a GPU differ from the CPU's in the last bits).
    """
    from transformers import set_seed

    # Must be set before the first cuBLAS call; harmless on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    set_seed(seed)  # random, numpy, torch (+ all CUDA devices)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    run = {"seed": seed, "threads": torch.get_num_threads(), "deterministic_algorithms": True, "cpu": cpu_info()}
    if device is not None:
        from stages._device import describe

        run.update(describe(device))
    return run



# The ISA extensions that pick oneDNN/fbgemm/ONNX Runtime kernels, so the float results of a run.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """The CPU a stage ran on: model name and which of _ISA_FLAGS it has (Linux /proc/cpuinfo).

    Recorded in every stage's run info: the same commit computes different last bits on another
    CPU, and that is the first thing to check when two runs differ.
    """
    import platform

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as handle:
                cpuinfo = handle.read()
        except OSError:
            return {"model": platform.processor() or platform.machine(), "isa": {}}
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's entry
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", platform.machine()), "isa": {f: f in flags for f in _ISA_FLAGS}}
