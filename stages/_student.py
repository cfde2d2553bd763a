"""Making a smaller student from the (pruned) teacher: fewer layers, a trimmed vocabulary.

Both keep the teacher's weights for what stays, so distillation starts from a model that already
knows the task (DistilBERT / TinyBERT-style initialisation), not from scratch.

- `keep_layers`: keep `k` of the encoder's `n` layers, evenly spaced with the top layer included
  (its output is what the pooler and classifier were trained on).
- `trim_vocabulary`: keep the embedding rows of the tokens a corpus uses, plus every single
  character and "##" character piece, so any word still splits into known pieces (WordPiece only
  falls back to [UNK] for an unknown character). On the texts it was built from, tokenisation is
  unchanged: every token the full vocabulary produced is kept, and a longer match in the trimmed
  vocabulary would also have been one in the full vocabulary. With a size cap (`most_frequent`),
  only the most frequent tokens stay: a word that used a dropped token splits into smaller pieces.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel

_LATIN_END = 0x250  # Basic Latin .. IPA Extensions


def evenly_spaced_layers(n_layers: int, keep: int) -> list[int]:
    """Indices of `keep` of `n_layers` layers, evenly spaced, the last one always included.

    6 -> 3: [1, 3, 5]; 12 -> 4: [2, 5, 8, 11]; keep 0 or >= n: all layers.
    """
    if keep <= 0 or keep >= n_layers:
        return list(range(n_layers))
    step = n_layers / keep
    return [round(step * (i + 1)) - 1 for i in range(keep)]


def keep_layers(model: PreTrainedModel, indices: list[int]) -> None:
    """Drop every encoder layer not in `indices`, in place; the config follows."""
    encoder = model.base_model.encoder
    layers = encoder.layer
    if not indices or any(i < 0 or i >= len(layers) for i in indices):
        raise ValueError(f"layer indices {indices} do not fit an encoder of {len(layers)} layers")
    encoder.layer = nn.ModuleList(layers[i] for i in indices)
    model.config.num_hidden_layers = len(indices)


def layer_map(kept: list[int]) -> list[tuple[int, int]]:
    """(student hidden-state index, teacher hidden-state index) pairs for hidden-state KD.

    hidden_states[0] is the embedding output and hidden_states[i + 1] layer i's output, in both
    models; student layer j was initialised from teacher layer kept[j], so it learns that one's output.
    """
    return [(0, 0)] + [(j + 1, t + 1) for j, t in enumerate(kept)]


def token_counts(tokenizer, premises: list[str], hypotheses: list[str], batch: int = 2048) -> Counter[int]:
    """How often each token id occurs when the pairs are tokenised (special tokens included)."""
    counts: Counter[int] = Counter()
    for start in range(0, len(premises), batch):
        enc = tokenizer(premises[start : start + batch], hypotheses[start : start + batch])
        for row in enc["input_ids"]:
            counts.update(row)
    return counts


def used_token_ids(tokenizer, premises: list[str], hypotheses: list[str], batch: int = 2048) -> set[int]:
    return set(token_counts(tokenizer, premises, hypotheses, batch))


def most_frequent(counts: Counter[int], size: int) -> set[int]:
    """The `size` most frequent ids (ties broken by the lower id, so the cut does not depend on the
    order the corpus was read in); `size` 0: every id that occurs."""
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    return set(ranked if size <= 0 else ranked[:size])


def trim_vocabulary(model: PreTrainedModel, tokenizer, keep_ids: set[int]):
    """Keep only `keep_ids` (plus special tokens and single characters) -> (model, new tokenizer).

    The model's input embedding (and an output embedding tied to it, if any) is cut to the kept
    rows, in their old order; the tokenizer gets the matching vocabulary. WordPiece tokenizers only.
    """
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"].get("type") != "WordPiece":
        raise ValueError(f"trim_vocab supports WordPiece tokenizers, not {state['model'].get('type')!r}")
    vocab: dict[str, int] = state["model"]["vocab"]
    keep = set(keep_ids) | set(tokenizer.all_special_ids)
    prefix = state["model"].get("continuing_subword_prefix", "##")
    for token, index in vocab.items():
        bare = token[len(prefix):] if token.startswith(prefix) else token
        # Every Latin character (and "##" piece), so no English word falls back to [UNK]; BERT's
        # thousands of CJK and other single characters would cost ~1.5k rows for nothing on MNLI.
        if len(bare) == 1 and ord(bare) < _LATIN_END:
            keep.add(index)
    old_ids = sorted(keep)  # the new id of a token is its rank among the kept old ids
    new_id = {old: new for new, old in enumerate(old_ids)}
    by_id = {index: token for token, index in vocab.items()}
    state["model"]["vocab"] = {by_id[old]: new for old, new in new_id.items()}
    for added in state.get("added_tokens", []):
        added["id"] = new_id[added["id"]]
    _remap_post_processor(state.get("post_processor"), new_id)

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        Path(tmp, "tokenizer.json").write_text(json.dumps(state))
        config_path = Path(tmp, "tokenizer_config.json")
        config = json.loads(config_path.read_text())
        if "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in config["added_tokens_decoder"].items()}
        config_path.write_text(json.dumps(config))
        for stale in ("vocab.txt", "special_tokens_map.json"):  # the slow-tokenizer vocab would disagree
            Path(tmp, stale).unlink(missing_ok=True)
        new_tokenizer = AutoTokenizer.from_pretrained(tmp)

    index = torch.tensor(old_ids)
    old = model.get_input_embeddings()
    # On the old table's device and dtype: the model may be on a GPU after training.
    new = nn.Embedding(len(old_ids), old.embedding_dim, padding_idx=new_id.get(old.padding_idx) if old.padding_idx is not None else None,
                       device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[index.to(old.weight.device)])  # (len(old_ids), hidden)
    model.set_input_embeddings(new)
    model.config.vocab_size = len(old_ids)
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = new_id[tokenizer.pad_token_id]
    return model, new_tokenizer


def _remap_post_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    """TemplateProcessing / BertProcessing store special-token ids; rewrite them."""
    if not processor:
        return
    for step in processor.get("processors", []):
        _remap_post_processor(step, new_id)
    for token in (processor.get("special_tokens") or {}).values():
        token["ids"] = [new_id[i] for i in token["ids"]]
    for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
        if isinstance(processor.get(key), list):
            processor[key] = [processor[key][0], new_id[processor[key][1]]]
