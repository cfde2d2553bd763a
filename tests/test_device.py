"""One device everywhere: every tensor that meets a model is on that model's device.

There is no GPU here, so the model goes to the `meta` device (shapes, no data) and runs under
`StrictDevices`, a torch function mode that does what CUDA does to a CPU tensor meeting a GPU one:
it raises. (Plain meta is too lenient for this: an embedding lookup takes CPU ids into a meta table
and HF's mask code mixes CPU and meta without complaint.) Meta values read back to the CPU come
out as zeros and are counted, so a path runs to its end, and a test can tell that the numbers it
used came from the device model.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from stages._device import DeviceError, cpu_only, pick_device, place, resolve_precision

META = torch.device("meta")

# Moves between devices, and indexing with CPU indices, are legal across devices on CUDA too.
# (_has_compatible_shallow_copy_type: nn.Module.to asking whether a moved weight can be swapped in.)
_TRANSFERS = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.copy_, torch.Tensor.__getitem__,
              torch.Tensor.__setitem__, torch._has_compatible_shallow_copy_type}


class DeviceMismatch(RuntimeError):
    pass


class StrictDevices(TorchFunctionMode):
    """Raises when a torch call mixes devices (0-dim CPU tensors excepted, as CUDA allows), and
    reads meta tensors out as zeros (counted in `reads`)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func not in _TRANSFERS:
            devices = {t.device for t in tensors if t.dim() > 0 or t.device.type != "cpu"}
            if len(devices) > 1:
                raise DeviceMismatch(f"{getattr(func, '__name__', func)} got tensors on {sorted(map(str, devices))}")
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if first is not None and first.is_meta:
            if func is torch.Tensor.__bool__:
                return True  # data-dependent branches (e.g. "is the mask all ones?"): take one
            if func is torch.Tensor.item:
                return 0
            if func is torch.Tensor.tolist:
                self.reads += 1
                return torch.zeros(first.shape, dtype=first.dtype).tolist()
            to_cpu = func is torch.Tensor.cpu or (func is torch.Tensor.to and _targets_cpu(args[1:], kwargs))
            if to_cpu:
                self.reads += 1
                return torch.zeros(first.shape, dtype=first.dtype)
        return func(*args, **kwargs)


def _targets_cpu(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


@pytest.fixture
def strict():
    with StrictDevices() as mode:
        yield mode


def _tiny(tiny_model_dir):
    from stages._models import load_pretrained_classifier

    return load_pretrained_classifier(tiny_model_dir, seed=0)


def test_the_guard_catches_a_cpu_tensor_meeting_a_device_model(tiny_model_dir, strict):
    """The premise of every test below: an unmoved input raises, a moved one runs."""
    model, tok = _tiny(tiny_model_dir)
    model.to(META).eval()
    enc = tok(["the man is eating ."], ["the man ."], return_tensors="pt")
    with pytest.raises(DeviceMismatch):
        model(**enc)
    assert model(**{k: v.to(META) for k, v in enc.items()}).logits.device == META


def test_predict_logits_moves_inputs_to_the_model(tiny_model_dir, pairs, strict):
    from stages._inference import predict_logits

    model, tok = _tiny(tiny_model_dir)
    logits = predict_logits(model.to(META), tok, pairs["premise"].tolist()[:10], pairs["hypothesis"].tolist()[:10],
                            batch_size=4, max_length=32)
    assert logits.shape == (10, 3) and strict.reads == 3  # one read per batch, from the meta model


def test_acquisition_scoring_and_pseudo_labels_run_on_the_model_device(tiny_model_dir, pairs, strict):
    from stages.active_select import pseudo_label, score_pool, uncertainty

    model, tok = _tiny(tiny_model_dir)
    pool = pairs.iloc[:12].assign(pool_id=range(12)).reset_index(drop=True)
    probs = score_pool(model.to(META), tok, pool, max_length=32)
    assert strict.reads > 0 and probs.shape == (12, 3)
    assert uncertainty(probs, "entropy", 0).shape == (12,)
    chosen, rest = pseudo_label(pool.assign(row=range(12)), probs, 4, 0.5)
    assert len(chosen) == 4 and len(rest) == 8


def test_distillation_step_moves_the_teacher_to_the_students_device(tiny_model_dir, pairs, strict):
    from stages._training import PairCollator, build_dataset, step_loss

    student, tok = _tiny(tiny_model_dir)
    teacher, _ = _tiny(tiny_model_dir)
    teacher.eval()
    student.to(META).train()
    rows = list(build_dataset(pairs.iloc[:4].assign(weight=1.0), tok, 32))
    batch = {k: v.to(META) for k, v in PairCollator(tok)(rows).items()}  # what the Trainer hands over
    loss, outputs = step_loss(student, batch, teacher=teacher, hidden_weight=1.0, layer_pairs=[(1, 1), (2, 2)])
    assert loss.device == META and outputs.logits.device == META
    assert next(teacher.parameters()).device == META and not teacher.training


def test_distill_puts_the_teacher_on_the_device_in_eval_mode(tiny_model_dir, pairs, tmp_path, monkeypatch):
    """distill() itself: the teacher (left in train mode on purpose) must reach the student's device
    in eval mode before any soft label is computed."""
    import stages.distill as distill_stage
    from stages._params import DistillParams

    seen = {}

    def fake_predict(teacher, *args, **kwargs):
        seen.update(device=next(teacher.parameters()).device, training=teacher.training)
        raise RuntimeError("stop here")

    monkeypatch.setattr(distill_stage, "predict_logits", fake_predict)
    student, tok = _tiny(tiny_model_dir)
    teacher, _ = _tiny(tiny_model_dir)
    params = DistillParams(epochs=1, batch_size=4, learning_rate=1e-4, transfer_size=0, layers=0, hidden_weight=0.0)
    with pytest.raises(RuntimeError, match="stop here"):
        distill_stage.distill(student, tok, teacher.train(), pairs.assign(weight=1.0), params, max_length=32, seed=0,
                              checkpoint_dir=tmp_path / "ckpt", device=META)
    assert seen == {"device": META, "training": False}


def test_pruning_calibration_runs_on_the_model_device(tiny_model_dir, pairs, strict):
    from stages._params import PruneParams
    from stages._pruning import _accumulate_gradients, _dependency_graph
    from stages.prune import calibration_batches

    model, tok = _tiny(tiny_model_dir)
    params = PruneParams(recovery_steps=0, batch_size=4, learning_rate=1e-4, calibration_batches=2)
    batches = calibration_batches(pairs.assign(weight=1.0), tok, params, max_length=32, seed=0)  # CPU tensors
    model.to(META)
    _accumulate_gradients(model, batches)
    assert model.classifier.weight.grad.device == META
    _dependency_graph(model)  # traced on a dummy batch made on the model's device


def test_evaluate_scores_quality_on_the_stage_device_and_keeps_the_cpu_original(tiny_model_dir, pairs, strict):
    from stages._params import EvaluateParams
    from stages.evaluate import evaluate

    model, tok = _tiny(tiny_model_dir)
    frame = pairs.iloc[:8].assign(row_id=range(8))
    results, timings, predictions = evaluate(
        {"teacher": (model, tok, tiny_model_dir)}, {"dev": frame}, EvaluateParams(latency_repeats=1),
        max_length=32, seed=0, timing=False, device=META,
    )
    assert strict.reads > 0  # the logits came from the meta copy
    assert next(model.parameters()).device.type == "cpu"  # the original stays for CPU timing
    assert len(predictions["teacher-dev"]) == 8


def test_predict_scores_on_the_chosen_device(tiny_model_dir, pairs, tmp_path, strict):
    from pipeline.predict import predict_file

    pairs.iloc[:6].to_parquet(tmp_path / "in.parquet")
    n = predict_file(tiny_model_dir, tmp_path / "in.parquet", tmp_path / "out.jsonl", max_length=32, device=META)
    assert n == 6 and strict.reads > 0


def test_trimmed_embeddings_stay_on_the_models_device(tiny_model_dir, pairs, strict):
    from stages._student import trim_vocabulary, used_token_ids

    model, tok = _tiny(tiny_model_dir)
    model.to(META)
    used = used_token_ids(tok, pairs["premise"].tolist(), pairs["hypothesis"].tolist())
    trimmed, _ = trim_vocabulary(model, tok, used)
    assert trimmed.get_input_embeddings().weight.device == META


# --- the choice itself ------------------------------------------------------------------------


def test_pick_device_auto_follows_cuda_and_the_environment_overrides_the_param():
    assert pick_device("auto", environ={}, cuda_available=False) == torch.device("cpu")
    assert pick_device("auto", environ={}, cuda_available=True) == torch.device("cuda")
    assert pick_device("cuda", environ={"SEC_DEVICE": "cpu"}, cuda_available=True) == torch.device("cpu")
    assert pick_device("cpu", environ={"SEC_DEVICE": ""}, cuda_available=True) == torch.device("cpu")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        pick_device("cuda", environ={}, cuda_available=False)
    with pytest.raises(DeviceError, match="SEC_DEVICE"):
        pick_device("auto", environ={"SEC_DEVICE": "gpu"}, cuda_available=False)


def test_auto_precision_is_bf16_on_a_bf16_gpu_and_fp32_on_the_cpu():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda", bf16_supported=True) == "bf16"
    assert resolve_precision("auto", "cuda", bf16_supported=False) == "fp16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(DeviceError, match="fp16"):
        resolve_precision("fp16", "cpu")


def test_int8_models_stay_on_the_cpu(tiny_model_dir):
    from stages._quantization import quantize_model

    model, _ = _tiny(tiny_model_dir)
    assert not cpu_only(model)
    int8 = quantize_model(model.eval(), "dynamic_int8")
    assert cpu_only(int8) and place(int8, META) is int8


def test_stages_record_their_device(tmp_path):
    from stages._determinism import seed_everything

    threads = torch.get_num_threads()
    try:
        assert seed_everything(1, 1, torch.device("cpu"))["device"] == "cpu"
        assert "device" not in seed_everything(1, 1)
    finally:
        torch.set_num_threads(threads)


def test_every_model_stage_reads_the_device_param():
    """dvc.yaml must name `device` for each stage that picks one, or DVC would not rerun it."""
    import yaml

    from conftest import REPO

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("active_select", "fine_tune", "prune", "distill", "evaluate_teacher", "evaluate"):
        assert "device" in stages[name]["params"], name
    for name in ("active_select", "fine_tune", "prune", "distill"):
        assert "train.precision" in stages[name]["params"], name
