"""Diagnostic: does the teacher's chance-level plateau come from the [CLS] pooler head?

    python scripts/teacher_plateau.py --steps 200

all-MiniLM-L6-v2 was trained (sentence-transformers) for mean-pooled embeddings. This prints how
much the pooler's output and the mean-pooled hidden states vary across dev pairs before training,
then trains the same model on the same batches (the pipeline's training set, batch 16, AdamW lr
1e-4, linear warmup over the profile's first 55 steps, then constant) with (a) the stock pooler
head and (b) a masked mean-pooling head, and prints the loss per 25 steps and dev accuracy. Dev
only; it writes nothing. Not part of the pipeline: reports/cross_cpu_amd_avx2.md quotes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages._determinism import seed_everything  # noqa: E402
from stages._io import read_pairs  # noqa: E402
from stages._models import load_pretrained_classifier  # noqa: E402


class MeanPool(nn.Module):
    """Stands in for BertPooler: the mean of the last hidden states over real tokens."""

    def __init__(self):
        super().__init__()
        self.mask = None  # (batch, seq), set before each forward

    def forward(self, hidden):  # (batch, seq, hidden) -> (batch, hidden)
        mask = self.mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    x = nn.functional.normalize(x, dim=-1)
    n = len(x)
    return float(((x @ x.T).sum() - n) / (n * n - n))


def encode(tokenizer, rows, max_length: int):
    return tokenizer(list(rows.premise), list(rows.hypothesis), truncation=True, max_length=max_length,
                     padding=True, return_tensors="pt")


def spread_before_training(dev, max_length: int, seed: int) -> None:
    model, tokenizer = load_pretrained_classifier("minilm-l6", seed=seed, pooling="cls")
    enc = encode(tokenizer, dev.head(128), max_length)
    with torch.no_grad():
        out = model.bert(**enc)
    mask = enc["attention_mask"].unsqueeze(-1).float()
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    for name, x in (("pooler", out.pooler_output), ("mean", mean)):
        print(f"{name:7s} before training: mean pairwise cosine {mean_pairwise_cosine(x):.2f}, "
              f"per-dimension std over pairs {float(x.std(0).mean()):.3f}")


def train_and_score(head: str, train, dev, *, steps: int, seed: int, threads: int, max_length: int) -> None:
    seed_everything(seed, threads)
    model, tokenizer = load_pretrained_classifier("minilm-l6", seed=seed, pooling="cls")
    pool = None
    if head == "mean":
        pool = model.bert.pooler = MeanPool()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 55))
    order = np.random.default_rng(seed).permutation(len(train))
    model.train()
    losses = []
    for step in range(steps):
        rows = train.iloc[order[(step * 16) % len(order):][:16]]
        enc = encode(tokenizer, rows, max_length)
        if pool is not None:
            pool.mask = enc["attention_mask"]
        loss = model(**enc, labels=torch.tensor(rows.label.values)).loss
        loss.backward()
        optimizer.step()
        warmup.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dev), 64):
            rows = dev.iloc[start:start + 64]
            enc = encode(tokenizer, rows, max_length)
            if pool is not None:
                pool.mask = enc["attention_mask"]
            correct += int((model(**enc).logits.argmax(-1).numpy() == rows.label.values).sum())
    windows = [round(float(np.mean(losses[i:i + 25])), 3) for i in range(0, steps, 25)]
    print(f"{head:7s} loss per 25 steps {windows}; dev accuracy after {steps} steps {100 * correct / len(dev):.1f} %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--train", default="data/backtranslated/train.parquet")
    parser.add_argument("--dev", default="data/prepared/dev.parquet", help="the dev split (never the test split)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)
    train, dev = read_pairs(args.train), read_pairs(args.dev)
    seed_everything(args.seed, args.threads)
    spread_before_training(dev, args.max_length, args.seed)
    for head in ("pooler", "mean"):
        train_and_score(head, train, dev, steps=args.steps, seed=args.seed, threads=args.threads,
                        max_length=args.max_length)
    return 0


if __name__ == "__main__":
    sys.exit(main())
