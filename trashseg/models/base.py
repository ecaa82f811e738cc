"""The one interface every architecture family implements for training and prediction."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from trashseg.data.layout import IGNORE_INDEX
from trashseg.errors import DataError


class SegmentationModel(nn.Module):
    """A semantic segmentation network behind one interface, whatever its family.

    `images` are (B, 3, H, W) normalised floats; `masks` are (B, H, W) long class ids with
    255 for pixels to ignore. `predict_logits` returns (B, C, H, W) scores at the input
    resolution whose softmax over C is the per-pixel class distribution. `state_dict()` holds
    tensors only, so checkpoints load with `torch.load(weights_only=True)`.
    """

    def __init__(self, architecture: str, num_classes: int, network: nn.Module):
        super().__init__()
        self.architecture = architecture
        self.num_classes = num_classes
        # The wrapped transformers model; its state_dict keys start with "network.".
        self.network = network

    def loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        self._check_masks(images, masks)
        return self._loss(images, masks)

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32 class scores at the input resolution, also under autocast."""
        self._check_images(images)
        return self._predict_logits(images).float()

    def set_training_progress(self, step: int, total_steps: int) -> None:
        """Told by the training loop before each optimizer step (`step` of `total_steps`, from 0),
        for families whose training schedule changes the network (EoMT's mask annealing).
        Nothing by default."""

    def parameter_count(self) -> int:
        return sum(parameter.numel() for parameter in self.parameters())

    def save_pretrained(self, folder: str | Path) -> None:
        """Write a transformers checkpoint folder that `build_model(..., pretrained=folder)` loads."""
        self.network.save_pretrained(str(folder))

    def _loss(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise DataError(
                f"{self.architecture}: images have shape {tuple(images.shape)} and dtype "
                f"{images.dtype}; expected a float tensor (batch, 3, height, width). "
                "Stack normalised RGB images channel-first."
            )

    def _check_masks(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        expected = (images.shape[0], *images.shape[2:])
        if masks.ndim != 3 or tuple(masks.shape) != expected or masks.dtype != torch.long:
            raise DataError(
                f"{self.architecture}: masks have shape {tuple(masks.shape)} and dtype {masks.dtype}; "
                f"expected a long tensor of shape {expected} matching the images."
            )
        bad = (masks != IGNORE_INDEX) & ((masks < 0) | (masks >= self.num_classes))
        if bool(bad.any()):
            values = sorted(set(masks[bad].unique().tolist()))[:10]
            raise DataError(
                f"{self.architecture}: masks contain class ids {values}; expected 0.."
                f"{self.num_classes - 1} or {IGNORE_INDEX} (ignore). Check that the model was "
                "built with the dataset's class table."
            )


def cross_entropy(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean pixel cross entropy ignoring 255; an all-ignored batch gives a zero loss, not NaN."""
    if not bool((masks != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX)


def resize_to(scores: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) scores to the images' height and width."""
    if scores.shape[-2:] == images.shape[-2:]:
        return scores
    return nn.functional.interpolate(
        scores, size=images.shape[-2:], mode="bilinear", align_corners=False
    )


def full_precision(device: torch.device):
    """A context that turns autocast off on `device`; a no-op on devices without autocast (the
    "meta" device, on which architectures are sized and their FLOPs counted)."""
    if device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)
