"""Latency measured in rounds, for the benchmark scripts (scripts/benchmark.py, scripts/onnx_static_int8.py).

One round is stages.evaluate.time_models: every model timed interleaved in one process on the same
inputs, so machine noise hits them alike. The scripts repeat whole rounds and report each ratio as
its median over rounds with min and max, which says how far one round can be trusted.
"""

from __future__ import annotations

import statistics

from stages._models import OnnxModel
from stages._params import EvaluateParams
from stages.evaluate import REFERENCE, time_models


def spread(values: list[float]) -> dict:
    """Median, min and max of one ratio over rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise_rounds(rounds: list[dict]) -> dict[str, dict]:
    """rounds: [time_models(...) output] -> {model: {latency/speed-up key: spread over rounds}}."""
    keys = ("latency_ms_b32", "latency_ms_b1_p50", "latency_ms_b1_p95", "speedup", "speedup_b1_p50")
    return {name: {k: spread([r[name][k] for r in rounds]) for k in keys} for name in rounds[0]}


def time_rounds(models: dict, splits: dict, timing_params: EvaluateParams, *, rounds: int, max_length: int,
                seed: int) -> list[dict]:
    """`rounds` separate time_models rounds (raw, for summarise_rounds or per-round ratios).

    Each round prints its candidates' speed-ups over the reference (batch 32 / batch-1 p50) as it
    ends, so a long benchmark shows progress and a round that went wrong stands out.
    """
    timed = []
    for r in range(rounds):
        timed.append(time_models(models, splits, timing_params, max_length=max_length, seed=seed))
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {t['speedup']:.2f}x/{t['speedup_b1_p50']:.2f}x" for n, t in timed[-1].items() if n != REFERENCE), flush=True)
    return timed


def backend_of(model) -> str:
    """What runs `model`: onnxruntime, torch int8 (a torch.ao quantized module inside) or torch fp32."""
    if isinstance(model, OnnxModel):
        return "onnxruntime"
    return "torch int8" if any(type(m).__module__.startswith("torch.ao") for m in model.modules()) else "torch fp32"
