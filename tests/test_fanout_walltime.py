"""scripts/fanout_walltime.py's verdict and report: a failed grid, a cell not completed or a cell whose
accuracy differs between worker counts is a miss; the report gives each configuration's wall time
against the first and where each cell ran; the data link resolves a relative data path."""

import importlib.util
from pathlib import Path

import yaml

from conftest import REPO

spec = importlib.util.spec_from_file_location("fanout_walltime", REPO / "scripts" / "fanout_walltime.py")
walltime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(walltime)

ACC = walltime.TEACHER_TEST


def result(workers: int, wall: float, runs: list[tuple], acc: dict, rc: int = 0) -> dict:
    return {"workers": workers, "rc": rc, "wall_s": wall, "dir": f"/scratch/{workers}w",
            "runs": [{"cell": c, "state": s, "worker": w, "start": a, "end": b} for c, s, w, a, b in runs],
            "accuracy": {cell: {ACC: v} for cell, v in acc.items()}}


ONE = result(1, 1200.0, [("grid-random-s42", "COMPLETED", "w1", 20.0, 600.0),
                         ("grid-random-s43", "COMPLETED", "w1", 610.0, 1190.0)],
             {"grid-random-s42": 0.61, "grid-random-s43": 0.62})
TWO = result(2, 800.0, [("grid-random-s42", "COMPLETED", "w2", 21.0, 790.0),
                        ("grid-random-s43", "COMPLETED", "w1", 22.0, 780.0)],
             {"grid-random-s42": 0.61, "grid-random-s43": 0.62})


def test_same_cells_same_accuracies_is_no_miss():
    assert walltime.problems([ONE, TWO]) == []


def test_a_differing_accuracy_a_failed_grid_and_a_crashed_cell_are_misses():
    differs = result(2, 800.0, [("grid-random-s42", "COMPLETED", "w2", 21.0, 790.0),
                                  ("grid-random-s43", "CRASHED", "w1", 22.0, None)],
                     {"grid-random-s42": 0.60, "grid-random-s43": 0.62}, rc=1)
    misses = walltime.problems([ONE, differs])
    assert any("exited 1" in m for m in misses)
    assert any("grid-random-s43 CRASHED" in m for m in misses)
    assert any(m.startswith("grid-random-s42: accuracies differ") for m in misses)
    assert not any(m.startswith("grid-random-s43: accuracies") for m in misses)


def test_report_gives_the_ratio_against_the_first_and_where_each_cell_ran():
    text = walltime.markdown([ONE, TWO], ["--only", "random", "--seeds", "2"], {"model": "Test CPU"}, 2)
    assert "| 1 | 20.0 min (1200 s) | 1.00x | w1: 2 | ok |" in text
    assert "| 2 | 13.3 min (800 s) | 1.50x | w1: 1, w2: 1 | ok |" in text
    assert "| grid-random-s42 | 20-600 s, w1 | 21-790 s, w2 | 61.00 % |" in text
    assert "Test CPU, " in text and "2 torch threads" in text


def test_relative_data_dir_is_linked_beside_the_clone(tmp_path: Path):
    repo, clone = tmp_path / "a" / "repo", tmp_path / "b" / "clone"
    data = tmp_path / "a" / "shared" / "data" / "mnli"
    data.mkdir(parents=True)
    repo.mkdir(parents=True)
    clone.mkdir(parents=True)
    (repo / "params.yaml").write_text(yaml.safe_dump({"data": {"local_dir": "../shared/data/mnli"}}))
    walltime.link_data(repo, clone)
    link = tmp_path / "b" / "shared" / "data" / "mnli"
    assert link.is_symlink() and link.resolve() == data.resolve()
