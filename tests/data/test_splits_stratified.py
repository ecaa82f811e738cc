"""Splits: deterministic by seed, stratified on class presence, written as COCO subsets."""

import json
from collections import Counter

import numpy as np
import pytest
from coco_builders import CATEGORIES, annotation

from trashseg.data.coco import load_coco
from trashseg.data.splits import (
    kfold_splits,
    stratify,
    train_val_split,
    write_kfold,
    write_split,
)
from trashseg.errors import ConfigError, DataError


def random_label_sets(n_images=120, seed=3):
    """Skewed multi-label presence: common classes, mid ones and rare ones (5-8 images)."""
    rng = np.random.default_rng(seed)
    probabilities = np.array([0.6, 0.5, 0.3, 0.2, 0.1, 0.06, 0.05])
    return [frozenset(int(c) + 1 for c in np.flatnonzero(rng.random(7) < probabilities)) for _ in range(n_images)]


def test_stratify_is_deterministic_by_seed():
    labels = random_label_sets()
    first = stratify(labels, [1] * 5, seed=7)
    assert first == stratify(labels, [1] * 5, seed=7)
    assert first != stratify(labels, [1] * 5, seed=8)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_every_class_in_at_least_k_images_appears_in_every_fold(seed):
    labels = random_label_sets(seed=seed)
    k = 5
    folds = stratify(labels, [1] * k, seed=seed)
    assert sorted(set(folds)) == list(range(k))
    sizes = Counter(folds)
    assert max(sizes.values()) - min(sizes.values()) <= 3  # balanced folds
    counts = Counter(c for s in labels for c in s)
    for cls, n in counts.items():
        present_in = {folds[i] for i, s in enumerate(labels) if cls in s}
        if n >= k:
            assert present_in == set(range(k)), f"class {cls} ({n} images) missing from a fold"


def test_stratification_spreads_each_class_evenly():
    labels = random_label_sets(n_images=300, seed=5)
    folds = stratify(labels, [1] * 4, seed=0)
    for cls in (1, 2, 3):
        per_fold = Counter(folds[i] for i, s in enumerate(labels) if cls in s)
        assert max(per_fold.values()) - min(per_fold.values()) <= 2


def _dataset(write_dataset, n_images=40):
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(n_images):
        images.append({"id": image_id, "file_name": f"imgs/{image_id}.png", "width": 32, "height": 32})
        for category in sorted({int(c) for c in rng.choice([1, 1, 2, 2, 3], size=rng.integers(1, 3))}):
            annotations.append(annotation(len(annotations), image_id, category, 2 + 8 * (category - 1), 4, 6))
    return load_coco(write_dataset({"images": images, "categories": CATEGORIES, "annotations": annotations}))


def test_train_val_split_by_fraction_keeps_images_whole(write_dataset, tmp_path):
    dataset = _dataset(write_dataset)
    split = train_val_split(dataset, 0.25, seed=0)
    assert len(split.val) == 10 and len(split.train) == 30
    assert set(split.train).isdisjoint(split.val)
    assert split == train_val_split(dataset, 0.25, seed=0)
    paths = write_split(dataset, split, tmp_path / "out")
    val = load_coco(paths["val"], image_root=dataset.image_root)
    assert [im["id"] for im in val.images] == split.val  # file order kept
    assert {a["image_id"] for a in val.annotations} <= set(split.val)
    assert len(val.annotations) == sum(len(dataset.annotations_of(i)) for i in split.val)
    assert {a["category_id"] for a in val.annotations} == {1, 2, 3}


def test_kfold_files_partition_the_images(write_dataset, tmp_path):
    dataset = _dataset(write_dataset)
    splits = kfold_splits(dataset, 4, seed=1)
    index = json.loads(write_kfold(dataset, splits, tmp_path / "folds").read_text())
    assert sorted(i for s in splits for i in s.val) == sorted(im["id"] for im in dataset.images)
    assert Counter(index["fold_of"].values()) == Counter({k: len(s.val) for k, s in enumerate(splits)})
    for k, split in enumerate(splits):
        train = load_coco(tmp_path / "folds" / f"fold_{k}" / "train.json", image_root=dataset.image_root)
        assert {im["id"] for im in train.images} == set(split.train)
        assert set(split.train).isdisjoint(split.val)


def test_bad_split_arguments_name_the_value(write_dataset):
    dataset = _dataset(write_dataset, n_images=3)
    with pytest.raises(DataError, match=r"folds=1: expected 2 to 3"):
        kfold_splits(dataset, 1, seed=0)
    with pytest.raises(DataError, match="between 0 and 1.*got 1.5"):
        train_val_split(dataset, 1.5, seed=0)
    with pytest.raises(DataError, match=r"folds=5: expected 2 to 3 \(the number of images"):
        kfold_splits(dataset, 5, seed=0)
    # numpy refuses negative seeds with its own ValueError; the range is named instead
    with pytest.raises(ConfigError, match=r"seed=-1: expected an integer in \[0, 4294967295\]"):
        train_val_split(dataset, 0.5, seed=-1)


def test_repair_swaps_an_image_into_a_fold_missing_a_class():
    from trashseg.data.splits import _repair_coverage

    labels = [frozenset({1}), frozenset({1}), frozenset({1, 2}), frozenset({2}), frozenset({2})]
    assignment = [0, 0, 0, 1, 1]  # class 1 (3 images) is missing from fold 1
    _repair_coverage(labels, assignment, [1, 1])
    assert {assignment[i] for i in (0, 1, 2)} == {0, 1}
    assert {assignment[i] for i in (2, 3, 4)} == {0, 1}  # class 2 kept in both folds
    assert sorted(assignment) == [0, 0, 0, 1, 1]  # swapped: fold sizes unchanged
