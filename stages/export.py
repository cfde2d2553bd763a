"""export: the distilled student as ONNX, fp32 (ONNX Runtime-optimized) and dynamic int8.

Both outputs are self-contained directories (model.onnx, tokenizer.json, sec.json, sec_onnx.py) that
run with only onnxruntime, numpy and tokenizers; `stages._models.load_model` loads them too. Before
writing metrics the stage checks that the fp32 graph computes the PyTorch model: max |logit
difference| on fixed example pairs above `TOLERANCE` fails it.
"""

from __future__ import annotations

import argparse
import time

from stages import _onnx
from stages._cli import run
from stages._determinism import seed_everything
from stages._io import write_metrics
from stages._models import load_model
from stages._params import Params, load_params

# fp32 ONNX Runtime vs PyTorch: fused kernels reorder float sums, measured ~4e-6 on the student.
TOLERANCE = 1e-3


def export(model_dir: str, out_fp32: str, out_int8: str, params: Params) -> dict:
    """Write both directories -> metrics (sizes, fused ops, reduce_range used, parity)."""
    started = time.perf_counter()
    reduce_range = _onnx.resolve_reduce_range(params.export.reduce_range)
    fp32 = _onnx.export_model_dir(model_dir, out_fp32, precision="fp32", optimize=params.export.optimize,
                                  opset=params.export.opset, max_length=params.model.max_length)
    int8 = _onnx.quantize_onnx(out_fp32, out_int8, per_channel=params.quantize.scheme == "dynamic_int8_per_channel",
                               reduce_range=reduce_range, embeddings=params.quantize.embeddings)
    model, tokenizer = load_model(model_dir)
    parity = _onnx.check_parity(model, tokenizer, out_fp32, max_length=params.model.max_length,
                                tolerance=TOLERANCE, threads=params.threads)
    int8_diff = _onnx.logit_difference(model, tokenizer, out_int8, max_length=params.model.max_length,
                                       threads=params.threads)
    optimized = fp32["steps"].get("optimize", {})
    return {
        "fp32": {"size_mb": fp32["size_mb"], "nodes": fp32["nodes"], "sha256": fp32["sha256"],
                 "fused": optimized.get("fused", {}), "unfused": optimized.get("unfused", [])},
        "int8": {"size_mb": int8["size_mb"], "nodes": int8["nodes"], "sha256": int8["sha256"],
                 "quantization": int8["quantization"]},
        "opset": params.export.opset,
        "optimize": params.export.optimize,
        "reduce_range": reduce_range,
        "reduce_range_setting": params.export.reduce_range,
        "vnni": _onnx.vnni_available(),
        "max_abs_logit_diff_fp32": parity,
        "max_abs_logit_diff_int8": int8_diff,
        "tolerance": TOLERANCE,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, help="float model directory to export")
    parser.add_argument("--out-fp32", required=True)
    parser.add_argument("--out-int8", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run_info = seed_everything(params.seed, params.threads)
    metrics = export(args.model, args.out_fp32, args.out_int8, params)
    write_metrics({**metrics, "run": run_info}, args.metrics)
    print(f"export: fp32 {metrics['fp32']['size_mb']} MB (fused {metrics['fp32']['fused']}), "
          f"int8 {metrics['int8']['size_mb']} MB, |logit diff| fp32 {metrics['max_abs_logit_diff_fp32']:.2g}")


if __name__ == "__main__":
    run(main)
