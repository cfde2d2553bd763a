"""Training-step cost with and without length-grouped batches, timed side by side in one process.

    python scripts/bench_training.py [--steps 30] [--batch-size 16]

Trains the profile's teacher (a fresh copy per arm, same seed) for `--steps` optimizer steps on the
prepared seed set, once with random batches and once with `train_sampling_strategy=group_by_length`
(transformers' LengthGroupedSampler: batches of similar length, so less padding), alternating the
arms, and prints the padded tokens per step and the seconds per step of each, and their ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from stages._determinism import seed_everything  # noqa: E402
from stages._io import read_pairs  # noqa: E402
from stages._models import load_pretrained_classifier  # noqa: E402
from stages._params import load_params  # noqa: E402
from stages._training import TrainConfig, train  # noqa: E402


class StepClock(TrainerCallback):
    """Seconds of every optimizer step."""

    def __init__(self):
        self.seconds: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train", default="data/prepared/seed.parquet")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="each arm runs this many times, alternating")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    data = read_pairs(args.train)
    results: dict[str, list[float]] = {"random": [], "group_by_length": []}
    padded: dict[str, float] = {}
    for _ in range(args.rounds):
        for strategy in results:
            seed_everything(params.seed, params.threads)
            model, tokenizer = load_pretrained_classifier(params.model.teacher, seed=params.seed)
            cfg = TrainConfig(epochs=1.0, batch_size=args.batch_size, max_steps=args.steps, learning_rate=1e-4,
                              seed=params.seed, max_length=params.model.max_length, save_steps=10**6,
                              sampling=strategy)
            clock = StepClock()
            with tempfile.TemporaryDirectory() as work:
                train(model, tokenizer, data, cfg, checkpoint_dir=Path(work) / "ckpt", callbacks=[clock])
            # The first steps warm up allocators; the median of the rest is the step cost.
            results[strategy].append(statistics.median(clock.seconds[3:] or clock.seconds))
            padded[strategy] = padded_tokens_per_step(data, tokenizer, cfg)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{cpu}; {torch.get_num_threads()} threads; {args.steps} steps of batch {args.batch_size}, {args.rounds} rounds")
    for strategy, values in results.items():
        print(f"  {strategy:16s} {statistics.median(values):.3f} s/step  {padded[strategy]:.0f} padded tokens/step")
    ratio = statistics.median(results["random"]) / statistics.median(results["group_by_length"])
    print(f"  group_by_length: {ratio:.2f}x faster per step, "
          f"{padded['random'] / padded['group_by_length']:.2f}x fewer padded tokens")
    return 0


def padded_tokens_per_step(data, tokenizer, cfg) -> float:
    """Mean of (longest pair in the batch x batch size) over the batches the sampler would draw."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    lengths = [len(ids) for ids in tokenizer(data["premise"].tolist(), data["hypothesis"].tolist(),
                                              truncation=True, max_length=cfg.max_length)["input_ids"]]
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.sampling == "group_by_length":
        order = list(LengthGroupedSampler(cfg.batch_size, lengths=lengths, generator=generator))
    else:
        order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    return statistics.mean(max(lengths[i] for i in b) * len(b) for b in batches)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
