import math

import numpy as np
import pytest
import torch

from trashseg.metrics import IGNORE_INDEX, ConfusionMatrix, SegmentationScores


def test_miou_matches_hand_computed_example():
    # 4 classes. Class 3 is absent from target and prediction -> ignored in the mean.
    # Class 2 is predicted once but never in the target -> IoU 0, counted in the mean.
    target = np.array([[0, 0, 1, 1], [0, 1, 1, IGNORE_INDEX]])
    prediction = np.array([[0, 1, 1, 1], [0, 1, 2, 3]])  # last pixel ignored (target 255)
    cm = ConfusionMatrix(4, ["bg", "a", "b", "c"])
    cm.update(prediction, target)
    scores = cm.compute()
    # bg: TP 2, FP 0, FN 1 -> 2/3. a: TP 3, FP 1, FN 1 -> 3/5. b: TP 0, FP 1, FN 0 -> 0.
    assert scores.iou["bg"] == pytest.approx(2 / 3)
    assert scores.iou["a"] == pytest.approx(3 / 5)
    assert scores.iou["b"] == 0.0
    assert math.isnan(scores.iou["c"])
    assert scores.miou == pytest.approx((2 / 3 + 3 / 5 + 0) / 3)
    assert scores.pixel_accuracy == pytest.approx(5 / 7)
    assert scores.accuracy["bg"] == pytest.approx(2 / 3)
    assert math.isnan(scores.accuracy["b"])
    assert sum(map(sum, scores.matrix)) == 7


def test_accumulates_over_batches_like_one_update():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, size=(6, 16, 16))
    target = rng.integers(0, 5, size=(6, 16, 16))
    target[0, :2] = IGNORE_INDEX
    whole = ConfusionMatrix(5)
    whole.update(pred, target)
    parts = ConfusionMatrix(5)
    for p, t in zip(pred, target, strict=True):
        parts.update(torch.from_numpy(p), torch.from_numpy(t))
    np.testing.assert_array_equal(whole.matrix, parts.matrix)
    assert whole.compute().miou == pytest.approx(parts.compute().miou)


def test_merge_adds_matrices():
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    a.update(np.array([0, 1]), np.array([0, 1]))
    b.update(np.array([1]), np.array([0]))
    a.merge(b)
    assert a.matrix.tolist() == [[1, 1], [0, 1]]


def test_out_of_range_class_ids_are_rejected_with_the_values():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\[7\]"):
        cm.update(np.array([7, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="pixels"):
        cm.update(np.zeros(3), np.zeros(4))


def test_to_dict_is_json_safe():
    scores = SegmentationScores.from_matrix(np.array([[3, 0], [0, 0]]), ["bg", "x"])
    data = scores.to_dict()
    assert data["iou"] == {"bg": 1.0, "x": None}
    assert data["miou"] == 1.0
