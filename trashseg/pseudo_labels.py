"""Pseudo-labels: confident ensemble predictions on unlabelled images as training data.

A pixel keeps its predicted class when the probability of that class is >= tau; the
others get the ignore index 255. An image whose confident share is below
`min_confident_fraction` is left out (listed with its reason in lineage.json).

The output is a prepared dataset (trashseg.data.layout) with one split, `train`:

    OUT/classes.json, OUT/splits/train.json, OUT/images/..., OUT/masks/... (255 = ignore)
    OUT/lineage.json   predictions and their models/ensemble config, tau, kept and dropped images
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from trashseg.config import to_dict
from trashseg.data.layout import IGNORE_INDEX, PreparedDataset
from trashseg.errors import ConfigError, DataError
from trashseg.fileio import atomic_write, write_text
from trashseg.predictions import PredictionSet, check_made_from
from trashseg.progress import Progress

log = logging.getLogger(__name__)

PSEUDO_SPLIT = "train"


@dataclass(frozen=True)
class PseudoLabelConfig:
    tau: float = 0.9  # a pixel is kept when its class probability is >= tau
    min_confident_fraction: float = 0.5  # an image is kept when at least this share of pixels is
    split: str = "test"  # the unlabelled split the predictions cover

    def __post_init__(self) -> None:
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")
        if not 0 <= self.min_confident_fraction <= 1:
            raise ConfigError(
                f"min_confident_fraction must be in [0, 1], got {self.min_confident_fraction}"
            )


@dataclass(frozen=True)
class PseudoLabelResult:
    dataset_dir: Path
    kept: list[str]
    dropped: list[str]
    lineage_file: Path


def pseudo_label_mask(probs: np.ndarray, mask: np.ndarray, tau: float) -> np.ndarray:
    """`mask` where the probability of its class is >= tau, else 255."""
    confidence = np.take_along_axis(probs, mask[None].astype(np.intp), axis=0)[0]
    return np.where(confidence >= tau, mask, IGNORE_INDEX).astype(np.uint8)


def make_pseudo_labels(
    prediction_dir: str | Path,
    dataset_dir: str | Path,
    out_dir: str | Path,
    config: PseudoLabelConfig,
) -> PseudoLabelResult:
    """Build the pseudo-label dataset from a prediction folder of `config.split`.

    The class of a pixel is the prediction folder's mask (the ensemble's final labels);
    its confidence is that class's probability, which equals the max probability
    wherever the mask is the argmax.
    """
    predictions = PredictionSet.open(prediction_dir)
    source = PreparedDataset(dataset_dir)
    classes = source.classes()
    if tuple(predictions.class_names) != classes.names:
        raise DataError(
            f"{prediction_dir} predicts classes {predictions.class_names}, "
            f"but {dataset_dir} has {list(classes.names)}"
        )
    split_file = source.split_file(config.split)
    if not split_file.is_file():
        raise DataError(
            f"split {config.split!r} not found in {dataset_dir}; available: {', '.join(source.splits()) or 'none'}"
        )
    check_made_from(predictions, source, config.split)  # same file names, other images: wrong labels
    split_data = json.loads(split_file.read_text())
    images = split_data.get("images", [])
    predicted = set(predictions.file_names)
    missing = [im["file_name"] for im in images if im["file_name"] not in predicted]
    if missing:
        raise DataError(
            f"{prediction_dir} has no prediction for {len(missing)} {config.split} image(s): "
            f"{', '.join(missing[:10])}; predict the whole split"
        )

    out = PreparedDataset(out_dir)
    if out.root.exists() and any(out.root.iterdir()):
        raise DataError(
            f"{out.root} exists and is not empty; choose a new folder for the pseudo-label dataset"
        )
    (out.root / "splits").mkdir(parents=True)
    classes.save(out.classes_file)

    kept_images, kept, dropped = _write_confident_images(images, predictions, source, out, config)
    if not kept:
        shutil.rmtree(out.root)  # nothing usable was written; leave no half dataset behind
        raise DataError(
            f"no image has at least {config.min_confident_fraction} of its pixels at probability >= "
            f"tau={config.tau} ({len(images)} images checked); lower tau or min_confident_fraction"
        )

    coco = {key: value for key, value in split_data.items() if key not in ("images", "annotations")}
    coco["images"] = kept_images
    coco["annotations"] = []  # the labels are the masks; pseudo-labels have no instances
    write_text(out.split_file(PSEUDO_SPLIT), json.dumps(coco) + "\n")
    lineage = _lineage(prediction_dir, predictions, dataset_dir, source, config, kept, dropped)
    write_text(out.lineage_file, json.dumps(lineage, indent=2) + "\n")
    log.info("pseudo-labels: kept %d, dropped %d image(s) -> %s", len(kept), len(dropped), out.root)
    return PseudoLabelResult(
        out.root,
        [k["file_name"] for k in kept],
        [d["file_name"] for d in dropped],
        out.lineage_file,
    )


def _write_confident_images(images, predictions: PredictionSet, source: PreparedDataset, out: PreparedDataset, config):
    """Write the mask and copy the image of each image confident enough; returns
    (kept COCO image records, kept entries, dropped entries with reasons)."""
    kept_images, kept, dropped = [], [], []
    progress = Progress(len(images), "pseudo-labels", unit="img")
    for image in images:
        name = image["file_name"]
        mask = pseudo_label_mask(predictions.probs(name), predictions.mask(name), config.tau)
        fraction = float(np.mean(mask != IGNORE_INDEX))
        if fraction < config.min_confident_fraction:
            dropped.append(
                {
                    "file_name": name,
                    "confident_fraction": fraction,
                    "reason": f"only {fraction:.3f} of pixels have probability >= tau={config.tau}, "
                    f"below min_confident_fraction={config.min_confident_fraction}",
                }
            )
        else:
            with atomic_write(out.mask_path(name)) as handle:
                Image.fromarray(mask).save(handle, format="PNG")
            out.image_path(name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source.image_path(name), out.image_path(name))
            kept_images.append(image)
            kept.append({"file_name": name, "confident_fraction": fraction})
        progress.update(1)
    return kept_images, kept, dropped


def _lineage(prediction_dir, predictions: PredictionSet, dataset_dir, source: PreparedDataset, config, kept, dropped) -> dict:
    return {
        "kind": "pseudo-labels",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_dataset": str(Path(dataset_dir).resolve()),
        "source_split": config.split,
        "source_lineage": json.loads(source.lineage_file.read_text())
        if source.lineage_file.is_file()
        else None,
        "predictions": {"dir": str(Path(prediction_dir).resolve()), "source": predictions.source},
        "config": to_dict(config),
        "kept": kept,
        "dropped": dropped,
    }


def lineage_tags(pseudo_dataset_dir: str | Path) -> dict[str, str]:
    """MLflow tags for a run trained with this pseudo-label dataset (pass as `train(tags=...)`)."""
    lineage_file = PreparedDataset(pseudo_dataset_dir).lineage_file
    if not lineage_file.is_file():
        raise DataError(f"{pseudo_dataset_dir} has no lineage.json; build it with `trashseg pseudo-label`")
    lineage = json.loads(lineage_file.read_text())
    source = lineage["predictions"]["source"]
    return {
        "pseudo.dataset": str(Path(pseudo_dataset_dir).resolve()),
        "pseudo.source_dataset": lineage["source_dataset"],
        "pseudo.source_split": lineage["source_split"],
        "pseudo.predictions": lineage["predictions"]["dir"],
        "pseudo.stage": str(source.get("stage", "")),
        "pseudo.models": ",".join(source.get("models", {})),
        "pseudo.tau": str(lineage["config"]["tau"]),
        "pseudo.min_confident_fraction": str(lineage["config"]["min_confident_fraction"]),
        "pseudo.images_kept": str(len(lineage["kept"])),
        "pseudo.images_dropped": str(len(lineage["dropped"])),
    }
