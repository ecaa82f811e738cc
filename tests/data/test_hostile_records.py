"""Hostile records (issue 20): each class of bad input is a named problem, never a crash or silent damage."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from coco_builders import annotation, skip_reasons_within_2_gib, valid_coco
from PIL import Image

from trashseg.cli import main
from trashseg.data import coco as coco_module
from trashseg.data.coco import load_coco, reason_pattern
from trashseg.data.images import read_rgb
from trashseg.data.prepare import prepare_dataset
from trashseg.errors import DataError


def _skipped(dataset):
    return {(s.kind, s.id): s.reason for s in dataset.report.skipped}


def _strict_json(path):
    """Parse as strict JSON: a NaN / Infinity literal fails."""

    def refuse(name):
        raise AssertionError(f"{path} holds the non-JSON literal {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _run_cli(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "import sys; from trashseg.cli import main; sys.exit(main())", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


# -- JSON the parser rejects, or accepts too easily ----------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[" * 100_000 + "]" * 100_000, "nests arrays or objects too deeply"),
        ('{"images": [{"id": ' + "9" * 5000 + "}]}", "not readable JSON"),
        ('{"images": [], "categories": [], "annotations": [], "annotations": []}', "key 'annotations' appears twice"),
    ],
    ids=["deep nesting", "5000-digit integer", "duplicate top-level key"],
)
def test_json_the_parser_rejects_is_one_clear_line(tmp_path, text, expected):
    path = tmp_path / "train.json"
    path.write_text(text)
    done = _run_cli("validate-data", path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert expected in done.stderr and str(path) in done.stderr
    assert "Traceback" not in done.stderr


def test_nan_and_infinity_skip_their_record_and_never_reach_split_files(write_dataset, tmp_path):
    data = valid_coco()
    data["images"] += [dict(im, id=im["id"] + 2, file_name=f"more/{im['file_name']}") for im in data["images"]]
    data["annotations"] += [annotation(13, 3, 1, 4, 4, 20), annotation(14, 4, 2, 4, 4, 20)]
    data["annotations"][0]["area"] = float("nan")
    data["annotations"][1]["score"] = {"value": float("inf")}
    data["images"][1]["weight"] = float("-inf")
    path = write_dataset(data)
    assert "NaN" in path.read_text() and "Infinity" in path.read_text()
    reasons = _skipped(load_coco(path))
    assert "area is nan" in reasons[("annotation", 10)]
    assert "score.value is inf" in reasons[("annotation", 11)]
    assert "weight is -inf" in reasons[("image", 2)]
    result = prepare_dataset(path.parent, tmp_path / "out", val_fraction=0.5)
    for split in result.images:
        _strict_json(tmp_path / "out" / "splits" / f"{split}.json")
    _strict_json(tmp_path / "out" / "report.json")
    # NaN in the categories cannot be skipped record by record: the file is refused.
    data = valid_coco()
    data["categories"][0]["ratio"] = float("nan")
    with pytest.raises(DataError, match="category 1: the category.ratio is nan"):
        load_coco(write_dataset(data, folder=tmp_path / "cat"))


# -- numbers, polygons ----------------------------------------------------------------------


def test_numbers_too_big_for_a_float_are_reported_by_their_digits(write_dataset):
    data = valid_coco()
    data["annotations"][0]["segmentation"] = [[4, 4, 2**1100, 4, 24, 24, 4, 24]]
    data["annotations"][1]["bbox"] = [2**1100, 0, 1, 1]
    path = write_dataset(data)
    data["images"].append({"id": 3, "file_name": "imgs/c.png", "width": 2**1100, "height": 48})
    path.write_text(json.dumps(data))
    reasons = _skipped(load_coco(path))
    assert reasons[("image", 3)].startswith("image is <an integer of 332 digits>x48 (<an integer of 333 digits> pixels)")
    assert "x coordinate <an integer of 332 digits>, far outside the image" in reasons[("annotation", 10)]
    assert "bbox [<an integer of 332 digits>, 0, 1, 1] lies far outside" in reasons[("annotation", 11)]


def test_polygon_work_is_bounded_before_rasterising(write_dataset, tmp_path):
    data = valid_coco()
    zigzag = [v for i in range(600_000) for v in ((0, 0) if i % 2 else (63, 47))]  # 600k points, all inside
    data["annotations"][0]["segmentation"] = [zigzag]
    long_edges = [v for i in range(30_000) for v in ((0, 0) if i % 2 else (63, 47))]  # few points, 1.9M px boundary
    data["annotations"][1]["segmentation"] = [long_edges]
    path = write_dataset(data)
    # Before the fix: gigabytes (600k points) and no skip; 2 GB of address space is plenty now.
    reasons = skip_reasons_within_2_gib(path)
    assert "600,000 points, more than the 100,000 accepted per annotation" in reasons["10"]
    assert "boundary is" in reasons["11"] and "more than the 1,000,000 accepted" in reasons["11"]
    assert set(reasons) == {"10", "11"}


def test_a_file_asking_too_much_rasterising_is_refused_before_any(write_dataset, monkeypatch):
    monkeypatch.setattr(coco_module, "MAX_FILE_BOUNDARY", 200)

    def never(*args, **kwargs):
        raise AssertionError("rasterised before the file-level bound was checked")

    monkeypatch.setattr(coco_module, "segmentation_area", never)
    with pytest.raises(DataError, match=r"boundaries total [\d,]+ pixels, more than the 200 one file may"):
        load_coco(write_dataset(valid_coco()))


# -- text that cannot reach a file or a terminal -----------------------------------------------


def test_unusable_file_names_skip_their_image_and_prepare_completes(write_dataset, tmp_path):
    data = valid_coco()
    data["images"] += [
        {"id": 3, "file_name": "imgs/" + "x" * 300 + ".png", "width": 64, "height": 48},
        {"id": 4, "file_name": "imgs/\ud800.png", "width": 64, "height": 48},
        {"id": 5, "file_name": "imgs/c.png", "width": 64, "height": 48},
    ]
    data["annotations"] += [annotation(13, 3, 1, 4, 4, 8), annotation(14, 4, 1, 4, 4, 8), annotation(15, 5, 2, 4, 4, 8)]
    folder = tmp_path / "src"
    good = {**data, "images": [im for im in data["images"] if im["id"] in (1, 2, 5)]}
    write_dataset(good)
    (folder / "train.json").write_text(json.dumps(data))  # ensure_ascii keeps "\ud800" as an escape
    reasons = _skipped(load_coco(folder / "train.json"))
    assert "is 304 bytes, more than the 255" in reasons[("image", 3)]
    assert "file_name is not valid Unicode (lone surrogate '\\ud800'" in reasons[("image", 4)]
    done = _run_cli("validate-data", folder / "train.json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "image 4 ('imgs/\\ud800.png')" in done.stdout
    done = _run_cli("prepare", folder, tmp_path / "out", "--val-fraction", "0.34")
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert sum(meta["splits"].values()) == 3
    assert "\\ud800" in (tmp_path / "out" / "report.md").read_text()


def test_a_category_name_with_a_lone_surrogate_is_refused_clearly(write_dataset, tmp_path):
    data = valid_coco()
    data["categories"][1]["name"] = "bo\ud800ttle"
    folder = tmp_path / "src"
    write_dataset(valid_coco())
    (folder / "train.json").write_text(json.dumps(data))
    done = _run_cli("prepare", folder, tmp_path / "out")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "class name 'bo\\ud800ttle': is not valid Unicode (lone surrogate" in done.stderr
    assert not (tmp_path / "out").exists()


# -- images that decode wrong or late ----------------------------------------------------------


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    grey = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(read_rgb(path)[0, :, 0], [0, 64, 128, 255])
    assert read_rgb(path).shape == (1, 4, 3)


def test_cut_images_are_all_skipped_by_validation_and_prepare_goes_on(write_dataset, tmp_path, capsys):
    data = valid_coco()
    data["images"] += [
        {"id": 3, "file_name": "imgs/c.jpg", "width": 64, "height": 48},
        {"id": 4, "file_name": "imgs/d.png", "width": 64, "height": 48},
        {"id": 5, "file_name": "imgs/e.png", "width": 64, "height": 48},
    ]
    data["annotations"] += [annotation(13, 3, 1, 4, 4, 8), annotation(14, 4, 1, 4, 4, 8), annotation(15, 5, 2, 4, 4, 8)]
    path = write_dataset(data)
    noise = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    for name, fmt in (("imgs/c.jpg", "JPEG"), ("imgs/d.png", "PNG")):
        Image.fromarray(noise).save(path.parent / name, format=fmt)
        body = (path.parent / name).read_bytes()
        (path.parent / name).write_bytes(body[: len(body) * 2 // 3])  # header intact, body cut
    assert main(["validate-data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kept 3/5 images" in out
    for image_id, name in ((3, "imgs/c.jpg"), (4, "imgs/d.png")):
        assert f"image {image_id} ('{name}'): image file {path.parent / name} is unreadable" in out
    result = prepare_dataset(path.parent, tmp_path / "out", val_fraction=0.34)
    assert sum(result.images.values()) == 3
    assert not (tmp_path / "out" / "images" / "imgs" / "c.jpg").exists()


# -- classes, collisions, reports ----------------------------------------------------------------


def test_more_categories_than_a_mask_holds_are_refused(write_dataset):
    data = valid_coco()
    data["categories"] = [{"id": i, "name": f"c{i}"} for i in range(1, 256)]  # 255 + Background = 256 classes
    with pytest.raises(DataError, match="255 categories .* at most 254 categories.* 255 is the ignore index"):
        load_coco(write_dataset(data, images=False))
    data["categories"] = data["categories"][:254]  # the most that fit: class ids 0..254
    assert load_coco(write_dataset(data, images=False), check_files=False).class_table.num_classes == 255


def test_two_records_writing_one_output_are_refused(write_dataset, tmp_path):
    data = valid_coco()
    data["images"][1]["file_name"] = "imgs/a.jpg"  # masks/imgs/a.png for both
    with pytest.raises(DataError, match="would write the same mask \\(masks/imgs/a.png\\) as image 1's 'imgs/a.png'"):
        load_coco(write_dataset(data))
    data["images"][1]["file_name"] = "./imgs/a.png"
    with pytest.raises(DataError, match="is also used by image 1 \\(spelled 'imgs/a.png' there\\)"):
        load_coco(write_dataset(data, folder=tmp_path / "two"))
    # The same file spelled two ways in train.json and val.json: refused, not leaked into both splits.
    train, val = valid_coco(), valid_coco()
    val["images"] = [dict(val["images"][0], file_name="./imgs/a.png")]
    val["annotations"] = val["annotations"][:2]
    write_dataset(train, folder=tmp_path / "leak")
    write_dataset(val, folder=tmp_path / "leak", name="val.json")
    with pytest.raises(DataError, match="is in both train.json .* and val.json; an image must belong to one split"):
        prepare_dataset(tmp_path / "leak", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_class_names_with_markup_are_escaped_in_the_markdown_report(write_dataset, tmp_path):
    data = valid_coco()
    data["categories"][0]["name"] = "<script>alert(1)</script>"
    data["categories"][1]["name"] = "a | b\nc"
    write_dataset(data)
    prepare_dataset(tmp_path / "src", tmp_path / "out", val_fraction=0.5)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "<script>" not in report and "&lt;script&gt;" in report
    rows = [line for line in report.splitlines() if line.startswith("| 2 |")]
    assert rows == [rows[0]] and rows[0].count(" | ") == 5 and "a \\| b c" in rows[0]  # one cell, one line


# -- messages ---------------------------------------------------------------------------------


def test_oversized_images_group_under_a_readable_pattern(write_dataset, capsys):
    data = valid_coco()
    data["images"][1].update(width=100_000, height=100_000)
    assert main(["validate-data", str(write_dataset(data, images=False)), "--image-root", "/nonexistent"]) == 2
    out = capsys.readouterr().out
    assert "image is <n>x<n> (<n> pixels) in the JSON, more than <n>" in out
    assert reason_pattern("image is 100000x100000 (10,000,000,000 pixels)") == "image is <n>x<n> (<n> pixels)"


def test_a_folder_or_a_symlink_loop_is_not_called_missing(write_dataset):
    path = write_dataset(valid_coco())
    a, b = path.parent / "imgs" / "a.png", path.parent / "imgs" / "b.png"
    a.unlink()
    a.mkdir()
    b.unlink()
    b.symlink_to(b)
    reasons = {s.id: s.reason for s in load_coco(path).report.skipped_images}
    assert reasons == {1: f"image file {a} is a folder, not an image file", 2: f"image file {b} is a symbolic link loop"}


def test_classes_and_coco_do_not_import_each_other():
    import ast

    import trashseg.data.classes

    tree = ast.parse(open(trashseg.data.classes.__file__).read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "trashseg.data.coco" not in imported  # coco imports classes; JSON reading lives in jsonio


def test_an_image_with_hundreds_of_annotations_gets_its_mask(write_dataset, tmp_path):
    data = valid_coco()
    data["annotations"] = [annotation(100 + k, 1, 1 + k % 3, k % 60, (k // 60) % 44, 4) for k in range(300)]
    data["annotations"].append(annotation(99, 2, 2, 0, 0, 10))
    write_dataset(data)
    result = prepare_dataset(tmp_path / "src", tmp_path / "out", val_fraction=0.5)  # pycocotools overflowed at 256
    assert result.annotations["train"] + result.annotations["val"] == 301
