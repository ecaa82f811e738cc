"""Pseudo-labels: the tau threshold, the ignore index, dropped images and complete lineage."""

import json

import numpy as np
import pytest
from PIL import Image
from recipe_builders import CLASS_NAMES, write_dataset, write_predictions

from trashseg.cli import main
from trashseg.data.layout import PreparedDataset
from trashseg.errors import ConfigError, DataError
from trashseg.pseudo_labels import (
    PseudoLabelConfig,
    lineage_tags,
    make_pseudo_labels,
    pseudo_label_mask,
)


def _probs(labels, confidence):
    """(4, H, W): `confidence` (per pixel) on `labels`, the rest spread evenly."""
    probs = np.repeat(((1 - confidence) / 3)[None], 4, axis=0).astype(np.float32)
    np.put_along_axis(probs, labels[None].astype(np.intp), confidence[None].astype(np.float32), axis=0)
    return probs


def test_threshold_and_ignore_index():
    labels = np.array([[1, 2, 3, 0]], np.uint8)
    confidence = np.array([[0.95, 0.9, 0.89, 0.5]])
    mask = pseudo_label_mask(_probs(labels, confidence), labels, tau=0.9)
    assert mask.tolist() == [[1, 2, 255, 255]]  # >= tau keeps the class
    # An explicit label that is not the argmax uses that class's own probability.
    assert pseudo_label_mask(_probs(labels, confidence), np.array([[0, 2, 3, 0]], np.uint8), 0.9).tolist() == [
        [255, 2, 255, 255]
    ]


def _dataset_and_predictions(tmp_path):
    rng = np.random.default_rng(0)
    items, probs = [], {}
    confident_share = {"t/a.jpg": 0.8, "t/b.jpg": 0.3, "t/c.jpg": 1.0}
    for name, share in confident_share.items():
        labels = rng.integers(0, 4, (20, 20)).astype(np.uint8)
        confidence = np.where(rng.random((20, 20)) < share, 0.97, 0.6)
        items.append((name, rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), None))
        probs[name] = _probs(labels, confidence)
    dataset = write_dataset(tmp_path / "data", {"test": items})
    source = {"stage": "consensus", "models": {"segformer": {"dir": "/p/s"}, "upernet": {"dir": "/p/u"}},
              "ensemble_config": {"consensus_k": 2}}
    predictions = write_predictions(tmp_path / "pred", probs, source)
    return dataset, predictions, probs


def test_dataset_layout_and_lineage(tmp_path):
    dataset, predictions, probs = _dataset_and_predictions(tmp_path)
    config = PseudoLabelConfig(tau=0.9, min_confident_fraction=0.5)
    result = make_pseudo_labels(tmp_path / "pred", dataset.root, tmp_path / "pseudo", config)
    assert result.kept == ["t/a.jpg", "t/c.jpg"] and result.dropped == ["t/b.jpg"]

    pseudo = PreparedDataset(tmp_path / "pseudo")
    assert pseudo.classes().names == CLASS_NAMES
    assert pseudo.splits() == ["train"]
    assert [s.file_name for s in pseudo.samples("train")] == ["t/a.jpg", "t/c.jpg"]
    for sample in pseudo.samples("train"):
        assert sample.image.read_bytes() == dataset.image_path(sample.file_name).read_bytes()
        mask = np.array(Image.open(sample.mask))
        expected = np.where(probs[sample.file_name].max(0) >= 0.9, probs[sample.file_name].argmax(0), 255)
        np.testing.assert_array_equal(mask, expected)
    assert (np.array(Image.open(pseudo.mask_path("t/a.jpg"))) == 255).any()
    assert not pseudo.mask_path("t/b.jpg").exists() and not pseudo.image_path("t/b.jpg").exists()
    coco = json.loads(pseudo.split_file("train").read_text())
    assert coco["annotations"] == [] and len(coco["categories"]) == 3

    lineage = json.loads(result.lineage_file.read_text())
    assert lineage["config"] == {"tau": 0.9, "min_confident_fraction": 0.5, "split": "test"}
    assert lineage["source_dataset"] == str(dataset.root.resolve())
    assert lineage["predictions"]["dir"] == str((tmp_path / "pred").resolve())
    assert lineage["predictions"]["source"] == predictions.source  # models and ensemble config
    assert [k["file_name"] for k in lineage["kept"]] == result.kept
    dropped = lineage["dropped"][0]
    assert dropped["file_name"] == "t/b.jpg" and dropped["confident_fraction"] < 0.5
    assert "below min_confident_fraction=0.5" in dropped["reason"]
    fraction_a = float((probs["t/a.jpg"].max(0) >= 0.9).mean())
    assert lineage["kept"][0]["confident_fraction"] == pytest.approx(fraction_a)

    tags = lineage_tags(tmp_path / "pseudo")
    assert tags["pseudo.models"] == "segformer,upernet"
    assert tags["pseudo.stage"] == "consensus" and tags["pseudo.tau"] == "0.9"
    assert tags["pseudo.images_kept"] == "2" and tags["pseudo.images_dropped"] == "1"


def test_bad_inputs_are_refused(tmp_path):
    dataset, _, _ = _dataset_and_predictions(tmp_path)
    with pytest.raises(ConfigError, match="tau must be in \\(0, 1\\], got 1.5"):
        PseudoLabelConfig(tau=1.5)
    with pytest.raises(DataError, match="no image has at least 0.99 .*lower tau or min_confident_fraction"):
        make_pseudo_labels(tmp_path / "pred", dataset.root, tmp_path / "none", PseudoLabelConfig(min_confident_fraction=0.99, tau=0.98))
    assert not (tmp_path / "none").exists()
    with pytest.raises(DataError, match="split 'val' not found"):
        make_pseudo_labels(tmp_path / "pred", dataset.root, tmp_path / "x", PseudoLabelConfig(split="val"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="is not empty"):
        make_pseudo_labels(tmp_path / "pred", dataset.root, tmp_path / "full", PseudoLabelConfig())
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_cli_pseudo_label(tmp_path, capsys):
    dataset, _, _ = _dataset_and_predictions(tmp_path)
    args = ["pseudo-label", str(tmp_path / "pred"), "--data", str(dataset.root), "--out", str(tmp_path / "p")]
    assert main([*args, "--set", "tau=0.9", "--set", "min_confident_fraction=0.9"]) == 0
    assert "kept 1, dropped 2 image(s)" in capsys.readouterr().out


def test_confidence_comes_from_the_pre_crf_probabilities(tmp_path):
    """CRF-style labels at 0.99 everywhere would keep every pixel; the soft vote's confidence
    keeps only the pixels the ensemble itself was sure of, with the CRF stage's labels."""
    rng = np.random.default_rng(1)
    names = ["t/a.jpg", "t/b.jpg"]
    crf_labels = {n: rng.integers(0, 4, (16, 16)).astype(np.uint8) for n in names}
    # The soft vote agrees with the CRF labels but is confident on ~60% of pixels only; on one
    # pixel it prefers another class, yet that pixel's label stays the CRF's (its prob is low).
    vote_conf = {n: np.where(rng.random((16, 16)) < 0.6, 0.95, 0.5) for n in names}
    dataset = write_dataset(tmp_path / "data", {"test": [(n, rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), None)
                                                         for n in names]})
    write_predictions(tmp_path / "crf", {n: _probs(crf_labels[n], np.full((16, 16), 0.99)) for n in names},
                      {"stage": "crf", "models": {"m1": {}, "m2": {}}, "ensemble_config": {"crf_enabled": True}})
    vote = {n: _probs(crf_labels[n], vote_conf[n]) for n in names}
    vote["t/a.jpg"][:, 0, 0] = 0.0
    vote["t/a.jpg"][(crf_labels["t/a.jpg"][0, 0] + 1) % 4, 0, 0] = 1.0
    write_predictions(tmp_path / "vote", vote, {"stage": "soft_vote"})

    config = PseudoLabelConfig(tau=0.9, min_confident_fraction=0.1)
    overconfident = make_pseudo_labels(tmp_path / "crf", dataset.root, tmp_path / "p_crf", config)
    assert overconfident.kept_pixel_share == 1.0  # what the unfiltered CRF marginals give
    result = make_pseudo_labels(tmp_path / "crf", dataset.root, tmp_path / "p_vote", config,
                                confidence_dir=tmp_path / "vote")
    pseudo = PreparedDataset(result.dataset_dir)
    kept_pixels = 0
    for name in names:
        mask = np.array(Image.open(pseudo.mask_path(name)))
        confident = vote_conf[name] >= 0.9
        if name == "t/a.jpg":
            confident[0, 0] = False
        np.testing.assert_array_equal(mask, np.where(confident, crf_labels[name], 255))
        kept_pixels += int(confident.sum())
    assert result.kept_pixel_share == pytest.approx(kept_pixels / (2 * 16 * 16))
    assert 0.4 < result.kept_pixel_share < 0.8
    lineage = json.loads(result.lineage_file.read_text())
    assert lineage["kept_pixel_share"] == pytest.approx(result.kept_pixel_share)
    assert lineage["confidence"] == {"dir": str((tmp_path / "vote").resolve()), "stage": "soft_vote"}
    tags = lineage_tags(result.dataset_dir)
    assert tags["pseudo.stage"] == "crf" and tags["pseudo.confidence_stage"] == "soft_vote"
    assert json.loads(tags["pseudo.ensemble_config"]) == {"crf_enabled": True}
    assert float(tags["pseudo.kept_pixel_share"]) == pytest.approx(result.kept_pixel_share, abs=1e-6)
    import hashlib

    assert tags["pseudo.images_sha256"] == hashlib.sha256("\n".join(names).encode()).hexdigest()

    write_predictions(tmp_path / "small", {n: _probs(crf_labels[n][:8], vote_conf[n][:8]) for n in names}, {})
    with pytest.raises(DataError, match="confidence probabilities are 16x8 but the labels 16x16"):
        make_pseudo_labels(tmp_path / "crf", dataset.root, tmp_path / "p_bad", config, confidence_dir=tmp_path / "small")
    assert not (tmp_path / "p_bad").exists()
