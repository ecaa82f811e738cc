"""Train/val splits and stratified group k-fold over images.

A group is an image (all its annotations go to the same side). Images are stratified on
the set of classes they contain with iterative stratification (Sechidis et al., 2011):
the rarest class is placed first, each of its images into the fold that still wants that
class most. A final repair pass swaps images so that every class shows up in every fold that
should expect it at least once (for k equal folds: each class in >= k images). Everything is deterministic given
the seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trashseg.config import check_range
from trashseg.data.coco import CocoDataset, write_coco
from trashseg.errors import DataError
from trashseg.fileio import write_text


def image_class_sets(dataset: CocoDataset) -> list[frozenset[int]]:
    """The set of class ids in each kept image, in file order."""
    category_to_class = dataset.class_table.category_to_class
    return [
        frozenset(category_to_class[a["category_id"]] for a in dataset.annotations_of(image["id"]))
        for image in dataset.images
    ]


MAX_SEED = 2**32 - 1  # numpy's seed sequence takes non-negative integers


def stratify(labels: Sequence[frozenset[int]], proportions: Sequence[float], seed: int) -> list[int]:
    """Assign each sample (a set of labels) to a fold with the given size proportions."""
    if len(proportions) < 2:
        raise DataError(f"need at least 2 folds, got {len(proportions)}")
    if any(p <= 0 for p in proportions):
        raise DataError(f"fold proportions must be positive, got {list(proportions)}")
    n_samples, n_folds = len(labels), len(proportions)
    if n_samples < n_folds:
        raise DataError(f"cannot split {n_samples} image(s) into {n_folds} parts; need at least {n_folds} images")
    check_range("seed", seed, 0, MAX_SEED)
    rng = np.random.default_rng(seed)
    ratio = np.asarray(proportions, dtype=float) / float(sum(proportions))
    all_labels = sorted(set().union(*labels)) if labels else []
    label_index = {label: i for i, label in enumerate(all_labels)}
    label_counts = np.zeros(len(all_labels))
    for sample in labels:
        for label in sample:
            label_counts[label_index[label]] += 1
    wanted_per_fold = _fold_sizes(ratio, n_samples).astype(float)
    wanted_per_label = np.outer(label_counts, ratio)  # (labels, folds)
    assignment = [-1] * n_samples
    # Random tie-breaking through a shuffled order of samples and a random jitter on folds.
    order = rng.permutation(n_samples)
    remaining = {int(i) for i in order}
    by_label: dict[int, list[int]] = {label: [] for label in all_labels}
    for i in order:
        for label in labels[i]:
            by_label[label].append(int(i))

    def place(sample: int, fold: int) -> None:
        assignment[sample] = fold
        remaining.discard(sample)
        wanted_per_fold[fold] -= 1
        for label in labels[sample]:
            wanted_per_label[label_index[label], fold] -= 1

    while remaining:
        open_counts = {
            label: sum(1 for s in by_label[label] if assignment[s] < 0) for label in all_labels
        }
        open_counts = {label: n for label, n in open_counts.items() if n > 0}
        if not open_counts:
            break
        rarest = min(open_counts, key=lambda label: (open_counts[label], label))
        for sample in by_label[rarest]:
            if assignment[sample] >= 0:
                continue
            want = wanted_per_label[label_index[rarest]].copy()
            # A fold that is already full takes no more images (unless all are full), so
            # multi-label images cannot overfill a small fold such as a 20% val split.
            if (wanted_per_fold > 0).any():
                want[wanted_per_fold <= 0] = -np.inf
            jitter = rng.random(n_folds) * 1e-6
            place(sample, int(np.lexsort((jitter, wanted_per_fold, want))[-1]))
    for sample in [int(i) for i in order if assignment[int(i)] < 0]:  # images with no class
        jitter = rng.random(n_folds) * 1e-6
        place(sample, int(np.argmax(wanted_per_fold + jitter)))
    _repair_coverage(labels, assignment, proportions)
    return assignment


def _fold_sizes(ratio: np.ndarray, n_samples: int) -> np.ndarray:
    """Integer fold sizes summing to n_samples (largest remainder; ties to the first fold)."""
    exact = ratio * n_samples
    sizes = np.floor(exact).astype(np.int64)
    remainder = exact - sizes
    for fold in np.argsort(-remainder, kind="stable")[: n_samples - int(sizes.sum())]:
        sizes[fold] += 1
    return sizes


def _repair_coverage(labels: Sequence[frozenset[int]], assignment: list[int], proportions: Sequence[float]) -> None:
    """Give every fold each class it should expect at least once (count x share >= 1).

    An image with the class moves in from a fold holding it twice or more; in exchange an
    image without it moves back, so fold sizes stay put. Neither move may take the last
    image of any class away from a fold; where no such swap exists the fold stays as is."""
    ratio = np.asarray(proportions, dtype=float) / float(sum(proportions))
    n_folds = len(ratio)
    holders: dict[int, np.ndarray] = {}  # class -> images holding it, per fold
    for sample, fold in zip(labels, assignment, strict=True):
        for label in sample:
            holders.setdefault(label, np.zeros(n_folds, dtype=np.int64))[fold] += 1

    def can_leave(sample: int) -> bool:
        return all(holders[other][assignment[sample]] >= 2 for other in labels[sample])

    def move(sample: int, fold: int) -> None:
        for other in labels[sample]:
            holders[other][assignment[sample]] -= 1
            holders[other][fold] += 1
        assignment[sample] = fold

    for label in sorted(holders):
        for fold in range(n_folds):
            if holders[label].sum() * ratio[fold] < 1 or holders[label][fold] > 0:
                continue
            donors = [i for i, s in enumerate(labels) if label in s and assignment[i] != fold and can_leave(i)]
            returns = [i for i, s in enumerate(labels) if assignment[i] == fold and label not in s and can_leave(i)]
            if not donors or not returns:
                continue  # no swap keeps sizes and other classes intact
            donor = max(donors, key=lambda i: (holders[label][assignment[i]], -i))
            source = assignment[donor]
            move(donor, fold)
            move(min(returns, key=lambda i: (len(labels[i]), i)), source)


@dataclass(frozen=True)
class Split:
    train: list[int]  # image ids, file order
    val: list[int]


def train_val_split(dataset: CocoDataset, val_fraction: float, seed: int) -> Split:
    """Stratified train/val split of the kept images."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    labels = image_class_sets(dataset)
    folds = stratify(labels, [1.0 - val_fraction, val_fraction], seed)
    ids = [image["id"] for image in dataset.images]
    return Split(
        train=[i for i, f in zip(ids, folds, strict=True) if f == 0],
        val=[i for i, f in zip(ids, folds, strict=True) if f == 1],
    )


def kfold_splits(dataset: CocoDataset, n_folds: int, seed: int) -> list[Split]:
    """Stratified group k-fold: fold k validates on its images and trains on the rest."""
    if not 2 <= n_folds <= len(dataset.images):  # more folds than images leaves a fold with no image
        raise DataError(f"folds={n_folds}: expected 2 to {len(dataset.images)} (the number of images; one fold needs one image)")
    folds = stratify(image_class_sets(dataset), [1.0] * n_folds, seed)
    ids = [image["id"] for image in dataset.images]
    return [
        Split(
            train=[i for i, f in zip(ids, folds, strict=True) if f != k],
            val=[i for i, f in zip(ids, folds, strict=True) if f == k],
        )
        for k in range(n_folds)
    ]


def write_split(dataset: CocoDataset, split: Split, out_dir: str | Path) -> dict[str, Path]:
    """OUT/train.json and OUT/val.json: COCO subsets of `dataset` (file_names unchanged)."""
    out_dir = Path(out_dir)
    paths = {"train": out_dir / "train.json", "val": out_dir / "val.json"}
    write_coco(dataset.subset(split.train), paths["train"])
    write_coco(dataset.subset(split.val), paths["val"])
    return paths


def write_kfold(dataset: CocoDataset, splits: Sequence[Split], out_dir: str | Path) -> Path:
    """OUT/fold_<k>/{train,val}.json per fold and OUT/folds.json (file_name -> fold)."""
    out_dir = Path(out_dir)
    file_name = {image["id"]: image["file_name"] for image in dataset.images}
    fold_of = {}
    for k, split in enumerate(splits):
        write_split(dataset, split, out_dir / f"fold_{k}")
        fold_of.update({file_name[i]: k for i in split.val})
    index = out_dir / "folds.json"
    write_text(index, json.dumps({"folds": len(splits), "fold_of": fold_of}, indent=1) + "\n")
    return index
