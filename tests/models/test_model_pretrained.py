"""Weights from a local transformers checkpoint folder: round trips and DiNAT key mapping."""

import logging

import pytest
import torch
from safetensors.torch import save_file
from transformers import DinatConfig

from trashseg.errors import ConfigError
from trashseg.models import build_model
from trashseg.models.dinat import DINAT_TINY

NUM_CLASSES = 4


@pytest.mark.parametrize(
    "name",
    [
        "segformer-b0-tiny",
        "upernet-swin-t-tiny",
        "mask2former-swin-t-tiny",
        "mask2former-dinat-l-tiny",
        "mask2former-semask-swin-t-tiny",
        "mask2former-semask-fapn-swin-l-tiny",
    ],
)
def test_saved_model_loads_back_with_identical_predictions(name, tmp_path):
    torch.manual_seed(0)
    original = build_model(name, NUM_CLASSES).eval()
    original.save_pretrained(tmp_path)
    torch.manual_seed(1)  # a different random init, so only loading can make them agree
    loaded = build_model(name, NUM_CLASSES, pretrained=str(tmp_path))
    assert loaded.training  # like a freshly built model
    loaded.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_logits(images), original.predict_logits(images))


def test_other_class_count_keeps_the_body_and_reports_the_new_head(tmp_path, caplog):
    torch.manual_seed(0)
    original = build_model("segformer-b0-tiny", NUM_CLASSES)
    original.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trashseg"):
        loaded = build_model("segformer-b0-tiny", 7, pretrained=str(tmp_path))
    assert loaded.network.decode_head.classifier.out_channels == 7
    old, new = original.state_dict(), loaded.state_dict()
    assert torch.equal(
        old["network.segformer.stages.0.blocks.0.attention.q_proj.weight"],
        new["network.segformer.stages.0.blocks.0.attention.q_proj.weight"],
    )
    (record,) = [r for r in caplog.records if r.name.startswith("trashseg")]
    assert "decode_head.classifier.weight" in record.getMessage()
    assert "2 of" in record.getMessage()


def test_checkpoint_of_another_family_is_rejected(tmp_path):
    build_model("segformer-b0-tiny", NUM_CLASSES).save_pretrained(tmp_path)
    with pytest.raises(
        ConfigError, match=r"provides only \d+ of the \d+ tensors of 'upernet-convnext-t-tiny'"
    ):
        build_model("upernet-convnext-t-tiny", NUM_CLASSES, pretrained=str(tmp_path))


def write_dinat_checkpoint(
    folder, config: DinatConfig, backbone_state: dict, file_name: str = "model.safetensors"
) -> dict:
    """A checkpoint laid out as transformers' DinatForImageClassification saves it: "dinat."
    prefixed backbone tensors, one relative position bias per layer, a final norm and a head."""
    config.save_pretrained(folder)
    weights = {
        f"dinat.{key}": torch.randn_like(tensor)
        for key, tensor in backbone_state.items()
        if not key.startswith("hidden_states_norms.")
    }
    for stage, depth in enumerate(config.depths):
        for layer in range(depth):
            span = 2 * config.kernel_size - 1
            weights[f"dinat.encoder.levels.{stage}.layers.{layer}.attention.self.rpb"] = (
                torch.randn(config.num_heads[stage], span, span)
            )
    width = config.embed_dim * 2 ** (len(config.depths) - 1)
    weights["dinat.layernorm.weight"] = torch.randn(width)
    weights["classifier.weight"] = torch.randn(3, width)
    if file_name == "model.safetensors":
        save_file(weights, str(folder / file_name))
    else:  # the older format some published DiNAT checkpoints ship
        torch.save(weights, folder / file_name)
    return weights


@pytest.mark.parametrize("file_name", ["model.safetensors", "pytorch_model.bin"])
def test_dinat_imagenet_checkpoint_initialises_the_backbone_by_name(file_name, tmp_path, caplog):
    torch.manual_seed(0)
    reference = build_model("mask2former-dinat-l-tiny", NUM_CLASSES)
    backbone = reference.network.model.pixel_level_module.encoder
    # The names transformers' DiNAT uses (modeling_dinat.py), which ours must mirror to load.
    assert {
        "embeddings.patch_embeddings.projection.0.weight",
        "embeddings.norm.weight",
        "encoder.levels.0.layers.0.layernorm_before.weight",
        "encoder.levels.0.layers.0.attention.self.query.weight",
        "encoder.levels.0.layers.0.attention.output.dense.weight",
        "encoder.levels.0.layers.0.intermediate.dense.weight",
        "encoder.levels.0.layers.0.output.dense.weight",
        "encoder.levels.0.downsample.reduction.weight",
        "hidden_states_norms.stage1.weight",
    } <= set(backbone.state_dict())
    weights = write_dinat_checkpoint(
        tmp_path, DinatConfig(**DINAT_TINY), backbone.state_dict(), file_name
    )

    with caplog.at_level(logging.WARNING, logger="trashseg"):
        model = build_model("mask2former-dinat-l-tiny", NUM_CLASSES, pretrained=str(tmp_path))
    loaded = model.network.model.pixel_level_module.encoder.state_dict()
    for key, tensor in weights.items():
        name = key.removeprefix("dinat.")
        if name in loaded:
            assert torch.equal(loaded[name], tensor), name
    assert sum(key.removeprefix("dinat.") in loaded for key in weights) == len(loaded) - 8
    message = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("trashseg"))
    assert "skipped 4 relative position biases" in message
    assert "hidden_states_norms.stage1.weight" in message  # left at init, and said so
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, NUM_CLASSES, (2, 64, 64))
    assert torch.isfinite(model.loss(images, masks))


def test_dinat_checkpoint_of_another_size_is_rejected(tmp_path):
    backbone = build_model("mask2former-dinat-l-tiny", NUM_CLASSES).network.model
    # Same names, every tensor one row larger: a DiNAT of another width.
    wider = {
        key: torch.zeros(tensor.shape[0] + 1, *tensor.shape[1:])
        for key, tensor in backbone.pixel_level_module.encoder.state_dict().items()
    }
    write_dinat_checkpoint(tmp_path, DinatConfig(**DINAT_TINY), wider)
    with pytest.raises(ConfigError, match="matches only 0 of this backbone's 87 tensors"):
        build_model("mask2former-dinat-l-tiny", NUM_CLASSES, pretrained=str(tmp_path))
