"""prepare_dataset: the PreparedDataset layout, reports, content hash, fatal errors write nothing."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from trashseg.data.classes import DEFAULT_TAXONOMY
from trashseg.data.coco import load_coco
from trashseg.data.layout import PreparedDataset
from trashseg.data.masks import dataset_mask
from trashseg.data.prepare import dataset_hash, prepare_dataset
from trashseg.data.sample import generate_sample_dataset
from trashseg.errors import DataError


@pytest.fixture(scope="module")
def sample_source(tmp_path_factory):
    source = tmp_path_factory.mktemp("source")
    generate_sample_dataset(source, images=30, size=64, seed=2)
    return source


@pytest.fixture
def source(sample_source, tmp_path):
    copy = tmp_path / "source"
    shutil.copytree(sample_source, copy)
    return copy


def test_prepare_writes_the_layout(source, tmp_path):
    result = prepare_dataset(source, tmp_path / "prepared")
    root = PreparedDataset(result.root)
    assert root.classes().names == DEFAULT_TAXONOMY
    assert root.splits() == ["test", "train", "val"]
    assert result.images == {"train": 22, "val": 4, "test": 4}
    assert not result.val_from_train
    for split in ("train", "val"):
        original = load_coco(source / f"{split}.json")
        samples = root.samples(split)
        assert [s.file_name for s in samples] == [im["file_name"] for im in original.images]
        for image, sample in zip(original.images, samples, strict=True):
            assert sample.image.read_bytes() == original.image_path(image).read_bytes()
            np.testing.assert_array_equal(np.array(Image.open(sample.mask)), dataset_mask(original, image))
    test_samples = root.samples("test")
    assert all(s.image.is_file() and not s.mask.exists() for s in test_samples)  # unlabelled: no masks

    meta = json.loads((root.root / "dataset.json").read_text())
    assert meta["hash"] == result.dataset_version == dataset_hash(source)
    assert meta["splits"] == result.images and meta["source"] == str(source)
    report = json.loads(root.report_file.read_text())
    assert set(report["files"]) == {"train", "val", "test"}
    stats = json.loads((root.stats_dir / "stats.json").read_text())
    assert stats["images"] == 26 and stats["classes"][9]["name"] == "Battery"
    assert (root.stats_dir / "pixel_share.png").stat().st_size > 1000
    markdown = (root.root / "report.md").read_text()
    assert result.dataset_version in markdown and "| train | 22 |" in markdown and "Skipped records: 0" in markdown


def test_without_val_json_train_is_split_stratified_and_seeded(source, tmp_path):
    (source / "val.json").unlink()
    first = prepare_dataset(source, tmp_path / "a", val_fraction=0.25, seed=4)
    again = prepare_dataset(source, tmp_path / "b", val_fraction=0.25, seed=4)
    assert first.val_from_train and first.images["val"] in (5, 6)
    assert first.images["train"] + first.images["val"] == 22
    assert again.images == first.images and again.dataset_version == first.dataset_version
    for split in ("train", "val"):
        assert (tmp_path / "a/splits" / f"{split}.json").read_bytes() == (tmp_path / "b/splits" / f"{split}.json").read_bytes()
    val = json.loads((tmp_path / "a/splits/val.json").read_text())
    assert len({a["category_id"] for a in val["annotations"]}) >= 8  # stratified: most classes in a small val
    assert PreparedDataset(first.root).samples("val")[0].mask.is_file()


def test_skipped_records_are_excluded_and_reported(source, tmp_path):
    data = json.loads((source / "train.json").read_text())
    broken_annotation = data["annotations"][0]
    broken_annotation["segmentation"] = [[1, 1, 5, 5]]
    broken_image = data["images"][1]
    (source / broken_image["file_name"]).unlink()
    (source / "train.json").write_text(json.dumps(data))
    result = prepare_dataset(source, tmp_path / "out")
    root = PreparedDataset(result.root)
    assert result.skipped["train"] == 1 + 1 + sum(a["image_id"] == broken_image["id"] for a in data["annotations"])
    train = json.loads(root.split_file("train").read_text())
    assert broken_image["id"] not in {im["id"] for im in train["images"]}
    assert broken_annotation["id"] not in {a["id"] for a in train["annotations"]}
    skipped = json.loads(root.report_file.read_text())["files"]["train"]["skipped"]
    assert {
        "kind": "image",
        "id": broken_image["id"],
        "reason": f"image file {source / broken_image['file_name']} is missing",
        "file_name": broken_image["file_name"],
    } in skipped
    assert any(s["id"] == broken_annotation["id"] and "at least 3" in s["reason"] for s in skipped)
    markdown = (root.root / "report.md").read_text()
    # Named by id and file_name (Markdown-escaped: "_" would start emphasis).
    name = broken_image["file_name"].replace("_", "\\_")
    assert f"train.json image {broken_image['id']} ('{name}'): image file" in markdown


def test_fatal_problems_in_several_files_are_all_listed_and_nothing_written(source, tmp_path):
    train = json.loads((source / "train.json").read_text())
    train["annotations"][0]["category_id"] = 99
    (source / "train.json").write_text(json.dumps(train))
    val = json.loads((source / "val.json").read_text())
    val["images"][1]["id"] = val["images"][0]["id"]
    (source / "val.json").write_text(json.dumps(val))
    out = tmp_path / "out"
    with pytest.raises(DataError) as raised:
        prepare_dataset(source, out)
    assert "category_id 99" in str(raised.value) and "duplicate id" in str(raised.value)
    assert not out.exists()


def test_an_image_in_two_splits_is_fatal(source, tmp_path):
    val = json.loads((source / "val.json").read_text())
    train = json.loads((source / "train.json").read_text())
    val["images"][0]["file_name"] = train["images"][0]["file_name"]
    (source / "val.json").write_text(json.dumps(val))
    with pytest.raises(DataError, match="in both train.json and val.json"):
        prepare_dataset(source, tmp_path / "out")


def test_non_empty_output_folder_is_refused(source, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        prepare_dataset(source, tmp_path / "out")
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_dataset_hash_follows_content(source):
    before = dataset_hash(source)
    assert before == dataset_hash(source)
    image = source / json.loads((source / "test.json").read_text())["images"][0]["file_name"]
    image.write_bytes(image.read_bytes() + b"\0")
    changed = dataset_hash(source)
    assert changed != before
    image.unlink()
    assert dataset_hash(source) not in (before, changed)
