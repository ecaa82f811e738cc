"""Prediction folders (TTA, original resolution, probabilities) and evaluation."""

import json

import numpy as np
import pytest
import torch

from trashseg.cli import main
from trashseg.data.io import read_image, read_mask
from trashseg.data.layout import PreparedDataset
from trashseg.errors import DataError
from trashseg.metrics import ConfusionMatrix
from trashseg.models import load_checkpoint
from trashseg.predict import evaluate, predict, predict_probabilities
from trashseg.predictions import PredictionSet


def test_predict_with_tta_writes_probabilities_at_original_size(trained_checkpoint, sample_dataset, tmp_path):
    dataset = PreparedDataset(sample_dataset)
    predictions = predict(
        trained_checkpoint, sample_dataset, "test", tmp_path / "pred", batch_size=3, tta_flip=True,
        tta_scales=(0.75, 1.0, 1.5), dtype="float16",
    )
    reopened = PredictionSet.open(tmp_path / "pred")
    assert reopened.file_names == [s.file_name for s in dataset.samples("test")]
    assert reopened.source["tta_scales"] == [0.75, 1.0, 1.5] and reopened.source["tta_flip"] is True
    for sample in dataset.samples("test"):
        probs = reopened.probs(sample.file_name)
        height, width = read_image(sample.image).shape[:2]
        assert probs.shape == (11, height, width)
        assert probs.min() >= 0
        np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=5e-3)  # float16 storage
        agree = (reopened.mask(sample.file_name) == probs.argmax(axis=0)).mean()
        assert agree > 0.99  # float16 rounding may flip near-ties only
    assert predictions.class_names[0] == "Background"


def test_flip_tta_is_mirror_equivariant(trained_checkpoint, sample_dataset):
    model, meta = load_checkpoint(trained_checkpoint)
    image = read_image(PreparedDataset(sample_dataset).samples("val")[0].image)
    kwargs = dict(image_size=meta.image_size, mean=meta.mean, std=meta.std, device=torch.device("cpu"), flip=True)
    probs = predict_probabilities(model, [image], **kwargs)[0]
    mirrored = predict_probabilities(model, [np.ascontiguousarray(image[:, ::-1])], **kwargs)[0]
    torch.testing.assert_close(probs, mirrored.flip(-1), atol=1e-5, rtol=1e-4)
    plain = predict_probabilities(model, [image], **{**kwargs, "flip": False})[0]
    assert not torch.allclose(probs, plain), "flip TTA must change the average"


def test_evaluate_scores_the_whole_split_and_writes_metrics(trained_checkpoint, sample_dataset, tmp_path):
    predict(trained_checkpoint, sample_dataset, "val", tmp_path / "pred", batch_size=4)
    scores = evaluate(tmp_path / "pred", sample_dataset, "val")

    dataset = PreparedDataset(sample_dataset)
    predictions = PredictionSet.open(tmp_path / "pred")
    expected = ConfusionMatrix(11)
    for sample in dataset.samples("val"):
        expected.update(predictions.mask(sample.file_name), read_mask(sample.mask, 11))
    assert scores.matrix == expected.matrix.tolist()
    assert scores.miou == pytest.approx(expected.compute().miou)
    written = json.loads((tmp_path / "pred" / "metrics.json").read_text())
    assert written["split"] == "val" and written["miou"] == pytest.approx(scores.miou)


def test_evaluate_refuses_incomplete_predictions(trained_checkpoint, sample_dataset, tmp_path):
    predictions = predict(trained_checkpoint, sample_dataset, "test", tmp_path / "pred")
    with pytest.raises(DataError, match=r"holds predictions of split\(s\) \['test'\], not 'val'"):
        evaluate(tmp_path / "pred", sample_dataset, "val")
    predictions.source = {}  # a folder that records no split: its file names are checked
    predictions.save()
    with pytest.raises(DataError, match=r"no prediction for 9 of 9 images of split 'val'"):
        evaluate(tmp_path / "pred", sample_dataset, "val")


def test_cli_predict_evaluate_round_trip(trained_checkpoint, sample_dataset, tmp_path, capsys):
    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(trained_checkpoint), "--data", str(sample_dataset), "--split", "val",
                 "--out", str(pred), "--tta-flip", "--tta-scales", "1,1.25"]) == 0
    assert main(["evaluate", "--predictions", str(pred), "--data", str(sample_dataset), "--split", "val",
                 "--metrics", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "9 predictions written" in out and "mIoU" in out and "Battery" in out
    assert json.loads((tmp_path / "m.json").read_text())["class_names"][10] == "Clothing"
    page = (pred / "report.html").read_text()  # the pipeline's evaluate page, from the CLI too
    assert "Confusion matrix" in page and "trashseg-legend" in page and "Clothing" in page
    # The dataset version is recorded so `submission` can refuse another dataset's predictions.
    assert len(json.loads((pred / "predictions.json").read_text())["source"]["dataset_version"]) == 64
    for scales in ("1,x", "nan", "1,1e6"):  # NaN and huge factors fail every bound check
        assert main(["predict", "--checkpoint", str(trained_checkpoint), "--data", str(sample_dataset),
                     "--out", str(tmp_path / "bad"), "--tta-scales", scales]) == 2


def test_a_training_output_folder_loads_its_best_checkpoint(trained_checkpoint, tmp_path):
    _, from_folder = load_checkpoint(trained_checkpoint.parent)
    assert from_folder.path == trained_checkpoint.parent / "best.pt" == trained_checkpoint
    with pytest.raises(DataError, match="training output folder"):
        load_checkpoint(tmp_path)  # an empty folder: neither best.pt nor last.pt
