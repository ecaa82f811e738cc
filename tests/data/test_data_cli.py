"""The data subcommands, called in-process through `trashseg.cli.main`."""

import json
import logging

import numpy as np
import pytest
from coco_builders import valid_coco
from PIL import Image

from trashseg.cli import main


def test_validate_data_names_both_broken_records_and_exits_zero(write_dataset, capsys, tmp_path):
    data = valid_coco()
    data["annotations"][1]["segmentation"] = [[30, 10, 40, 10]]  # 2 points
    data["annotations"][2]["bbox"] = [0, 0, 100, 40]  # wider than the 64px image
    path = write_dataset(data)
    report = tmp_path / "report.json"
    assert main(["validate-data", str(path), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "e.g. annotation 11: polygon 0 has 2 point(s)" in out
    assert "e.g. annotation 12: bbox [0, 0, 100, 40] lies outside" in out
    assert "skipped 2 record(s)" in out
    assert f"listed in {report}" in out
    assert [s["id"] for s in json.loads(report.read_text())["skipped"]] == [11, 12]


def test_validate_data_exits_non_zero_on_fatal_problems(write_dataset, caplog, capsys):
    data = valid_coco()
    data["annotations"][0]["category_id"] = 8
    data["annotations"][1]["image_id"] = 5
    with caplog.at_level(logging.ERROR, logger="trashseg"):
        assert main(["validate-data", str(write_dataset(data))]) == 2
    assert "category_id 8 is not in categories" in caplog.text
    assert "image_id 5 is not in images" in caplog.text
    assert "skipped" not in capsys.readouterr().out


def test_validate_data_image_root_option(write_dataset, tmp_path, capsys):
    data = valid_coco()
    write_dataset(data, folder=tmp_path / "pics")
    annotations = tmp_path / "train.json"
    annotations.write_text(json.dumps(data))
    assert main(["validate-data", str(annotations), "--image-root", str(tmp_path / "pics")]) == 0
    assert "skipped 0 record(s)" in capsys.readouterr().out


def test_sample_masks_split_stats_prepare_commands(tmp_path, capsys):
    sample = tmp_path / "sample"
    assert main(["sample-data", str(sample), "--images", "20", "--size", "48", "--seed", "3"]) == 0
    assert {p.name for p in sample.glob("*.json")} == {"train.json", "val.json", "test.json"}

    assert main(["masks", str(sample / "train.json"), str(tmp_path / "masks")]) == 0
    train = json.loads((sample / "train.json").read_text())
    first = tmp_path / "masks" / "masks" / train["images"][0]["file_name"].replace(".jpg", ".png")
    assert np.array(Image.open(first)).max() > 0
    assert json.loads((tmp_path / "masks" / "classes.json").read_text())[9]["name"] == "Battery"

    assert main(["split", str(sample / "train.json"), str(tmp_path / "folds"), "--folds", "3", "--seed", "1"]) == 0
    folds = json.loads((tmp_path / "folds" / "folds.json").read_text())
    assert folds["folds"] == 3 and len(folds["fold_of"]) == len(train["images"])
    assert main(["split", str(sample / "train.json"), str(tmp_path / "tv"), "--val-fraction", "0.3"]) == 0
    assert len(json.loads((tmp_path / "tv" / "val.json").read_text())["images"]) == 4

    assert main(["stats", str(sample / "train.json"), str(tmp_path / "stats")]) == 0
    assert json.loads((tmp_path / "stats" / "stats.json").read_text())["images"] == len(train["images"])

    assert main(["prepare", str(sample), str(tmp_path / "prepared")]) == 0
    assert "hash" in capsys.readouterr().out
    assert (tmp_path / "prepared" / "dataset.json").is_file()
    # A second prepare into the same folder is refused (exit 2), leaving it intact.
    assert main(["prepare", str(sample), str(tmp_path / "prepared")]) == 2


@pytest.mark.parametrize("command", ["sample-data", "validate-data", "masks", "split", "stats", "prepare"])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "usage: trashseg " + command in capsys.readouterr().out
