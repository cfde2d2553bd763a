"""Batched inference shared by active selection, distillation, evaluation and predict."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm


def tokenize_pairs(tokenizer, premises: list[str], hypotheses: list[str], max_length: int) -> dict:
    return tokenizer(premises, hypotheses, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


@torch.inference_mode()
def predict_logits(
    model,
    tokenizer,
    premises: list[str],
    hypotheses: list[str],
    *,
    batch_size: int = 32,
    max_length: int = 128,
    desc: str | None = None,
) -> np.ndarray:
    """Logits, shape (n, num_labels), in input order.

    Pairs are sorted by length first so each batch pads to a similar length (dynamic padding):
    on MNLI this roughly halves the work against padding every batch to the longest pair.
    """
    model.eval()
    # Inputs go where the model is (a Trainer may have moved it to a GPU); logits come back to CPU.
    device = next(model.parameters(), torch.empty(0)).device
    lengths = [len(p) + len(h) for p, h in zip(premises, hypotheses)]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(premises), model.config.num_labels), dtype=np.float32)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None, unit="batch"):
        idx = order[start : start + batch_size]
        enc = tokenize_pairs(tokenizer, [premises[i] for i in idx], [hypotheses[i] for i in idx], max_length)
        enc = {k: v.to(device) for k, v in enc.items()}
        out[idx] = model(**enc).logits.float().cpu().numpy()
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
