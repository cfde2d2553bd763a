"""Typed, validated params: one pydantic model per params.yaml section.

`load_params(path)` reads params.yaml, fills `null` keys from the selected profile
(stages/_profiles.py) and validates everything. Unknown keys, wrong types and out-of-range values
raise `ParamsError` naming the file, the dotted key and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stages._profiles import PROFILES

LabelName = Literal["entailment", "neutral", "contradiction"]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    # Where MNLI comes from: a local directory (Parquet, JSONL or GLUE TSV) or the hub.
    local_dir: str | None = None
    hub_id: str = "nyu-mll/glue"
    hub_config: str = "mnli"
    # The training files, all pooled: split names (<name>.<ext> in local_dir, or hub splits) or
    # paths to files. Pairs repeated across them, or also in the eval split, are removed (prepare).
    train_splits: list[str] = Field(default=["train"], min_length=1)
    eval_split: str = "validation_matched"
    # The training splits the dev split is drawn from (null: all of them).
    dev_from: list[str] | None = None
    # Seed of the dev/seed/pool split; null = the run's `seed`. Fixed, the seeds of a study vary
    # training (heads, acquisition, augmentation, batch order) and not the yardstick.
    split_seed: int | None = None
    # Sizes; 0 means "all rows the split has" (dev_size 0: no dev split; decisions then have
    # nothing to read, which the controller and the grid refuse).
    # dev: held out of the training pool before anything else is drawn, labelled, never trained
    # on, selected, augmented or distilled on: the split every decision reads. validation_matched
    # is the test split: evaluated and reported, never used to choose.
    dev_size: int = Field(ge=0)
    seed_size: int = Field(ge=1)
    pool_size: int = Field(ge=0)
    eval_size: int = Field(ge=0)


class ModelParams(_Section):
    teacher: str = Field(min_length=1)
    max_length: int = Field(ge=8, le=512)
    # The head every model gets (stages._heads): mean = masked mean of the last hidden states ->
    # dropout -> linear; cls = the architecture's own head ([CLS] pooler); auto = the checkpoint's
    # sentence-transformers pooling config when it has one, else cls.
    pooling: Literal["mean", "cls", "auto"] = "auto"


class HealthParams(_Section):
    """Mixed into the sections of stages that train a model from a fresh head."""

    # The head's own learning rate (a fresh linear layer learns faster than the pretrained encoder
    # may move); warmed up and decayed with the rest. null: learning_rate.
    head_learning_rate: float | None = Field(default=None, gt=0)
    # The trained model's dev accuracy below this stops the pipeline (0 = off): clearly above
    # chance, so that nothing downstream compresses a model that did not learn.
    min_dev_accuracy: float = Field(default=0.0, ge=0, lt=1)


class ActiveSelectParams(HealthParams):
    # entropy | margin: uncertainty sampling; random: the baseline at the same budget;
    # all: every pool pair gets its label (the all-labels baseline; budget is ignored).
    # badge | coreset | typiclust: scikit-activeml's batch strategies, with acquisition "embedding" only.
    strategy: Literal["entropy", "margin", "badge", "coreset", "typiclust", "random", "all"] = "entropy"
    # Who scores the pool for an uncertainty or diversity strategy:
    #   finetune:  the teacher's encoder fine-tuned on the seed set, one shot (the earlier recipe);
    #   embedding: rounds of a logistic regression on the teacher's pretrained pair embeddings
    #              (stages._active_rounds), `round_size` pairs bought a round until the budget is spent.
    acquisition: Literal["finetune", "embedding"] = "finetune"
    round_size: int = Field(default=1000, gt=0)
    # embedding only. density: an uncertainty strategy's utility times each pair's typicality (odd
    # far-off pairs are not bought); datamap: bought pairs the in-loop classifier never learns (mean
    # gold-label probability below hard_threshold over >= 2 rounds) mark their pool neighbours.
    outliers: Literal["none", "density", "datamap"] = "none"
    hard_threshold: float = Field(default=0.4, gt=0, lt=1)
    budget: int = Field(ge=0)
    acquisition_epochs: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    # Semi-supervised: this many unpicked pool pairs the acquisition model is surest of join the
    # training set with its predicted label (source "pseudo"), their loss scaled by pseudo_weight.
    pseudo_size: int = Field(default=0, ge=0)
    pseudo_weight: float = Field(default=0.5, ge=0)
    # Pool pairs the acquisition model scores (a random subset, drawn with the seed; 0 = all):
    # scoring 26k pairs with the fp32 model costs minutes on a 2-core CPU. The budget is spent
    # among them; the unscored rest stays in the unlabelled pool.
    candidates: int = Field(default=0, ge=0)
    # Train the acquisition model even where the strategy needs none (random, all) and keep it
    # (data/selected/acquisition): generate's label-conditioned pairs are checked with it.
    keep_model: bool = False

    @model_validator(mode="after")
    def _strategy_fits_acquisition(self):
        if self.acquisition == "finetune" and self.strategy in ("badge", "coreset", "typiclust"):
            raise ValueError(f"active_select.strategy {self.strategy!r} needs active_select.acquisition: embedding")
        return self


class AugmentParams(_Section):
    # Share of labelled rows that get one augmented copy each.
    fraction: float = Field(ge=0, le=1)
    # Share of eligible words replaced / swapped in an augmented sentence.
    rate: float = Field(default=0.15, gt=0, le=1)
    ops: list[Literal["synonym", "swap", "delete"]] = ["synonym", "swap"]
    weight: float = Field(default=1.0, ge=0)
    # Adaptive augmentation: label name -> fraction, overriding `fraction` for that class (the
    # controller sets it from the last evaluation's per-class accuracy). null = `fraction` for all.
    class_fraction: dict[LabelName, Fraction] | None = None


class BackTranslateParams(_Section):
    fraction: float = Field(ge=0, le=1)
    pivot: str = "spa"
    weight: float = Field(default=1.0, ge=0)
    class_fraction: dict[LabelName, Fraction] | None = None


class AugmentPoolParams(_Section):
    # Share of the unlabelled pool that gets an augmented copy, and (drawn independently) a
    # back-translated one, as extra distillation transfer rows (KD only). 0 = the pool as it is.
    fraction: float = Field(default=0.0, ge=0, le=1)


class GenerateParams(_Section):
    # Any OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama, TGI, a hosted API), e.g.
    # http://127.0.0.1:8000/v1; "local": the stage starts llama.cpp (xllamacpp) with the offline
    # SmolLM2-135M-Instruct GGUF on 127.0.0.1 and stops it when done (stages._llm_server).
    base_url: str = Field(default="local", min_length=1)
    model: str = Field(default="local", min_length=1)  # the endpoint's model name (ignored by "local")
    # Environment variable holding the API key (never the key itself: params.yaml is committed).
    api_key_env: str = "OPENAI_API_KEY"
    # Use (a): new premise/hypothesis pairs in the style of the unlabelled pool, for distillation's
    # transfer set (label -1: the teacher gives soft labels; no generated label is trusted).
    transfer_count: int = Field(ge=0)
    # Use (b): labelled premises each given one hypothesis per label, for the teacher; a pair is
    # kept only where the acquisition model predicts its intended label with >= min_confidence.
    label_count: int = Field(ge=0)
    min_confidence: float = Field(default=0.7, ge=0, le=1)
    weight: float = Field(default=1.0, ge=0)  # loss weight of a kept (b) pair, as augment.weight
    examples: int = Field(default=3, ge=1)     # pool pairs shown per (a) prompt, as the style to follow
    temperature: float = Field(default=0.8, ge=0, le=2)
    seed: int | None = None  # the endpoint's sampling seed; null = the run's seed
    max_tokens: int = Field(default=96, ge=8)
    max_words: int = Field(default=60, ge=3)  # a longer sentence is dropped (over_long)
    timeout: float = Field(default=60.0, gt=0)  # seconds per request; a request past it is skipped
    retries: int = Field(default=3, ge=0)       # per request, on connection errors and 5xx, then the stage fails
    system_prompt: str = "You write short English sentences for a natural language inference dataset."
    transfer_prompt: str = (
        "Here are premise/hypothesis pairs:\n{examples}\n\nWrite one new pair on a different topic, "
        "in exactly this format:\nPremise: <sentence>\nHypothesis: <sentence>"
    )
    label_prompt: str = (
        "Premise: {premise}\nWrite one hypothesis sentence that {relation} the premise. "
        "Answer with the sentence only."
    )


class TrainParams(_Section):
    epochs: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    max_steps: int = -1  # -1: run `epochs`; otherwise stop after this many optimizer steps
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    save_steps: int = Field(default=100, ge=1)


class TrainingParams(_Section):
    # How every training run computes (active_select's acquisition model, fine_tune, prune
    # recovery, distill): mixed precision through the Trainer's autocast, weights kept float32.
    # auto: bf16 on a CUDA GPU that has it, fp16 on an older GPU, fp32 on the CPU for now
    # (stages._device.resolve_precision says why).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # fine_tune and distill train data-parallel on this many processes (DDP under torchrun; one
    # GPU each on CUDA, gloo on the CPU), with the same global batch (stages._distributed).
    processes: int = Field(default=1, ge=1)


class FineTuneParams(TrainParams, HealthParams):
    # λ2 inside training: weight of the group-lasso penalty on the heads and FFN channels that
    # pruning removes (stages._pruning.group_norms), so pruning them later costs less. 0 = off.
    sparsity_weight: float = Field(default=0.0, ge=0)


class PruneParams(_Section):
    # Share of attention heads and of FFN channels removed in every layer.
    ratio: float = Field(default=0.3, ge=0, lt=1)
    importance: Literal["taylor", "magnitude"] = "taylor"
    prune_heads: bool = True
    prune_ffn: bool = True
    calibration_batches: int = Field(default=8, ge=1)
    recovery_steps: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)


class DistillParams(TrainParams):
    # "pruned": the pruned teacher; anything else: a model name for the registry.
    student: str = "pruned"
    alpha: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=2.0, gt=0)
    # Unlabelled pool rows added as a transfer set (soft labels only); 0 = all of them.
    transfer_size: int = Field(ge=0)
    # Encoder layers the student keeps (evenly spaced, the top one included; 0 = all of them).
    layers: int = Field(ge=0)
    # Weight of the hidden-state KD term: MSE between each student layer and the teacher layer it
    # maps to (TinyBERT-style uniform mapping); 0 = logits only.
    hidden_weight: float = Field(ge=0)
    # Weight of intermediate-layer attention transfer: KL between the teacher's and the student's
    # self-attention relations (query-query, key-key, value-value; MiniLMv2) at the same layer
    # pairs as the hidden states, split into `attention_heads` relation heads, which must divide
    # both models' attention widths (pruning narrows the student's). 0 = off.
    attention_weight: float = Field(default=0.0, ge=0)
    attention_heads: int = Field(default=8, ge=1)
    # Keep only the vocabulary rows the training text uses (plus every single character, so any
    # word still splits into known pieces): the embedding table is most of a small BERT's size.
    trim_vocab: bool = False
    # With trim_vocab: keep only this many of the used tokens, the most frequent in the training
    # text (0 = all of them). The embedding table is most of the student's size (21k rows of 384 on
    # the cpu profile: 8.1 of its 12.0 M parameters); a word that used a dropped token splits into
    # smaller pieces, so the cut costs accuracy on rare words (measured: README, the controller).
    vocab_size: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _cap_needs_trim(self) -> DistillParams:
        if self.vocab_size and not self.trim_vocab:
            raise ValueError("distill.vocab_size caps the trimmed vocabulary: set distill.trim_vocab: true, or vocab_size: 0")
        return self


class QuantizeParams(_Section):
    # Weight scales: one per matrix (dynamic_int8) or one per output row (dynamic_int8_per_channel).
    scheme: Literal["dynamic_int8", "dynamic_int8_per_channel"] = "dynamic_int8_per_channel"
    # Also store the embedding tables as int8 (per-row scale); they are most of a small model.
    embeddings: bool = True
    # Which int8 student is the deployed one (what the targets, the controller and the benchmark
    # judge): torch's eager `quantize_dynamic` module (models/quantized) or ONNX Runtime's dynamic
    # int8 graph (models/onnx/int8, made by the export stage). Both are built and evaluated.
    backend: Literal["torch", "onnxruntime"] = "torch"


class ExportParams(_Section):
    # ONNX opset of the exported graphs (17: LayerNormalization is one op; ONNX Runtime >= 1.14).
    opset: int = Field(default=17, ge=14)
    # ONNX Runtime's transformer graph optimizations (fused attention, LayerNorm, GELU) before
    # quantizing, as its quantization docs recommend.
    optimize: bool = True
    # int8 weight scale range: "auto" = 7-bit weights (reduce_range) only on CPUs without VNNI,
    # where ONNX Runtime's docs say 8-bit S8S8 weights can saturate; true/false force it.
    reduce_range: Literal["auto", "on", "off"] = "auto"


class EvaluateParams(_Section):
    batch_size: int = Field(default=32, ge=1)
    latency_repeats: int = Field(ge=1)
    latency_warmup: int = Field(default=2, ge=0)
    # Distinct random batches timed per repeat: one batch's padded length decides its cost, so a
    # single batch makes the speed-up depend on which pairs were drawn (7.7x to 9.4x seen here).
    latency_batches: int = Field(default=8, ge=1)
    # Batch-1 latency: p50 and p95 over this many single pairs (the same pairs for every model).
    latency_single_pairs: int = Field(default=64, ge=1)


class Params(_Section):
    profile: Literal["cpu", "gpu", "tiny"]
    seed: int = 42
    # CPU threads every stage runs with (recorded in its metrics): a float sum split over another
    # number of threads can round differently, so the thread count is part of what a run is.
    threads: int = Field(default=2, ge=1)
    # Where model stages compute: auto = cuda when torch sees a GPU, else cpu. The environment
    # variable SEC_DEVICE overrides it (stages._device.pick_device).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    train: TrainingParams = TrainingParams()
    data: DataParams
    model: ModelParams
    active_select: ActiveSelectParams
    augment: AugmentParams
    back_translate: BackTranslateParams
    augment_pool: AugmentPoolParams = AugmentPoolParams()
    generate: GenerateParams
    fine_tune: FineTuneParams
    prune: PruneParams
    distill: DistillParams
    quantize: QuantizeParams
    export: ExportParams = ExportParams()
    evaluate: EvaluateParams


# Sections of params.yaml that are not read by this module (e.g. the controller's).
PASSTHROUGH_SECTIONS = {"controller", "grid"}


def _merge_profile(raw: dict, source: str) -> dict:
    profile = raw.get("profile", "cpu")
    if profile not in PROFILES:
        raise ParamsError(f"{source}: key 'profile': expected one of {sorted(PROFILES)}, got {profile!r}")
    merged: dict = {"profile": profile}
    for key, value in raw.items():
        if key == "profile" or key in PASSTHROUGH_SECTIONS:
            continue
        preset = PROFILES[profile].get(key, {})
        if isinstance(value, dict) or (value is None and key in PROFILES[profile]):
            section = dict(preset)
            for sub_key, sub_value in (value or {}).items():
                # null means "the profile's value"; a key the profile lacks keeps null so that
                # validation names it rather than silently defaulting.
                if sub_value is not None or sub_key not in preset:
                    section[sub_key] = sub_value
            merged[key] = section
        else:
            merged[key] = value
    for key, preset in PROFILES[profile].items():
        merged.setdefault(key, dict(preset))
    for key in Params.model_fields:
        if key not in merged and key not in ("profile", "seed", "threads", "device"):
            merged[key] = {}
    return merged


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid params"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"  key '{key}': unknown key (typo? allowed keys are in stages/_params.py)")
        elif e["type"] == "missing":
            lines.append(f"  key '{key}': required but missing")
        else:
            lines.append(f"  key '{key}': {e['msg']} (got {got!r})")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    merged = _merge_profile(raw, source)
    try:
        return Params.model_validate(merged)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))
