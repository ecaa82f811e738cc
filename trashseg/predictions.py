"""A prediction folder: per-image class probabilities (for the ensemble) and argmax masks.

    PRED/predictions.json         meta: classes, file_names (in split order), source, dtype
    PRED/probs/<file_name>.npz    `probs`: (C, H, W), uint8 (p * 255, rounded) or float16
    PRED/masks/<file_name>.png    uint8 argmax class ids

Writing: `create` makes the folder; `add` writes one image's entries (from any process,
see `entry_writer`); `save` (or `complete`) writes the meta file last, so a folder with
meta is complete.

uint8 quantisation keeps the ensemble's inputs ~4x smaller than float16 with an error of
at most 1/510 per probability, far below what changes an argmax in practice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from trashseg.data.io import read_mask
from trashseg.data.layout import PreparedDataset
from trashseg.errors import DataError
from trashseg.fileio import atomic_write, write_text
from trashseg.metrics import ConfusionMatrix

ProbabilityDtype = Literal["uint8", "float16"]
META_FILE = "predictions.json"


@dataclass
class PredictionSet:
    root: Path
    class_names: list[str]
    file_names: list[str] = field(default_factory=list)
    dtype: ProbabilityDtype = "uint8"
    source: dict = field(default_factory=dict)  # e.g. architecture, checkpoint, split, tta

    @classmethod
    def create(
        cls,
        root: str | Path,
        class_names: Sequence[str],
        *,
        dtype: ProbabilityDtype = "uint8",
        source: dict | None = None,
    ) -> PredictionSet:
        if dtype not in ("uint8", "float16"):
            raise DataError(f"probability dtype {dtype!r} is not supported; use 'uint8' or 'float16'")
        root = Path(root)
        (root / "probs").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        return cls(root, list(class_names), [], dtype, dict(source or {}))

    @classmethod
    def entry_writer(cls, root: str | Path, class_names: Sequence[str], dtype: ProbabilityDtype = "uint8") -> PredictionSet:
        """A worker's handle on a folder the parent `create`d: it only `add`s entries; the
        parent lists them with `complete` once every worker is done."""
        return cls(Path(root), list(class_names), [], dtype, {})

    def complete(self, file_names: Sequence[str]) -> None:
        """Parent side of a parallel write: record `file_names` (split order) and write the meta."""
        self.file_names = list(file_names)
        self.save()

    @classmethod
    def open(cls, root: str | Path) -> PredictionSet:
        root = Path(root)
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise DataError(f"{root} is not a prediction folder (no {META_FILE}); create it with `trashseg predict`")
        try:
            meta = json.loads(meta_path.read_bytes())
            return cls(root, meta["class_names"], meta["file_names"], meta["dtype"], meta.get("source", {}))
        except (ValueError, KeyError, TypeError) as error:  # not JSON, or not our meta
            raise DataError(
                f"{meta_path} is not a trashseg prediction meta file ({type(error).__name__}: {error}); "
                "recreate the folder with `trashseg predict`"
            ) from None

    def probs_path(self, file_name: str) -> Path:
        return self.root / "probs" / (file_name + ".npz")

    def mask_path(self, file_name: str) -> Path:
        return self.root / "masks" / Path(file_name).with_suffix(".png")

    def add(self, file_name: str, probs: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Store one image's (C, H, W) probabilities and its mask (default: their argmax).

        An explicit `mask` is for post-processed results (consensus overwrite, gating)
        whose labels are not the argmax of any one probability map.
        """
        if probs.ndim != 3 or probs.shape[0] != len(self.class_names):
            raise DataError(
                f"{file_name}: probabilities of shape {probs.shape}, expected ({len(self.class_names)}, H, W)"
            )
        if mask is not None and mask.shape != probs.shape[1:]:
            raise DataError(f"{file_name}: mask of shape {mask.shape}, expected {probs.shape[1:]}")
        probs = np.asarray(probs, dtype=np.float32)
        stored = np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8) if self.dtype == "uint8" else probs.astype(np.float16)
        with atomic_write(self.probs_path(file_name)) as handle:
            np.savez_compressed(handle, probs=stored)
        labels = probs.argmax(axis=0) if mask is None else mask
        with atomic_write(self.mask_path(file_name)) as handle:
            Image.fromarray(labels.astype(np.uint8)).save(handle, format="PNG")
        if file_name not in self.file_names:
            self.file_names.append(file_name)

    def probs(self, file_name: str) -> np.ndarray:
        """(C, H, W) float32 probabilities."""
        path = self.probs_path(file_name)
        if not path.is_file():
            raise DataError(f"{self.root}: no probabilities for {file_name!r} ({path} missing)")
        with np.load(path) as data:
            stored = data["probs"]
        return stored.astype(np.float32) / 255.0 if stored.dtype == np.uint8 else stored.astype(np.float32)

    def mask(self, file_name: str) -> np.ndarray:
        return np.array(Image.open(self.mask_path(file_name)))

    def save(self) -> None:
        """Write the meta file (atomically) last, so a folder with meta is complete."""
        meta = {"class_names": self.class_names, "file_names": self.file_names, "dtype": self.dtype, "source": self.source}
        write_text(self.root / META_FILE, json.dumps(meta, indent=2) + "\n")


def score_predictions(predictions: PredictionSet, dataset: PreparedDataset, file_names: Sequence[str]) -> ConfusionMatrix:
    """The confusion matrix of `predictions`' masks against `dataset`'s masks over `file_names`."""
    matrix = ConfusionMatrix(len(predictions.class_names), predictions.class_names)
    for file_name in file_names:
        target = read_mask(dataset.mask_path(file_name), len(predictions.class_names))
        predicted = predictions.mask(file_name)
        if predicted.shape != target.shape:
            raise DataError(
                f"{file_name}: prediction is {predicted.shape}, ground truth {target.shape}; "
                "predictions must be at the image's original size"
            )
        matrix.update(predicted, target)
    return matrix

def recorded_dataset_versions(source: dict) -> set[str]:
    """Every dataset version a prediction folder's `source` names, nested ensemble members
    included: the recorded `dataset_version`, else that of the recorded `dataset` folder
    when it is still readable here."""
    versions: set[str] = set()
    for record in _source_records(source):
        version = record.get("dataset_version")
        if version is None and isinstance(record.get("dataset"), str):
            version = PreparedDataset(record["dataset"]).dataset_version()
        if isinstance(version, str):
            versions.add(version)
    return versions


def check_made_from(
    predictions: PredictionSet, dataset: PreparedDataset, split: str, *, where: str | None = None,
    error: type[DataError] = DataError,
) -> None:
    """Refuse `predictions` made from another split or dataset version than `dataset`'s `split`.

    File names alone cannot tell two datasets apart (every export has 0001.jpg), so the
    split and dataset version recorded in predictions.json (ensemble members included) are
    compared; a folder or dataset that records none has nothing to compare."""
    where = where or f"split {split!r} of {dataset.root}"
    splits = recorded_splits(predictions.source)
    if splits and splits != {split}:
        raise error(
            f"{predictions.root} holds predictions of split(s) {sorted(splits)}, not {split!r} "
            f"({where}); predict the {split} split"
        )
    expected_version = dataset.dataset_version()
    versions = recorded_dataset_versions(predictions.source)
    if expected_version and versions and versions != {expected_version}:
        raise error(
            f"{predictions.root} was predicted on dataset version(s) {', '.join(v[:12] for v in sorted(versions))}, "
            f"but {where} belongs to version {expected_version[:12]}; the file names may match, the "
            "images do not. Predict this dataset's split with `trashseg predict`"
        )


def recorded_splits(source: dict) -> set[str]:
    """The splits a prediction folder's `source` (and its ensemble members) were made from."""
    return {r["split"] for r in _source_records(source) if isinstance(r.get("split"), str)}


def _source_records(source: dict) -> list[dict]:
    records, stack = [], [source]
    while stack:
        record = stack.pop()
        if isinstance(record, dict):
            records.append(record)
            stack.extend(v for v in record.values() if isinstance(v, dict))
    return records
