"""pipeline._dvc_env.override_value: the one serializer of `dvc exp run -S key=value` values."""

from __future__ import annotations

import yaml

from pipeline._dvc_env import override_value


def test_override_values_use_dvc_set_grammar():
    assert override_value({"neutral": 0.5}) == "{neutral: 0.5}"
    assert override_value(0.25) == "0.25" and override_value("random") == '"random"'


def test_overrides_read_back_as_the_same_values_through_dvcs_own_parser(tmp_path):
    """What `dvc exp run -S key=value` does to params.yaml (dvc.utils.hydra.apply_overrides, no repo
    needed), for the values the controller's search and the grid set: each must come back as it went in.
    An unquoted "1.0" would come back a float, an unquoted path with a space would not parse."""
    from dvc.utils.hydra import apply_overrides

    values = {"strategy": "entropy", "ratio": 0.25, "ops": ["swap", "delete"], "budget": None, "steps": 1104,
              "version": "1.0", "local_dir": "/data/my mnli", "class_fraction": {"neutral": 0.5, "contradiction": 0.25},
              "backend": "onnxruntime"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"s": dict.fromkeys(values, None) | {"budget": 1}}))
    apply_overrides(path, [f"s.{key}={override_value(value)}" for key, value in values.items()])
    assert yaml.safe_load(path.read_text())["s"] == values
