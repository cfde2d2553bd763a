"""pipeline.plots: Pareto front, Vega-Lite specs rendered to PNG, the offline DVC HTML template, input errors.

Offline and fast: vl-convert renders in-process; no browser, no DVC repo.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TRADEOFF = [
    {"model": "teacher", "accuracy": 59.62, "size_mb": 90.9, "latency_ms": 340.5},
    {"model": "pruned", "accuracy": 58.51, "size_mb": 77.6, "latency_ms": 246.1},
    {"model": "distilled", "accuracy": 59.51, "size_mb": 77.6, "latency_ms": 246.9},
    {"model": "quantized", "accuracy": 58.88, "size_mb": 55.3, "latency_ms": 73.9},
]
FRACTION = [
    {"strategy": s, "label_fraction": f, "accuracy": a}
    for s, pts in {"active": [(0.05, 52.0), (0.1, 56.0)], "random": [(0.05, 50.0), (0.1, 54.0)]}.items()
    for f, a in pts
]


def _models(rows):
    return [r["model"] for r in rows]


def test_pareto_front_drops_dominated_and_sorts_by_x():
    # pruned: same size as distilled but less accurate -> dominated.
    assert _models(plots.pareto_front(TRADEOFF, "size_mb", "accuracy")) == ["quantized", "distilled", "teacher"]
    # On latency, quantized (faster and more accurate) dominates pruned.
    assert _models(plots.pareto_front(TRADEOFF, "latency_ms", "accuracy")) == ["quantized", "distilled", "teacher"]
    # Without quantized, pruned (0.8 ms faster than distilled) joins the latency front but not the size one.
    rest = TRADEOFF[:3]
    assert _models(plots.pareto_front(rest, "latency_ms", "accuracy")) == ["pruned", "distilled", "teacher"]
    assert _models(plots.pareto_front(rest, "size_mb", "accuracy")) == ["distilled", "teacher"]


def test_pareto_front_edge_cases():
    rows = [
        {"model": "a", "x": 1.0, "y": 10.0},
        {"model": "b", "x": 1.0, "y": 10.0},  # duplicate of a: neither dominates the other
        {"model": "c", "x": 2.0, "y": 9.0},  # bigger and worse than a
        {"model": "d", "x": 0.5, "y": 5.0},  # smallest: on the front
        {"model": "e", "x": 3.0, "y": 11.0},  # most accurate: on the front
    ]
    assert _models(plots.pareto_front(rows, "x", "y")) == ["d", "a", "b", "e"]
    assert plots.pareto_front([], "x", "y") == []


@pytest.mark.parametrize(
    "build, rows",
    [
        (plots.accuracy_vs_size_spec, TRADEOFF),
        (plots.accuracy_vs_latency_spec, TRADEOFF),
        (plots.accuracy_vs_size_spec, [dict(r, experiment=f"exp{i % 2}") for i, r in enumerate(TRADEOFF)]),
        (plots.accuracy_vs_data_fraction_spec, FRACTION),
    ],
)
def test_specs_render_to_png(build, rows, tmp_path):
    spec = build(rows)
    assert spec["title"] and spec["data"]["values"]
    encodings = [layer["encoding"] for layer in spec.get("layer", [spec])]
    assert all(enc["x"]["title"] and enc["y"]["title"] for enc in encodings)
    out = plots.render_png(spec, tmp_path / "sub" / "chart.png")
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 1000
    assert [p.name for p in out.parent.iterdir()] == ["chart.png"]  # temp file renamed away


def test_tradeoff_spec_layers_and_colour():
    spec = plots.accuracy_vs_latency_spec(TRADEOFF)
    front, points = spec["layer"][0], spec["layer"][1]
    assert front["mark"]["type"] == "line" and len(front["data"]["values"]) == 3
    assert points["encoding"]["color"]["field"] == "model"
    with_exp = plots.accuracy_vs_size_spec([dict(r, experiment="e1") for r in TRADEOFF])
    assert with_exp["layer"][1]["encoding"]["color"]["field"] == "experiment"
    frac = plots.accuracy_vs_data_fraction_spec(FRACTION)
    assert "%" in frac["encoding"]["x"]["axis"]["format"]


def test_write_pngs(tmp_path):
    names = [p.name for p in plots.write_pngs(TRADEOFF, [], tmp_path)]
    assert names == ["accuracy_vs_size.png", "accuracy_vs_latency.png"]
    names = [p.name for p in plots.write_pngs(TRADEOFF, FRACTION, tmp_path)]
    assert names[-1] == "accuracy_vs_data_fraction.png"
    assert all((tmp_path / n).read_bytes()[:8] == PNG_MAGIC for n in names)


@pytest.fixture(scope="module")
def template_path(tmp_path_factory) -> Path:
    return plots.write_offline_html_template(tmp_path_factory.mktemp("tpl") / ".dvc" / "plots" / "offline.html")


@pytest.fixture(scope="module")
def template(template_path) -> str:
    return template_path.read_text(encoding="utf-8")


def test_template_is_offline(template):
    assert "{plot_divs}" in template
    # No remote (or any external) script; DVC's CDN tags go only where "{scripts}" is, which is absent.
    assert not re.search(r"<script[^>]*\bsrc\s*=", template, re.I)
    assert "{scripts}" not in template
    assert "window.vegaEmbed=" in template and "window.vegaLite=" in template


def test_dvc_renders_with_template(template_path, tmp_path):
    from dvc_render.html import render_html
    from dvc_render.vega import VegaRenderer

    renderer = VegaRenderer(TRADEOFF, "tradeoff.json", x="size_mb", y="accuracy", template="scatter")
    out = Path(render_html([renderer], tmp_path / "index.html", html_template=template_path))
    html = out.read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in html and "{plot_divs}" not in html
    assert "vegaEmbed('#" in html  # DVC's per-plot call, served by the inlined bundle
    assert "window.vegaEmbed=" in html


def test_missing_key_and_file_errors(tmp_path, capsys):
    with pytest.raises(plots.PlotInputError, match="lacks key"):
        plots.accuracy_vs_size_spec([{"model": "a", "accuracy": 1.0, "size_mb": 2.0}])
    bad = tmp_path / "tradeoff.json"
    bad.write_text(json.dumps([{"model": "a", "accuracy": 1.0, "size_mb": 2.0}]))
    with pytest.raises(plots.PlotInputError, match=r"tradeoff\.json: row 0 lacks key.*latency_ms"):
        plots.load_rows(bad, plots.TRADEOFF_KEYS)

    assert plots.main(["png", "--tradeoff", str(bad), "--out-dir", str(tmp_path / "o")]) == 2
    assert str(bad) in capsys.readouterr().err
    missing = tmp_path / "nope.json"
    assert plots.main(["png", "--tradeoff", str(missing), "--out-dir", str(tmp_path / "o")]) == 2
    assert f"{missing}: input file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_png(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(TRADEOFF))
    (tmp_path / "f.json").write_text(json.dumps(FRACTION))
    argv = ["png", "--tradeoff", str(tmp_path / "t.json"), "--fraction", str(tmp_path / "f.json")]
    assert plots.main([*argv, "--out-dir", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "accuracy_vs_data_fraction.png",
        "accuracy_vs_latency.png",
        "accuracy_vs_size.png",
    ]
