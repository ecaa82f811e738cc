"""TrainConfig validation and the errors a user sees for bad keys, values and inputs."""

import logging

import pytest

from trashseg.cli import main
from trashseg.config import from_mapping, load_config
from trashseg.errors import ConfigError, DataError
from trashseg.training import TrainConfig, train


def test_overrides_reach_nested_sections(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("architecture: segformer-b0-tiny\naugment:\n  hflip: 0.25\n")
    config = load_config(
        TrainConfig, path, ["lr=3e-4", "augment.scale_range=[0.5,1.5]", "copy_paste_classes=[Battery, 10]", "amp=off"]
    )
    assert config.lr == 3e-4 and config.amp == "off"
    assert config.augment.hflip == 0.25 and config.augment.scale_range == (0.5, 1.5)
    assert config.copy_paste_classes == ("Battery", 10)


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) learning_rate.*valid keys are: .*\blr\b"):
        from_mapping(TrainConfig, {"learning_rate": 1e-4})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) flip.*hflip"):
        from_mapping(TrainConfig, {"augment": {"flip": 0.5}})


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"lr": -1.0}, r"lr=-1.0: expected a learning rate in \(0, 1\]"),
        ({"architecture": "segformer-b9"}, "architecture='segformer-b9' is unknown; valid names: .*segformer-b0-tiny"),
        ({"amp": "fp8"}, "'fp8' is not one of"),
        ({"iterations": 10, "warmup_iters": 10}, "warmup_iters=10 must be below iterations=10"),
        ({"batch_size": 0}, r"batch_size=0: expected an integer in \[1, 1024\]"),
        ({"pseudo_ratio": 1.0}, r"pseudo_ratio=1.0: expected a fraction in \[0, 1\)"),
        ({"batch_size": 2, "pseudo_ratio": 0.2}, "puts no pseudo-labelled image"),
        ({"grad_clip": 0.0}, "grad_clip=0.0"),
        ({"tracking": {"uri": "localhost:5000"}}, "is not a URI"),
    ],
)
def test_bad_values_name_the_value_and_what_is_expected(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        from_mapping(TrainConfig, values)


def test_cli_reports_bad_config_and_exits_2(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--set", "iterations=zero"])
    assert code == 2
    assert "iterations: expected int, got 'zero'" in caplog.text


def test_train_rejects_bad_inputs_before_training(sample_dataset, tmp_path):
    tiny = dict(architecture="segformer-b0-tiny", image_size=32, iterations=2, warmup_iters=0, num_workers=0,
                tracking={"enabled": False})
    with pytest.raises(ConfigError, match=r"'Plastik' is not a foreground class.*9=Battery"):
        train(from_mapping(TrainConfig, {**tiny, "copy_paste_classes": ["Plastik"]}), sample_dataset, tmp_path / "a")
    with pytest.raises(ConfigError, match="give both"):
        train(from_mapping(TrainConfig, {**tiny, "pseudo_ratio": 0.5, "batch_size": 2}), sample_dataset, tmp_path / "c")
    with pytest.raises(DataError, match="classes.json not found"):
        train(from_mapping(TrainConfig, tiny), tmp_path, tmp_path / "d")
