"""The stages' per-pixel operations: soft and hard voting, the consensus overwrite, and
per-class gating (decided on val scores, applied per pixel)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trashseg.errors import ConfigError
from trashseg.fileio import write_text
from trashseg.metrics import SegmentationScores


def soft_vote(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of (C, H, W) probability maps."""
    if len(probs) != len(weights):
        raise ValueError(f"{len(probs)} probability maps but {len(weights)} weights")
    total = float(sum(weights))
    result = np.zeros_like(probs[0], dtype=np.float32)
    for p, w in zip(probs, weights, strict=True):
        if w:
            result += np.float32(w / total) * p
    return result


def hard_vote(masks: Sequence[np.ndarray], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel majority of label maps; a tie goes to the class of the first-listed model in it.

    Returns the voted mask and the vote share per class, (C, H, W) float32 summing to 1.
    """
    class_ids = np.arange(num_classes, dtype=np.int32)[:, None, None]
    counts = np.zeros((num_classes, *masks[0].shape), dtype=np.int32)
    for mask in masks:
        counts += mask[None] == class_ids
    best = counts.max(axis=0)
    voted = np.full(masks[0].shape, -1, dtype=np.int32)
    for mask in masks:  # model rank order: the first model whose class is among the tied wins
        vote_count = np.take_along_axis(counts, mask[None].astype(np.intp), 0)[0]
        wins = (voted < 0) & (vote_count == best)
        voted[wins] = mask[wins]
    return voted.astype(np.uint8), counts.astype(np.float32) / len(masks)


def consensus_overwrite(
    mask: np.ndarray,
    model_masks: Sequence[np.ndarray],
    k: int,
    num_classes: int,
    *,
    background: int = 0,
    max_area: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Write back pixels where at least `k` models agree on a non-background class.

    With `max_area > 0`, only connected components of agreement smaller than `max_area`
    pixels are written back (small objects, the ones DenseCRF erases). Returns the new
    mask and the boolean map of pixels that took the agreed class.
    """
    from scipy import ndimage

    if k > len(model_masks):
        raise ConfigError(
            f"consensus_k={k} but only {len(model_masks)} model(s) vote; lower consensus_k"
        )
    agreed, share = hard_vote(model_masks, num_classes)
    votes = np.rint(
        np.take_along_axis(share, agreed[None].astype(np.intp), 0)[0] * len(model_masks)
    )
    keep = (votes >= k) & (agreed != background)
    if max_area > 0 and keep.any():
        small = np.zeros_like(keep)
        for class_id in np.unique(agreed[keep]):
            components, count = ndimage.label(keep & (agreed == class_id))
            sizes = np.bincount(components.ravel(), minlength=count + 1)
            small_ids = np.flatnonzero(sizes < max_area)
            small |= np.isin(components, small_ids[small_ids > 0])
        keep = small
    return np.where(keep, agreed, mask).astype(np.uint8), keep


@dataclass(frozen=True)
class GatingDecision:
    """Per class: which stage's pixels the gated output takes (decided on val)."""

    ensemble_stage: str  # the plain ensemble, e.g. soft_vote
    refined_stage: str  # the post-processed result, e.g. consensus or crf
    use_ensemble: tuple[bool, ...]  # by class id
    class_names: tuple[str, ...]
    iou_ensemble: tuple[float, ...]
    iou_refined: tuple[float, ...]

    def to_dict(self) -> dict:
        return {
            "ensemble_stage": self.ensemble_stage,
            "refined_stage": self.refined_stage,
            "classes": {
                name: {
                    "source": self.ensemble_stage if use else self.refined_stage,
                    "iou_ensemble": _json_float(a),
                    "iou_refined": _json_float(b),
                }
                for name, use, a, b in zip(
                    self.class_names,
                    self.use_ensemble,
                    self.iou_ensemble,
                    self.iou_refined,
                    strict=True,
                )
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> GatingDecision:
        names = tuple(data["classes"])
        rows = [data["classes"][n] for n in names]
        return cls(
            data["ensemble_stage"],
            data["refined_stage"],
            tuple(r["source"] == data["ensemble_stage"] for r in rows),
            names,
            tuple(_nan(r["iou_ensemble"]) for r in rows),
            tuple(_nan(r["iou_refined"]) for r in rows),
        )

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> GatingDecision:
        return cls.from_dict(json.loads(Path(path).read_text()))


def decide_gating(
    ensemble: SegmentationScores,
    refined: SegmentationScores,
    ensemble_stage: str,
    refined_stage: str,
) -> GatingDecision:
    """Per class, the ensemble wins only with a strictly higher val IoU (NaN: keep refined)."""
    names = tuple(ensemble.class_names)
    iou_e = tuple(ensemble.iou[n] for n in names)
    iou_r = tuple(refined.iou[n] for n in names)
    use = tuple(
        bool(np.isfinite(a) and (not np.isfinite(b) or a > b))
        for a, b in zip(iou_e, iou_r, strict=True)
    )
    return GatingDecision(ensemble_stage, refined_stage, use, names, iou_e, iou_r)


def apply_gating(
    ensemble_mask: np.ndarray, refined_mask: np.ndarray, use_ensemble: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray]:
    """Gated mask: each class's region comes from its chosen source.

    A pixel takes the ensemble's label when either source labels it with an
    ensemble-gated class (so such a class's extent is exactly the ensemble's); otherwise
    the refined label. Returns the mask and the boolean map of ensemble pixels.
    """
    gate = np.asarray(use_ensemble, dtype=bool)
    from_ensemble = gate[ensemble_mask] | gate[refined_mask]
    return np.where(from_ensemble, ensemble_mask, refined_mask).astype(np.uint8), from_ensemble


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
