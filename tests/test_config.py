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


def _train_cli(tmp_path, caplog, *extra):
    """Run `trashseg train` in-process up to config validation: exit code and logged error."""
    import logging

    from trashseg.cli import main

    with caplog.at_level(logging.ERROR, logger="trashseg"):
        code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *extra])
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert "Traceback" not in caplog.text
    return code, caplog.text


def test_yaml_syntax_error_in_config_is_a_clear_error(tmp_path, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-4\naugment: {scale_range: [0.5, 2.0\n")
    code, text = _train_cli(tmp_path, caplog, "--config", str(bad))
    assert code == 2
    assert f"config file {bad} is not valid YAML" in text and "line 2" in text
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00lr")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(Outer, binary)
    with pytest.raises(ConfigError, match=r"override classes=\[a, is not valid YAML"):
        load_config(Outer, None, ["name=x", "classes=[a,"])


def test_override_of_a_value_and_of_a_key_below_it_conflict(tmp_path, caplog):
    code, text = _train_cli(tmp_path, caplog, "--set", "lr=1e-4", "--set", "lr.x=2")
    assert code == 2
    assert "override lr.x=2: lr is the value '1e-4', not a section with keys" in text


@pytest.mark.parametrize(
    "override, message",
    [
        ("weight_decay=nan", "weight_decay: 'nan' is not a finite number"),
        ("grad_clip=nan", "grad_clip: 'nan' is not a finite number"),
        ("poly_power=inf", "poly_power: 'inf' is not a finite number"),
        ("lr=1e30", "lr=1e+30: expected a learning rate in (0, 1]"),
        ("lr=1e400", "lr: '1e400' is not a finite number"),
        ("augment.hflip=.nan", "augment.hflip: nan is not a finite number"),
    ],
)
def test_non_finite_and_absurd_floats_are_refused_at_config_validation(tmp_path, caplog, override, message):
    code, text = _train_cli(tmp_path, caplog, "--set", override)
    assert code == 2
    assert message in text


def test_every_stage_config_refuses_non_finite_floats():
    from trashseg.crf import CrfConfig
    from trashseg.ensemble.config import EnsembleConfig
    from trashseg.pseudo_labels import PseudoLabelConfig

    with pytest.raises(ConfigError, match="tau: 'nan' is not a finite number"):
        load_config(PseudoLabelConfig, None, ["tau=nan"])
    with pytest.raises(ConfigError, match=r"weights\[1\]: inf is not a finite number"):
        load_config(EnsembleConfig, None, ["weights=[1, .inf]"])
    with pytest.raises(ConfigError, match="crf.bilateral_sxy: 'nan' is not a finite number"):
        load_config(EnsembleConfig, None, ["crf.bilateral_sxy=nan"])
    with pytest.raises(ConfigError, match="gaussian_compat: 'inf'"):
        load_config(CrfConfig, None, ["gaussian_compat=inf"])


def test_train_config_range_checks_refuse_nan_when_built_directly():
    from trashseg.training import TrainConfig

    for name in ("weight_decay", "grad_clip", "poly_power", "lr"):
        with pytest.raises(ConfigError, match=name):
            TrainConfig(architecture="segformer-b0", **{name: float("nan")})


def test_promotion_margin_must_be_finite():
    from trashseg.registry import decide_promotion

    with pytest.raises(ConfigError, match="min_improvement=nan"):
        decide_promotion(0.5, "h", None, {}, min_improvement=float("nan"))
