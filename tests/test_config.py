"""Config: presets, YAML files, dotted overrides and one-line errors naming key, value and rule."""

from __future__ import annotations

import pytest
import yaml

from astroflax.config import build_config, parse_override
from astroflax.errors import ConfigError


def test_presets_resolve_and_differ():
    quick = build_config("transients", "quick")
    full = build_config("transients", "full")
    assert quick.preset == "quick" and full.preset == "full"
    assert quick.train.steps < full.train.steps
    assert quick.data["max_len"] < full.data["max_len"]


def test_override_parses_yaml_values():
    cfg = build_config("transients", "quick", overrides=["optim.lr=3e-4", "train.early_stopping.patience=3",
                                                         "checkpoint.async_save=false", "optim.clip_norm=null"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.early_stopping.patience == 3
    assert cfg.checkpoint.async_save is False
    assert cfg.optim.clip_norm is None
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}


def test_yaml_file_then_overrides_win(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"task": "transients", "optim": {"lr": 0.01}, "model": {"d_model": 32}}))
    cfg = build_config("transients", None, f, ["optim.lr=0.02"])
    assert cfg.optim.lr == pytest.approx(0.02)
    assert cfg.model["d_model"] == 32


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("optim.lrr=1", ["optim.lrr", "unknown"]),
        ("optim.lr=-1", ["optim.lr", "-1", "greater than 0"]),
        ("optim.name=adamx", ["optim.name", "adamx", "adamw"]),
        ("model.d_modl=3", ["model.d_modl", "unknown"]),
        ("data.max_len=abc", ["data.max_len", "abc", "integer"]),
        ("train.batch_size=0", ["train.batch_size", "0"]),
    ],
)
def test_bad_key_or_value_is_one_clear_line(override, fragments):
    with pytest.raises(ConfigError) as info:
        build_config("transients", "quick", overrides=[override])
    msg = str(info.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_unknown_task_and_preset():
    with pytest.raises(ConfigError, match="unknown task 'nope'.*transients"):
        build_config("nope")
    with pytest.raises(ConfigError, match="preset 'huge'.*quick"):
        build_config("transients", "huge")


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml.*YAML"):
        build_config("transients", None, f)
    g = tmp_path / "list.yaml"
    g.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config("transients", None, g)


def test_round_trip_through_yaml():
    cfg = build_config("transients", "quick", overrides=["optim.lr=5e-4"])
    again = yaml.safe_load(cfg.to_yaml())
    from astroflax.config import finalize_config

    assert finalize_config(again) == cfg
