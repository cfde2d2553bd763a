"""Pretrained sentence embeddings of pairs: what iterative active selection trains its light classifier on.

The teacher's own pretrained encoder (no head, no fine-tuning) embeds each text once; a pair becomes

  features "pair": [u, v, |u - v|, u * v]  (n, 4 * width), u = premise, v = hypothesis, each the
                   masked mean of the last hidden states, L2-normalised (sentence-transformers'
                   recipe for all-MiniLM / all-mpnet; the pair features are SBERT's NLI classifier input)
  features "joint": the encoder on the joined pair "[CLS] p [SEP] h [SEP]", mean-pooled (n, width)

"pair" embeds every distinct text once: MNLI premises repeat (about three hypotheses each), so it
encodes far fewer tokens than "joint", which must encode every pair whole. Values are rounded to
EMBEDDING_DECIMALS, so that another CPU's last-bit differences rarely reach the picks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from stages._heads import mean_pool

FEATURES = ("pair", "joint")
EMBEDDING_DECIMALS = 4


def load_encoder(name: str):
    """The pretrained encoder (no classification head) of a registry name, directory or hub id."""
    from transformers import AutoModel, AutoTokenizer

    from stages._io import ModelError
    from stages._models import resolve_model

    path = resolve_model(name)
    try:
        return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ModelError(f"cannot load encoder {name!r} from {path}: {err}") from None


@torch.inference_mode()
def encode(encoder, tokenizer, first: list[str], second: list[str] | None = None, *, max_length: int,
           batch_size: int = 64, desc: str | None = None) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings (n, width) of texts (or of text pairs when `second`).

    Sorted by length so each batch pads to a similar length (dynamic padding); rows come back in
    input order.
    """
    encoder.eval()
    lengths = [len(a) + (len(second[i]) if second is not None else 0) for i, a in enumerate(first)]
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(first), encoder.config.hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=desc is None, unit="batch"):
        idx = order[start:start + batch_size]
        args = ([first[i] for i in idx],) + (([second[i] for i in idx],) if second is not None else ())
        enc = tokenizer(*args, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        hidden = encoder(**enc).last_hidden_state  # (batch, seq, width)
        pooled = torch.nn.functional.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1)
        out[idx] = pooled.float().numpy()
    return out


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u, v (n, width) -> (n, 4 * width): [u, v, |u - v|, u * v]."""
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def embed_pairs(encoder, tokenizer, frame: pd.DataFrame, *, features: str, max_length: int,
                desc: str | None = None) -> np.ndarray:
    """Features (len(frame), k) of a frame's (premise, hypothesis) pairs, rounded to EMBEDDING_DECIMALS."""
    if features not in FEATURES:
        raise ValueError(f"unknown embedding features {features!r}; expected one of {list(FEATURES)}")
    if features == "joint":
        x = encode(encoder, tokenizer, frame["premise"].tolist(), frame["hypothesis"].tolist(),
                   max_length=max_length, desc=desc)
    else:
        texts = pd.unique(pd.concat([frame["premise"], frame["hypothesis"]], ignore_index=True))
        table = encode(encoder, tokenizer, list(texts), max_length=max_length, desc=desc)  # (distinct, width)
        row = pd.Series(np.arange(len(texts)), index=texts)
        x = pair_features(table[row.loc[frame["premise"]].to_numpy()], table[row.loc[frame["hypothesis"]].to_numpy()])
    return np.round(x, EMBEDDING_DECIMALS).astype(np.float32)
