"""Builders for the recipe tests: tiny prepared datasets and prediction folders from arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from trashseg.data.classes import ClassTable
from trashseg.data.layout import PreparedDataset
from trashseg.predictions import PredictionSet

CLASS_NAMES = ("Background", "Paper", "Metal", "Battery")


def write_dataset(root: Path, splits: dict[str, list[tuple[str, np.ndarray, np.ndarray | None]]],
                  class_names=CLASS_NAMES) -> PreparedDataset:
    """A prepared dataset: per split, (file_name, RGB image, mask or None) in order."""
    dataset = PreparedDataset(root)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    ClassTable(tuple(class_names), (None, *range(1, len(class_names)))).save(dataset.classes_file)
    categories = [{"id": i, "name": n} for i, n in enumerate(class_names) if i > 0]
    image_id = 0
    for split, items in splits.items():
        records = []
        for file_name, image, mask in items:
            dataset.image_path(file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(dataset.image_path(file_name))
            if mask is not None:
                dataset.mask_path(file_name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8)).save(dataset.mask_path(file_name))
            height, width = image.shape[:2]
            records.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            image_id += 1
        coco = {"images": records, "annotations": [], "categories": categories}
        dataset.split_file(split).write_text(json.dumps(coco))
    return dataset


def write_predictions(root: Path, probs_by_name: dict[str, np.ndarray], source: dict,
                      class_names=CLASS_NAMES, dtype="float16") -> PredictionSet:
    predictions = PredictionSet.create(root, class_names, dtype=dtype, source=source)
    for file_name, probs in probs_by_name.items():
        predictions.add(file_name, probs)
    predictions.save()
    return predictions


def one_hot(mask: np.ndarray, num_classes: int, confidence: float = 0.9) -> np.ndarray:
    """(C, H, W) probabilities: `confidence` on the mask's class, the rest spread evenly."""
    other = (1.0 - confidence) / (num_classes - 1)
    probs = np.full((num_classes, *mask.shape), other, dtype=np.float32)
    np.put_along_axis(probs, mask[None].astype(np.intp), confidence, axis=0)
    return probs
