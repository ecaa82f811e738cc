"""SeMask: the semantic-prior loss enters the model's loss with its configured weight, the FaPN
variant swaps the pixel decoder, and Swin / Mask2Former-Swin checkpoints fill the encoder."""

import logging

import pytest
import torch
from transformers import SwinModel

from trashseg.errors import ConfigError
from trashseg.models import build_model
from trashseg.models.backbones import TINY_SWIN
from trashseg.models.fapn import FaPNPixelDecoder
from trashseg.models.semask import SEMANTIC_LOSS_WEIGHT, SeMaskSwinBackbone, semantic_decoder

NUM_CLASSES = 4
SEMASK = "mask2former-semask-swin-t-tiny"


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    masks = torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=generator)
    masks[:, :8] = 255
    return images, masks


def test_loss_adds_the_weighted_cross_entropy_of_the_semantic_priors():
    torch.manual_seed(0)
    model = build_model(SEMASK, NUM_CLASSES).eval()  # eval: no dropout, so runs repeat exactly
    assert model.network.config.semantic_loss_weight == SEMANTIC_LOSS_WEIGHT == 0.4
    encoder = model.network.model.pixel_level_module.encoder
    assert isinstance(encoder, SeMaskSwinBackbone)
    images, masks = batch()
    with torch.no_grad():
        maps = encoder(images).semantic_maps
        # One prior map per stage, K classes at strides 4, 8, 16, 32.
        assert [tuple(m.shape) for m in maps] == [(2, NUM_CLASSES, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
        semantic_ce = torch.nn.functional.cross_entropy(
            semantic_decoder(maps, images), masks, ignore_index=255
        )
        losses = {}
        for weight in (0.0, 0.4, 2.0):
            model.network.config.semantic_loss_weight = weight
            torch.manual_seed(1)  # Mask2Former samples its loss points at random
            losses[weight] = model.loss(images, masks).item()
    assert semantic_ce.item() > 0
    assert losses[0.4] - losses[0.0] == pytest.approx(0.4 * semantic_ce.item(), rel=1e-4)
    assert losses[2.0] - losses[0.0] == pytest.approx(2.0 * semantic_ce.item(), rel=1e-4)


def test_semantic_loss_trains_the_priors():
    torch.manual_seed(0)
    model = build_model(SEMASK, NUM_CLASSES).train()
    images, masks = batch()
    model.loss(images, masks).backward()
    layer = model.network.model.pixel_level_module.encoder.semantic_layers[0].blocks[0]
    assert layer.mlp_cls_q.weight.grad.abs().sum() > 0
    assert layer.gamma.grad.abs().sum() > 0  # the reweighting can switch on (see semask.py)


def test_fapn_variant_uses_the_fapn_pixel_decoder():
    fapn = build_model("mask2former-semask-fapn-swin-t-tiny", NUM_CLASSES)
    plain = build_model(SEMASK, NUM_CLASSES)
    assert isinstance(fapn.network.model.pixel_level_module.decoder, FaPNPixelDecoder)
    assert not isinstance(plain.network.model.pixel_level_module.decoder, FaPNPixelDecoder)


def test_mask2former_swin_checkpoint_fills_everything_but_the_semantic_layers(tmp_path, caplog):
    torch.manual_seed(0)
    source = build_model("mask2former-swin-t-tiny", NUM_CLASSES)
    source.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trashseg"):
        model = build_model(SEMASK, NUM_CLASSES, pretrained=str(tmp_path))
    old, new = source.network.state_dict(), model.network.state_dict()
    shared = [key for key in new if ".semantic_layers." not in key]
    assert shared and all(torch.equal(new[key], old[key]) for key in shared)
    fresh = len(new) - len(shared)
    message = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("trashseg"))
    assert f"loaded {len(shared)} of {len(new)} tensors" in message
    assert f"{fresh} semantic-layer tensors start fresh" in message
    assert model.training


def test_plain_swin_checkpoint_fills_the_encoder(tmp_path, caplog):
    torch.manual_seed(0)
    swin = build_model(SEMASK, NUM_CLASSES).network.config.backbone_config
    source = SwinModel(type(swin).__mro__[1](**TINY_SWIN))  # a plain transformers SwinConfig
    source.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trashseg"):
        model = build_model(SEMASK, NUM_CLASSES, pretrained=str(tmp_path))
    encoder = model.network.model.pixel_level_module.encoder.state_dict()
    for key, tensor in source.state_dict().items():
        if not key.startswith("pooler"):
            assert torch.equal(encoder[f"swin.{key}"], tensor), key
    message = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("trashseg"))
    assert "Swin encoder tensors" in message and "semantic-layer tensors start fresh" in message


def test_checkpoint_of_another_family_is_rejected(tmp_path):
    build_model("segformer-b0-tiny", NUM_CLASSES).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="is a 'segformer' model; a SeMask model starts from"):
        build_model(SEMASK, NUM_CLASSES, pretrained=str(tmp_path))


def test_mask2former_checkpoint_of_another_backbone_is_rejected(tmp_path):
    build_model("mask2former-dinat-l-tiny", NUM_CLASSES).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"fills only \d+ of the 91 Swin encoder tensors"):
        build_model(SEMASK, NUM_CLASSES, pretrained=str(tmp_path))
