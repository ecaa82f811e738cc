"""EoMT (Kerssies et al. 2025, arXiv 2503.19108) in semantic mode: a plain DINOv2-style ViT whose
last blocks also carry learned query tokens; each query predicts a (class, mask) pair, combined
into per-pixel class probabilities as for Mask2Former.

Two things are added to transformers' `EomtForUniversalSegmentation`:
- any input size: images are padded to a multiple of the patch size and the learned position
  embeddings (one per patch of the configured `image_size`) are resized bicubically to the
  actual patch grid, as DINOv2 does;
- mask annealing tied to trashseg's iteration schedule: the masked attention of the query
  blocks is phased out during training (`set_training_progress`), so that inference runs
  without masks, as the paper does.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    EomtConfig,
    EomtDinov3Config,
    EomtDinov3ForUniversalSegmentation,
    EomtForUniversalSegmentation,
)

from trashseg.models.base import IGNORE_INDEX, SegmentationModel
from trashseg.models.mask2former import semantic_log_probs, semantic_targets

# DINOv2 ViT sizes with 4 registers (Oquab et al. 2023; Darcet et al. 2024), at EoMT's patch size
# of 16. Query count and native image size follow the published checkpoint each size loads from
# (the architecture table's default checkpoints): COCO panoptic at 640 px (200 queries) for S and B, ADE20K semantic at
# 512 px (100 queries) for L, so that their position embeddings and queries load unchanged.
EOMT_SIZES = {
    "s": dict(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        image_size=640,
        num_queries=200,
    ),
    "b": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=640,
        num_queries=200,
    ),
    "l": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=512,
        num_queries=100,
    ),
}
# Two layers, the last one carrying the queries; patch 8 keeps a usable grid on 64-96 px crops.
TINY_EOMT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=64,
    patch_size=8,
    num_queries=8,
    num_blocks=1,
    num_upscale_blocks=2,
    train_num_points=1024,
)

# EoMT's annealing windows as fractions of training, from its COCO configs (12 epochs; block i
# of 4 anneals from epoch 2 + 2i to 4 + 2i): the windows tile [1/6, 5/6] in equal parts, the
# first query block first, so the final sixth of training runs entirely unmasked.
_ANNEAL_START, _ANNEAL_END, _ANNEAL_POWER = 1 / 6, 5 / 6, 0.9


def eomt_config(variant: str, num_classes: int, *, tiny: bool, drop_path_rate: float) -> EomtConfig:
    size = TINY_EOMT if tiny else dict(EOMT_SIZES[variant], num_blocks=4, drop_path_rate=drop_path_rate)
    return EomtConfig(**size, num_labels=num_classes)


def eomt_dinov3_config(
    variant: str, num_classes: int, *, tiny: bool, drop_path_rate: float
) -> EomtDinov3Config:
    """DINOv3 ViTs: the DINOv2 sizes with a 4x MLP, rotary position embeddings (any grid)."""
    if tiny:
        size = dict(TINY_EOMT, intermediate_size=4 * TINY_EOMT["hidden_size"])
    else:
        size = dict(
            EOMT_SIZES[variant],
            num_blocks=4,
            drop_path_rate=drop_path_rate,
            intermediate_size=4 * EOMT_SIZES[variant]["hidden_size"],
        )
    return EomtDinov3Config(**size, num_labels=num_classes)


def mask_probability(block: int, num_blocks: int, step: int, total_steps: int) -> float:
    """Probability that query block `block` (0 = first block carrying queries) applies masked
    attention at optimizer step `step` of `total_steps`: 1 before its window, polynomial decay
    (power 0.9, as in EoMT) across it, 0 after."""
    width = (_ANNEAL_END - _ANNEAL_START) / num_blocks
    start = (_ANNEAL_START + block * width) * total_steps
    end = start + width * total_steps
    if step <= start:
        return 1.0
    if step >= end:
        return 0.0
    return (1.0 - (step - start) / (end - start)) ** _ANNEAL_POWER


class _ResizableEomt(EomtForUniversalSegmentation):
    """EoMT whose patch grid follows the input: position embeddings are resized to it."""

    def __init__(self, config: EomtConfig):
        super().__init__(config)
        # Resize inside the embeddings' lookup: EomtEmbeddings adds position_embeddings(position_ids).
        self.embeddings.position_embeddings.register_forward_hook(self._resize_positions)

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        patch = self.config.patch_size
        self.grid_size = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        return super().forward(pixel_values, **kwargs)

    def _resize_positions(self, module: nn.Embedding, args, output: torch.Tensor) -> torch.Tensor:
        native = self.config.image_size // self.config.patch_size
        if self.grid_size == (native, native):
            return output
        grid = output.reshape(1, native, native, -1).permute(0, 3, 1, 2)
        resized = nn.functional.interpolate(
            grid.float(), size=self.grid_size, mode="bicubic", align_corners=False
        ).to(output.dtype)
        return resized.flatten(2).transpose(1, 2)


class _ResizableEomtDinov3(EomtDinov3ForUniversalSegmentation):
    """EoMT on DINOv3, whose rotary position embeddings already follow the input; only the patch
    grid that reshapes the mask features must too."""

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        patch = self.config.patch_size
        self.grid_size = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        return super().forward(pixel_values, **kwargs)


class EomtSegmentation(SegmentationModel):
    network_class = _ResizableEomt

    def set_training_progress(self, step: int, total_steps: int) -> None:
        # The probabilities live in a saved buffer, so checkpoints and mid-training validation see
        # the current annealing state; a finished run predicts without masks.
        blocks = self.network.config.num_blocks
        probs = [mask_probability(block, blocks, step, total_steps) for block in range(blocks)]
        self.network.attn_mask_probs.copy_(torch.tensor(probs))

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        images, masks = self._pad(images, masks)
        mask_labels, class_labels = semantic_targets(masks)
        output = self.network(
            pixel_values=images, mask_labels=mask_labels, class_labels=class_labels
        )
        return output.loss

    def _predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        padded, _ = self._pad(images, None)
        output = self.network(pixel_values=padded)
        with torch.autocast(device_type=images.device.type, enabled=False):
            log_probs = semantic_log_probs(output, padded)
        return log_probs[..., : images.shape[-2], : images.shape[-1]]

    def _pad(self, images: torch.Tensor, masks: torch.Tensor | None):
        """Pad bottom/right to a multiple of the patch size; padded pixels are ignored in the loss."""
        patch = self.network.config.patch_size
        pad_h, pad_w = -images.shape[-2] % patch, -images.shape[-1] % patch
        if pad_h == 0 and pad_w == 0:
            return images, masks
        images = nn.functional.pad(images, (0, pad_w, 0, pad_h))
        if masks is not None:
            masks = nn.functional.pad(masks, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        return images, masks


class EomtDinov3Segmentation(EomtSegmentation):
    network_class = _ResizableEomtDinov3
