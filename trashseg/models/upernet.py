"""UperNet (Xiao et al. 2018) heads on Swin or ConvNeXt backbones, with the auxiliary FCN head."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import ConvNextConfig, SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

from trashseg.models.base import SegmentationModel, cross_entropy, resize_to

_STAGES = ["stage1", "stage2", "stage3", "stage4"]

# Published Swin sizes (Liu et al. 2021); B and L use the 384-pretraining window of 12.
SWIN_SIZES = {
    "t": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    "b": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12),
    "l": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12),
}
TINY_SWIN = dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=4)

# Published ConvNeXt sizes (Liu et al. 2022).
CONVNEXT_SIZES = {
    "t": dict(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3]),
    "b": dict(hidden_sizes=[128, 256, 512, 1024], depths=[3, 3, 27, 3]),
    "l": dict(hidden_sizes=[192, 384, 768, 1536], depths=[3, 3, 27, 3]),
}
TINY_CONVNEXT = dict(hidden_sizes=[32, 32, 64, 64], depths=[1, 1, 1, 1])

# Stochastic depth used by the UperNet recipes of each backbone size.
_DROP_PATH = {"t": 0.3, "b": 0.3, "l": 0.3}


def swin_backbone_config(variant: str, *, tiny: bool, drop_path_rate: float) -> SwinConfig:
    size = TINY_SWIN if tiny else SWIN_SIZES[variant]
    return SwinConfig(**size, drop_path_rate=0.0 if tiny else drop_path_rate, out_features=_STAGES)


def upernet_config(backbone: str, variant: str, num_classes: int, *, tiny: bool) -> UperNetConfig:
    if backbone == "swin":
        backbone_config = swin_backbone_config(
            variant, tiny=tiny, drop_path_rate=_DROP_PATH[variant]
        )
    else:
        size = TINY_CONVNEXT if tiny else CONVNEXT_SIZES[variant]
        backbone_config = ConvNextConfig(
            **size, drop_path_rate=0.0 if tiny else 0.4, out_features=_STAGES
        )
    return UperNetConfig(
        backbone_config=backbone_config,
        num_labels=num_classes,
        hidden_size=32 if tiny else 512,
        auxiliary_channels=32 if tiny else 256,
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
