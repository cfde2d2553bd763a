"""Every dvc.yaml stage lists, as deps, every stages/ module its command imports (transitively).

A module missing from deps means DVC keeps a cached output after that module's code changed:
the lock would claim a result that the code at that commit no longer makes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# Package marker and command-line plumbing (argument errors, exit codes): they write nothing a
# stage outputs, so listing them would only rerun every stage when an error message changes.
NOT_OUTPUT_AFFECTING = {"stages/__init__.py", "stages/_cli.py"}


def stage_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """stages.* modules imported by `module` (itself included), followed transitively, as paths."""
    seen = set() if seen is None else seen
    path = REPO / (module.replace(".", "/") + ".py")
    if module in seen or not path.is_file():
        return set()
    seen.add(module)
    found = {f"{module.replace('.', '/')}.py"}
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith("stages."):
                found |= stage_imports(name, seen)
    return found


def test_every_stage_lists_the_modules_it_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    checked = 0
    for name, stage in stages.items():
        match = re.search(r"python -m (stages\.\w+)", stage["cmd"])
        if not match:
            continue
        missing = sorted(stage_imports(match.group(1)) - set(map(str, stage["deps"])) - NOT_OUTPUT_AFFECTING)
        assert not missing, f"dvc.yaml stage {name!r}: imports {missing} but does not list them as deps"
        checked += 1
    assert checked >= 10  # every pipeline stage runs a stages.* module


def test_the_scan_follows_imports_transitively():
    # distill -> _training -> _attention_kd: a module two imports away must be found.
    assert "stages/_attention_kd.py" in stage_imports("stages.distill")


def test_an_edit_to_the_pruning_algorithm_reruns_only_prune_and_what_follows_it():
    # Loading a pruned model needs its shapes (stages/_architecture.py), not how heads were chosen:
    # a stage upstream of prune that listed stages/_pruning.py would retrain the teacher for nothing.
    from pipeline.dag import STAGES, upstream

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    listing = {name for name, stage in stages.items() if "stages/_pruning.py" in map(str, stage["deps"])}
    assert "prune" in listing
    downstream_of_prune = {name for name in STAGES if "prune" in upstream(name)}
    assert listing <= downstream_of_prune, f"upstream of prune but list stages/_pruning.py: {listing - downstream_of_prune}"
    assert {"active_select", "fine_tune", "evaluate_teacher"}.isdisjoint(listing)
