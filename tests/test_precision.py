"""Mixed precision: train.precision reaches the Trainer (bf16 autocast works on the CPU) and the metrics."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from stages._training import TrainConfig, precision_flags, train


class ArgsSpy(TrainerCallback):
    """Keeps the TrainingArguments and the dtype of the logits of the first step."""

    def __init__(self):
        self.args = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.args = args


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_precision_reaches_the_trainer_and_the_metrics(tiny_model_dir, pairs, tmp_path, precision):
    from stages._models import load_pretrained_classifier

    model, tok = load_pretrained_classifier(tiny_model_dir, seed=0)
    dtypes = []
    # The classifier's output dtype shows whether autocast was on during the forward pass.
    model.classifier.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    spy = ArgsSpy()
    cfg = TrainConfig(epochs=1.0, batch_size=8, max_steps=3, learning_rate=1e-4, save_steps=100, max_length=32,
                      precision=precision)
    before = model.classifier.weight.detach().clone()
    metrics = train(model, tok, pairs, cfg, checkpoint_dir=tmp_path / "ckpt", callbacks=[spy], device="cpu")
    assert metrics["precision"] == precision and metrics["device"] == "cpu" and metrics["train_steps"] == 3
    assert spy.args.use_cpu and spy.args.bf16 == (precision == "bf16") and not spy.args.fp16
    assert dtypes[0] == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert model.classifier.weight.dtype == torch.float32  # autocast: the weights stay float32
    assert not torch.equal(before, model.classifier.weight.detach())  # and they trained


def test_unresolved_precision_is_refused():
    assert precision_flags("fp16") == {"bf16": False, "fp16": True}
    with pytest.raises(ValueError, match="resolved"):
        precision_flags("auto")


def test_train_section_defaults_to_auto():
    from conftest import REPO
    from stages._params import load_params

    params = load_params(REPO / "params.yaml")
    assert params.train.precision == "auto" and params.device == "auto"
