"""Every validation problem, built as a broken COCO file inside the test."""

import json

import numpy as np
import pytest
from coco_builders import annotation, valid_coco
from pycocotools import mask as mask_utils

from trashseg.data.coco import ValidationReport, load_coco
from trashseg.errors import DataError


def test_valid_file_loads_with_pycocotools_index(write_dataset):
    dataset = load_coco(write_dataset(valid_coco()))
    assert [im["id"] for im in dataset.images] == [1, 2]
    assert [a["id"] for a in dataset.annotations] == [10, 11, 12]
    assert dataset.report.skipped == []
    assert sorted(dataset.coco.getAnnIds(imgIds=[1])) == [10, 11]
    table = dataset.class_table
    assert table.names == ("Background", "can", "bottle", "bag")
    assert table.category_to_class == {1: 1, 2: 2, 3: 3}


def test_image_root_defaults_to_annotation_folder_and_can_be_overridden(write_dataset, tmp_path):
    data = valid_coco()
    images_folder = tmp_path / "elsewhere"
    write_dataset(data, folder=images_folder)  # images live here
    (tmp_path / "ann").mkdir()
    path = tmp_path / "ann" / "train.json"
    path.write_text(json.dumps(data))
    default = load_coco(path)
    assert {s.id for s in default.report.skipped_images} == {1, 2}
    assert load_coco(path, image_root=images_folder).report.skipped == []


def test_file_without_annotations_key_is_a_valid_test_set_only_when_unlabelled(write_dataset):
    data = valid_coco()
    del data["annotations"]
    path = write_dataset(data)
    with pytest.raises(DataError, match="missing key 'annotations'.*--unlabelled"):
        load_coco(path)  # a training file without annotations is not "0 annotations"
    dataset = load_coco(path, unlabelled=True)
    assert "unlabelled" in dataset.report.summary()
    assert not dataset.has_annotations
    assert len(dataset.images) == 2 and dataset.annotations == []
    assert "annotations" not in dataset.subset([1])


def _fatal(mutate):
    data = valid_coco()
    mutate(data)
    return data


FATAL_CASES = {
    "missing images key": (lambda d: d.pop("images"), ["missing required key 'images'"]),
    "missing categories key": (lambda d: d.pop("categories"), ["missing required key 'categories'"]),
    "image without file_name": (lambda d: d["images"][1].pop("file_name"), ["image 2: missing required key(s) file_name"]),
    "annotation without segmentation": (
        lambda d: d["annotations"][0].pop("segmentation"),
        ["annotation 10: missing required key(s) segmentation"],
    ),
    "duplicate image id": (lambda d: d["images"][1].update(id=1), ["image 1: duplicate id"]),
    "duplicate annotation id": (lambda d: d["annotations"][2].update(id=11), ["annotation 11: duplicate id"]),
    "unknown category": (
        lambda d: d["annotations"][1].update(category_id=9),
        ["annotation 11: category_id 9 is not in categories"],
    ),
    "unknown image": (lambda d: d["annotations"][2].update(image_id=77), ["annotation 12: image_id 77 is not in images"]),
    "string id": (lambda d: d["images"][0].update(id="1"), ["image 1: id must be an integer"]),
    "list category id": (
        lambda d: d["annotations"][0].update(category_id=[1]),
        ["annotation 10: category_id must be an integer, got [1]"],
    ),
    "file_name leaving the image root": (
        lambda d: d["images"][0].update(file_name="../../etc/passwd"),
        ["image 1: file_name '../../etc/passwd' must be a relative path without '..'"],
    ),
    "two images, one file": (
        lambda d: d["images"][1].update(file_name="imgs/a.png"),
        ["image 2: file_name 'imgs/a.png' is also used by image 1"],
    ),
}


@pytest.mark.parametrize("case", sorted(FATAL_CASES))
def test_fatal_problem_raises_naming_record(case, write_dataset):
    mutate, expected = FATAL_CASES[case]
    path = write_dataset(_fatal(mutate), images=False)
    with pytest.raises(DataError) as raised:
        load_coco(path)
    for text in expected:
        assert text in str(raised.value)


def test_unreadable_json_is_fatal(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="not readable JSON"):
        load_coco(path)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="top level is a list"):
        load_coco(path)
    with pytest.raises(DataError, match="does not exist"):
        load_coco(tmp_path / "nope.json")


def test_fatal_error_lists_every_problem(write_dataset):
    data = valid_coco()
    data["images"][1]["id"] = 1  # duplicate image id
    data["annotations"][0]["category_id"] = 42  # unknown category
    data["annotations"][2]["image_id"] = 99  # unknown image
    data["annotations"][1]["id"] = 12  # duplicate annotation id
    with pytest.raises(DataError) as raised:
        load_coco(write_dataset(data, images=False))
    message = str(raised.value)
    assert "4 problem(s)" in message
    for text in ("image 1: duplicate id", "category_id 42", "image_id 99", "annotation 12: duplicate id"):
        assert text in message


RECOVERABLE_CASES = {
    "polygon with two points": (
        lambda d: d["annotations"][1].update(segmentation=[[30, 10, 40, 10]]),
        ("annotation", 11, "has 2 point(s); a polygon needs at least 3"),
    ),
    "empty segmentation": (
        lambda d: d["annotations"][1].update(segmentation=[]),
        ("annotation", 11, "empty segmentation"),
    ),
    "zero-area polygon": (
        lambda d: d["annotations"][1].update(segmentation=[[30, 10, 35, 10, 40, 10]]),
        ("annotation", 11, "zero-area"),
    ),
    "bbox outside the image": (
        lambda d: d["annotations"][1].update(bbox=[50, 10, 30, 10]),
        ("annotation", 11, "bbox [50, 10, 30, 10] lies outside the 64x48 image"),
    ),
    "RLE of another size": (
        lambda d: d["annotations"][1].update(segmentation={"counts": [0, 12], "size": [3, 4]}, iscrowd=1),
        ("annotation", 11, "RLE size [3, 4] differs"),
    ),
    "uncompressed RLE with short counts": (
        lambda d: d["annotations"][1].update(segmentation={"counts": [5, 10], "size": [48, 64]}, iscrowd=1),
        ("annotation", 11, "counts sum to 15"),
    ),
}


@pytest.mark.parametrize("case", sorted(RECOVERABLE_CASES))
def test_recoverable_annotation_problem_skips_only_that_record(case, write_dataset):
    mutate, (kind, record_id, reason) = RECOVERABLE_CASES[case]
    data = valid_coco()
    mutate(data)
    dataset = load_coco(write_dataset(data))
    assert [(s.kind, s.id) for s in dataset.report.skipped] == [(kind, record_id)]
    assert reason in dataset.report.skipped[0].reason
    assert [a["id"] for a in dataset.annotations] == [10, 12]
    assert record_id not in dataset.coco.anns


def test_image_file_problems_skip_the_image_and_its_annotations(write_dataset):
    data = valid_coco()
    data["images"].append({"id": 3, "file_name": "imgs/c.png", "width": 64, "height": 48})
    data["annotations"].append(annotation(13, 3, 1, 1, 1, 5))
    path = write_dataset(data)
    root = path.parent
    (root / "imgs/a.png").write_bytes(b"not an image at all")  # unreadable
    (root / "imgs/b.png").unlink()  # missing
    from PIL import Image

    Image.new("RGB", (48, 64)).save(root / "imgs/c.png")  # width and height swapped
    dataset = load_coco(path)
    reasons = {(s.kind, s.id): s.reason for s in dataset.report.skipped}
    assert "unreadable" in reasons[("image", 1)]
    assert "missing" in reasons[("image", 2)]
    assert "48x64 on disk but 64x48 in the JSON" in reasons[("image", 3)]
    for ann_id, image_id in ((10, 1), (11, 1), (12, 2), (13, 3)):
        assert reasons[("annotation", ann_id)] == f"its image {image_id} was skipped"
    assert dataset.images == [] and dataset.annotations == []
    assert load_coco(path, check_files=False).report.skipped == []


def test_polygon_and_both_rle_forms_are_accepted(write_dataset):
    data = valid_coco()
    block = np.zeros((48, 64), dtype=np.uint8, order="F")
    block[10:20, 30:40] = 1
    compressed = mask_utils.encode(block)
    # Uncompressed COCO RLE: column-major run lengths, starting with a zero run.
    flat = block.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    data["annotations"][1].update(segmentation={"counts": runs, "size": [48, 64]}, iscrowd=1)
    data["annotations"].append(
        annotation(13, 2, 1, 0, 0, 1, segmentation={"counts": compressed["counts"].decode(), "size": [48, 64]}, iscrowd=1)
    )
    data["annotations"][-1]["bbox"] = [30, 10, 10, 10]
    dataset = load_coco(write_dataset(data))
    assert dataset.report.skipped == []
    assert [a["id"] for a in dataset.annotations] == [10, 11, 12, 13]


def test_report_serialises_to_json(write_dataset, tmp_path):
    data = valid_coco()
    data["annotations"][0]["segmentation"] = [[1, 1, 2, 2]]
    dataset = load_coco(write_dataset(data))
    out = tmp_path / "report.json"
    dataset.report.save(out)
    loaded = json.loads(out.read_text())
    assert loaded["annotations_skipped"] == 1 and loaded["images_total"] == 2
    assert loaded["skipped"][0]["id"] == 10 and loaded["skipped"][0]["kind"] == "annotation"
    assert ValidationReport.from_dict(loaded) == dataset.report


def test_fatal_error_lists_hundreds_of_problems_without_truncation(write_dataset):
    data = valid_coco()
    data["annotations"] = [annotation(100 + i, 1, 50 + i, 1, 1, 4) for i in range(300)]
    with pytest.raises(DataError) as raised:
        load_coco(write_dataset(data, images=False))
    message = str(raised.value)
    assert "300 problem(s)" in message
    assert all(f"annotation {100 + i}: category_id {50 + i} " in message for i in range(300))
