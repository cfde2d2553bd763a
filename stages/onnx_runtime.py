"""Run an exported NLI classifier with ONNX Runtime: no PyTorch, no transformers.

This file is copied verbatim into every exported directory as `sec_onnx.py`, so a directory is
self-contained for people without this project. It therefore imports only json, pathlib, numpy,
onnxruntime and tokenizers (never torch, transformers or anything from `stages`):

    import sys; sys.path.insert(0, "models/onnx/int8")
    from sec_onnx import OnnxClassifier
    clf = OnnxClassifier("models/onnx/int8", threads=2)
    logits = clf.predict(["A man sleeps."], ["Nobody sleeps."])   # (1, 3) float32
    clf.labels[int(logits[0].argmax())]                              # 'contradiction'

A directory holds model.onnx, tokenizer.json (a Hugging Face fast tokenizer, read with the
`tokenizers` library) and sec.json: {"format": "onnx", "max_length": ..., "labels": [...],
"pad_token": ..., "precision": "fp32" | "int8", ...}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
SEC_JSON = "sec.json"
# The graph's possible inputs, and the tokenizer encoding attribute that fills each.
_ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


class OnnxModelError(RuntimeError):
    """An exported directory is missing a file or is not an ONNX export; the message names it."""


class OnnxClassifier:
    """A sequence-pair classifier: tokenizer.json + model.onnx, as `sec export` writes them."""

    def __init__(self, directory, *, threads: int | None = None, spin: bool = True):
        """`threads`: intra-op threads (None: ONNX Runtime's default, one per core).

        `spin`: ONNX Runtime's worker threads busy-wait for the next run (its default), which
        saves ~0.5-1 ms a call when this is the only model running. Pass False when timing it
        side by side with other models in one process: sessions whose threads keep spinning
        take the cores from whatever runs next (measured on 2 cores: batch-1 p50 2.8 ms alone,
        11.7 ms interleaved with three other spinning sessions; 3.4 / 3.8 ms without spinning).
        """
        self.directory = Path(directory)
        info = self._read_info()
        for name in (ONNX_FILE, TOKENIZER_FILE):
            if not (self.directory / name).is_file():
                raise OnnxModelError(f"{self.directory}: no {name}; export the model again (sec export)")
        self.info = info
        self.max_length = int(info["max_length"])
        self.labels = list(info["labels"])
        self.num_labels = len(self.labels)

        self.tokenizer = Tokenizer.from_file(str(self.directory / TOKENIZER_FILE))
        # What the Hugging Face tokenizer does for tokenizer(p, h, truncation=True,
        # max_length=..., padding=True): cut the longer of the two texts first, pad on the right to
        # the batch's longest pair with token type 0.
        self.tokenizer.enable_truncation(self.max_length, strategy="longest_first", direction="right")
        pad_token = info.get("pad_token", "[PAD]")
        pad_id = self.tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise OnnxModelError(f"{self.directory}: pad token {pad_token!r} is not in {TOKENIZER_FILE}")
        self.tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_type_id=0, pad_token=pad_token)

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        # Same inputs, same logits, run after run (a reduction may otherwise be split differently).
        options.use_deterministic_compute = True
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.directory / ONNX_FILE), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise OnnxModelError(f"{self.directory}: ONNX Runtime cannot load {ONNX_FILE}: {err}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = [n for n in self.input_names if n not in _ENCODING_FIELDS]
        if unknown:
            raise OnnxModelError(f"{self.directory}: {ONNX_FILE} takes inputs {unknown} this runtime cannot fill")
        self.output_name = self.session.get_outputs()[0].name

    def _read_info(self) -> dict:
        if not self.directory.is_dir():
            raise OnnxModelError(f"{self.directory}: no such model directory")
        path = self.directory / SEC_JSON
        if not path.is_file():
            raise OnnxModelError(f"{self.directory}: no {SEC_JSON}; not an exported model directory (sec export)")
        info = json.loads(path.read_text())
        if info.get("format") != "onnx":
            raise OnnxModelError(
                f"{self.directory}: {SEC_JSON} says format {info.get('format')!r}, not 'onnx'; this is not an "
                "ONNX export (make one with sec export)"
            )
        for key in ("max_length", "labels"):
            if key not in info:
                raise OnnxModelError(f"{self.directory}: {SEC_JSON} has no {key!r}; export the model again")
        return info

    def encode(self, premises, hypotheses) -> dict[str, np.ndarray]:
        """Token arrays (batch, seq) int64 for the pairs, only the inputs the graph takes."""
        premises, hypotheses = list(premises), list(hypotheses)
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        encodings = self.tokenizer.encode_batch(list(zip(premises, hypotheses)))
        return {
            name: np.array([getattr(e, _ENCODING_FIELDS[name]) for e in encodings], dtype=np.int64)
            for name in self.input_names
        }

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Logits (batch, num_labels) float32 for already encoded inputs."""
        (logits,) = self.session.run([self.output_name], {n: feeds[n] for n in self.input_names})
        return np.asarray(logits, dtype=np.float32)

    def predict(self, premises, hypotheses, batch_size: int = 32) -> np.ndarray:
        """Logits (n, num_labels) in input order.

        Pairs are sorted by length first so each batch pads to a similar length, as the PyTorch
        inference in this project does (stages/_inference.predict_logits).
        """
        premises, hypotheses = list(premises), list(hypotheses)
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        order = np.argsort([len(p) + len(h) for p, h in zip(premises, hypotheses)], kind="stable")
        out = np.zeros((len(premises), self.num_labels), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            feeds = self.encode([premises[i] for i in idx], [hypotheses[i] for i in idx])
            out[idx] = self.run(feeds)
        return out
