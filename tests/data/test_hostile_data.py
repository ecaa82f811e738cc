"""Malformed data that used to crash or exhaust memory: each is a recoverable, named problem."""

import json
import logging
import struct
import zlib

import numpy as np
import pytest
from coco_builders import annotation, skip_reasons_within_2_gib, valid_coco
from PIL import Image

from trashseg.cli import main
from trashseg.data.classes import ClassTable
from trashseg.data.coco import compressed_rle_runs, load_coco
from trashseg.data.images import read_rgb
from trashseg.data.prepare import prepare_dataset
from trashseg.errors import DataError


def _skipped(dataset):
    return {s.id: s.reason for s in dataset.report.skipped}


def test_nan_and_huge_coordinates_are_skipped_within_bounded_memory(write_dataset, tmp_path):
    data = valid_coco()
    data["annotations"][0]["segmentation"] = [[4, 4, float("nan"), 4, 24, 24, 4, 24]]
    data["annotations"][1]["segmentation"] = [[30, 10, 1e8, 10, 40, 20, 30, 20]]
    data["annotations"][2]["segmentation"] = [[0, 0, float("inf"), 0, 40, 40]]
    path = write_dataset(data)
    # Before the fix pycocotools asked for 4-21 GB here; 2 GB of address space is plenty now.
    reasons = skip_reasons_within_2_gib(path)
    assert "non-finite x coordinate (nan)" in reasons["10"]
    assert "x coordinate 1e+08, far outside the image" in reasons["11"]
    assert "non-finite x coordinate (inf)" in reasons["12"]


def test_bad_compressed_rle_runs_are_caught_before_decoding(write_dataset):
    from pycocotools import mask as mask_utils

    data = valid_coco()
    good = mask_utils.encode(np.asfortranarray(np.ones((48, 64), np.uint8)))["counts"].decode()
    assert compressed_rle_runs(good) == [0, 48 * 64]
    # "<runs of 0 and 3072>" plus one more run: the pycocotools decoder would write past its buffer.
    data["annotations"][0]["segmentation"] = {"size": [48, 64], "counts": good + "9"}
    data["annotations"][1]["segmentation"] = {"size": [48, 64], "counts": "\x7f\x7f"}
    data["annotations"][2]["bbox"] = [0, 0, float("nan"), 4]
    reasons = _skipped(load_coco(write_dataset(data)))
    assert "compressed RLE counts cover" in reasons[10] and "expected height*width = 3072" in reasons[10]
    assert "not a valid COCO RLE string" in reasons[11]
    assert "finite numbers" in reasons[12]


def test_image_too_large_in_the_json_is_skipped_not_decoded(write_dataset):
    data = valid_coco()
    data["images"][1].update(width=100_000, height=100_000)
    reasons = _skipped(load_coco(write_dataset(data, images=False), check_files=False))
    assert "10,000,000,000 pixels" in reasons[2]


def _png_claiming(width, height):
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bomb_png_is_a_named_recoverable_problem(write_dataset, tmp_path, capsys):
    data = valid_coco()
    path = write_dataset(data)
    bomb = path.parent / data["images"][1]["file_name"]
    bomb.write_bytes(_png_claiming(100_000, 100_000))
    report = tmp_path / "report.json"
    assert main(["validate-data", str(path), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "too large to decode" in out and "Traceback" not in out
    skipped = json.loads(report.read_text())["skipped"]
    assert {"kind": "image", "id": 2} == {k: skipped[0][k] for k in ("kind", "id")}
    assert str(bomb) in skipped[0]["reason"]
    with pytest.raises(DataError, match="too large to decode"):
        read_rgb(bomb)  # every other reader shares the same helper


def test_missing_images_are_summarised_and_exit_non_zero(tmp_path, capsys, caplog):
    images = [{"id": i, "file_name": f"img/{i:04d}.jpg", "width": 32, "height": 32} for i in range(1, 301)]
    annotations = [annotation(10 * i + k, i, 1, 2 + k, 2, 6) for i in range(1, 301) for k in range(3)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "categories": valid_coco()["categories"], "annotations": annotations}))
    with caplog.at_level(logging.ERROR, logger="trashseg"):
        assert main(["validate-data", str(path)]) == 2
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 15  # was one line per image and per annotation (1,200)
    assert "skipped 300 image(s): image file <path> is missing" in out
    assert "skipped 900 annotation(s): its image <id> was skipped" in out
    assert "... and 297 more" in out and "--report FILE" in out
    assert f"all 300 image files are missing under {tmp_path}; check --image-root" in caplog.text
    assert "Traceback" not in out + caplog.text
    # prepare stops with the same reason instead of "cannot split 0 image(s)".
    source = tmp_path
    with pytest.raises(DataError, match="all 300 image files are missing"):
        prepare_dataset(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # The other commands that load a file stop the same way, before writing outputs.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="trashseg"):
        assert main(["masks", str(path), str(tmp_path / "masks")]) == 2
    assert "nothing usable remains" in caplog.text
    assert not (tmp_path / "masks" / "masks").exists()


def test_annotations_key_is_required_unless_the_file_is_unlabelled(write_dataset, capsys, caplog):
    data = valid_coco()
    del data["annotations"]
    path = write_dataset(data)
    with caplog.at_level(logging.ERROR, logger="trashseg"):
        assert main(["validate-data", str(path)]) == 2
    assert "missing key 'annotations'" in caplog.text
    assert main(["validate-data", str(path), "--unlabelled"]) == 0
    assert "note: no 'annotations' key: loaded as an unlabelled test file" in capsys.readouterr().out


def test_prepare_refuses_a_train_split_without_annotations(write_dataset, tmp_path):
    data = valid_coco()
    data["annotations"] = []
    write_dataset(data)
    with pytest.raises(DataError, match="it has no annotations; a training split needs labelled objects"):
        prepare_dataset(tmp_path / "src", tmp_path / "out")
    # A test.json without the key is an unlabelled test set: accepted.
    train, test = valid_coco(), valid_coco()
    test["images"] = [dict(im, id=im["id"] + 100, file_name="test/" + im["file_name"]) for im in test["images"]]
    del test["annotations"]
    write_dataset(train, folder=tmp_path / "ok")
    write_dataset(test, folder=tmp_path / "ok", name="test.json")
    result = prepare_dataset(tmp_path / "ok", tmp_path / "prepared", val_fraction=0.5)
    assert result.images["test"] == 2
    report = json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert "unlabelled" in report["files"]["test"]["notes"][0]


def test_any_category_ids_become_contiguous_class_ids_through_prepare(write_dataset, tmp_path, capsys):
    # A real class at COCO id 0 (like "Aluminium foil" in a public 60-class trash dataset).
    data = valid_coco()
    data["categories"] = [{"id": 0, "name": "Aluminium foil"}, {"id": 5, "name": "bottle"}, {"id": 17, "name": "bag"}]
    data["images"] += [dict(im, id=im["id"] + 2, file_name=f"more/{im['file_name']}") for im in data["images"]]
    data["annotations"] = [
        annotation(10, 1, 0, 4, 4, 20),
        annotation(11, 2, 5, 30, 10, 10),
        annotation(12, 3, 17, 0, 0, 40),
        annotation(13, 4, 0, 10, 10, 8),
        annotation(14, 4, 5, 30, 30, 8),
    ]
    write_dataset(data)
    out = tmp_path / "out"
    assert main(["prepare", str(tmp_path / "src"), str(out), "--val-fraction", "0.5"]) == 0
    assert "COCO category 0 -> class 1 (Aluminium foil)" in capsys.readouterr().out
    classes = ClassTable.load(out / "classes.json")
    assert classes.names == ("Background", "Aluminium foil", "bottle", "bag")
    assert classes.category_to_class == {0: 1, 5: 2, 17: 3}
    mask = np.array(Image.open(out / "masks" / "imgs" / "a.png"))
    assert mask[10, 10] == 1 and mask[40, 60] == 0  # the foil is class 1; background stays 0
    report = (out / "report.md").read_text()
    assert "| 1 | 0 | Aluminium foil |" in report and "| 0 | - | Background |" in report
    assert json.loads((out / "report.json").read_text())["classes"][1] == {"id": 1, "name": "Aluminium foil", "category_id": 0}
    stats = json.loads((out / "stats" / "stats.json").read_text())
    assert [c["instances"] for c in stats["classes"]] == [0, 2, 2, 1]


def test_binary_or_malformed_prepared_files_are_named(tmp_path):
    from trashseg.data.layout import PreparedDataset

    (tmp_path / "classes.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    with pytest.raises(DataError, match="class table .*classes.json is not readable JSON"):
        ClassTable.load(tmp_path / "classes.json")
    (tmp_path / "classes.json").write_text('[{"id": 0}]')
    with pytest.raises(DataError, match="class table .* is malformed"):
        ClassTable.load(tmp_path / "classes.json")
    dataset = PreparedDataset(tmp_path)
    dataset.dataset_file.write_text("{}")  # a finished folder, with one malformed split file
    dataset.split_file("test").parent.mkdir(parents=True)
    dataset.split_file("test").write_text('{"images": [{"id": 1}]}')
    with pytest.raises(DataError, match="split file .* is malformed"):
        dataset.samples("test")


def test_reasons_group_regardless_of_paths_and_numbers():
    from trashseg.data.coco import reason_pattern

    first = reason_pattern("image file /d/a.png is unreadable (cannot identify image file '/d/a.png')")
    second = reason_pattern("image file /d/sub/b.png is unreadable (cannot identify image file '/d/sub/b.png')")
    assert first == second == "image file <path> is unreadable (cannot identify image file '<path>')"
    assert reason_pattern("polygon 3 has 2 point(s); a polygon needs at least 3") == (
        "polygon <n> has <n> point(s); a polygon needs at least <n>"
    )
