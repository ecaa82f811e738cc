"""UperNet (Xiao et al. 2018) heads on Swin, ConvNeXt or EfficientNet-Lite backbones, with the
auxiliary FCN head."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import UperNetConfig, UperNetForSemanticSegmentation

from trashseg.models.backbones import convnext_backbone_config, swin_backbone_config
from trashseg.models.base import SegmentationModel, cross_entropy, resize_to
from trashseg.models.efficientnet_lite import efficientnet_lite_config

_BACKBONES = {"swin": swin_backbone_config, "convnext": convnext_backbone_config, "effnet": efficientnet_lite_config}
# Decoder widths (pyramid pooling / FPN channels, auxiliary head): mmsegmentation's for the
# transformer and ConvNeXt encoders; narrower over EfficientNet-Lite, the CPU family, whose
# stride-4 FPN convolutions at 512 channels would cost ~20x its encoder (at 64, ~1.5x).
_WIDTHS = {"swin": (512, 256), "convnext": (512, 256), "effnet": (64, 64)}


def upernet_config(
    backbone: str, variant: str, num_classes: int, *, tiny: bool, drop_path_rate: float
) -> UperNetConfig:
    hidden, auxiliary = (32, 32) if tiny else _WIDTHS[backbone]
    return UperNetConfig(
        backbone_config=_BACKBONES[backbone](variant, tiny=tiny, drop_path_rate=drop_path_rate),
        num_labels=num_classes,
        hidden_size=hidden,
        auxiliary_channels=auxiliary,
        loss_ignore_index=255,
    )


class UperNetSegmentation(SegmentationModel):
    network_class = UperNetForSemanticSegmentation

    def _predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(pixel_values=images).logits  # already at input resolution

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        # The pyramid pooling branch pools to 1x1, where training-mode BatchNorm cannot compute
        # statistics from a single image; a batch of one therefore normalises with the running
        # statistics (and leaves them unchanged) for that step.
        single = self.training and images.shape[0] == 1
        with _batchnorm_in_eval_mode(self) if single else contextlib.nullcontext():
            network = self.network
            features = network.backbone(images).feature_maps
            loss = cross_entropy(resize_to(network.decode_head(features), images), masks)
            if network.auxiliary_head is not None:
                auxiliary = resize_to(network.auxiliary_head(features), images)
                loss = loss + network.config.auxiliary_loss_weight * cross_entropy(auxiliary, masks)
        return loss


@contextlib.contextmanager
def _batchnorm_in_eval_mode(module: nn.Module):
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    states = [m.training for m in norms]
    for norm in norms:
        norm.eval()
    try:
        yield
    finally:
        for norm, state in zip(norms, states, strict=True):
            norm.train(state)
