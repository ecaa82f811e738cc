from dataclasses import dataclass, field

import pytest

from trashseg.config import from_mapping, load_config, to_dict
from trashseg.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    scale_min: int = 256
    scale_max: int = 1024


@dataclass(frozen=True)
class Outer:
    name: str
    lr: float = 1e-4
    classes: tuple[str, ...] = ()
    amp: str = "off"
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown key.*colour.*valid keys are: amp, classes, inner, lr, name"):
        from_mapping(Outer, {"name": "x", "colour": 1})


def test_nested_unknown_key_names_its_section():
    with pytest.raises(ConfigError, match="inner: unknown key.*scale_mid.*scale_max, scale_min"):
        from_mapping(Outer, {"name": "x", "inner": {"scale_mid": 3}})


def test_types_are_checked_and_coerced():
    config = from_mapping(Outer, {"name": "x", "lr": 1, "classes": ["a", "b"]})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.classes == ("a", "b")
    with pytest.raises(ConfigError, match="name: expected str"):
        from_mapping(Outer, {"name": 3})
    with pytest.raises(ConfigError, match="scale_min: expected int"):
        from_mapping(Outer, {"name": "x", "inner": {"scale_min": "big"}})


def test_validation_in_post_init_runs():
    with pytest.raises(ConfigError, match="lr must be > 0"):
        from_mapping(Outer, {"name": "x", "lr": -1})


def test_load_config_file_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: base\nlr: 0.001\ninner:\n  scale_min: 128\n")
    config = load_config(Outer, path, ["inner.scale_max=512", "classes=[Battery, Clothing]", "amp=bf16"])
    assert config == Outer("base", 0.001, ("Battery", "Clothing"), "bf16", Inner(128, 512))
    assert to_dict(config)["classes"] == ["Battery", "Clothing"]
    assert from_mapping(Outer, to_dict(config)) == config


def test_bad_override_and_missing_file_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="missing 1 required"):
        load_config(Outer, None, [])


def test_parse_assignments_keeps_equals_in_values_and_names_the_flag():
    from trashseg.config import parse_assignments

    assert parse_assignments(["a=1", "b=x=y", "a=2"]) == {"a": "2", "b": "x=y"}
    with pytest.raises(ConfigError, match=r"--tag 'team' must look like key=value \(e.g. team=vision\)"):
        parse_assignments(["team"], what="--tag", example="team=vision")


def test_train_cli_rejects_a_malformed_tag_before_training(tmp_path, caplog):
    from trashseg.cli import main

    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--tag", "oops"]) == 2
    assert "--tag 'oops' must look like key=value" in caplog.text
    assert not (tmp_path / "run").exists()
