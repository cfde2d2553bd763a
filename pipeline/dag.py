"""The pipeline's stages as dvc.yaml writes them: their order, which use the accelerator, what each needs.

dvc.yaml is the one place a stage is written down. Everything in pipeline/ that names stages (the
Prefect flow's run order, the controller's most upstream change, the GPU concurrency slots, the GPU
check, the grid's stage-time sums) takes them from here, so a stage added to dvc.yaml reaches all
of them; tests/test_dag.py checks that dvc.yaml's order is one DVC could run them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots: every path the stage writes
    params: tuple[str, ...]


def _names(entries) -> list[str]:
    """dvc.yaml list entries: a path (or param key), or {path: options} / {params file: [keys]}."""
    names: list[str] = []
    for entry in entries or []:
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, dict):
            for key, value in entry.items():
                names.extend(value if isinstance(value, list) else [key])
    return names


def read_stages(path: str | Path = DVC_YAML) -> dict[str, Stage]:
    """Stage name -> Stage, in dvc.yaml's order."""
    raw = (yaml.safe_load(Path(path).read_text()) or {}).get("stages") or {}
    return {
        name: Stage(name, tuple(_names(spec.get("deps"))),
                    tuple(_names(spec.get("outs")) + _names(spec.get("metrics")) + _names(spec.get("plots"))),
                    tuple(_names(spec.get("params"))))
        for name, spec in raw.items()
    }


STAGES = read_stages()
# dvc.yaml's order: every stage after the stages whose outputs it reads.
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)
# The stages that read the `device` param: the ones that put a model on the accelerator when there is one.
GPU_STAGES: frozenset[str] = frozenset(name for name, stage in STAGES.items() if "device" in stage.params)


def _reads(stage: Stage, producer: Stage) -> bool:
    """Whether `stage` depends on an output of `producer` (a dep at or under one of its outs)."""
    return any(dep == out or dep.startswith(out.rstrip("/") + "/") for dep in stage.deps for out in producer.outs)


def upstream(name: str, stages: dict[str, Stage] = STAGES) -> tuple[str, ...]:
    """`name` and every stage whose outputs it needs, directly or not, in pipeline order."""
    needed = {name}
    for candidate in reversed(list(stages)):  # dvc.yaml's order is topological: walk it backwards once
        if candidate in needed:
            needed |= {other for other in stages if _reads(stages[candidate], stages[other])}
    return tuple(s for s in stages if s in needed)
