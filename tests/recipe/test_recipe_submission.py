"""Submission CSV: round trip, format details and every validator error."""

import json

import numpy as np
import pytest

from trashseg.cli import main
from trashseg.submission import (
    SubmissionError,
    prediction_string,
    read_submission,
    resize_nearest,
    validate_submission,
    write_submission,
)


def _maps(count, size=512, classes=11, seed=0):
    rng = np.random.default_rng(seed)
    return {f"batch_{i:02d}/{i:04d}.jpg": rng.integers(0, classes, (size, size), dtype=np.uint8) for i in range(count)}


def _annotations(path, names, classes=11):
    categories = [{"id": k, "name": f"class {k}"} for k in range(1, classes)]
    images = [{"id": i, "file_name": n, "width": 512, "height": 512} for i, n in enumerate(names)]
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": categories}))
    return path


def test_round_trip_gives_the_256_maps(tmp_path):
    maps = _maps(3)
    maps["odd, name \"quoted\".jpg"] = np.random.default_rng(1).integers(0, 11, (300, 200), dtype=np.uint8)
    path = tmp_path / "submission.csv"
    assert write_submission(path, maps.items()) == 4
    submission = read_submission(path, expected_file_names=list(maps), num_classes=11)
    assert submission.file_names == list(maps)
    for name, class_map in maps.items():
        height, width = class_map.shape
        expected = class_map[(np.arange(256) * height) // 256][:, (np.arange(256) * width) // 256]
        np.testing.assert_array_equal(submission.maps[name], expected)
    # 512 -> 256 nearest neighbour takes every second pixel, row-major.
    first = maps["batch_00/0000.jpg"]
    np.testing.assert_array_equal(submission.maps["batch_00/0000.jpg"], first[::2, ::2])
    lines = path.read_text().splitlines()
    assert lines[0] == "image_id,PredictionString"
    assert lines[1] == "batch_00/0000.jpg," + " ".join(map(str, first[::2, ::2].ravel()))


def test_prediction_string_handles_multi_digit_ids():
    class_map = np.array([[0, 9], [10, 254]], dtype=np.uint8)
    text = prediction_string(class_map)
    assert text.split()[:256] == ["0"] * 128 + ["9"] * 128  # first output row
    np.testing.assert_array_equal(np.array(text.split(), dtype=int).reshape(256, 256), resize_nearest(class_map))
    assert resize_nearest(class_map)[255, 255] == 254


def _write_text(path, rows, header="image_id,PredictionString"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _row(name, values="0"):
    return f"{name}," + " ".join([values] * 65536)


def test_validator_lists_every_bad_row(tmp_path):
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    annotations = _annotations(tmp_path / "test.json", names, classes=11)
    path = _write_text(tmp_path / "bad.csv", [
        _row("a.jpg"),
        "b.jpg," + " ".join(["1"] * 65535),  # one value short
        _row("a.jpg"),  # duplicate
        "c.jpg," + " ".join(["2"] * 65535 + ["x"]),  # not an integer
        _row("d.jpg", "11"),  # class id out of range for 11 classes
        _row("zzz.jpg"),  # not a test image
    ])
    with pytest.raises(SubmissionError) as error:
        validate_submission(path, annotations)
    message = str(error.value)
    assert "row 3 ('b.jpg'): 65535 values, expected 65536" in message
    assert "row 4 ('a.jpg'): duplicate image_id, first seen in row 2" in message
    assert "row 5 ('c.jpg'): value 'x' is not a class id" in message
    assert "row 6 ('d.jpg'): class ids [11] outside 0..10" in message
    assert "missing rows for 1 test image(s): e.jpg" in message
    assert "row 7 ('zzz.jpg'): image_id is not a test image" in message
    assert "6 problem(s)" in message


def test_validator_rejects_header_and_order(tmp_path):
    annotations = _annotations(tmp_path / "test.json", ["a.jpg", "b.jpg"])
    with pytest.raises(SubmissionError, match="header is \\['id', 'mask'\\]"):
        validate_submission(_write_text(tmp_path / "h.csv", [_row("a.jpg")], header="id,mask"), annotations)
    swapped = _write_text(tmp_path / "o.csv", [_row("b.jpg"), _row("a.jpg")])
    with pytest.raises(SubmissionError, match="not in test annotation order: row 2 is 'b.jpg', expected 'a.jpg'"):
        validate_submission(swapped, annotations)
    good = _write_text(tmp_path / "g.csv", [_row("a.jpg", "10"), _row("b.jpg")])
    assert validate_submission(good, annotations).maps["a.jpg"].max() == 10


def test_writer_refuses_duplicates_and_bad_ids(tmp_path):
    with pytest.raises(SubmissionError, match="given twice"):
        write_submission(tmp_path / "s.csv", [("a.jpg", np.zeros((4, 4), np.uint8))] * 2)
    with pytest.raises(SubmissionError, match="ids 255..255; submission ids must be 0..254"):
        write_submission(tmp_path / "s.csv", [("a.jpg", np.full((4, 4), 255))])
    with pytest.raises(SubmissionError, match="dtype float64; expected integer class ids"):
        write_submission(tmp_path / "s.csv", [("a.jpg", np.zeros((4, 4)))])


def test_cli_writes_and_validates_from_a_prediction_folder(tmp_path, capsys):
    from trashseg.predictions import PredictionSet

    names = ["x/1.jpg", "x/2.jpg"]
    annotations = _annotations(tmp_path / "test.json", names, classes=3)
    predictions = PredictionSet.create(tmp_path / "pred", ["Background", "class 1", "class 2"])
    rng = np.random.default_rng(0)
    masks = {}
    for name in reversed(names):  # prediction order differs from annotation order
        probs = rng.random((3, 64, 64)).astype(np.float32)
        predictions.add(name, probs)
        masks[name] = probs.argmax(0)
    predictions.save()
    out = tmp_path / "sub.csv"
    assert main(["submission", str(tmp_path / "pred"), "--annotations", str(annotations), "--out", str(out)]) == 0
    submission = read_submission(out)
    assert submission.file_names == names
    np.testing.assert_array_equal(submission.maps["x/2.jpg"], resize_nearest(masks["x/2.jpg"]))
    assert main(["validate-submission", str(out), "--annotations", str(annotations)]) == 0
    assert "valid, 2 row(s)" in capsys.readouterr().out
    out.write_text(out.read_text().replace("x/2.jpg", "x/3.jpg"))
    assert main(["validate-submission", str(out), "--annotations", str(annotations)]) == 2


def _validate_cli(csv_path, annotations, caplog):
    """`trashseg validate-submission` in-process: (exit code, logged error), never a traceback."""
    import logging

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="trashseg"):
        code = main(["validate-submission", str(csv_path), "--annotations", str(annotations)])
    assert "Traceback" not in caplog.text
    return code, caplog.text


def test_validate_submission_explains_tabs_unicode_digits_huge_fields_and_binary_files(tmp_path, caplog):
    annotations = _annotations(tmp_path / "test.json", ["a.jpg"])
    tabs = _write_text(tmp_path / "tabs.csv", ["a.jpg," + "\t".join(["0"] * 65536)])
    code, text = _validate_cli(tabs, annotations, caplog)
    assert code == 2 and "character '\\t' (U+0009) at position 1" in text and "not tabs" in text
    arabic = _write_text(tmp_path / "arabic.csv", ["a.jpg," + " ".join(["\u0663"] * 65536)])
    code, text = _validate_cli(arabic, annotations, caplog)
    assert code == 2 and "value '\u0663' is not a class id" in text and "ASCII digits 0-9" in text
    huge = _write_text(tmp_path / "huge.csv", ["a.jpg," + "0" * 10_000_000])
    code, text = _validate_cli(huge, annotations, caplog)
    assert code == 2 and "row 2 cannot be read as CSV (field larger than field limit" in text
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"image_id,PredictionString\n\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    code, text = _validate_cli(binary, annotations, caplog)
    assert code == 2 and "is not a UTF-8 text CSV" in text
    nul = tmp_path / "nul.csv"
    nul.write_bytes(b"image_id,PredictionString\na.jpg,0\x00 0\n")
    code, text = _validate_cli(nul, annotations, caplog)
    assert code == 2 and "character '\\x00' (U+0000)" in text
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert _validate_cli(empty, annotations, caplog)[1].count("is empty") == 1


def test_validate_submission_explains_a_binary_or_malformed_annotation_file(tmp_path, caplog):
    good_csv = _write_text(tmp_path / "s.csv", [_row("a.jpg")])
    binary = tmp_path / "test.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    code, text = _validate_cli(good_csv, binary, caplog)
    assert code == 2 and f"annotation file {binary} is not readable JSON" in text
    binary.write_text(json.dumps({"images": [{"id": 1}], "categories": []}))
    code, text = _validate_cli(good_csv, binary, caplog)
    assert code == 2 and "each have a 'file_name' string" in text


def test_submission_refuses_predictions_of_another_dataset_with_the_same_file_names(tmp_path, caplog):
    import logging

    from trashseg.predictions import PredictionSet

    def prepared(name, version):
        root = tmp_path / name
        _annotations((root / "splits").mkdir(parents=True) or root / "splits" / "test.json", ["a.jpg"], classes=3)
        (root / "dataset.json").write_text(json.dumps({"hash": version}))
        return root

    ours, theirs = prepared("ours", "a" * 64), prepared("theirs", "b" * 64)
    predictions = PredictionSet.create(
        tmp_path / "pred", ["Background", "class 1", "class 2"], source={"dataset": str(theirs), "split": "test"}
    )
    predictions.add("a.jpg", np.full((3, 8, 8), 1 / 3, np.float32))
    predictions.save()
    out = tmp_path / "sub.csv"
    args = ["submission", str(tmp_path / "pred"), "--annotations", str(ours / "splits" / "test.json"), "--out", str(out)]
    with caplog.at_level(logging.ERROR, logger="trashseg"):
        assert main(args) == 2
    assert "was predicted on dataset version(s) bbbbbbbbbbbb" in caplog.text
    assert "belongs to version aaaaaaaaaaaa" in caplog.text
    assert not out.exists()
    # The recorded version wins over the folder (pipelines move folders between pods), and an
    # ensemble's members are checked too.
    predictions.source = {"stage": "crf", "split": "test", "models": {"m": {"dataset_version": "a" * 64, "split": "test"}}}
    predictions.save()
    assert main(args) == 0
    predictions.source = {"split": "val", "dataset_version": "a" * 64}
    predictions.save()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="trashseg"):
        assert main(args) == 2
    assert "predictions of split(s) ['val'], not 'test'" in caplog.text
