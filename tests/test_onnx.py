"""ONNX export (stages/_onnx.py), the torch-free runtime (stages/onnx_runtime.py) and the export stage.

Tiny BERTs built from configs (conftest): a plain one, one pruned to a different head count and FFN
width in each layer (attention width != hidden size, as in the pipeline's student), and a student
with fewer layers and a trimmed vocabulary. ONNX Runtime must compute what PyTorch computes, for
any batch size and sequence length (the graph's axes are dynamic).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, make_pairs
from stages import _onnx
from stages._architecture import apply_architecture, describe_architecture
from stages._models import load_model, load_pretrained_classifier, save_model
from stages._params import load_params
from stages._student import keep_layers, trim_vocabulary, used_token_ids
from stages.onnx_runtime import OnnxClassifier, OnnxModelError

# fp32 ONNX Runtime vs PyTorch on the same token ids. Fused kernels (Attention, SkipLayerNorm)
# add in another order; float32 rounding of logits of size ~1 stays far below this.
FP32_TOLERANCE = 1e-4
MAX_LENGTH = 24


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's cores are shared; one thread is plenty for these sizes
    yield
    torch.set_num_threads(threads)


def _pruned(tiny_model_dir, directory: Path) -> Path:
    """The tiny BERT (4 heads of 8, hidden 32) cut to 3 heads / FFN 48 and 1 head / FFN 20.

    apply_architecture gives the resized Linears fresh random weights (nn.Linear's init, larger
    than BERT's 0.02), which is all a parity test needs: a model of that shape.
    """
    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    torch.manual_seed(1)
    arch = {"model_type": "bert", "hidden_size": 32, "head_size": 8,
            "layers": [{"heads": 3, "intermediate_size": 48}, {"heads": 1, "intermediate_size": 20}]}
    apply_architecture(model, arch)
    save_model(model.eval(), tok, directory, {"stage": "prune", "architecture": describe_architecture(model)})
    return directory


def _student(tiny_model_dir, directory: Path) -> Path:
    """One layer kept, vocabulary trimmed to what the tiny pairs use (a rewritten tokenizer.json)."""
    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    keep_layers(model, [1])
    corpus = make_pairs(30)
    model, small_tok = trim_vocabulary(model, tok, used_token_ids(tok, corpus["premise"].tolist(), corpus["hypothesis"].tolist()))
    assert len(small_tok) < len(tok)
    save_model(model.eval(), small_tok, directory, {"stage": "distill", "architecture": describe_architecture(model)})
    return directory


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx-models")
    return {"plain": Path(tiny_model_dir), "pruned": _pruned(tiny_model_dir, root / "pruned"),
            "student": _student(tiny_model_dir, root / "student")}


def _batches() -> list[tuple[list[str], list[str]]]:
    """Batches of 1, 3 and 7 pairs of growing length (7 includes truncation at MAX_LENGTH)."""
    pairs = make_pairs(11, seed=5)
    premises, hypotheses = pairs["premise"].tolist(), pairs["hypothesis"].tolist()
    # Longer than MAX_LENGTH tokens each: longest_first truncation takes tokens from both texts.
    long_premise, long_hypothesis = " ".join(premises[:6]), " ".join(hypotheses[:4])
    return [(premises[:1], hypotheses[:1]), (premises[1:4], hypotheses[1:4]),
            (premises[4:10] + [long_premise], hypotheses[4:10] + [long_hypothesis])]


def _torch_logits(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()


@pytest.mark.parametrize("optimize", [False, True], ids=["plain-graph", "optimized"])
@pytest.mark.parametrize("kind", ["plain", "pruned", "student"])
def test_fp32_onnx_matches_pytorch_at_any_batch_and_length(model_dirs, tmp_path, kind, optimize):
    metrics = _onnx.export_model_dir(model_dirs[kind], tmp_path / "onnx", precision="fp32", optimize=optimize,
                                     max_length=MAX_LENGTH)
    model, _ = load_model(model_dirs[kind])
    runtime = OnnxClassifier(tmp_path / "onnx", threads=1)
    assert runtime.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    shapes = set()
    for premises, hypotheses in _batches():
        feeds = runtime.encode(premises, hypotheses)
        shapes.add(feeds["input_ids"].shape)
        got, expected = runtime.run(feeds), _torch_logits(model, feeds)
        assert got.dtype == np.float32 and got.shape == (len(premises), 3)
        np.testing.assert_allclose(got, expected, atol=FP32_TOLERANCE, rtol=0)
        assert np.abs(expected).max() > 10 * FP32_TOLERANCE  # logits are not all ~0
    assert len({s[0] for s in shapes}) == 3 and len({s[1] for s in shapes}) == 3  # batch and length varied
    assert max(s[1] for s in shapes) == MAX_LENGTH
    if optimize:
        # Every layer's attention fuses, the pruned one's too (3 and 1 heads of 8: width 24 and 8,
        # hidden 32): the export writes each layer's head count into the graph.
        layers = model.config.num_hidden_layers
        fused = metrics["steps"]["optimize"]["fused"]
        assert fused.get("Attention") == layers, fused
        assert fused.get("SkipLayerNormalization") == 2 * layers and fused.get("EmbedLayerNormalization") == 1
        assert metrics["steps"]["optimize"]["unfused"] == []


def test_without_explicit_head_counts_attention_does_not_fuse(model_dirs, tmp_path, monkeypatch):
    """The reason `_explicit_head_counts` exists: the stock graph (reshape to -1 heads) does not
    fuse with num_heads=0. If ONNX Runtime learns to fuse it, the patch can go."""
    monkeypatch.setattr(_onnx, "_explicit_head_counts", _onnx.eager_attention)
    model, tok = load_model(model_dirs["pruned"])
    _onnx.export_onnx(model, tok, tmp_path / "stock", info={}, max_length=MAX_LENGTH)
    fused = _onnx.optimize_onnx(tmp_path / "stock", tmp_path / "opt")["fused"]
    assert fused.get("Attention", 0) == 0


@pytest.mark.parametrize("kind", ["plain", "student"])
def test_encode_gives_the_hf_tokenizers_ids(model_dirs, tmp_path, kind):
    _onnx.export_model_dir(model_dirs[kind], tmp_path / "onnx", optimize=False, max_length=MAX_LENGTH)
    _, tok = load_model(model_dirs[kind])
    runtime = OnnxClassifier(tmp_path / "onnx")
    for premises, hypotheses in _batches() + [(["Zebras?! Unknown wörds"], ["a"])]:
        expected = tok(premises, hypotheses, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="np")
        got = runtime.encode(premises, hypotheses)
        assert set(got) == {"input_ids", "attention_mask", "token_type_ids"}
        for name, ids in got.items():
            assert ids.dtype == np.int64
            np.testing.assert_array_equal(ids, expected[name], err_msg=name)


def test_predict_keeps_input_order_and_batches_like_run(model_dirs, tmp_path):
    _onnx.export_model_dir(model_dirs["pruned"], tmp_path / "onnx", optimize=True, max_length=MAX_LENGTH)
    runtime = OnnxClassifier(tmp_path / "onnx", threads=1)
    pairs = make_pairs(13, seed=2)
    premises, hypotheses = pairs["premise"].tolist(), pairs["hypothesis"].tolist()
    one_by_one = np.concatenate([runtime.run(runtime.encode([p], [h])) for p, h in zip(premises, hypotheses)])
    batched = runtime.predict(premises, hypotheses, batch_size=4)
    np.testing.assert_allclose(batched, one_by_one, atol=FP32_TOLERANCE, rtol=0)  # padding changes nothing
    assert runtime.labels == ["entailment", "neutral", "contradiction"] and runtime.num_labels == 3
    options = runtime.session.get_session_options()
    assert options.use_deterministic_compute and options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    quiet = OnnxClassifier(tmp_path / "onnx", threads=1, spin=False).session.get_session_options()
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_int8_agrees_with_fp32_and_is_smaller(tiny_model_dir, tmp_path):
    """On an untrained model every quantization "agrees" (all logits ~0), so the tiny model is
    trained until it is right on >= 95 % of its pairs; int8 must then give its answers."""
    from test_models import _trained_tiny_model

    model, tok = _trained_tiny_model(tiny_model_dir, make_pairs(300, seed=0))
    save_model(model.eval(), tok, tmp_path / "trained", {"stage": "fine_tune"})
    _onnx.export_model_dir(tmp_path / "trained", tmp_path / "fp32", precision="fp32", max_length=64)
    metrics = _onnx.export_model_dir(tmp_path / "trained", tmp_path / "int8", precision="int8", max_length=64,
                                     reduce_range="off")
    ops = metrics["ops"]
    assert ops.get("QAttention") == 2 and ops.get("MatMulInteger", 0) >= 4, ops  # attention + FFN in int8
    assert ops.get("QEmbedLayerNormalization") == 1, ops  # int8 embedding tables
    info = json.loads((tmp_path / "int8" / "sec.json").read_text())
    assert info["precision"] == "int8" and info["quantization"]["per_channel"] is True
    assert info["quantization"]["reduce_range"] is False and info["format"] == "onnx"
    held_out = make_pairs(300, seed=1)
    premises, hypotheses, gold = held_out["premise"].tolist(), held_out["hypothesis"].tolist(), held_out["label"].to_numpy()
    fp32 = OnnxClassifier(tmp_path / "fp32", threads=1).predict(premises, hypotheses)
    int8 = OnnxClassifier(tmp_path / "int8", threads=1).predict(premises, hypotheses)
    assert (fp32.argmax(1) == gold).mean() >= 0.9  # the model has something to lose
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.95
    assert 0 < np.abs(int8 - fp32).max()  # it really is another graph
    assert _onnx.onnx_size_mb(tmp_path / "int8") < 0.6 * _onnx.onnx_size_mb(tmp_path / "fp32")


def test_int8_without_embeddings_keeps_fp32_tables(model_dirs, tmp_path):
    metrics = _onnx.export_model_dir(model_dirs["plain"], tmp_path / "int8", precision="int8", max_length=MAX_LENGTH,
                                     embeddings=False, per_channel=False, reduce_range="on")
    assert "QEmbedLayerNormalization" not in metrics["ops"] and metrics["ops"].get("EmbedLayerNormalization") == 1
    assert metrics["ops"].get("QAttention") == 2
    settings = json.loads((tmp_path / "int8" / "sec.json").read_text())["quantization"]
    assert settings["per_channel"] is False and settings["reduce_range"] is True and settings["embeddings"] is False


_NO_TORCH = """
import importlib.abc, json, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "stages", "safetensors"):
            raise ImportError("hidden for this test: " + name)
sys.meta_path.insert(0, Hide())
sys.path.insert(0, sys.argv[1])
from sec_onnx import OnnxClassifier
clf = OnnxClassifier(sys.argv[1], threads=1)
logits = clf.predict(json.loads(sys.argv[2]), json.loads(sys.argv[3]))
assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules)
print(json.dumps(logits.tolist()))
"""


def test_exported_directory_runs_without_torch_or_transformers(model_dirs, tmp_path):
    out = tmp_path / "deploy"
    _onnx.export_model_dir(model_dirs["student"], out, precision="int8", max_length=MAX_LENGTH)
    assert {"config.json", "model.onnx", "sec.json", "sec_onnx.py", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert (out / "sec_onnx.py").read_text() == (REPO / "stages" / "onnx_runtime.py").read_text()
    pairs = make_pairs(9, seed=4)
    premises, hypotheses = pairs["premise"].tolist(), pairs["hypothesis"].tolist()
    result = subprocess.run([sys.executable, "-c", _NO_TORCH, str(out), json.dumps(premises), json.dumps(hypotheses)],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32)
    here = OnnxClassifier(out, threads=1).predict(premises, hypotheses)
    np.testing.assert_array_equal(fresh, here)


def test_missing_files_and_torch_directories_give_errors_naming_the_directory(model_dirs, tmp_path):
    out = tmp_path / "exported"
    _onnx.export_model_dir(model_dirs["plain"], out, optimize=False, max_length=MAX_LENGTH)
    (out / "model.onnx").unlink()
    with pytest.raises(OnnxModelError, match=f"{out}: no model.onnx"):
        OnnxClassifier(out)
    with pytest.raises(OnnxModelError, match=f"{model_dirs['pruned']}: sec.json says format None"):
        OnnxClassifier(model_dirs["pruned"])  # a PyTorch model directory
    with pytest.raises(OnnxModelError, match=f"{model_dirs['plain']}: no sec.json"):
        OnnxClassifier(model_dirs["plain"])
    with pytest.raises(OnnxModelError, match="no such model directory"):
        OnnxClassifier(tmp_path / "nothing")


def _hashes(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_export_is_byte_identical_when_repeated(model_dirs, tmp_path):
    for name in ("a", "b"):
        _onnx.export_model_dir(model_dirs["pruned"], tmp_path / name / "out", precision="int8", max_length=MAX_LENGTH,
                               reduce_range="off")
    first, second = _hashes(tmp_path / "a" / "out"), _hashes(tmp_path / "b" / "out")
    assert "model.onnx" in first and first == second


def test_vnni_detection_reads_cpu_flags(monkeypatch):
    assert _onnx.vnni_available("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert _onnx.vnni_available("flags\t\t: fpu avx2 avx_vnni\n")
    assert _onnx.vnni_available("flags\t\t: fpu avx2 amx_int8 amx_tile\n")
    assert not _onnx.vnni_available("flags\t\t: fpu sse avx2 avx512f avx512bw\nbugs\t: avx_vnni\n")
    assert _onnx.resolve_reduce_range("on") is True and _onnx.resolve_reduce_range("off") is False
    # auto: 7-bit weights (reduce_range) exactly where VNNI is missing, on either kind of CPU.
    monkeypatch.setattr(_onnx, "vnni_available", lambda cpuinfo=None: True)
    assert _onnx.resolve_reduce_range("auto") is False and _onnx.resolve_reduce_range("on") is True
    monkeypatch.setattr(_onnx, "vnni_available", lambda cpuinfo=None: False)
    assert _onnx.resolve_reduce_range("auto") is True and _onnx.resolve_reduce_range("off") is False
    with pytest.raises(ValueError, match="auto, on or off"):
        _onnx.resolve_reduce_range("yes")


def test_export_stage_writes_both_directories_and_checks_parity(model_dirs, tmp_path):
    from stages.export import TOLERANCE, export

    params = load_params(REPO / "params.yaml")
    params = params.model_copy(update={"model": params.model.model_copy(update={"max_length": MAX_LENGTH})})
    metrics = export(str(model_dirs["pruned"]), str(tmp_path / "fp32"), str(tmp_path / "int8"), params)
    assert metrics["max_abs_logit_diff_fp32"] <= TOLERANCE
    assert metrics["fp32"]["fused"]["Attention"] == 2 and metrics["int8"]["size_mb"] < metrics["fp32"]["size_mb"]
    assert metrics["reduce_range"] is _onnx.resolve_reduce_range(params.export.reduce_range)
    for precision in ("fp32", "int8"):
        model, tok = load_model(tmp_path / precision)  # the pipeline's loader reads them too
        assert json.loads((tmp_path / precision / "sec.json").read_text())["precision"] == precision
        assert json.loads((tmp_path / precision / "sec.json").read_text())["architecture"]["layers"][1]["heads"] == 1

    # A graph that does not compute the model fails the check, naming the directory.
    other, tok = load_model(model_dirs["pruned"])
    with torch.no_grad():
        other.classifier.bias += 0.01
    with pytest.raises(_onnx.ParityError, match=f"{tmp_path / 'fp32'}: ONNX Runtime logits differ"):
        _onnx.check_parity(other, tok, tmp_path / "fp32", max_length=MAX_LENGTH, tolerance=TOLERANCE)


def test_sec_export_cli(model_dirs, tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "export", str(model_dirs["plain"]), str(out),
                             "--int8", "--max-length", "32"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "int8" in result.stdout and (out / "model.onnx").is_file()
    assert json.loads((out / "sec.json").read_text())["max_length"] == 32
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "export", str(tmp_path / "none"), str(tmp_path / "x")],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and f"{tmp_path / 'none'}: not a model directory" in bad.stderr
