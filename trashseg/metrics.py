"""Segmentation metrics from one confusion matrix accumulated over a whole split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trashseg.data.layout import IGNORE_INDEX


class ConfusionMatrix:
    """`matrix[t, p]` counts pixels of true class t predicted as p; ignore-index pixels skipped.

    Accepts numpy arrays or torch tensors of any matching shape (batches included).
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction, target) -> None:
        prediction = _as_numpy(prediction).reshape(-1).astype(np.int64, copy=False)
        target = _as_numpy(target).reshape(-1).astype(np.int64, copy=False)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction has {prediction.size} pixels, target {target.size}")
        keep = target != IGNORE_INDEX
        prediction, target = prediction[keep], target[keep]
        n = self.num_classes
        # min/max first: the full check only runs when something is out of range.
        if target.size and (min(target.min(), prediction.min()) < 0 or max(target.max(), prediction.max()) >= n):
            values = np.concatenate([target, prediction])
            values = np.unique(values[(values < 0) | (values >= n)])
            raise ValueError(f"class ids {values[:10].tolist()} outside 0..{n - 1} (ignore index is {IGNORE_INDEX})")
        self.matrix += np.bincount(target * n + prediction, minlength=n * n).reshape(n, n)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def reset(self) -> None:
        self.matrix[:] = 0

    def compute(self) -> SegmentationScores:
        return SegmentationScores.from_matrix(self.matrix, self.class_names)


@dataclass(frozen=True)
class SegmentationScores:
    miou: float
    pixel_accuracy: float
    iou: dict[str, float]  # NaN for classes absent from both target and prediction
    accuracy: dict[str, float]  # per-class recall; NaN for classes absent from target
    matrix: list[list[int]]
    class_names: list[str]

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, class_names: Sequence[str]) -> SegmentationScores:
        matrix = np.asarray(matrix, dtype=np.int64)
        true_positive = np.diag(matrix).astype(np.float64)
        in_target = matrix.sum(axis=1).astype(np.float64)
        in_prediction = matrix.sum(axis=0).astype(np.float64)
        union = in_target + in_prediction - true_positive
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, true_positive / union, np.nan)
            accuracy = np.where(in_target > 0, true_positive / in_target, np.nan)
        total = matrix.sum()
        return cls(
            miou=float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            pixel_accuracy=float(true_positive.sum() / total) if total else float("nan"),
            iou=dict(zip(class_names, map(float, iou), strict=True)),
            accuracy=dict(zip(class_names, map(float, accuracy), strict=True)),
            matrix=matrix.tolist(),
            class_names=list(class_names),
        )

    def to_dict(self) -> dict:
        """JSON-ready (NaN becomes None)."""

        def clean(values: dict[str, float]) -> dict[str, float | None]:
            return {k: (None if np.isnan(v) else v) for k, v in values.items()}

        return {
            "miou": None if np.isnan(self.miou) else self.miou,
            "pixel_accuracy": None if np.isnan(self.pixel_accuracy) else self.pixel_accuracy,
            "iou": clean(self.iou),
            "accuracy": clean(self.accuracy),
            "matrix": self.matrix,
            "class_names": self.class_names,
        }


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)
