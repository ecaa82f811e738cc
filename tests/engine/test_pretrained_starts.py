"""Where training starts: each architecture's default start and optimiser settings, random
init said in the log, and a retrain from a trashseg best.pt."""

from __future__ import annotations

import logging

import pytest
import torch

from trashseg.checkpoints import load_checkpoint_state
from trashseg.cli import main
from trashseg.config import from_mapping
from trashseg.errors import ConfigError
from trashseg.models import ARCHITECTURES, load_pretrained_model
from trashseg.training import TrainConfig, train
from trashseg.weights import PACKAGED_WEIGHTS


def test_full_sizes_default_to_their_hub_checkpoint_and_tiny_twins_to_random_init():
    for name, spec in ARCHITECTURES.items():
        config = TrainConfig(architecture=name)
        assert (config.lr, config.weight_decay) == (spec.training.lr, spec.training.weight_decay)
        if spec.tiny:
            assert config.pretrained == "none" and (config.lr, config.weight_decay) == (3e-3, 0.0)
        elif spec.default_pretrained:
            assert config.pretrained == spec.default_pretrained
            # a hub id (owner/name) or a start shipped in an installed package
            assert config.pretrained.count("/") == 1 or config.pretrained in PACKAGED_WEIGHTS
    assert TrainConfig(architecture="mask2former-swin-l").pretrained == "facebook/mask2former-swin-large-ade-semantic"
    assert TrainConfig(architecture="mask2former-dinat-l").pretrained == "shi-labs/dinat-large-11x11-in22k-in1k-384"
    # Explicit values win, and a resolved config rebuilds as itself (resume compares them).
    config = TrainConfig(architecture="segformer-b5", pretrained="none", lr=1e-3)
    assert (config.pretrained, config.lr, config.weight_decay) == ("none", 1e-3, 0.01)
    assert from_mapping(TrainConfig, {"architecture": "segformer-b5"}).pretrained == "nvidia/segformer-b5-finetuned-ade-640-640"


def test_random_init_is_said_in_the_log(sample_dataset, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="trashseg")
    config = from_mapping(TrainConfig, dict(architecture="segformer-b0-tiny", image_size=48, batch_size=2,
                                            iterations=2, warmup_iters=1, eval_interval=0, num_workers=0,
                                            tracking={"enabled": False}))
    train(config, sample_dataset, tmp_path / "run")
    assert "segformer-b0-tiny trains from scratch (random init, pretrained=none)" in caplog.text


def test_cli_retrain_starts_from_a_trashseg_best_pt(trained_checkpoint, sample_dataset, tmp_path, capsys):
    out = tmp_path / "retrain"
    args = ["train", "--data", str(sample_dataset), "--out", str(out), "--set", f"pretrained={trained_checkpoint}"]
    for value in ("architecture=segformer-b0-tiny", "image_size=64", "batch_size=2", "iterations=1", "warmup_iters=0",
                  "lr=1e-9", "eval_interval=0", "num_workers=0", "tracking.enabled=false"):
        args += ["--set", value]
    assert main(args) == 0
    start = load_checkpoint_state(trained_checkpoint)["model"]
    after = load_checkpoint_state(out / "last.pt")["model"]
    # One step at lr 1e-9 barely moves the weights: they are the best.pt's, heads included
    # (BatchNorm's running statistics do move in a training step).
    weights = [k for k in start if "running_" not in k and "num_batches" not in k]
    assert len(weights) > 100 and all(torch.allclose(start[k], after[k], atol=1e-5) for k in weights)


def test_a_checkpoint_of_another_architecture_is_refused(trained_checkpoint):
    with pytest.raises(ConfigError, match="holds a 'segformer-b0-tiny' model; expected a 'upernet-swin-t-tiny'"):
        load_pretrained_model("upernet-swin-t-tiny", 11, str(trained_checkpoint))
    model, load = load_pretrained_model("segformer-b0-tiny", 7, str(trained_checkpoint))
    assert load.reinitialised == ("decode_head.classifier.weight", "decode_head.classifier.bias")
    assert load.loaded == load.total - 2 and model.num_classes == 7


def test_per_size_drop_path_rates_come_from_the_table():
    def rate(name):
        return ARCHITECTURES[name].make_config(11).backbone_config.drop_path_rate

    assert rate("mask2former-swin-l") == rate("mask2former-dinat-l") == rate("upernet-swin-b") == 0.3
    assert rate("upernet-convnext-l") == 0.4
    assert rate("mask2former-swin-l-tiny") == rate("upernet-convnext-l-tiny") == 0.0
    assert ARCHITECTURES["segformer-b5"].make_config(11).drop_path_rate == 0.1
