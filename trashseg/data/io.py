"""Pixel reads of a prepared dataset: every image and mask is decoded and checked here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trashseg.data.images import read_gray, read_rgb
from trashseg.data.layout import IGNORE_INDEX, Sample
from trashseg.errors import DataError


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    if not path.is_file():
        raise DataError(f"image {path} is missing; re-run prepare for this dataset")
    return read_rgb(path)


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """HxW uint8 class ids, checked to lie in 0..num_classes-1 or be IGNORE_INDEX."""
    if not path.is_file():
        raise DataError(f"mask {path} is missing; re-run prepare for this dataset")
    mask = read_gray(path)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DataError(f"mask {path}: expected a single-channel uint8 PNG, got shape {mask.shape} {mask.dtype}")
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise DataError(
            f"mask {path} holds class ids {np.unique(mask[bad])[:10].tolist()} outside 0..{num_classes - 1} "
            f"(and {IGNORE_INDEX} = ignore); its classes.json does not match the masks"
        )
    return mask


def read_pair(sample: Sample, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of one sample, checked to have the same size."""
    image = read_image(sample.image)
    mask = read_mask(sample.mask, num_classes)
    if image.shape[:2] != mask.shape:
        raise DataError(f"{sample.file_name}: image is {image.shape[:2]} but its mask is {mask.shape}")
    return image, mask
