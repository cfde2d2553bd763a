"""ONNX export of the pipeline's classifiers, ONNX Runtime graph fusion and dynamic int8 quantization.

An exported directory (what `stages/onnx_runtime.py`, copied in as `sec_onnx.py`, loads with no
PyTorch): model.onnx + tokenizer files + config.json + sec_onnx.py + sec.json
({..., "format": "onnx", "precision": "fp32" | "int8", "max_length", "labels", "opset", ...}).

Three steps, each from a directory to a directory:

- `export_onnx`: torch's TorchScript exporter (`dynamo=False`), inputs as the model takes them
  (input_ids, attention_mask, token_type_ids), output `logits`, dynamic batch and sequence axes.
  Exported with eager attention: the SDPA graph (IsNaN/Where around the softmax) is not one ONNX
  Runtime's attention fusion recognises. And with the head count written into the graph (see
  `_explicit_head_counts`), which is what lets attention fuse in pruned models.
- `optimize_onnx`: ONNX Runtime's transformer optimizer (model_type "bert"): Attention,
  SkipLayerNormalization, BiasGelu, EmbedLayerNormalization.
- `quantize_onnx`: ONNX Runtime dynamic quantization, int8 weights (per output channel or per
  tensor), activations quantized to uint8 at run time.

`export_model_dir` chains them from a float model directory (stages._models.load_model).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from torch import nn

from stages import onnx_runtime
from stages._io import atomic_path
from stages._models import SEC_FORMAT_VERSION, ModelError

ONNX_FILE = onnx_runtime.ONNX_FILE
RUNTIME_FILE = "sec_onnx.py"  # the copy of stages/onnx_runtime.py in every exported directory
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # the order BERT's forward takes them
_EXAMPLE_PAIRS = (["A man is playing a guitar on stage.", "Two dogs run."],
                  ["Someone makes music.", "The animals are asleep in the sun near the house."])


# --- export -----------------------------------------------------------------------------------


class _Logits(nn.Module):
    """The classifier with positional tensor inputs and the logits tensor as its one output."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors))).logits


def _bert_self_attention_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    """BertSelfAttention.forward (transformers 5, eager, encoder only) with the head count spelled out.

    transformers reshapes q/k/v to (*input_shape, -1, head_size). Traced, the -1 becomes a constant
    in the Reshape's shape, and ONNX Runtime's attention fusion then cannot tell the head count: it
    falls back to the one `num_heads` given to the optimizer: with the default 0 nothing fuses
    (the issue's "not fused"); one value cannot be right for every layer of a model pruned to
    different head counts per layer; and the config's unpruned count (12, as 12 x 32 = 384 =
    hidden) fuses into Attention nodes that ONNX Runtime then refuses to load ("hidden_size
    should be divisible by num_heads: 256"). With each layer's own head count in the graph, the
    fusion reads it per layer (num_heads=0 auto-detection). Numerically the same computation.
    """
    from transformers.models.bert.modeling_bert import eager_attention_forward

    input_shape = hidden_states.shape[:-1]
    shape = (*input_shape, self.num_attention_heads, self.attention_head_size)
    query = self.query(hidden_states).view(shape).transpose(1, 2)
    key = self.key(hidden_states).view(shape).transpose(1, 2)
    value = self.value(hidden_states).view(shape).transpose(1, 2)
    out, weights = eager_attention_forward(self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling)
    return out.reshape(*input_shape, self.all_head_size).contiguous(), weights


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """While exporting: eager attention (the SDPA graph is not one ONNX Runtime's fusion recognises)."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        yield
    finally:
        model.config._attn_implementation = previous


@contextlib.contextmanager
def _explicit_head_counts(model: nn.Module) -> Iterator[None]:
    """While exporting: eager attention, and BERT self-attention with the head count in the graph."""
    from transformers.models.bert.modeling_bert import BertSelfAttention

    patched = [m for m in model.modules() if type(m) is BertSelfAttention]
    for module in patched:
        if module.is_decoder:
            raise ValueError("ONNX export handles encoder-only BERT classifiers, not decoders")
        module.forward = _bert_self_attention_forward.__get__(module)
    try:
        with eager_attention(model):
            yield
    finally:
        for module in patched:
            del module.forward  # the instance attribute; the class's forward shows again


def _input_names(model: nn.Module, tokenizer) -> list[str]:
    produced = tokenizer(_EXAMPLE_PAIRS[0][:1], _EXAMPLE_PAIRS[1][:1]).keys()
    import inspect

    accepted = inspect.signature(model.forward).parameters
    names = [n for n in INPUT_NAMES if n in produced and n in accepted]
    if "input_ids" not in names:
        raise ValueError(f"tokenizer gives {sorted(produced)}; the export needs input_ids")
    return names


def export_onnx(model, tokenizer, out_dir, *, info: dict, max_length: int, opset: int = 17) -> dict:
    """Atomically write an fp32 ONNX directory for `model` -> metrics (size_mb, seconds, nodes, ...)."""
    started = time.perf_counter()
    model = model.eval()
    names = _input_names(model, tokenizer)
    example = tokenizer(*_EXAMPLE_PAIRS, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    args = tuple(example[n] for n in names)  # (2, seq) each; the second pair is padded
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with _explicit_head_counts(model), torch.no_grad(), _quiet_export():
            torch.onnx.export(
                _Logits(model, names), args, str(tmp / ONNX_FILE), input_names=names, output_names=["logits"],
                dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True, dynamo=False,
            )
        tokenizer.save_pretrained(tmp)
        if not (tmp / onnx_runtime.TOKENIZER_FILE).is_file():
            raise ValueError("the tokenizer is not a fast tokenizer: no tokenizer.json to export")
        model.config.save_pretrained(tmp)
        shutil.copyfile(Path(onnx_runtime.__file__), tmp / RUNTIME_FILE)
        sec = {**info, "format": "onnx", "format_version": SEC_FORMAT_VERSION, "precision": "fp32", "max_length": max_length, "labels": labels,
               "opset": opset, "pad_token": tokenizer.pad_token, "inputs": names}
        write_sec_info(tmp, sec)
        metrics = _graph_metrics(tmp / ONNX_FILE)
    return {**metrics, "seconds": round(time.perf_counter() - started, 2)}


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """The legacy exporter's deprecation and tracer warnings, which are known and harmless here:
    masking_utils' `if padding_length > 0` is always False for an encoder (keys = queries), and the
    advanced-indexing warning is about negative indices, which the mask code never makes."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index")
        yield


# --- optimize --------------------------------------------------------------------------------


def optimize_onnx(src_dir, out_dir, *, opt_level: int = 1) -> dict:
    """ONNX Runtime's BERT fusions on an fp32 export -> metrics {"fused": {op: count}, ...}.

    num_heads=0 / hidden_size=0: the optimizer reads each layer's head count from the graph (the
    export writes it there), so layers pruned to different head counts, whose attention width is
    not the hidden size, still fuse. opt_level 1 = ONNX Runtime's basic, provider-independent
    rewrites (constant folding, redundant-node removal) before the Python fusions; higher levels
    would bake CPU-specific kernels into the saved graph. GELU stays exact (no tanh approximation).
    The fused graph takes a right-padded attention mask (MaskIndexEnd), which is what the runtime
    feeds.

    Fusion is not always faster (measured once on the distilled student, 2 threads, one process,
    same batches): batch 1 p50 int8 2.5 ms fused vs 2.7 unfused, but batch 32 int8 121 ms fused vs
    102 unfused (fp32 189 vs 170). Hence `export.optimize` is a param, to be chosen by measurement.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    started = time.perf_counter()
    src_dir = Path(src_dir)
    info = read_sec_info(src_dir)
    options = FusionOptions("bert")
    options.enable_gelu_approximation = False
    with quiet_onnx_logging():
        optimized = optimize_model(str(src_dir / ONNX_FILE), model_type="bert", num_heads=0, hidden_size=0,
                                   optimization_options=options, opt_level=opt_level, use_gpu=False)
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    layers = _layer_count(src_dir)
    missing = _unfused(fused, layers)
    with atomic_path(out_dir) as tmp:
        copy_dir_without_model(src_dir, tmp)
        optimized.save_model_to_file(str(tmp / ONNX_FILE))
        write_sec_info(tmp, {**info, "optimized": {"opt_level": opt_level, "fused": fused}})
        metrics = _graph_metrics(tmp / ONNX_FILE)
    return {**metrics, "fused": fused, "unfused": missing, "seconds": round(time.perf_counter() - started, 2)}


def _unfused(fused: dict, layers: int | None) -> list[str]:
    """What a fully fused BERT encoder of `layers` layers would have and this graph lacks."""
    if not layers:
        return []
    expected = {"Attention": layers, "SkipLayerNormalization": 2 * layers, "BiasGelu": layers,
                "EmbedLayerNormalization": 1}
    return [f"{op}: {fused.get(op, 0)} of {n}" for op, n in expected.items() if fused.get(op, 0) < n]


@contextlib.contextmanager
def quiet_onnx_logging() -> Iterator[None]:
    """Silence ORT's known warnings, logged through module loggers that reach the root logger
    (its transformers modules are imported as top-level names, e.g. "fusion_attention"):
    the optimizer's "Input hidden size (256) is not same as weight matrix dimension of q,k,v
    (384)" for every pruned layer (its own hidden-size check; the fused op counts are what is
    reported), and quantize_dynamic's "consider pre-processing" on every call."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# --- quantize --------------------------------------------------------------------------------


def vnni_available(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU has VNNI int8 dot products (AVX512-VNNI, AVX-VNNI) or AMX."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_vnni", "avx_vnni"}) or any(f.startswith("amx") for f in flags)


def resolve_reduce_range(setting: str) -> bool:
    """ "auto" -> 7-bit weights only where VNNI is missing; "on"/"off" force it."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"reduce_range must be auto, on or off, not {setting!r}")
    return (not vnni_available()) if setting == "auto" else setting == "on"


def quantize_onnx(src_dir, out_dir, *, per_channel: bool, reduce_range: bool, embeddings: bool) -> dict:
    """Dynamic int8 quantization of an (optimized) fp32 export -> metrics.

    What ONNX Runtime does (its quantization docs and onnxruntime/quantization): weights become
    int8 (QInt8, symmetric) and activations are quantized to uint8 per batch at run time, so the
    matrix products are U8S8 (dynamic quantization supports only uint8 activations, so ORT's "S8S8"
    format does not apply here). MatMul -> DynamicQuantizeLinear + MatMulInteger, fused Attention
    -> QAttention. Gemm (pooler, classifier) is rewritten to MatMul + Add and quantized the same way
    (the cpu student's int8 graph runs 11 MatMulInteger: 3 layers x 3, pooler, classifier). On x86
    without VNNI, the AVX2/AVX512 U8S8 kernel (VPMADDUBSW) adds pairs of products into int16 and
    can saturate; the docs' remedies are 7-bit weights (`reduce_range`) or U8U8. With VNNI
    (VPDPBUSD, 32-bit accumulation) there is no saturation and full 8-bit weights are right.

    Embeddings: ORT quantizes Gather's table (int8 table, the gathered rows dequantized after)
    and EmbedLayerNormalization (-> QEmbedLayerNormalization, int8 word/position/segment tables,
    one scale each). `embeddings=False` keeps them fp32 by leaving those op types out.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    started = time.perf_counter()
    src_dir = Path(src_dir)
    info = read_sec_info(src_dir)
    op_types = sorted(IntegerOpsRegistry)
    if not embeddings:
        op_types = [op for op in op_types if op not in ("Gather", "EmbedLayerNormalization")]
    with tempfile.TemporaryDirectory(prefix="sec-quantize-") as work, quiet_onnx_logging():
        quantized = Path(work) / ONNX_FILE
        quantize_dynamic(src_dir / ONNX_FILE, quantized, op_types_to_quantize=op_types, per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         # ONNX shape inference does not type the outputs of ORT's fused ops
                         # (com.microsoft Attention, ...); every such tensor here is float.
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        with atomic_path(out_dir) as tmp:
            copy_dir_without_model(src_dir, tmp)
            shutil.copyfile(quantized, tmp / ONNX_FILE)
            settings = {"weight_type": "int8", "activation_type": "uint8 (dynamic)", "per_channel": per_channel,
                        "reduce_range": reduce_range, "embeddings": embeddings}
            write_sec_info(tmp, {**info, "precision": "int8", "quantization": settings})
            metrics = _graph_metrics(tmp / ONNX_FILE)
    return {**metrics, "quantization": settings, "seconds": round(time.perf_counter() - started, 2)}


# --- the whole chain ---------------------------------------------------------------------------


def export_model_dir(model_dir, out_dir, *, precision: str = "fp32", optimize: bool = True, opset: int = 17,
                     max_length: int = 128, per_channel: bool = True, reduce_range: str = "auto",
                     embeddings: bool = True) -> dict:
    """A float model directory -> an exported ONNX directory (fp32 or int8), written atomically."""
    from stages._models import load_model, read_sec_info

    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be fp32 or int8, not {precision!r}")
    model_dir = Path(model_dir)
    source = read_sec_info(model_dir)
    if source.get("quantization"):
        raise ModelError(f"{model_dir}: a torch int8 model; export its float parent ({source.get('parent')}) instead")
    model, tokenizer = load_model(model_dir)
    info = {"stage": "export", "parent": str(model_dir)}
    if source.get("architecture"):
        info["architecture"] = source["architecture"]
    metrics: dict = {}
    with tempfile.TemporaryDirectory(prefix="sec-export-") as work:
        current = Path(work) / "fp32"
        metrics["export"] = export_onnx(model, tokenizer, current, info=info, max_length=max_length, opset=opset)
        if optimize:
            metrics["optimize"] = optimize_onnx(current, Path(work) / "optimized")
            current = Path(work) / "optimized"
        if precision == "int8":
            metrics["quantize"] = quantize_onnx(current, Path(work) / "int8", per_channel=per_channel,
                                                reduce_range=resolve_reduce_range(reduce_range), embeddings=embeddings)
            current = Path(work) / "int8"
        with atomic_path(out_dir) as tmp:
            shutil.copytree(current, tmp)
    final = _graph_metrics(Path(out_dir) / ONNX_FILE)
    return {**final, "precision": precision, "steps": metrics}


# --- parity ----------------------------------------------------------------------------------

# Fixed pairs of different lengths (one batch, so the shorter ones are padded) for the parity check.
PARITY_PAIRS = (
    ("A man is playing a guitar on stage.", "Someone is making music."),
    ("Two dogs run across the snowy field toward their owner, who is holding a red ball.", "The dogs are asleep."),
    ("The committee will meet again next Tuesday to vote on the budget.", "The budget vote is next week."),
    ("A child reads.", "A kid is reading a book in the library while it rains outside."),
    ("She did not go to work today because she was ill.", "She stayed home."),
    ("Prices rose sharply in the third quarter.", "Prices fell."),
)


class ParityError(ModelError):
    """The ONNX graph's logits differ from PyTorch's by more than the tolerance (a ModelError, so a
    stage reports it in one line and exits 2)."""


def logit_difference(model, tokenizer, onnx_dir, *, max_length: int, threads: int | None = None,
                     pairs=PARITY_PAIRS) -> float:
    """max |logit(ONNX Runtime) - logit(PyTorch)| over `pairs`, encoded once with the HF tokenizer."""
    import numpy as np

    premises, hypotheses = [p for p, _ in pairs], [h for _, h in pairs]
    enc = tokenizer(premises, hypotheses, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**enc).logits.float().numpy()  # (pairs, labels)
    runtime = onnx_runtime.OnnxClassifier(onnx_dir, threads=threads)
    got = runtime.run({n: enc[n].numpy().astype(np.int64) for n in runtime.input_names})
    return float(np.abs(got - expected).max())


def check_parity(model, tokenizer, onnx_dir, *, max_length: int, tolerance: float = 1e-3,
                 threads: int | None = None) -> float:
    """`logit_difference`, raising ParityError (naming the directory) above `tolerance`."""
    diff = logit_difference(model, tokenizer, onnx_dir, max_length=max_length, threads=threads)
    if not diff <= tolerance:  # NaN fails too
        raise ParityError(
            f"{onnx_dir}: ONNX Runtime logits differ from PyTorch's by {diff:.3g} (> {tolerance:g}) on the "
            "built-in example pairs; the exported graph does not compute the model"
        )
    return diff


# --- helpers ---------------------------------------------------------------------------------


def read_sec_info(directory: Path) -> dict:
    path = Path(directory) / onnx_runtime.SEC_JSON
    info = json.loads(path.read_text()) if path.is_file() else {}
    if info.get("format") != "onnx":
        raise ModelError(f"{directory}: not an ONNX export (sec.json format {info.get('format')!r}); run sec export")
    return info


def write_sec_info(directory: Path, info: dict) -> None:
    (directory / onnx_runtime.SEC_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def copy_dir_without_model(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(ONNX_FILE))


def _layer_count(directory: Path) -> int | None:
    config = Path(directory) / "config.json"
    return json.loads(config.read_text()).get("num_hidden_layers") if config.is_file() else None


def _graph_metrics(path: Path) -> dict:
    graph = onnx.load(str(path)).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    return {
        "size_mb": round(path.stat().st_size / 1e6, 3),
        "nodes": len(graph.node),
        "ops": dict(sorted(ops.items())),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def onnx_size_mb(directory) -> float:
    return Path(directory, ONNX_FILE).stat().st_size / 1e6
