"""Pseudo-labels: confident ensemble predictions on unlabelled images as training data.

A pixel keeps its predicted class when the probability of that class is >= tau; the
others get the ignore index 255. An image whose confident share is below
`min_confident_fraction` is left out (listed with its reason in lineage.json).

The labels come from the ensemble's selected stage, but the confidence may come from
another folder: after DenseCRF the marginals are overconfident (on real photos 99.5% of
pixels passed tau 0.7), so the pipeline reads it from the pre-CRF soft vote.

The output is a prepared dataset (trashseg.data.layout) with one split, `train`:

    OUT/classes.json, OUT/splits/train.json, OUT/images/..., OUT/masks/... (255 = ignore)
    OUT/lineage.json   predictions and their models/ensemble config, tau, the confidence
                       source, kept and dropped images, the kept-pixel share
"""

from __future__ import annotations

import hashlib
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
    kept_pixel_share: float  # labelled (not ignored) pixels of the kept images / all their pixels


def pseudo_label_mask(probs: np.ndarray, mask: np.ndarray, tau: float) -> np.ndarray:
    """`mask` where the probability of its class is >= tau, else 255."""
    confidence = np.take_along_axis(probs, mask[None].astype(np.intp), axis=0)[0]
    return np.where(confidence >= tau, mask, IGNORE_INDEX).astype(np.uint8)


def make_pseudo_labels(
    prediction_dir: str | Path,
    dataset_dir: str | Path,
    out_dir: str | Path,
    config: PseudoLabelConfig,
    *,
    confidence_dir: str | Path | None = None,
) -> PseudoLabelResult:
    """Build the pseudo-label dataset from a prediction folder of `config.split`.

    The class of a pixel is the prediction folder's mask (the ensemble's final labels);
    its confidence is that class's probability in `confidence_dir` (e.g. the pre-CRF soft
    vote), or by default in the prediction folder itself.
    """
    predictions = PredictionSet.open(prediction_dir)
    confidence = PredictionSet.open(confidence_dir) if confidence_dir is not None else predictions
    source = PreparedDataset(dataset_dir)
    classes = source.classes()
    for folder, folder_dir in ((predictions, prediction_dir), (confidence, confidence_dir)):
        if tuple(folder.class_names) != classes.names:
            raise DataError(
                f"{folder_dir} predicts classes {folder.class_names}, "
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
    for folder, folder_dir in ((predictions, prediction_dir), (confidence, confidence_dir)):
        predicted = set(folder.file_names)
        missing = [im["file_name"] for im in images if im["file_name"] not in predicted]
        if missing:
            raise DataError(
                f"{folder_dir} has no prediction for {len(missing)} {config.split} image(s): "
                f"{', '.join(missing[:10])}; predict the whole split"
            )

    out = PreparedDataset(out_dir)
    if out.root.exists() and any(out.root.iterdir()):
        raise DataError(
            f"{out.root} exists and is not empty; choose a new folder for the pseudo-label dataset"
        )
    (out.root / "splits").mkdir(parents=True)
    classes.save(out.classes_file)

    try:
        kept_images, kept, dropped = _write_confident_images(images, predictions, confidence, source, out, config)
    except BaseException:
        shutil.rmtree(out.root)  # leave no half dataset behind
        raise
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
    kept_share = sum(k["confident_fraction"] * k["pixels"] for k in kept) / sum(k["pixels"] for k in kept)
    lineage = _lineage(prediction_dir, predictions, confidence_dir, confidence, dataset_dir, source, config, kept, dropped)
    lineage["kept_pixel_share"] = kept_share
    write_text(out.lineage_file, json.dumps(lineage, indent=2) + "\n")
    log.info(
        "pseudo-labels: kept %d, dropped %d image(s); %.1f%% of the kept images' pixels labelled "
        "(confidence from %s) -> %s",
        len(kept), len(dropped), 100 * kept_share, confidence_dir or prediction_dir, out.root,
    )
    return PseudoLabelResult(
        out.root,
        [k["file_name"] for k in kept],
        [d["file_name"] for d in dropped],
        out.lineage_file,
        kept_share,
    )


def _write_confident_images(images, predictions: PredictionSet, confidence: PredictionSet, source: PreparedDataset,
                            out: PreparedDataset, config):
    """Write the mask and copy the image of each image confident enough; returns
    (kept COCO image records, kept entries, dropped entries with reasons)."""
    kept_images, kept, dropped = [], [], []
    progress = Progress(len(images), "pseudo-labels", unit="img")
    for image in images:
        name = image["file_name"]
        labels = predictions.mask(name)
        probs = confidence.probs(name)
        if probs.shape[1:] != labels.shape:
            raise DataError(
                f"{name!r}: the confidence probabilities are {probs.shape[2]}x{probs.shape[1]} but the labels "
                f"{labels.shape[1]}x{labels.shape[0]}; both folders must be predictions of the same images"
            )
        mask = pseudo_label_mask(probs, labels, config.tau)
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
            kept.append({"file_name": name, "confident_fraction": fraction, "pixels": int(mask.size)})
        progress.update(1)
    return kept_images, kept, dropped


def _lineage(prediction_dir, predictions: PredictionSet, confidence_dir, confidence: PredictionSet, dataset_dir,
             source: PreparedDataset, config, kept, dropped) -> dict:
    confidence_source = "labels" if confidence_dir is None else str(Path(confidence_dir).resolve())
    return {
        "kind": "pseudo-labels",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_dataset": str(Path(dataset_dir).resolve()),
        "source_split": config.split,
        "source_lineage": json.loads(source.lineage_file.read_text())
        if source.lineage_file.is_file()
        else None,
        "predictions": {"dir": str(Path(prediction_dir).resolve()), "source": predictions.source},
        "confidence": {"dir": confidence_source, "stage": str(confidence.source.get("stage", ""))},
        "config": to_dict(config),
        "images_sha256": images_hash([k["file_name"] for k in kept]),
        "kept": kept,
        "dropped": dropped,
    }


def images_hash(file_names: list[str]) -> str:
    """sha256 of an image list (names in order, newline-separated): which images a run saw."""
    return hashlib.sha256("\n".join(file_names).encode()).hexdigest()


def lineage_tags(pseudo_dataset_dir: str | Path) -> dict[str, str]:
    """MLflow tags for a run trained with this pseudo-label dataset (`steps.train_step` passes
    them as `train(tags=...)`): which models and ensemble made the labels, tau, which images."""
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
        "pseudo.weights": json.dumps(source.get("weights", {}), sort_keys=True),
        "pseudo.ensemble_config": json.dumps(source.get("ensemble_config", {}), sort_keys=True, separators=(",", ":")),
        "pseudo.confidence_stage": lineage["confidence"]["stage"],
        "pseudo.kept_pixel_share": f"{lineage['kept_pixel_share']:.6f}",
        "pseudo.images_sha256": lineage["images_sha256"],
        "pseudo.tau": str(lineage["config"]["tau"]),
        "pseudo.min_confident_fraction": str(lineage["config"]["min_confident_fraction"]),
        "pseudo.images_kept": str(len(lineage["kept"])),
        "pseudo.images_dropped": str(len(lineage["dropped"])),
    }
