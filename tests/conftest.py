"""Fixtures: a tiny BERT built from a config (with its own word-level vocab) and tiny NLI data.

Nothing here touches the network or the shared MNLI files.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.project_copy import copy_project

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

_SUBJECTS = ["the man", "a woman", "the dog", "two kids", "a chef", "the band", "my friend", "the teacher"]
_VERBS = ["is eating", "is running", "plays music", "is sleeping", "reads a book", "is cooking", "sings"]
_PLACES = ["in the park", "at home", "on the street", "in a kitchen", "at school", "by the river"]


def make_pairs(n: int, seed: int = 0) -> pd.DataFrame:
    """Synthetic NLI pairs whose label follows from the text (entailment / neutral / negation)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        subject, verb, place = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_PLACES)
        premise = f"{subject.capitalize()} {verb} {place}."
        label = i % 3
        if label == 0:
            hypothesis = f"{subject.capitalize()} {verb}."
        elif label == 1:
            hypothesis = f"{subject.capitalize()} {verb} {rng.choice(_PLACES)} with a friend."
        else:
            hypothesis = f"Nobody {verb.replace('is ', 'is ')} {place}."
        rows.append({"premise": premise, "hypothesis": hypothesis, "label": label})
    return pd.DataFrame(rows)


def _vocab() -> list[str]:
    words = set()
    for text in _SUBJECTS + _VERBS + _PLACES + ["with a friend nobody not no never . , ' ?"]:
        words.update(text.lower().replace(".", " . ").split())
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.,'?!-") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    return specials + sorted(words) + letters


def build_tiny_bert(directory, pooling: str | None = "mean") -> str:
    """A 2-layer, 4-head, hidden-32 BERT classifier + WordPiece tokenizer, saved like a hub model.

    `pooling`: the sentence-transformers pooling config it ships (1_Pooling/config.json), as both
    offline models do, so `model.pooling: auto` gives it the mean-pooling head the pipeline's
    models get; None: no such file (a plain hub checkpoint: the [CLS] pooler head).
    """
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    # transformers 5 tokenizers take the vocabulary itself (`vocab=`); a `vocab_file=` argument is
    # silently ignored and leaves only the 5 special tokens, so every word would be [UNK].
    vocab = {token: index for index, token in enumerate(dict.fromkeys(_vocab()))}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    assert tokenizer.tokenize("the man")[0] == "the", "tiny tokenizer lost its vocabulary"
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=3,
    )
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if pooling is not None:
        (directory / "1_Pooling").mkdir(exist_ok=True)
        (directory / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
             "pooling_mode_mean_tokens": pooling == "mean"}))
    return str(directory)


def always_predict(model, label: int):
    """`model` with its 3-way head set to predict `label` for every pair, in place: a model whose
    accuracy a test knows in advance (the share of `label` among the gold labels)."""
    import torch

    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 3][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), 3).float() * 10)
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_cls_model_dir(tmp_path_factory) -> str:
    """The tiny BERT without a pooling config: `auto` gives it the [CLS] pooler head."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-cls"), pooling=None)


@pytest.fixture
def pairs() -> pd.DataFrame:
    from stages._io import validate_pairs

    return validate_pairs(make_pairs(60), "pairs")


def run_cmd(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a project command (dvc, git) the way the scripts do: the venv first on PATH, offline."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def make_tiny_repo(root: Path, shared: Path | None = None) -> Path:
    """A scratch git + DVC repository with this project's pipeline on the tiny profile.

    The data and the tiny model go to `shared` when given (made once, reused), else beside the
    repo; params.yaml names them by absolute path, which DVC's queued experiments (run from a
    temporary copy of the repo) also resolve. Repos made with one `shared` have identical params.
    """
    repo = copy_project(root / "repo")
    home = shared or root
    data = home / "mnli"
    if not (data / "train.parquet").is_file():
        data.mkdir(parents=True, exist_ok=True)
        make_pairs(120).to_parquet(data / "train.parquet")
        # The test split shares no pair with the training file (prepare would drop shared ones).
        make_pairs(40, seed=1).assign(premise=lambda f: "Today " + f["premise"]).to_parquet(data / "validation_matched.parquet")
    model = home / "tiny-bert"
    if not (model / "config.json").is_file():
        build_tiny_bert(model)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "tiny"
    params["data"]["local_dir"] = str(data.resolve())
    params["model"]["teacher"] = str(model.resolve())
    # The tiny pipeline runs in a dozen slow tests: augment_pool passes its pool through there
    # (WordNet and Apertium on it cost ~5 s a run); tests/test_augment_pool.py covers the copies.
    params["augment_pool"]["fraction"] = 0.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_cmd(["git", "init", "-q"], repo)
    run_cmd(["dvc", "init", "-q"], repo)
    run_cmd(["dvc", "config", "core.analytics", "false"], repo)
    run_cmd(["git", "add", "-A"], repo)
    run_cmd(["git", "commit", "-qm", "tiny pipeline"], repo)
    return repo


def pytest_collection_modifyitems(config, items):
    """Files with an end-to-end (slow) test go first.

    pytest-xdist (`--dist loadfile`) hands out whole files in collection order. In alphabetical
    order the long end-to-end files came last and ran one after another on one worker while the
    other sat idle; started first, the many fast files fill the other worker around them.
    The sort is stable, so tests keep their order inside a file.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
