"""Profile presets: the values a `null` key in params.yaml falls back to.

`params.yaml` has `profile: cpu|gpu|tiny`. Every key a stage reads is present in params.yaml so that
`dvc exp run -S section.key=value` can set it; a key left `null` takes the value below for the
selected profile. Sizes live here because they are what a profile is about: the CPU profile is sized
to finish in at most 30 minutes on a 2-core machine, set-up included (a third of it distillation), the GPU profile runs the big teacher on all data,
and the tiny profile is for the test-suite (a tiny model made from a config, a few dozen rows).

Every stage lists this module as a DVC dependency, so editing a preset reruns what it affects.
"""

from __future__ import annotations

PROFILES: dict[str, dict[str, dict]] = {
    "cpu": {
        # The 29.8k distinct offline pairs (train.parquet: MNLI's mismatched dev set with single
        # annotator labels; train_20k.parquet: 20k pairs of MNLI's training split, the matched
        # genres). Dev: 2,000 pairs of train_20k, the matched genres the test split
        # (validation_matched, 9,815 pairs, reported only) is drawn from, so that what dev decides
        # is what test would have decided. Seed set 2,000; the pool is everything else.
        "data": {"train_splits": ["train", "train_20k"], "dev_from": ["train_20k"],
                 "dev_size": 2000, "seed_size": 2000, "pool_size": 0, "eval_size": 0},
        "model": {"teacher": "minilm-l6", "max_length": 128},
        # 11,000 pool pairs bought: 13,000 labels, 46.7 % of the 27,828 labelable pairs. For
        # entropy/margin: one pass over the seed set, then 16,000 pool pairs scored (all of them:
        # ~2 more minutes here).
        "active_select": {"budget": 11000, "candidates": 16000, "acquisition_epochs": 1.0, "batch_size": 16,
                          "learning_rate": 1e-4, "head_learning_rate": 2e-3, "min_dev_accuracy": 0.40,
                          "keep_model": False},
        "augment": {"fraction": 0.1},
        "back_translate": {"fraction": 0.1},
        # Small models want a larger learning rate than BERT-base: 5e-5 barely moves MiniLM in the
        # steps this profile can afford; the fresh mean-pooling head learns at 2e-3.
        "fine_tune": {"epochs": 1.0, "batch_size": 16, "max_steps": -1, "learning_rate": 1e-4,
                      "head_learning_rate": 2e-3, "min_dev_accuracy": 0.50},
        "prune": {"recovery_steps": 150, "batch_size": 16, "learning_rate": 1e-4},
        # A 3-layer student (of 6) with hidden-state KD, lr 2e-4, on the transfer set (labelled
        # rows, the unlabelled pool and its augmented copies): ~0.3 s a step here with the teacher
        # running beside it.
        "distill": {"epochs": 1.0, "batch_size": 16, "max_steps": 1500, "transfer_size": 0, "learning_rate": 2e-4,
                    "layers": 3, "hidden_weight": 1.0},
        # evaluate times each model over 5 repeats here (scripts/benchmark.py is the measurement of
        # record: 5 rounds of its own).
        "evaluate": {"latency_repeats": 5},
        # Off: the offline SmolLM2 on this CPU writes ~40 tokens/s (reports/generate.md), so even a
        # few hundred pairs would not fit the 30-minute first run. `dvc exp run -S generate.transfer_count=N`.
        "generate": {"transfer_count": 0, "label_count": 0},
    },
    "gpu": {
        # seed/pool sizes of 0 mean "everything the split has" (393k pairs online; the 9.8k
        # offline pool otherwise).
        # train_splits: with data.local_dir null (the hub) set them to [train]: train_20k is offline only.
        "data": {"train_splits": ["train", "train_20k"], "dev_from": ["train_20k"],
                 "dev_size": 2000, "seed_size": 2000, "pool_size": 0, "eval_size": 0},
        "model": {"teacher": "mpnet-base", "max_length": 128},
        "active_select": {"budget": 6000, "candidates": 0, "acquisition_epochs": 2.0, "batch_size": 64,
                          "learning_rate": 3e-5, "head_learning_rate": 1e-3, "min_dev_accuracy": 0.45,
                          # generate's label-conditioned pairs (on here) are checked with it.
                          "keep_model": True},
        "augment": {"fraction": 0.5},
        "back_translate": {"fraction": 0.5},
        "fine_tune": {"epochs": 3.0, "batch_size": 32, "max_steps": -1, "learning_rate": 3e-5,
                      "head_learning_rate": 1e-3, "min_dev_accuracy": 0.55},
        "prune": {"recovery_steps": 1000, "batch_size": 32, "learning_rate": 3e-5},
        "distill": {"epochs": 3.0, "batch_size": 32, "max_steps": -1, "transfer_size": 0, "learning_rate": 5e-5,
                    "layers": 4, "hidden_weight": 1.0},
        "evaluate": {"latency_repeats": 30},
        # On; with base_url local the generator runs on the CPU cores (reports/generate.md gives the
        # cost); point base_url at a vLLM server on the GPU for more.
        "generate": {"transfer_count": 1000, "label_count": 300},
    },
    "tiny": {
        # The health checks are off: a few steps on a few dozen rows learn nothing.
        "data": {"train_splits": ["train"], "dev_size": 12, "seed_size": 24, "pool_size": 36, "eval_size": 30},
        "model": {"teacher": "minilm-l6", "max_length": 32},
        "active_select": {"budget": 12, "candidates": 0, "acquisition_epochs": 1.0, "batch_size": 8,
                          "learning_rate": 1e-4, "head_learning_rate": 1e-3, "min_dev_accuracy": 0.0,
                          "keep_model": False},
        "augment": {"fraction": 0.5},
        "back_translate": {"fraction": 0.5},
        "fine_tune": {"epochs": 1.0, "batch_size": 8, "max_steps": 4, "learning_rate": 1e-4,
                      "head_learning_rate": 1e-3, "min_dev_accuracy": 0.0},
        "prune": {"recovery_steps": 2, "batch_size": 8, "learning_rate": 1e-4},
        "distill": {"epochs": 1.0, "batch_size": 8, "max_steps": 3, "transfer_size": 16, "learning_rate": 1e-4,
                    "layers": 1, "hidden_weight": 1.0},
        "evaluate": {"latency_repeats": 2},
        # Off: the tests drive the stage against a fake endpoint (tests/test_generate.py).
        "generate": {"transfer_count": 0, "label_count": 0},
    },
}
