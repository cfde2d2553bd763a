"""Data-parallel training (DDP) for fine_tune and distill: `train.processes` > 1.

A stage started the usual way (`python -m stages.fine_tune ...`, as dvc.yaml does) re-launches
itself under `torch.distributed.run` (torchrun) with `train.processes` workers when it is not
already one of them, and waits for them. Each worker trains on its share of every batch; the
Trainer wraps the model in DistributedDataParallel (gloo on the CPU, NCCL on GPUs, one GPU per
worker: CUDA_VISIBLE_DEVICES picks which). Only the main worker (rank 0) writes the model, the
metrics and the training curves, so the DVC outputs look exactly like a one-process run's.

What stays equal to a one-process run, and what does not:
- The global batch (`batch_size`) and so the number of optimizer steps and the LR schedule: each
  worker takes batch_size / processes rows a step (batch_size must divide evenly).
- Not bit-identical to one process: each worker's loss is normalised over its own rows and the
  gradients are averaged, and the sampler deals rows to workers; the loss is close, not equal.
  A rerun with the same `processes` on the same machine is deterministic again.
- On the CPU the workers share the cores: each gets threads // processes threads (at least 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

WORKER_ENV = "LOCAL_RANK"  # set by torchrun in every worker it starts


class DistributedError(ValueError):
    """A `train.processes` setting that cannot run here; the message says why."""


def is_worker(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside a process torchrun started."""
    return WORKER_ENV in environ


def world_size(environ: Mapping[str, str] = os.environ) -> int:
    return int(environ.get("WORLD_SIZE", "1"))


def rank(environ: Mapping[str, str] = os.environ) -> int:
    return int(environ.get("RANK", "0"))


def is_main_process(environ: Mapping[str, str] = os.environ) -> bool:
    """The process that writes outputs: rank 0, or the only process."""
    return rank(environ) == 0


def per_process_batch(batch_size: int, processes: int) -> int:
    """Rows each worker takes a step so that the global batch stays `batch_size`."""
    if processes < 1:
        raise DistributedError(f"train.processes must be >= 1, got {processes}")
    if batch_size % processes:
        raise DistributedError(
            f"batch_size {batch_size} does not split evenly over train.processes={processes}: "
            "the global batch must stay the same so the steps and LR schedule match a one-process run"
        )
    return batch_size // processes


def threads_per_process(threads: int, processes: int) -> int:
    """CPU threads each worker may use: the stage's `threads` shared out, at least one each."""
    return max(1, threads // max(1, processes))


def launcher_command(module: str, argv: Sequence[str], processes: int) -> list[str]:
    """torchrun (as `python -m torch.distributed.run`, so the venv's torch is used) on one node."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        "-m", module, *argv,
    ]


def relaunch(module: str, argv: Sequence[str], processes: int) -> int | None:
    """Run `module` under torchrun with `processes` workers, unless this process is already one.

    Returns the launcher's exit code (the caller exits with it), or None when the caller should
    train itself: one process asked for, or already inside a worker.
    """
    if processes <= 1 or is_worker():
        return None
    env = dict(os.environ)
    # torchrun would force OMP_NUM_THREADS=1; the stage sets its own per-worker count instead.
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"{module}: training on {processes} processes (torchrun)", file=sys.stderr, flush=True)
    return subprocess.run(launcher_command(module, argv, processes), env=env).returncode


def bind_worker_device(device):
    """The device this worker trains on: cuda:LOCAL_RANK on GPUs (one GPU each), else as given."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and is_worker():
        local = int(os.environ[WORKER_ENV])
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"train.processes asks for GPU {local}, but only {torch.cuda.device_count()} are visible "
                "(CUDA_VISIBLE_DEVICES)"
            )
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def start_training_stage(module: str, argv: Sequence[str] | None, params) -> tuple[object, int, dict]:
    """The start of fine_tune's and distill's main(): relaunch under torchrun when
    `train.processes` > 1 (this process then exits with the workers' code), else bind this
    worker's device, share the CPU threads out and seed everything.

    Returns (device, processes, run_info); run_info goes into the stage's metrics as "run".
    """
    from stages._determinism import seed_everything
    from stages._device import pick_device

    processes = params.train.processes
    code = relaunch(module, sys.argv[1:] if argv is None else argv, processes)
    if code is not None:  # the workers ran the stage; this process only launched them
        sys.exit(code)
    device = bind_worker_device(pick_device(params.device))
    threads = threads_per_process(params.threads, processes) if device.type == "cpu" else params.threads
    return device, processes, {**seed_everything(params.seed, threads, device), "processes": processes}
