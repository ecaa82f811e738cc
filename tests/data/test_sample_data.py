"""The synthetic sample dataset: deterministic, all classes, learnable looks, test split unlabelled."""

import json
from collections import Counter

import numpy as np
import pytest

from trashseg.data.classes import DEFAULT_TAXONOMY
from trashseg.data.coco import load_coco
from trashseg.data.sample import LOOKS, generate_sample_dataset
from trashseg.data.stats import dataset_stats
from trashseg.errors import DataError


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    generate_sample_dataset(out, images=40, size=96, seed=5)
    return out


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(sample, tmp_path):
    generate_sample_dataset(tmp_path / "again", images=40, size=96, seed=5)
    generate_sample_dataset(tmp_path / "other", images=40, size=96, seed=6)
    first = _files(sample)
    assert first == _files(tmp_path / "again")
    other = _files(tmp_path / "other")
    assert other.keys() == first.keys()
    assert other["train.json"] != first["train.json"]


def test_splits_hold_every_class_and_test_is_unlabelled(sample):
    sizes = {}
    for split in ("train", "val", "test"):
        dataset = load_coco(sample / f"{split}.json")
        assert dataset.report.skipped == []  # the generator writes only valid records
        assert dataset.class_table.names == DEFAULT_TAXONOMY
        sizes[split] = len(dataset.images)
        categories = {a["category_id"] for a in dataset.annotations}
        if split == "test":
            assert json.loads((sample / "test.json").read_text())["annotations"] == []
        else:
            assert categories == set(range(1, 11)), f"{split} lacks {set(range(1, 11)) - categories}"
    assert sizes == {"train": 28, "val": 6, "test": 6}
    assert all(im["file_name"].startswith(f"{s}/") for s in sizes for im in load_coco(sample / f"{s}.json").images)


def test_rare_classes_are_rarer_and_overlaps_small_objects_and_crowds_occur(tmp_path):
    generate_sample_dataset(tmp_path, images=120, size=64, seed=1)
    annotations = json.loads((tmp_path / "train.json").read_text())["annotations"]
    counts = Counter(a["category_id"] for a in annotations)
    common = np.mean([counts[c] for c in range(1, 9)])
    assert counts[9] < common / 2 and counts[10] < common / 2  # Battery, Clothing
    assert any(a["area"] < 0.01 * 64 * 64 for a in annotations)  # small objects
    assert any(a["iscrowd"] == 1 and isinstance(a["segmentation"], dict) for a in annotations)
    dataset = load_coco(tmp_path / "train.json")
    areas = sum(a["area"] for a in dataset.annotations)
    stats = dataset_stats(dataset)
    painted = stats["pixels"] - stats["classes"][0]["pixels"]
    assert painted < areas  # some objects cover others


def test_each_class_has_its_own_colour_in_the_pictures(sample):
    # Mean colour of each class's mask pixels in the JPEGs is near its look's colour:
    # masks and pictures agree, and classes are told apart by colour.
    stats = dataset_stats(load_coco(sample / "train.json"))
    for look, cls in zip(LOOKS, stats["classes"][1:], strict=True):
        if look.texture == "band":  # Battery: dark body, bright cap
            continue
        distance = np.abs(np.asarray(cls["mean_rgb"]) - np.asarray(look.colour)).max()
        assert distance < 70, f"{cls['name']}: mean {cls['mean_rgb']} far from {look.colour}"


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(DataError, match="at least 3"):
        generate_sample_dataset(tmp_path / "a", images=2)
    with pytest.raises(DataError, match="at least 32"):
        generate_sample_dataset(tmp_path / "b", images=5, size=8)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not empty"):
        generate_sample_dataset(tmp_path / "c", images=5, size=32)
