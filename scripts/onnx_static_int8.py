"""Lever (issue 11): int8 activations by static quantization, where ONNX Runtime supports them.

    python scripts/onnx_static_int8.py                          # fused graph, QDQ U8S8, MinMax, 3 rounds
    python scripts/onnx_static_int8.py --graph both --rounds 5  # also the unfused graph (every MatMul static)
    python scripts/onnx_static_int8.py --work-dir /tmp/static   # keep the static model (work-dir/static_fused)

The pipeline's ONNX int8 (models/onnx/int8) is dynamic: int8 weights, activations quantized to uint8
at run time with a range measured on every batch. Static quantization measures the activation
ranges once, on calibration pairs, and writes them into the graph. This script builds that static
int8 model from the exported fp32 graph (models/onnx/fp32) with onnxruntime.quantization's
quantize_static, calibrated on TRAINING pairs (data/backtranslated/train.parquet, minus any pair that
is also in dev), and measures it beside the teacher (torch fp32), the fp32 ONNX student and the
dynamic int8 one: size, DEV accuracy, argmax agreement with the fp32 ONNX graph, and batch-32 /
batch-1 latency timed interleaved in one process over --rounds rounds. It ends with a verdict:
static vs dynamic speed and the dev accuracy difference with a paired bootstrap 95 % CI.

A lever script chooses, so it reads the dev split only (never data/prepared/test.parquet), and it
writes only under --work-dir (a temporary directory by default), never under a DVC output.

What ONNX Runtime can quantize statically here. `sec export` optimizes the graph into ORT's fused
contrib ops (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu). Its static
quantizer has no int8 Attention, SkipLayerNormalization or BiasGelu (in neither its QDQ nor its
QOperator registry; EmbedLayerNormalization's int8 form quantizes only its tables, its inputs are
token ids), and without symbolic shape inference it cannot even calibrate a graph that holds them
(their outputs have no type for it). So: the graph is shape-inferred first (quant_pre_process),
MatMul and Gemm get static int8 activations, and the fused Attention (QKV projections) and
EmbedLayerNormalization (the embedding tables) are then quantized dynamically, as in models/onnx/int8. The static
model thus differs from the dynamic one only where static quantization is possible, which is what
this lever measures. `--graph unfused` instead re-exports the student without ORT's fusions, where
every MatMul, including Q.K^T and the attention-weighted values, gets static int8 activations, at
the price of an unfused attention. The output says, from the graph ORT actually runs, how many
int8 nodes take static and how many dynamic activation scales, and which float ops remain.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from onnxruntime.quantization import CalibrationDataReader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.stats import mcnemar_exact, paired_bootstrap, verdict  # noqa: E402
from pipeline.timing import backend_of, spread, summarise_rounds, time_rounds  # noqa: E402
from stages import _onnx  # noqa: E402
from stages._determinism import cpu_info  # noqa: E402
from stages._io import atomic_path, read_pairs  # noqa: E402
from stages._models import load_model  # noqa: E402
from stages._params import EvaluateParams  # noqa: E402
from stages.evaluate import REFERENCE, evaluate, read_reference  # noqa: E402
from stages.onnx_runtime import OnnxClassifier  # noqa: E402

# Format and data types. ORT's quantization doc (https://onnxruntime.ai/docs/performance/
# model-optimizations/quantization.html, "Data type selection"): on CPU it runs U8U8, U8S8 and S8S8;
# S8S8 with QDQ is its default and first choice, and S8S8 with QOperator is slow on x86-64. We use
# QDQ, with uint8 activations and int8 weights (U8S8): the pair MLAS has fast x86 kernels for
# (VPMADDUBSW, VNNI), the pair models/onnx/int8 runs (dynamic quantization has uint8 activations
# only), and what ORT makes of int8 QDQ activations on x86 anyway (its QDQS8ToU8Transformer runs
# wherever QDQIsInt8Allowed() is false, i.e. everywhere but ARM). The doc's U8S8 caveat, int16
# saturation on AVX2/AVX512 without VNNI, is handled as in the pipeline: `reduce_range` auto.
# QDQ leaves each MatMul's output float (ORT fuses DequantizeLinear -> MatMul at session load into
# MatMulIntegerToFloat; the dynamic model's DynamicQuantizeMatMul is the same ORT kernel class,
# MatMulIntegerToFloatBase, plus the per-call range), so static vs dynamic differs in one thing:
# where the input's scale comes from. `--quantize-outputs`
# (QLinearMatMul, a second rounding per MatMul) and `--format qoperator` (which always quantizes
# outputs) are there to be measured, not the default.
FORMATS = ("qdq", "qoperator")
# Calibration: MinMax (ORT's default) never clips, so per-tensor uint8 activations err by rounding
# only; Percentile and Entropy clip the tails, and in BERT the tails of the residual stream (the
# input of the FFN's first MatMul) are a few systematic outlier dimensions (Bondarenko et al.,
# "Understanding and Overcoming the Challenges of Efficient Transformer Quantization", EMNLP 2021),
# so clipping them is a trade to measure, not a default. MinMax is also deterministic and needs no
# histograms of every tensor (Percentile/Entropy keep them: more memory on a busy machine).
METHODS = ("minmax", "percentile", "entropy")
STATIC_OPS = ("MatMul", "Gemm")
# What ORT cannot quantize statically in each graph, quantized dynamically as models/onnx/int8 does.
DYNAMIC_OPS = {"fused": ("Attention", "EmbedLayerNormalization"), "unfused": ("Gather",)}
CALIBRATION_BATCH = 32  # the batch evaluate/predict run at; pairs length-sorted as they sort them

# Nodes of the graph ORT runs that compute in int8; input 0 is the quantized activation.
INT8_COMPUTE = ("QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger", "QGemm", "QAttention", "QLinearConv",
                "ConvInteger")
FLOAT_COMPUTE = ("MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Attention", "MultiHeadAttention", "Conv")
LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


# --- calibration data (pure) -------------------------------------------------------------------


def calibration_sample(train: pd.DataFrame, dev: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, int]:
    """`n` training pairs for calibration (seeded), none of them a dev pair -> (pairs, dev duplicates dropped)."""
    dev_pairs = set(zip(dev["premise"], dev["hypothesis"]))
    in_dev = np.array([(p, h) in dev_pairs for p, h in zip(train["premise"], train["hypothesis"])], dtype=bool)
    pool = train[~in_dev]
    if n < 1 or len(pool) == 0:
        raise ValueError(f"calibration: {n} pairs asked, {len(pool)} training pairs not in dev available")
    return pool.sample(n=min(n, len(pool)), random_state=seed).reset_index(drop=True), int(in_dev.sum())


def length_sorted_batches(premises: Sequence[str], hypotheses: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """Indices of the pairs in batches of `batch_size`, shortest pairs first (little padding, as at inference)."""
    order = np.argsort([len(p) + len(h) for p, h in zip(premises, hypotheses)], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class PairReader(CalibrationDataReader):
    """ORT calibration reader: graph feeds for pairs, one length-sorted batch per get_next().

    `encode(premises, hypotheses)` -> {input name: int64 (batch, seq)}: OnnxClassifier.encode of
    the graph being quantized, so the names and dtypes are the ones the exported graph takes.
    """

    def __init__(self, encode: Callable, premises: Sequence[str], hypotheses: Sequence[str], batch_size: int):
        self.encode, self.premises, self.hypotheses = encode, list(premises), list(hypotheses)
        self.batches = length_sorted_batches(self.premises, self.hypotheses, batch_size)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.batches):
            return None
        idx = self.batches[self._next]
        self._next += 1
        return self.encode([self.premises[i] for i in idx], [self.hypotheses[i] for i in idx])

    def rewind(self) -> None:
        self._next = 0


# --- what the graph runs in int8 -----------------------------------------------------------------


def int8_coverage(graph) -> dict:
    """{"static": n, "dynamic": n, "float": {op: n}} for an ONNX graph as ORT runs it.

    An int8 compute node is static when its activation input (input 0) was quantized with a scale
    stored in the graph (a QuantizeLinear, or the uint8 output of another QLinear node, possibly
    through Transpose/Reshape) and dynamic when a DynamicQuantizeLinear computed it from the batch
    (DynamicQuantizeMatMul does so itself). "float": compute ops left in floating point.
    """
    producer = {out: node for node in graph.node for out in node.output}

    def quantized_by(tensor: str) -> str:
        # ORT moves Transpose/Reshape onto the int8 tensor (QDQ propagation): look through them.
        node = producer.get(tensor)
        while node is not None and node.op_type in LAYOUT_OPS:
            node = producer.get(node.input[0])
        return node.op_type if node is not None else ""

    static = dynamic = 0
    floats: collections.Counter = collections.Counter()
    for node in graph.node:
        if node.op_type == "DynamicQuantizeMatMul":
            dynamic += 1
        elif node.op_type in INT8_COMPUTE:
            source = quantized_by(node.input[0])
            if source == "DynamicQuantizeLinear":
                dynamic += 1
            elif source == "QuantizeLinear" or source.startswith("QLinear") or source == "QGemm":
                static += 1
            else:
                floats[f"{node.op_type} (unquantized input)"] += 1
        elif node.op_type in FLOAT_COMPUTE:
            floats[node.op_type] += 1
    return {"static": static, "dynamic": dynamic, "float": dict(sorted(floats.items()))}


def runtime_graph(model_path: Path, work: Path):
    """The graph ONNX Runtime runs for `model_path` (after its session-time fusions, e.g. the QDQ ones)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # the "hardware specific optimizations" warning on saving: known
    options.optimized_model_filepath = str(work / f"{model_path.parent.name}.runtime.onnx")
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath).graph


def describe_coverage(coverage: dict) -> str:
    floats = ", ".join(f"{op} {n}" for op, n in coverage["float"].items()) or "none"
    return f"int8 with static activation scales {coverage['static']}, with dynamic {coverage['dynamic']}; float compute: {floats}"


# --- building the static model -----------------------------------------------------------------------


def _output_nodes(model) -> list[str]:
    """Names of the nodes that write the graph's outputs (the classifier: logits stay float)."""
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if n.name and outputs.intersection(n.output)]


def build_static(src_dir, out_dir, premises: Sequence[str], hypotheses: Sequence[str], *, graph: str,
                 fmt: str = "qdq", method: str = "minmax", per_channel: bool = True, reduce_range: bool = False,
                 quantize_outputs: bool = False, embeddings: bool = True, threads: int | None = None) -> dict:
    """Static int8 export directory (same files and loader as models/onnx/int8) from an fp32 one -> settings.

    `graph`: "fused" (src_dir is ORT-optimized) or "unfused"; decides which ops are left to dynamic
    quantization (DYNAMIC_OPS); `embeddings=False` leaves the embedding tables float. When outputs
    are quantized (QOperator, --quantize-outputs), the classifier (the node writing the logits) is
    left float: uint8 logits would round the decision margins, for 3 x hidden weights.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if fmt not in FORMATS or method not in METHODS or graph not in DYNAMIC_OPS:
        raise ValueError(f"format {fmt!r}, method {method!r}, graph {graph!r}: expected {FORMATS}, {METHODS}, {tuple(DYNAMIC_OPS)}")
    src_dir = Path(src_dir)
    info = _onnx.read_sec_info(src_dir)
    outputs_quantized = quantize_outputs or fmt == "qoperator"  # QLinearMatMul always has a uint8 output
    encode = OnnxClassifier(src_dir, threads=threads).encode
    reader = PairReader(encode, premises, hypotheses, CALIBRATION_BATCH)
    with tempfile.TemporaryDirectory(prefix="sec-static-") as work, _onnx.quiet_onnx_logging():
        work = Path(work)
        # Symbolic shape inference types the fused contrib ops' outputs, without which the calibrator
        # skips every tensor after them (then: "Unable to get valid quantization scale"). No ORT graph
        # optimization here: the fused export already had it (opt_level 1), the unfused must stay unfused.
        pre = work / "pre.onnx"
        quant_pre_process(str(src_dir / _onnx.ONNX_FILE), str(pre), skip_optimization=True, auto_merge=True)
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT,  # types of ORT contrib-op outputs (as in _onnx)
                 "MatMulConstBOnly": False}  # activation x activation MatMuls (Q.K^T, P.V) too, where present
        # Not "CalibMaxIntermediateOutputs": in ORT 1.32 MinMaxCalibrater.collect_data clears the batches
        # collected so far without merging their ranges (the ranges would come from the last few
        # batches only). MinMax keeps one min and max per tensor per batch, so memory is no issue.
        if not outputs_quantized:
            extra["OpTypesToExcludeOutputQuantization"] = list(STATIC_OPS)
        static = work / "static.onnx"
        quantize_static(
            str(pre), str(static), reader, quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=list(STATIC_OPS), per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=_output_nodes(onnx.load(str(pre))) if outputs_quantized else [],
            calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                              "entropy": CalibrationMethod.Entropy}[method],
            extra_options=extra,
        )
        present = {n.op_type for n in onnx.load(str(static)).graph.node}
        dynamic_ops = [op for op in DYNAMIC_OPS[graph] if op in present
                       and (embeddings or op not in ("EmbedLayerNormalization", "Gather"))]
        final = work / "model.onnx"
        if dynamic_ops:
            quantize_dynamic(str(static), str(final), op_types_to_quantize=dynamic_ops, per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            shutil.copyfile(static, final)
        settings = {"mode": "static", "graph": graph, "format": fmt, "activation_type": "uint8 (static)",
                    "weight_type": "int8", "calibration": {"method": method, "pairs": len(reader.premises),
                                                           "batch_size": CALIBRATION_BATCH},
                    "per_channel": per_channel, "reduce_range": reduce_range, "outputs_quantized": outputs_quantized,
                    "embeddings": embeddings,
                    "static_ops": list(STATIC_OPS), "dynamic_ops": dynamic_ops, "float_classifier": outputs_quantized}
        with atomic_path(out_dir) as tmp:
            _onnx.copy_dir_without_model(src_dir, tmp)
            shutil.copyfile(final, tmp / _onnx.ONNX_FILE)
            _onnx.write_sec_info(tmp, {**info, "stage": "scripts/onnx_static_int8.py", "quantized_from": str(src_dir),
                                   "precision": "int8", "quantization": settings})
    return settings


def unfused_export(fp32_dir: Path, parent: str | None, out_dir: Path) -> Path:
    """The fp32 export's float parent (sec.json "parent", e.g. models/distilled) exported again, unoptimized."""
    info = _onnx.read_sec_info(fp32_dir)
    parent = parent or info.get("parent")
    if not parent or not Path(parent).is_dir():
        raise SystemExit(f"--graph unfused needs the float model {fp32_dir} was exported from ({parent!r}); pass --parent")
    _onnx.export_model_dir(parent, out_dir, precision="fp32", optimize=False, opset=info.get("opset", 17),
                           max_length=info["max_length"])
    return out_dir


# --- guards -------------------------------------------------------------------------------------------


def dvc_outputs(dvc_yaml: Path) -> list[Path]:
    """Every outs/metrics/plots path of every stage in dvc.yaml (entries are paths or {path: options})."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}) if dvc_yaml.is_file() else {}
    paths = []
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                paths.extend([entry] if isinstance(entry, str) else list(entry))
    return [dvc_yaml.parent / p for p in paths]


def check_work_dir(work_dir: Path, dvc_yaml: Path) -> None:
    """A lever script writes nothing under a DVC output."""
    target = work_dir.resolve()
    for out in dvc_outputs(dvc_yaml):
        out = out.resolve()
        if target == out or out in target.parents:
            raise SystemExit(f"--work-dir {work_dir} is inside the DVC output {out}; lever scripts write elsewhere")


def check_splits(dev: Path, calibration: Path) -> None:
    """Dev decides, test only reports, and calibration must be training data (not dev)."""
    for path in (dev, calibration):
        if path.stem in ("test", "validation_matched"):
            raise SystemExit(f"{path}: the test split; a lever script reads dev only")
    if dev.resolve() == calibration.resolve():
        raise SystemExit(f"--calibration {calibration} is the dev split; calibrate on training pairs")


# --- the report (pure) ---------------------------------------------------------------------------------


def _ratio(s: dict) -> str:
    return f"{s['median']:5.2f}x [{s['min']:.2f}, {s['max']:.2f}]"


def format_table(rows: list[dict]) -> list[str]:
    """rows: name, backend, size_mb, accuracy (0-1), delta_pts, agreement (0-1 or None), latency_ms_b32,
    speedup, latency_ms_b1_p50, speedup_b1_p50 (the last four as `spread` dicts over rounds)."""
    lines = [f"  {'model':15s} {'backend':12s} {'size MB':>8s} {'dev acc %':>9s} {'Δ pts':>6s} {'agree %':>7s} "
             f"{'b32 ms':>8s} {'vs teacher b32 [min, max]':>26s} {'b1 p50 ms':>9s} {'vs teacher b1 [min, max]':>25s}"]
    for r in rows:
        agree = "-" if r["agreement"] is None else f"{r['agreement'] * 100:.1f}"
        lines.append(
            f"  {r['name']:15s} {r['backend']:12s} {r['size_mb']:8.2f} {r['accuracy'] * 100:9.2f} {r['delta_pts']:+6.2f} "
            f"{agree:>7s} {r['latency_ms_b32']['median']:8.2f} {_ratio(r['speedup']):>26s} "
            f"{r['latency_ms_b1_p50']['median']:9.2f} {_ratio(r['speedup_b1_p50']):>25s}")
    return lines


def verdict_line(name: str, baseline: str, speed_b32: Sequence[float], speed_b1: Sequence[float],
                 baseline_correct: np.ndarray, correct: np.ndarray, *, seed: int = 0) -> str:
    """Static vs dynamic in one line. speed_*: per-round baseline latency / this model's (> 1: faster).

    Accuracy: paired bootstrap 95 % CI of (this model - baseline) dev accuracy over the same
    examples, exact McNemar p, and `verdict` of the CI. Speed: `verdict` of the rounds' range
    (min..max of ratio - 1): "helped" only if faster in every round. That is a range, not a CI.
    """
    diff, low, high = paired_bootstrap(np.asarray(baseline_correct, float), np.asarray(correct, float), seed=seed)
    p = mcnemar_exact(baseline_correct, correct)
    b32, b1 = spread(list(speed_b32)), spread(list(speed_b1))
    return (f"verdict {name} vs {baseline}: speed b32 {_ratio(b32).strip()} ({verdict(b32['min'] - 1, b32['max'] - 1)} over "
            f"{len(speed_b32)} rounds), b1 {_ratio(b1).strip()} ({verdict(b1['min'] - 1, b1['max'] - 1)}); dev accuracy "
            f"{diff * 100:+.2f} pts (95% CI {low * 100:+.2f} to {high * 100:+.2f}, paired bootstrap; McNemar p={p:.3g}): "
            f"{verdict(low, high)}")


# --- main ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _work_dir(path: str | None) -> Iterator[Path]:
    if path is None:
        with tempfile.TemporaryDirectory(prefix="sec-static-int8-") as tmp:
            yield Path(tmp)
    else:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", default="models/onnx/fp32", help="exported, ORT-optimized fp32 ONNX directory")
    parser.add_argument("--dynamic", default="models/onnx/int8", help="the pipeline's dynamic int8 ONNX directory")
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--teacher-metrics", default="metrics/evaluate_teacher.json",
                        help="the teacher's dev quality is reused from here and --teacher-predictions when both exist")
    parser.add_argument("--teacher-predictions", default="predictions/evaluate_teacher")
    parser.add_argument("--calibration", default="data/backtranslated/train.parquet", help="TRAINING pairs to calibrate on")
    parser.add_argument("--dev", default="data/prepared/dev.parquet", help="the dev split (never the test split)")
    parser.add_argument("--work-dir", default=None, help="where the static model is written and kept (default: a temporary directory)")
    parser.add_argument("--calibration-pairs", type=int, default=256)
    parser.add_argument("--calibration-method", choices=METHODS, default="minmax")
    parser.add_argument("--format", choices=FORMATS, default="qdq", help="ORT quantization format (see the comment at FORMATS)")
    parser.add_argument("--quantize-outputs", action="store_true", help="QDQ: quantize MatMul/Gemm outputs too (QLinearMatMul)")
    parser.add_argument("--graph", choices=("fused", "unfused", "both"), default="fused",
                        help="quantize the ORT-fused export (--fp32) or a re-export of its float parent without fusions")
    parser.add_argument("--parent", default=None, help="float model for --graph unfused (default: --fp32's sec.json parent)")
    parser.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=None,
                        help="per-channel int8 weights (default: as --dynamic was built)")
    parser.add_argument("--reduce-range", choices=("auto", "on", "off"), default=None,
                        help="7-bit weights; auto: only without VNNI (default: as --dynamic was built)")
    parser.add_argument("--params", default="params.yaml", help="`threads` and `seed` from here")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="calibration sample and timed batches (default: params.yaml seed)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds; ratios are median [min, max] over them")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats within a round (median)")
    parser.add_argument("--batches", type=int, default=8, help="fixed random dev batches of 32 timed per repeat")
    parser.add_argument("--single-pairs", type=int, default=64, help="single dev pairs timed at batch 1 (p50)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")

    raw = (yaml.safe_load(Path(args.params).read_text()) or {}) if Path(args.params).is_file() else {}
    threads = args.threads or raw.get("threads") or torch.get_num_threads()
    seed = args.seed if args.seed is not None else raw.get("seed", 42)
    torch.set_num_threads(int(threads))  # before loading: OnnxModel sessions take torch's thread count
    check_splits(Path(args.dev), Path(args.calibration))
    if args.work_dir:
        check_work_dir(Path(args.work_dir), REPO / "dvc.yaml")
    fp32_dir = Path(args.fp32)
    max_length = _onnx.read_sec_info(fp32_dir)["max_length"]
    dev = read_pairs(args.dev)
    calibration, dropped = calibration_sample(read_pairs(args.calibration, allow_unlabelled=True), dev,
                                              args.calibration_pairs, seed)
    # Weights as in the dynamic model unless told otherwise, so the two differ in activations only.
    built = _onnx.read_sec_info(Path(args.dynamic)).get("quantization", {})
    per_channel = args.per_channel if args.per_channel is not None else built.get("per_channel", True)
    reduce_range = (_onnx.resolve_reduce_range(args.reduce_range) if args.reduce_range
                    else built.get("reduce_range", _onnx.resolve_reduce_range("auto")))
    graphs = ["fused", "unfused"] if args.graph == "both" else [args.graph]

    with _work_dir(args.work_dir) as work:
        static_dirs = {}
        for graph in graphs:
            src = fp32_dir if graph == "fused" else unfused_export(fp32_dir, args.parent, work / "fp32_unfused")
            static_dirs[f"static_{graph}"] = work / f"static_{graph}"
            settings = build_static(src, static_dirs[f"static_{graph}"], calibration["premise"].tolist(),
                                    calibration["hypothesis"].tolist(), graph=graph, fmt=args.format,
                                    method=args.calibration_method, per_channel=per_channel, reduce_range=reduce_range,
                                    quantize_outputs=args.quantize_outputs, embeddings=built.get("embeddings", True),
                                    threads=threads)
            print(f"static_{graph}: {args.format.upper()} U8S8, per-channel {per_channel}, reduce_range {reduce_range}, "
                  f"outputs quantized {settings['outputs_quantized']}; {args.calibration_method} calibration on "
                  f"{len(calibration)} pairs of {args.calibration} ({dropped} dev duplicates excluded); static int8 "
                  f"activations for {', '.join(STATIC_OPS)}{' but the classifier (logits stay float)' if settings['float_classifier'] else ''}; "
                  f"no static kernel in ONNX Runtime "
                  f"for {', '.join(settings['dynamic_ops']) or 'nothing else'}: quantized dynamically -> {static_dirs[f'static_{graph}']}",
                  flush=True)

        dirs = {REFERENCE: Path(args.teacher), "onnx_fp32": fp32_dir, "dynamic_int8": Path(args.dynamic), **static_dirs}
        models = {name: (*load_model(d), d) for name, d in dirs.items()}
        splits = {"dev": dev}
        reference = None
        if Path(args.teacher_metrics).is_file() and Path(args.teacher_predictions).is_dir():
            reference = read_reference(args.teacher_metrics, args.teacher_predictions, splits)  # dev only
        timing_params = EvaluateParams(latency_repeats=args.repeats, latency_batches=args.batches,
                                       latency_single_pairs=args.single_pairs)
        results, _, predictions = evaluate(models, splits, timing_params, max_length=max_length, seed=seed,
                                           timing=False, reference=reference)
        preds = {name: predictions[f"{name}-dev"]["pred"].to_numpy() for name in models}
        gold = predictions[f"{REFERENCE}-dev"]["label"].to_numpy()
        rounds = time_rounds(models, splits, timing_params, rounds=args.rounds, max_length=max_length, seed=seed)
        timed = summarise_rounds(rounds)

        print(f"{len(dev)} dev pairs from {args.dev} (teacher quality {'reused from ' + args.teacher_metrics if reference else 'scored here'}); "
              f"{args.rounds} rounds, each: batch 32 = mean over {args.batches} fixed dev batches, median of {args.repeats} "
              f"repeats; batch 1 = p50 over {args.single_pairs} single dev pairs; {torch.get_num_threads()} CPU threads on {cpu_info()['model']}")
        rows = []
        for name, (model, _, _) in models.items():
            onnx_model = name != REFERENCE
            rows.append({"name": name, "backend": backend_of(model),
                         "size_mb": results[name]["size_mb"], "accuracy": results[name]["dev"]["accuracy"],
                         "delta_pts": results[name]["dev"].get("accuracy_delta_pts", 0.0),
                         "agreement": float((preds[name] == preds["onnx_fp32"]).mean()) if onnx_model and name != "onnx_fp32" else None,
                         **timed[name]})
        print("\n".join(format_table(rows)))
        print("agree % = argmax agreement with onnx_fp32 on dev. What ONNX Runtime runs (after its session-time fusions):")
        for name, directory in dirs.items():
            if name != REFERENCE:
                print(f"  {name:15s} {describe_coverage(int8_coverage(runtime_graph(directory / _onnx.ONNX_FILE, work)))}")
        for name in static_dirs:
            speed_b32 = [r["dynamic_int8"]["latency_ms_b32"] / r[name]["latency_ms_b32"] for r in rounds]
            speed_b1 = [r["dynamic_int8"]["latency_ms_b1_p50"] / r[name]["latency_ms_b1_p50"] for r in rounds]
            print(verdict_line(name, "dynamic_int8", speed_b32, speed_b1, preds["dynamic_int8"] == gold, preds[name] == gold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
