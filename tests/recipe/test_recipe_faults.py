"""Writers under a full disk leave nothing partial; predictions of another dataset are refused
by every stage that reads them (ensemble, evaluate, pseudo-labels; submission has its own test)."""

import errno
import json
import logging

import numpy as np
import pytest
from PIL import Image
from recipe_builders import CLASS_NAMES, one_hot, write_dataset, write_predictions

from trashseg.cli import main
from trashseg.errors import DataError, OutputError
from trashseg.predictions import PredictionSet
from trashseg.submission import write_submission


def _partials(folder):
    return sorted(p.name for p in folder.rglob("*.partial"))


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_the_submission_leaves_no_truncated_csv(tmp_path, monkeypatch):
    import trashseg.submission as submission

    dest = tmp_path / "out" / "submission.csv"
    rows = [(f"{i}.jpg", np.zeros((8, 8), np.uint8)) for i in range(3)]
    assert write_submission(dest, rows) == 3
    good = dest.read_bytes()
    real = submission._prediction_bytes
    calls = []

    def fills_on_the_third_row(class_map):
        calls.append(1)
        if len(calls) == 3:
            _disk_full()
        return real(class_map)

    monkeypatch.setattr(submission, "_prediction_bytes", fills_on_the_third_row)
    with pytest.raises(OutputError, match=rf"cannot write {dest}: No space left on device \(.* free in"):
        write_submission(dest, rows)
    assert dest.read_bytes() == good, "the earlier submission is untouched"
    assert _partials(tmp_path) == []
    # an error of its own (a duplicate row) leaves no partial either
    monkeypatch.setattr(submission, "_prediction_bytes", real)
    dest.unlink()
    with pytest.raises(DataError, match="given twice"):
        write_submission(dest, [rows[0], rows[0]])
    assert not dest.exists() and _partials(tmp_path) == []


def test_full_disk_while_predicting_leaves_no_empty_mask(tmp_path, monkeypatch):
    predictions = PredictionSet.create(tmp_path / "pred", CLASS_NAMES)
    probs = one_hot(np.zeros((8, 8), np.uint8), len(CLASS_NAMES))
    predictions.add("a.jpg", probs)

    def png_fills_the_disk(self, fp, format=None, **params):
        fp.write(b"\x89PNG")
        _disk_full()

    monkeypatch.setattr(Image.Image, "save", png_fills_the_disk)
    with pytest.raises(OutputError, match="masks/b.png: No space left on device"):
        predictions.add("b.jpg", probs)
    assert not predictions.mask_path("b.jpg").exists() and _partials(tmp_path) == []
    assert predictions.mask_path("a.jpg").stat().st_size > 0


def _two_datasets_same_names(tmp_path):
    """Two prepared datasets with the same file names and classes but other images and versions."""
    rng = np.random.default_rng(0)
    masks = {"val": rng.integers(0, 4, (2, 16, 16)), "test": rng.integers(0, 4, (2, 16, 16))}
    roots = {}
    for name, version in (("ours", "a" * 64), ("theirs", "b" * 64)):
        splits = {
            split: [(f"{split}{i}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), masks[split][i]) for i in range(2)]
            for split in ("val", "test")
        }
        write_dataset(tmp_path / name, splits)
        (tmp_path / name / "dataset.json").write_text(json.dumps({"hash": version}))
        roots[name] = tmp_path / name
    folders = {}
    for split in ("val", "test"):
        probs = {f"{split}{i}.png": one_hot(masks[split][i], len(CLASS_NAMES)) for i in range(2)}
        source = {"architecture": "m", "dataset_version": "b" * 64, "split": split}
        folders[split] = write_predictions(tmp_path / "pred" / split, probs, source).root
    return roots, folders


def test_ensemble_refuses_predictions_of_another_dataset(tmp_path, caplog):
    roots, folders = _two_datasets_same_names(tmp_path)
    args = ["ensemble", "--val", str(folders["val"]), "--test", str(folders["test"]), "--out", str(tmp_path / "out"),
            "--set", "workers=1", "--set", "crf_enabled=false", "--set", "consensus_enabled=false"]
    with caplog.at_level(logging.ERROR, logger="trashseg"):
        assert main([*args, "--data", str(roots["ours"])]) == 2
    assert "was predicted on dataset version(s) bbbbbbbbbbbb" in caplog.text
    assert "belongs to version aaaaaaaaaaaa" in caplog.text
    assert main([*args, "--data", str(roots["theirs"])]) == 0  # the dataset they were made from


def test_evaluate_and_pseudo_labels_refuse_predictions_of_another_dataset(tmp_path):
    from trashseg.predict import evaluate
    from trashseg.pseudo_labels import PseudoLabelConfig, make_pseudo_labels

    roots, folders = _two_datasets_same_names(tmp_path)
    with pytest.raises(DataError, match="was predicted on dataset version"):
        evaluate(folders["val"], roots["ours"], "val")
    with pytest.raises(DataError, match="holds predictions of split\\(s\\) \\['test'\\], not 'val'"):
        evaluate(folders["test"], roots["theirs"], "val")
    assert evaluate(folders["val"], roots["theirs"], "val").miou == pytest.approx(1.0)
    with pytest.raises(DataError, match="was predicted on dataset version"):
        make_pseudo_labels(folders["test"], roots["ours"], tmp_path / "pseudo", PseudoLabelConfig())
