"""Did a freshly trained model learn? Scored on dev right after training, before anything uses it.

A teacher at chance still produces a model directory, and every later stage would prune, distil
and quantize it as if it were a model. So the stages that train from a fresh head (the acquisition
model of active_select, the teacher of fine_tune) score the dev split and stop the pipeline below
`<section>.min_dev_accuracy`: the error names the stage, the accuracy, chance and the params to
look at. Dev only: the test split never decides anything.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stages._inference import predict_logits
from stages._io import ModelError

# What usually makes a transformer classifier sit at chance, in the order worth trying.
_HINTS = ("learning_rate", "head_learning_rate", "warmup_ratio", "epochs / max_steps")


class ModelDidNotLearnError(ModelError):
    """A trained model scores below its stage's dev-accuracy floor."""


def chance_accuracy(labels: np.ndarray) -> float:
    """What always answering the most common dev label scores: the floor a model must clear."""
    return float(np.bincount(labels, minlength=3).max() / len(labels)) if len(labels) else 0.0


def dev_health(model, tokenizer, dev: pd.DataFrame, *, stage: str, section: str, min_accuracy: float,
               max_length: int, batch_size: int = 64) -> dict:
    """Score `dev`; raise ModelDidNotLearnError when its accuracy is below `min_accuracy` (> 0).

    Returns {"dev_accuracy", "dev_chance", "min_dev_accuracy", "dev_rows"} for the stage's metrics.
    """
    labels = dev["label"].to_numpy()
    logits = predict_logits(model, tokenizer, dev["premise"].tolist(), dev["hypothesis"].tolist(),
                            batch_size=batch_size, max_length=max_length, desc=f"{stage}: dev check")
    accuracy = float((logits.argmax(axis=1) == labels).mean()) if len(labels) else 0.0
    chance = chance_accuracy(labels)
    report = {"dev_accuracy": round(accuracy, 6), "dev_chance": round(chance, 6),
              "min_dev_accuracy": min_accuracy, "dev_rows": int(len(labels))}
    if min_accuracy > 0 and accuracy < min_accuracy:
        hints = ", ".join(f"{section}.{name}" for name in _HINTS)
        raise ModelDidNotLearnError(
            f"stage {stage}: the trained model scores {accuracy:.1%} on dev ({len(labels)} pairs), "
            f"below {section}.min_dev_accuracy = {min_accuracy:.1%} (chance, the most common label, is "
            f"{chance:.1%}): it did not learn, so nothing downstream uses it and no model was written. "
            f"Look at {hints} and model.pooling in params.yaml, and at the training loss in its metrics "
            f"(loss_below_1_step)."
        )
    return report
