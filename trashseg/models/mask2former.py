"""Mask2Former (Cheng et al. 2022) in semantic mode: queries predict (class, mask) pairs that are
combined into per-pixel class probabilities."""

from __future__ import annotations

import torch
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, PretrainedConfig

from trashseg.models.backbones import swin_backbone_config
from trashseg.models.base import IGNORE_INDEX, SegmentationModel, full_precision, resize_to
from trashseg.models.dinat import dinat_backbone_config

# The published semantic-segmentation decoder: 6 deformable pixel-decoder layers, 9 masked-
# attention layers (+ the initial prediction, hence 10), 256 wide, 100 queries.
_FULL_DECODER = dict(
    hidden_dim=256,
    feature_size=256,
    mask_feature_size=256,
    encoder_layers=6,
    decoder_layers=10,
    dim_feedforward=2048,
    encoder_feedforward_dim=1024,
    num_attention_heads=8,
    num_queries=100,
)
_TINY_DECODER = dict(
    hidden_dim=32,
    feature_size=32,
    mask_feature_size=32,
    encoder_layers=1,
    decoder_layers=2,
    dim_feedforward=64,
    encoder_feedforward_dim=64,
    num_attention_heads=2,
    num_queries=8,
    train_num_points=1024,
)


def mask2former_config(
    backbone_config: PretrainedConfig, num_classes: int, *, tiny: bool
) -> Mask2FormerConfig:
    decoder = _TINY_DECODER if tiny else _FULL_DECODER
    return Mask2FormerConfig(
        backbone_config=backbone_config,
        num_labels=num_classes,
        ignore_value=IGNORE_INDEX,
        **decoder,
    )


def mask2former_swin_config(
    variant: str, num_classes: int, *, tiny: bool, drop_path_rate: float
) -> Mask2FormerConfig:
    backbone = swin_backbone_config(variant, tiny=tiny, drop_path_rate=drop_path_rate)
    return mask2former_config(backbone, num_classes, tiny=tiny)


def mask2former_dinat_config(
    variant: str, num_classes: int, *, tiny: bool, drop_path_rate: float
) -> Mask2FormerConfig:
    if variant != "l":
        raise ValueError(f"only DiNAT-L is published for Mask2Former; got variant {variant!r}")
    backbone = dinat_backbone_config(tiny=tiny, drop_path_rate=drop_path_rate)
    return mask2former_config(backbone, num_classes, tiny=tiny)


class Mask2FormerSegmentation(SegmentationModel):
    network_class = Mask2FormerForUniversalSegmentation

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        mask_labels, class_labels = semantic_targets(masks)
        output = self.network(
            pixel_values=images, mask_labels=mask_labels, class_labels=class_labels
        )
        return output.loss

    def _predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        output = self.network(pixel_values=images)
        with full_precision(images.device):
            return semantic_log_probs(output, images)


def semantic_log_probs(output, images: torch.Tensor) -> torch.Tensor:
    """Log of per-pixel class probabilities at the images' size from Mask2Former's outputs."""
    # Each query votes for its mask with its class probabilities; the last class is "no object".
    class_probs = output.class_queries_logits.float().softmax(-1)[..., :-1]
    mask_probs = output.masks_queries_logits.float().sigmoid()
    scores = resize_to(torch.einsum("bqc,bqhw->bchw", class_probs, mask_probs), images)
    # Normalised to a per-pixel distribution; the epsilon keeps pixels no query claims finite.
    scores = scores.clamp_min(0.0) + 1e-6
    return (scores / scores.sum(dim=1, keepdim=True)).log()


def semantic_targets(masks: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One binary mask and class label per class present in each image.

    As in the original Mask2Former semantic mapper, ignored (255) pixels belong to no class's
    mask, so they count as background for every query's mask loss.
    """
    mask_labels, class_labels = [], []
    for mask in masks:
        classes = mask.unique()
        classes = classes[classes != IGNORE_INDEX]
        mask_labels.append((mask[None] == classes[:, None, None]).float())
        class_labels.append(classes)
    return mask_labels, class_labels
