"""Training-step cost in fp32 and under bf16 autocast, timed side by side in one process.

    python scripts/bench_precision.py [--steps 20] [--batch-size 16] [--model minilm-l6] [--device cpu]

Two copies of the same model (same initial weights, AdamW each) take optimizer steps on the same
batches, interleaved step by step (fp32 step i, then bf16 step i), so machine noise hits both arms
alike. Prints the median seconds per step of each, their ratio, the CPU model and the thread count.
What train.precision `auto` chooses on the CPU should follow this ratio measured on a quiet machine,
together with the accuracy effect (a paired comparison of the two runs' predictions: `sec compare`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stages._determinism import cpu_info, seed_everything  # noqa: E402
from stages._device import pick_device  # noqa: E402
from stages._io import read_pairs  # noqa: E402
from stages._models import load_pretrained_classifier  # noqa: E402
from stages._params import load_params  # noqa: E402
from stages._training import PairCollator, build_dataset, sec_loss  # noqa: E402

ARMS = ("fp32", "bf16")


def fixed_batches(data, tokenizer, *, steps: int, batch_size: int, max_length: int, seed: int) -> list[dict]:
    """`steps` batches of random rows, padded per batch: the same tensors for both arms."""
    rng = np.random.default_rng(seed)
    rows = list(build_dataset(data, tokenizer, max_length))
    collate = PairCollator(tokenizer)
    return [collate([rows[i] for i in rng.choice(len(rows), size=batch_size, replace=False)]) for _ in range(steps)]


def autocast_for(arm: str, device: torch.device):
    if arm == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def time_steps(models: dict, batches: list[dict], device: torch.device, lr: float = 1e-4) -> dict[str, list[float]]:
    """Seconds of each optimizer step per arm, arms interleaved step by step."""
    optimizers = {arm: torch.optim.AdamW(m.parameters(), lr=lr) for arm, m in models.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds: dict[str, list[float]] = {arm: [] for arm in models}
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        labels, weight = batch.pop("labels"), batch.pop("weight")
        for arm, model in models.items():
            sync()
            started = time.perf_counter()
            with autocast_for(arm, device):
                logits = model(**batch).logits
            loss = sec_loss(logits.float(), labels, weight, None, 0.0, 1.0)
            loss.backward()
            optimizers[arm].step()
            optimizers[arm].zero_grad(set_to_none=True)
            sync()
            seconds[arm].append(time.perf_counter() - started)
    return seconds


def cpu_flags() -> str:
    """The CPU features bf16 speed depends on (AVX-512 BF16, AMX)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), [])
    except OSError:
        return "?"
    return " ".join(f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni") if f in flags) or "none of avx512_bf16/amx_bf16"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train", default="data/prepared/seed.parquet")
    parser.add_argument("--model", default="minilm-l6", help="registry name, hub id or model directory")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="first steps per arm left out (allocators warm up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    params = load_params(args.params)
    device = pick_device(args.device)
    seed_everything(params.seed, params.threads, device)
    data = read_pairs(args.train)
    model, tokenizer = load_pretrained_classifier(args.model, seed=params.seed)
    models = {arm: copy.deepcopy(model).to(device).train() for arm in ARMS}
    batches = fixed_batches(data, tokenizer, steps=args.steps + args.warmup, batch_size=args.batch_size,
                            max_length=args.max_length, seed=params.seed)
    seconds = time_steps(models, batches, device)
    median = {arm: statistics.median(s[args.warmup:] or s) for arm, s in seconds.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_info()['model']} ({cpu_flags()})"
    print(f"{where}; {torch.get_num_threads()} threads; {args.model}; {args.steps} steps of batch {args.batch_size} "
          f"per arm (+{args.warmup} warm-up), interleaved, same batches; torch {torch.__version__}")
    for arm in ARMS:
        print(f"  {arm:5s} {median[arm] * 1000:8.1f} ms/step")
    print(f"  bf16 autocast: {median['fp32'] / median['bf16']:.2f}x the fp32 step rate")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
