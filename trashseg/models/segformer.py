"""SegFormer (Xie et al. 2021): Mix Transformer encoder with an all-MLP decoder at 1/4 scale."""

from __future__ import annotations

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from trashseg.models.base import SegmentationModel, cross_entropy, resize_to

# Published MiT-b0..b5 encoder sizes and decoder widths (SegFormer paper, Table 6/7).
_SEGFORMER_SIZES = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    "b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    "b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
}


def segformer_config(
    variant: str, num_classes: int, *, tiny: bool, drop_path_rate: float
) -> SegformerConfig:
    if tiny:
        size = dict(hidden_sizes=[32, 32, 64, 64], depths=[1, 1, 1, 1], decoder_hidden_size=32)
    else:
        size = _SEGFORMER_SIZES[variant]
    return SegformerConfig(
        num_labels=num_classes,
        num_attention_heads=[1, 2, 5, 8] if not tiny else [1, 1, 2, 2],
        sr_ratios=[8, 4, 2, 1],
        semantic_loss_ignore_index=255,
        drop_path_rate=drop_path_rate,  # also on the tiny twin: transformers' 0.1 is what it learned with
        **size,
    )


class SegformerSegmentation(SegmentationModel):
    network_class = SegformerForSemanticSegmentation

    def _predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        # SegFormer predicts at 1/4 resolution; upsampling logits (not labels) is the paper's way.
        return resize_to(self.network(pixel_values=images).logits, images)

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return cross_entropy(self._predict_logits(images), masks)
