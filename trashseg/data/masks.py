"""Semantic masks from COCO instances.

Annotations are painted in descending area order, so small objects lie on top of the
large ones they overlap — how the reference labels were built. Pixels no annotation
covers are Background (class 0).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from trashseg.data.coco import CocoDataset, decode_rle, segmentation_rle
from trashseg.data.layout import PreparedDataset
from trashseg.errors import DataError
from trashseg.fileio import atomic_write
from trashseg.progress import Progress

log = logging.getLogger(__name__)


def semantic_mask(
    annotations: Sequence[Mapping],
    height: int,
    width: int,
    category_to_class: Mapping[int, int],
) -> np.ndarray:
    """(height, width) uint8 class-id mask of one image's annotations."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((height, width), dtype=np.uint8)
    if not annotations:
        return mask
    rles = [segmentation_rle(a["segmentation"], height, width) for a in annotations]
    # One RLE at a time: pycocotools' area() of a list sizes a uint8 array by its length
    # and overflows from 256 annotations on (an image with many objects).
    areas = np.array([mask_utils.area(rle) for rle in rles], dtype=np.int64)
    # Stable sort: equal areas keep file order, so the result never depends on sort internals.
    order = np.argsort(-areas.astype(np.int64), kind="stable")
    for index in order:
        category = annotations[index]["category_id"]
        if category not in category_to_class:
            raise DataError(
                f"annotation {annotations[index].get('id')}: category {category} has no class "
                f"(known categories: {sorted(category_to_class)})"
            )
        mask[decode_rle(rles[index])] = category_to_class[category]
    return mask


def dataset_mask(dataset: CocoDataset, image: Mapping) -> np.ndarray:
    return semantic_mask(
        dataset.annotations_of(image["id"]),
        image["height"],
        image["width"],
        dataset.class_table.category_to_class,
    )


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    with atomic_write(path) as handle:
        Image.fromarray(mask).save(handle, format="PNG")


def write_masks(
    dataset: CocoDataset, out: PreparedDataset | str | Path, images: Sequence[Mapping] | None = None
) -> int:
    """Write the mask of each of `images` (default: every kept image of `dataset`, whose
    annotations they are) to `out.mask_path(file_name)`; return the count."""
    out = out if isinstance(out, PreparedDataset) else PreparedDataset(out)
    images = dataset.images if images is None else images
    category_to_class = dataset.class_table.category_to_class
    progress = Progress(len(images), "masks", unit="img", logger=log)
    for image in images:
        mask = semantic_mask(
            dataset.annotations_of(image["id"]), image["height"], image["width"], category_to_class
        )
        save_mask(mask, out.mask_path(image["file_name"]))
        progress.update(1)
    return len(images)
