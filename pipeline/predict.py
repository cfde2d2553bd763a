"""Score premise/hypothesis pairs with any model directory the pipeline produced."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from stages._device import pick_device, place
from stages._inference import predict_logits, softmax
from stages._io import LABEL_NAMES, atomic_path, read_pairs
from stages._models import load_model


def predict_frame(model, tokenizer, pairs: pd.DataFrame, *, batch_size: int = 32, max_length: int = 128) -> list[dict]:
    """One record per row: label (int), label_name, probs (entailment, neutral, contradiction)."""
    logits = predict_logits(
        model, tokenizer, pairs["premise"].tolist(), pairs["hypothesis"].tolist(),
        batch_size=batch_size, max_length=max_length, desc="predict",
    )
    probs = softmax(logits)
    return [
        {"label": int(p.argmax()), "label_name": LABEL_NAMES[int(p.argmax())], "probs": [round(float(x), 6) for x in p]}
        for p in probs
    ]


def predict_file(model_dir: str | Path, input_path: str | Path, output_path: str | Path, *, batch_size: int = 32,
                 max_length: int = 128, device: str | torch.device = "auto") -> int:
    """Read Parquet/JSONL pairs, write JSONL predictions (input columns kept); returns the row count.

    device: "auto" | "cpu" | "cuda" (stages._device.pick_device; SEC_DEVICE overrides) or a
    torch.device. Models that cannot leave the CPU (int8, ONNX) are scored there.
    """
    pairs = read_pairs(input_path, require_label=False)
    if not isinstance(device, torch.device):
        device = pick_device(device)
    model, tokenizer = load_model(model_dir)
    model = place(model, device)
    records = predict_frame(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length)
    with atomic_path(output_path) as tmp, tmp.open("w") as out:
        for row, record in zip(pairs[["premise", "hypothesis"]].to_dict("records"), records):
            out.write(json.dumps({**row, **record}) + "\n")
    return len(records)
