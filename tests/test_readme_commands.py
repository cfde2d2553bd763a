"""Every command README.md and docs/ show names something that exists and starts.

Commands are read from the fenced code blocks and inline code of README.md and docs/*.md:
`sec <sub>` must be a subcommand whose `--help` exits 0, `python -m <module>` a module whose
`--help` exits 0, `python scripts/<x>.py` a script whose `--help` exits 0, `bash scripts/<x>.sh` an existing script, and `dvc repro <stage>` / `dvc exp run
... <stage>` a stage of dvc.yaml. The long jobs themselves (run.sh, test.sh, grid.sh) are not run
here: CI runs test.sh, and the slow tests run the pipeline on the tiny profile.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_CODE = re.compile(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", re.S)


def _commands() -> list[str]:
    found = []
    for doc in DOCS:
        for block, inline in _CODE.findall(doc.read_text()):
            for line in (block or inline).splitlines():
                for part in re.split(r"\s*(?:\||&&|;)\s*", line.split("#")[0].strip()):
                    # <placeholders> stand for what the reader fills in
                    if re.match(r"(sec |python -m |python scripts/|bash scripts/|dvc repro )", part) and "<" not in part:
                        found.append(part.strip())
    return sorted(set(found))


COMMANDS = _commands()


def test_the_docs_show_commands_of_each_kind():
    kinds = {c.split()[0] if not c.startswith("python -m") else "python -m" for c in COMMANDS}
    assert {"sec", "python -m", "bash", "dvc"} <= kinds, kinds


def _help(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("sub", sorted({c.split()[1] for c in COMMANDS if c.startswith("sec ") and len(c.split()) > 1}))
def test_sec_subcommands_exist(sub):
    result = _help(["-m", "pipeline.cli", sub])
    assert result.returncode == 0, f"`sec {sub} --help` failed:\n{result.stderr[-2000:]}"


@pytest.mark.parametrize("module", sorted({c.split()[2] for c in COMMANDS if c.startswith("python -m ")}))
def test_python_modules_start(module):
    result = _help(["-m", module])
    assert result.returncode == 0, f"`python -m {module} --help` failed:\n{result.stderr[-2000:]}"


@pytest.mark.parametrize("script", sorted({c.split()[1] for c in COMMANDS if c.startswith("python scripts/")}))
def test_python_scripts_start(script):
    assert (REPO / script).is_file(), f"python {script}: no such script"
    result = _help([script])
    assert result.returncode == 0, f"`python {script} --help` failed:\n{result.stderr[-2000:]}"


def test_scripts_and_stages_exist():
    stages = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    for command in COMMANDS:
        words = command.split()
        if words[0] == "bash":
            assert (REPO / words[1]).is_file(), f"{command}: no such script"
        if words[:2] == ["dvc", "repro"]:
            named = [w for w in words[2:] if not w.startswith("-")]
            assert set(named) <= stages, f"{command}: {set(named) - stages} not a dvc.yaml stage"
