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
    # Written last, as `prepare` does: a folder without it is an unfinished dataset.
    dataset.dataset_file.write_text(json.dumps({"splits": {s: len(i) for s, i in splits.items()}}))  # no version
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


PLANTED_SIZE = 10


def _right_or_other(truth: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(4, H, W): probability `right` on the true class (0 or 1), the rest on the other one."""
    probs = np.zeros((4, *truth.shape), np.float32)
    np.put_along_axis(probs, truth[None].astype(np.intp), right[None], axis=0)
    np.put_along_axis(probs, (1 - truth)[None].astype(np.intp), 1 - right[None], axis=0)
    return probs


def planted_cross_fit_case(tmp_path, images: int = 4) -> dict[str, list]:
    """The planted case of test_recipe_cross_fit (see its docstring); returns the val and test
    prediction folders of its two models (the dataset is at tmp_path/data)."""
    from trashseg.ensemble.holdout import cross_fit_folds

    rng = np.random.default_rng(0)
    val_names = [f"val/{i}.png" for i in range(images)]
    fold_a, _ = cross_fit_folds(val_names, 2)
    splits = {"val": [], "test": []}
    probs = [{}, {}]
    for name in [*val_names, "test/0.png"]:
        truth = rng.integers(0, 2, (PLANTED_SIZE, PLANTED_SIZE)).astype(np.uint8)
        right = [np.empty((PLANTED_SIZE, PLANTED_SIZE), np.float32) for _ in range(2)]
        right[0][:4], right[1][:4] = 0.9, 0.4
        right[0][4], right[1][4] = 0.4, 0.9
        first = 0 if name in fold_a or name.startswith("test") else 1
        right[first][5:], right[1 - first][5:] = 0.7, 0.2
        split = name.split("/")[0]
        splits[split].append((name, np.zeros((PLANTED_SIZE, PLANTED_SIZE, 3), np.uint8), truth if split == "val" else None))
        for m in range(2):
            probs[m][name] = _right_or_other(truth, right[m])
    write_dataset(tmp_path / "data", splits)
    dirs = {"val": [], "test": []}
    for m in range(2):
        for split in dirs:
            write_predictions(tmp_path / f"m{m}" / split, {n: p for n, p in probs[m].items() if n.startswith(split)},
                              {"architecture": f"arch{m}"})
            dirs[split].append(tmp_path / f"m{m}" / split)
    return dirs
