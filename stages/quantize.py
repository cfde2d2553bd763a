"""quantize: int8 dynamic quantization of every Linear layer (and the embeddings) of the student.

Saved as the packed int8 state dict plus sec.json (scheme and, for a pruned student, its
architecture); `stages._models.load_model` rebuilds, quantizes and loads it in a fresh process.
"""

from __future__ import annotations

import argparse
import time

from stages._cli import run
from stages._determinism import seed_everything
from stages._io import write_metrics
from stages._models import load_model, read_sec_info, save_model, weights_size_mb
from stages._params import QuantizeParams, load_params
from stages._quantization import count_parameters, quantize_model


def quantize(model, params: QuantizeParams) -> tuple[object, dict]:
    started = time.perf_counter()
    quantized = quantize_model(model, params.scheme, embeddings=params.embeddings)
    int8 = [type(m).__name__ for m in quantized.modules() if type(m).__module__.startswith("torch.ao")]
    return quantized, {
        "scheme": params.scheme,
        "quantized_linear_layers": int8.count("Linear"),
        "quantized_embeddings": int8.count("Embedding"),
        "params": count_parameters(quantized),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, help="float model directory to quantize")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run_info = seed_everything(params.seed, params.threads)
    model, tokenizer = load_model(args.model)
    quantized, metrics = quantize(model, params.quantize)
    info = {
        "stage": "quantize", "parent": args.model, "quantization": params.quantize.scheme,
        "quantized_embeddings": params.quantize.embeddings,
    }
    architecture = read_sec_info(args.model).get("architecture")
    if architecture:
        info["architecture"] = architecture
    save_model(quantized, tokenizer, args.out, info)
    metrics["size_mb_before"] = round(weights_size_mb(args.model), 2)
    metrics["size_mb_after"] = round(weights_size_mb(args.out), 2)
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(f"quantize: {metrics['size_mb_before']} MB -> {metrics['size_mb_after']} MB")


if __name__ == "__main__":
    run(main)
