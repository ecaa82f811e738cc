"""Inference and evaluation: checkpoint -> prediction folder -> scores.

Checkpoints are read through `trashseg.checkpoints`, pixels through `trashseg.data.io`.

`predict` writes per-image class probabilities at each image's original resolution
(the `trashseg.predictions` folder the ensemble reads), averaged in probability space
over test-time augmentation variants (scales x optional horizontal flip). `evaluate`
scores a prediction folder against a split's masks with one confusion matrix.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from trashseg.augment import eval_transform
from trashseg.config import check_range
from trashseg.data.io import read_image, read_mask
from trashseg.data.layout import PreparedDataset
from trashseg.device import AmpMode, autocast, default_device, local_device, resolve_amp_dtype
from trashseg.errors import ConfigError, DataError
from trashseg.fileio import write_text
from trashseg.metrics import ConfusionMatrix, SegmentationScores
from trashseg.predictions import PredictionSet, check_made_from, score_predictions
from trashseg.progress import Progress

MAX_TTA_SCALE = 4.0  # of the training image size
MAX_BATCH_SIZE = 1024  # as TrainConfig.batch_size

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def predict_probabilities(
    model,
    images: Sequence[np.ndarray],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
) -> list[torch.Tensor]:
    """(C, H, W) float32 CPU probabilities for each HxWx3 uint8 image, at its own size.

    Each variant resizes the batch to a square of `image_size * scale`; softmax outputs are
    resized bilinearly (a convex combination, so they still sum to 1) and averaged.
    """
    sums: list[torch.Tensor | None] = [None] * len(images)
    variants = 0
    for scale in scales:
        size = max(32, int(round(image_size * scale)))
        batch = torch.from_numpy(np.stack([eval_transform(image, size, mean, std) for image in images])).to(device)
        for flipped in (False, True) if flip else (False,):
            inputs = batch.flip(-1) if flipped else batch
            with torch.no_grad(), autocast(device, amp_dtype):
                logits = model.predict_logits(inputs)
            probs = logits.float().softmax(dim=1)
            if flipped:
                probs = probs.flip(-1)
            for i, image in enumerate(images):
                resized = torch.nn.functional.interpolate(
                    probs[i : i + 1], size=image.shape[:2], mode="bilinear", align_corners=False
                )[0].cpu()
                sums[i] = resized if sums[i] is None else sums[i] + resized
            variants += 1
    return [total / variants for total in sums]


def predict(
    checkpoint: str | Path,
    dataset_dir: str | Path,
    split: str,
    out_dir: str | Path,
    **options,
) -> PredictionSet:
    """Predict every image of `split` and write a prediction folder to `out_dir`
    (`options`: those of `predict_splits`)."""
    return predict_splits(checkpoint, dataset_dir, {split: out_dir}, **options)[split]


def predict_splits(
    checkpoint: str | Path,
    dataset_dir: str | Path,
    outputs: Mapping[str, str | Path],
    *,
    batch_size: int = 4,
    tta_flip: bool = False,
    tta_scales: Sequence[float] = (1.0,),
    amp: AmpMode = "auto",
    dtype: Literal["uint8", "float16"] = "uint8",
    device: str | None = None,
    processes: int = 1,
) -> dict[str, PredictionSet]:
    """Predict every image of each split in `outputs` (split -> prediction folder), with
    the model built and loaded once for all of them.

    With `processes` > 1 (one per GPU, see `trashseg.launch`) each process predicts every
    `processes`-th image on its own device; this process then lists them, in split order,
    in each folder's meta, so the folders are the same as a single process writes.
    """
    from trashseg.launch import MAX_PROCESSES

    check_range("batch_size", batch_size, 1, MAX_BATCH_SIZE, unit="images")
    check_range("processes", processes, 1, MAX_PROCESSES, unit="(one per GPU)")
    # `not 0 < s <= max` also refuses NaN; a huge factor would resize an image past any memory.
    if not tta_scales or any(not 0 < s <= MAX_TTA_SCALE for s in tta_scales):
        raise ConfigError(
            f"tta_scales={list(tta_scales)}: expected one or more factors in (0, {MAX_TTA_SCALE:g}], e.g. 0.75,1,1.25"
        )
    if processes > 1 and device is not None:
        raise ConfigError(f"device={device!r} with processes={processes}: each process uses its own GPU; leave device unset")
    dataset = PreparedDataset(dataset_dir)
    empty = [split for split in outputs if not dataset.samples(split)]
    if empty:
        raise DataError(f"split(s) {empty} of {dataset.root} list no images; nothing to predict")
    options = _PredictOptions(batch_size, tta_flip, tuple(tta_scales), amp, dtype, device)
    outputs = {split: str(out_dir) for split, out_dir in outputs.items()}
    if processes == 1:
        written = _predict_part(str(checkpoint), str(dataset_dir), outputs, options, parts=1)
        for out in written.values():
            out.save()
        return written
    from trashseg.launch import run_per_process

    parts = run_per_process(_predict_part, (str(checkpoint), str(dataset_dir), outputs, options, processes), processes)
    return {split: _merge_parts([part[split] for part in parts], dataset, split, out_dir) for split, out_dir in outputs.items()}


def _merge_parts(parts: list[PredictionSet], dataset: PreparedDataset, split: str, out_dir: str) -> PredictionSet:
    """The meta of a folder that several processes wrote entries into, in split order."""
    names = [sample.file_name for sample in dataset.samples(split)]
    written = {name for part in parts for name in part.file_names}
    if written != set(names):
        raise DataError(f"{len(set(names) - written)} of {len(names)} images of {split!r} were not predicted into {out_dir}")
    first = parts[0]
    out = PredictionSet.create(out_dir, first.class_names, dtype=first.dtype, source=first.source, codec=first.codec)
    out.complete(names)
    return out


@dataclass(frozen=True)
class _PredictOptions:
    batch_size: int
    tta_flip: bool
    tta_scales: tuple[float, ...]
    amp: AmpMode
    dtype: Literal["uint8", "float16"]
    device: str | None


def _predict_part(
    checkpoint: str, dataset_dir: str, outputs: Mapping[str, str], options: _PredictOptions, parts: int
) -> dict[str, PredictionSet]:
    """Predict this process's share of each split (every `parts`-th image from its rank) into
    its folder; the returned sets list what this process wrote, and the caller writes the meta."""
    rank = int(os.environ.get("RANK", "0")) if parts > 1 else 0
    torch_device = local_device() if parts > 1 else default_device(options.device)
    amp_dtype = resolve_amp_dtype(options.amp, torch_device.type)
    from trashseg.models import load_checkpoint

    model, meta = load_checkpoint(checkpoint, torch_device)
    dataset = PreparedDataset(dataset_dir)
    if dataset.classes_file.is_file() and dataset.classes().names != meta.classes.names:
        raise DataError(
            f"{dataset.root} has classes {list(dataset.classes().names)} but {checkpoint} was trained on "
            f"{list(meta.classes.names)}; predict with a checkpoint trained on this taxonomy"
        )
    written = {}
    for split, out_dir in outputs.items():
        source = {
            "architecture": meta.architecture,
            "checkpoint": str(Path(checkpoint).resolve()),
            "iteration": meta.iteration,
            "dataset": str(dataset.root.resolve()),
            "dataset_version": dataset.dataset_version(),  # checked by `submission`
            "split": split,
            "tta_flip": options.tta_flip,
            "tta_scales": list(options.tta_scales),
            "image_size": meta.image_size,
        }
        out = PredictionSet.create(out_dir, meta.classes.names, dtype=options.dtype, source=source)
        mine = dataset.samples(split)[rank::parts]
        progress = Progress(len(mine), f"predict {split}" + (f" (process {rank + 1} of {parts})" if parts > 1 else ""), unit="img")
        for start in range(0, len(mine), options.batch_size):
            chunk = mine[start : start + options.batch_size]
            images = [read_image(sample.image) for sample in chunk]
            probabilities = predict_probabilities(
                model, images, image_size=meta.image_size, mean=meta.mean, std=meta.std, device=torch_device,
                amp_dtype=amp_dtype, flip=options.tta_flip, scales=options.tta_scales,
            )
            for sample, probs in zip(chunk, probabilities, strict=True):
                out.add(sample.file_name, probs.numpy())
            progress.update(len(chunk))
        written[split] = out
    return written


def evaluate(
    prediction_dir: str | Path,
    dataset_dir: str | Path,
    split: str,
    *,
    metrics_path: str | Path | None = None,
) -> SegmentationScores:
    """Score a prediction folder on `split`; writes the scores to `metrics_path`
    (default PRED/metrics.json). Every image of the split must have a prediction."""
    predictions = PredictionSet.open(prediction_dir)
    dataset = PreparedDataset(dataset_dir)
    classes = dataset.classes()
    if list(classes.names) != list(predictions.class_names):
        raise DataError(
            f"{prediction_dir} predicts classes {predictions.class_names}, {dataset.root} has "
            f"{list(classes.names)}; evaluate predictions made for this dataset"
        )
    check_made_from(predictions, dataset, split)
    samples = dataset.samples(split)
    missing = [s.file_name for s in samples if s.file_name not in set(predictions.file_names)]
    if missing:
        raise DataError(
            f"{prediction_dir} has no prediction for {len(missing)} of {len(samples)} images of split {split!r} "
            f"(e.g. {missing[:3]}); predict the same split first"
        )
    matrix = score_predictions(predictions, dataset, [s.file_name for s in samples])
    scores = matrix.compute()
    path = Path(metrics_path) if metrics_path else predictions.root / METRICS_FILE
    write_text(path, json.dumps({"split": split, **scores.to_dict()}, indent=2) + "\n")
    log.info("%s on %s: mIoU %.4f, pixel accuracy %.4f", prediction_dir, split, scores.miou, scores.pixel_accuracy)
    return scores


def majority_class_scores(dataset_dir: str | Path, split: str = "val") -> SegmentationScores:
    """Scores of the trivial predictor that paints every pixel the split's most common class.

    The floor any trained model must clear: a model that learned only the class prior
    scores about this.
    """
    dataset = PreparedDataset(dataset_dir)
    classes = dataset.classes()
    masks = [read_mask(sample.mask, classes.num_classes) for sample in dataset.samples(split)]
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256)[: classes.num_classes]
    matrix = ConfusionMatrix(classes.num_classes, classes.names)
    for mask in masks:
        matrix.update(np.full_like(mask, counts.argmax()), mask)
    return matrix.compute()
