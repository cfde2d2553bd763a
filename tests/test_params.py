from pathlib import Path

import pytest
import yaml

from stages._params import ParamsError, load_params, parse_params
from stages._profiles import PROFILES

REPO = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_are_valid_for_every_profile():
    for profile in PROFILES:
        raw = repo_params()
        raw["profile"] = profile
        params = parse_params(raw)
        assert params.profile == profile
        assert params.data.seed_size == PROFILES[profile]["data"]["seed_size"]


def test_null_takes_profile_value_and_explicit_value_wins():
    raw = repo_params()
    assert raw["fine_tune"]["epochs"] is None
    assert parse_params(raw).fine_tune.epochs == PROFILES["cpu"]["fine_tune"]["epochs"]
    raw["fine_tune"]["epochs"] = 7
    assert parse_params(raw).fine_tune.epochs == 7


def test_gpu_profile_switches_teacher():
    raw = repo_params()
    raw["profile"] = "gpu"
    assert parse_params(raw).model.teacher == "mpnet-base"


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("prune", "ratio", 1.5, "prune.ratio"),
        ("active_select", "strategy", "best", "active_select.strategy"),
        ("fine_tune", "batch_size", 0, "fine_tune.batch_size"),
        ("augment", "ops", ["synonym", "paraphrase"], "augment.ops"),
        ("prune", "ratioo", 0.2, "prune.ratioo"),
    ],
)
def test_invalid_params_name_the_key(section, key, value, expected):
    raw = repo_params()
    raw[section][key] = value
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    assert expected in str(err.value)
    assert "params.yaml" in str(err.value)


def test_unknown_profile_and_missing_file(tmp_path):
    raw = repo_params()
    raw["profile"] = "laptop"
    with pytest.raises(ParamsError, match="profile"):
        parse_params(raw)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("profile: [cpu\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
