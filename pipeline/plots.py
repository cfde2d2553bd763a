"""Offline plots: PNG renderings of the trade-off charts, and a `dvc plots` HTML template with no CDN.

DVC's default HTML page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net, so it renders
blank without network. vl-convert-python ships those libraries (and renders PNGs without a browser),
so both outputs here work fully offline.

    python -m pipeline.plots template --out .dvc/plots/offline.html
    python -m pipeline.plots png --tradeoff plots/evaluate/tradeoff.json [--fraction FILE] --out-dir reports/plots
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import vl_convert as vlc

from stages._io import write_atomic

# DVC's vega templates (dvc_render.vega_templates) declare the Vega-Lite v5 schema; we use v5 for our
# own specs too, so vega-embed and the PNG renderer see one major version everywhere.
VL_SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"

TRADEOFF_KEYS = ("model", "accuracy", "size_mb", "latency_ms")
FRACTION_KEYS = ("strategy", "label_fraction", "accuracy")
_NUMERIC_KEYS = {"accuracy", "size_mb", "latency_ms", "label_fraction"}

_AXIS_TITLES = {
    "accuracy": "Accuracy (%)",
    "size_mb": "Model size (MB)",
    "latency_ms": "Latency (ms)",
    "label_fraction": "Labelled training data",
}

# DVC fills `{plot_divs}` (required) and `{refresh_tag}` (optional). The template deliberately has no
# `{scripts}` placeholder: that is where DVC would insert its CDN <script src=...> tags.
# Each plot div calls `vegaEmbed(...)` in an inline classic script while the page is parsed, so the
# libraries must be defined synchronously before it: a plain (non-module, non-deferred) script in <head>.
_TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- vega __VEGA__, vega-lite __VEGALITE__, vega-embed __EMBED__: inlined by pipeline/plots.py -->
    <script type="text/javascript">
__BUNDLE__
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


class PlotInputError(ValueError):
    """An input file or row is unusable; the message names the file (or row) and the problem."""


def _vl_version() -> str | None:
    """Latest Vega-Lite 5.x that vl-convert ships (matches the v5 schema of DVC's and our specs)."""
    v5 = [v for v in vlc.get_vegalite_versions() if v.startswith("5.")]
    return max(v5, key=lambda v: tuple(int(p) for p in v.split("."))) if v5 else None


def offline_html_template() -> str:
    """The DVC HTML template text, with vega + vega-lite + vega-embed inlined from vl-convert."""
    version = _vl_version()
    bundle = vlc.javascript_bundle(vl_version=version)
    # A literal "</script" inside the bundle would end the <script> element early.
    bundle = bundle.replace("</script", "<\\/script")
    # The bundle's top-level const/function names would otherwise share the page's global scope with
    # DVC's per-plot scripts; a function scope avoids clashes. It still sets window.vegaEmbed etc.
    wrapped = "(function () {\n" + bundle + "\n}).call(window);"
    return (
        _TEMPLATE.replace("__VEGA__", vlc.get_vega_version())
        .replace("__VEGALITE__", version or "latest")
        .replace("__EMBED__", vlc.get_vega_embed_version())
        .replace("__BUNDLE__", wrapped)  # last: the bundle text itself is never rescanned
    )


def write_offline_html_template(path: str | os.PathLike[str]) -> Path:
    """Write the offline template for `dvc plots show --html-template PATH` / config `plots.html_template`."""
    return write_atomic(path, offline_html_template().encode("utf-8"))


def render_png(spec: Mapping[str, Any], path: str | os.PathLike[str], scale: float = 2.0) -> Path:
    """Render a Vega-Lite spec to PNG (no browser, no network: remote data URLs are refused)."""
    png = vlc.vegalite_to_png(dict(spec), vl_version=_vl_version(), scale=scale, allowed_base_urls=[])
    return write_atomic(path, png)


def _check_rows(rows: Iterable[Mapping[str, Any]], keys: Sequence[str], source: str) -> list[dict[str, Any]]:
    """Copy rows, checking the keys exist and numeric fields are numbers; errors name `source` and the row."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise PlotInputError(f"{source}: row {i} is not an object: {row!r}")
        missing = [k for k in keys if k not in row]
        if missing:
            raise PlotInputError(f"{source}: row {i} lacks key(s) {missing} (needs {list(keys)}): {dict(row)!r}")
        clean = dict(row)
        for k in _NUMERIC_KEYS.intersection(keys):
            try:
                clean[k] = float(row[k])
            except (TypeError, ValueError):
                raise PlotInputError(f"{source}: row {i} key {k!r} is not a number: {row[k]!r}") from None
        out.append(clean)
    return out


def load_rows(path: str | os.PathLike[str], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Read a JSON list of row objects, checked against `keys`; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise PlotInputError(f"{path}: input file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PlotInputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise PlotInputError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    return _check_rows(data, keys, str(path))


def pareto_front(rows: Iterable[Mapping[str, Any]], x_key: str, y_key: str) -> list[dict[str, Any]]:
    """Rows no other row dominates (lower-or-equal x AND higher-or-equal y, one strictly), sorted by x.

    Lower x (size, latency) is better, higher y (accuracy) is better. Identical points do not dominate
    each other, so duplicates on the front are all kept.
    """
    rows = [dict(r) for r in rows]

    def dominates(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
        ax, ay, bx, by = a[x_key], a[y_key], b[x_key], b[y_key]
        return ax <= bx and ay >= by and (ax < bx or ay > by)

    front = [r for r in rows if not any(dominates(o, r) for o in rows)]
    return sorted(front, key=lambda r: (r[x_key], -r[y_key]))


def _tradeoff_spec(rows: Sequence[Mapping[str, Any]], x_key: str, title: str) -> dict[str, Any]:
    """Scatter of accuracy vs `x_key`, one colour per model (or experiment), Pareto front as a line."""
    rows = _check_rows(rows, TRADEOFF_KEYS, "rows")
    # With several experiments the colour tells experiments apart and the shape the model kind.
    by_experiment = any("experiment" in r for r in rows)
    if by_experiment:
        for r in rows:
            r.setdefault("experiment", "(none)")
    color_field = "experiment" if by_experiment else "model"
    # Padding keeps points off the axis lines (the worst model would otherwise sit on the x axis).
    scale = {"zero": False, "padding": 12}
    x = {"field": x_key, "type": "quantitative", "title": _AXIS_TITLES[x_key], "scale": scale}
    y = {"field": "accuracy", "type": "quantitative", "title": _AXIS_TITLES["accuracy"], "scale": scale}
    tooltip = [
        {"field": k, "type": "nominal" if k in ("model", "experiment") else "quantitative"} for k in TRADEOFF_KEYS
    ]
    if by_experiment:
        tooltip.insert(0, {"field": "experiment", "type": "nominal"})
    points: dict[str, Any] = {
        "mark": {"type": "point", "filled": True, "size": 90},
        "encoding": {
            "x": x,
            "y": y,
            "color": {"field": color_field, "type": "nominal", "title": color_field.capitalize()},
            "tooltip": tooltip,
        },
    }
    if by_experiment:
        points["encoding"]["shape"] = {"field": "model", "type": "nominal", "title": "Model"}
    return {
        "$schema": VL_SCHEMA,
        "title": {
            "text": title,
            "subtitle": "line: Pareto front (no other model is both smaller/faster and more accurate)",
        },
        "width": 480,
        "height": 320,
        "data": {"values": rows},
        "layer": [
            {
                "data": {"values": pareto_front(rows, x_key, "accuracy")},
                "mark": {"type": "line", "color": "gray", "strokeDash": [6, 3], "point": False},
                "encoding": {"x": x, "y": y},
            },
            points,
            # Labels make the PNG readable without hovering (no tooltips in a static image).
            {
                "mark": {"type": "text", "align": "left", "dx": 7, "dy": -7, "fontSize": 10},
                "encoding": {"x": x, "y": y, "text": {"field": "model", "type": "nominal"}},
            },
        ],
    }


def accuracy_vs_size_spec(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Vega-Lite spec: accuracy vs model size, with the Pareto front."""
    return _tradeoff_spec(rows, "size_mb", "Accuracy vs model size")


def accuracy_vs_latency_spec(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Vega-Lite spec: accuracy vs inference latency, with the Pareto front."""
    return _tradeoff_spec(rows, "latency_ms", "Accuracy vs latency")


def accuracy_vs_data_fraction_spec(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Vega-Lite spec: accuracy vs fraction of labelled data, one line per strategy (e.g. active vs random)."""
    rows = _check_rows(rows, FRACTION_KEYS, "rows")
    return {
        "$schema": VL_SCHEMA,
        "title": "Accuracy vs labelled data fraction",
        "width": 480,
        "height": 320,
        "data": {"values": rows},
        "mark": {"type": "line", "point": True},
        "encoding": {
            # "~%": percent with trailing zeros trimmed, so 0.05 -> "5%" and 0.005 -> "0.5%".
            "x": {
                "field": "label_fraction",
                "type": "quantitative",
                "title": _AXIS_TITLES["label_fraction"],
                "axis": {"format": "~%"},
            },
            "y": {
                "field": "accuracy",
                "type": "quantitative",
                "title": _AXIS_TITLES["accuracy"],
                "scale": {"zero": False},
            },
            "color": {"field": "strategy", "type": "nominal", "title": "Strategy"},
            "order": {"field": "label_fraction", "type": "quantitative"},
            "tooltip": [
                {"field": "strategy", "type": "nominal"},
                {"field": "label_fraction", "type": "quantitative", "format": "~%"},
                {"field": "accuracy", "type": "quantitative"},
            ],
        },
    }


def write_pngs(
    tradeoff_rows: Sequence[Mapping[str, Any]],
    fraction_rows: Sequence[Mapping[str, Any]] | None,
    out_dir: str | os.PathLike[str],
) -> list[Path]:
    """Write accuracy_vs_size.png, accuracy_vs_latency.png and, given fraction rows, accuracy_vs_data_fraction.png."""
    out = Path(out_dir)
    paths = [
        render_png(accuracy_vs_size_spec(tradeoff_rows), out / "accuracy_vs_size.png"),
        render_png(accuracy_vs_latency_spec(tradeoff_rows), out / "accuracy_vs_latency.png"),
    ]
    if fraction_rows:
        paths.append(render_png(accuracy_vs_data_fraction_spec(fraction_rows), out / "accuracy_vs_data_fraction.png"))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.plots", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("template", help="write the offline DVC HTML template")
    t.add_argument("--out", required=True, type=Path, help="e.g. .dvc/plots/offline.html")
    p = sub.add_parser("png", help="render the trade-off (and data-fraction) charts to PNG")
    p.add_argument("--tradeoff", required=True, type=Path, help="JSON list of {model, accuracy, size_mb, latency_ms}")
    p.add_argument("--fraction", type=Path, help="JSON list of {strategy, label_fraction, accuracy}")
    p.add_argument("--out-dir", required=True, type=Path)
    args = parser.parse_args(argv)

    try:
        if args.command == "template":
            print(write_offline_html_template(args.out))
        else:
            tradeoff = load_rows(args.tradeoff, TRADEOFF_KEYS)
            if not tradeoff:
                raise PlotInputError(f"{args.tradeoff}: no rows")
            fraction = load_rows(args.fraction, FRACTION_KEYS) if args.fraction else None
            for path in write_pngs(tradeoff, fraction, args.out_dir):
                print(path)
    except PlotInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
