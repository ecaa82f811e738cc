"""The per-image work of the stages: picklable jobs that worker processes run on chunks of
one split's images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trashseg.data.io import read_mask
from trashseg.data.layout import PreparedDataset
from trashseg.ensemble.config import CONSENSUS, CRF, GATING, HARD_VOTE, SOFT_VOTE
from trashseg.ensemble.voting import apply_gating, consensus_overwrite, hard_vote, soft_vote
from trashseg.errors import DataError
from trashseg.metrics import ConfusionMatrix
from trashseg.predictions import PredictionSet

CHUNK_SIZE = 4  # images per work item of the per-image stages


@dataclass(frozen=True)
class ChunkResult:
    """What a job sends back for one chunk of images."""

    matrices: dict[str, np.ndarray]  # val confusion counts by stage (empty off val)
    restored: int = 0


@dataclass(frozen=True)
class StageJob:
    """Picklable work item of a per-image stage on one split.

    Workers get file names only: they read the input folders, write their outputs'
    entries themselves, and send back only confusion counts (C x C) for val.
    """

    stage_dir: str
    split: str
    dataset_dir: str
    num_classes: int
    score: bool

    def folder(self, stage: str) -> PredictionSet:
        return PredictionSet.open(Path(self.stage_dir) / stage / self.split)

    def output(self, stage: str, class_names: list[str]) -> PredictionSet:
        return PredictionSet.entry_writer(Path(self.stage_dir) / stage / self.split, class_names)

    def target(self, file_name: str) -> np.ndarray:
        return read_mask(PreparedDataset(self.dataset_dir).mask_path(file_name), self.num_classes)


@dataclass(frozen=True)
class VoteJob(StageJob):
    """soft_vote and hard_vote of the models' predictions; on val, also every model's score."""

    model_dirs: tuple[str, ...] = ()
    model_names: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()

    def __call__(self, file_names: Sequence[str]) -> ChunkResult:
        models = [PredictionSet.open(d) for d in self.model_dirs]
        soft = self.output(SOFT_VOTE, models[0].class_names)
        hard = self.output(HARD_VOTE, models[0].class_names)
        stages = (*self.model_names, SOFT_VOTE, HARD_VOTE)
        matrices = (
            {stage: ConfusionMatrix(self.num_classes) for stage in stages} if self.score else {}
        )
        for name in file_names:
            probs = [m.probs(name) for m in models]
            masks = [m.mask(name) for m in models]
            _check_shapes(name, self.model_names, probs, masks)
            soft_probs = soft_vote(probs, self.weights)
            hard_mask, vote_share = hard_vote(masks, self.num_classes)
            soft.add(name, soft_probs)
            hard.add(name, vote_share, mask=hard_mask)
            if self.score:
                target = self.target(name)
                _check_target(name, target, hard_mask)
                for model_name, mask in zip(self.model_names, masks, strict=True):
                    matrices[model_name].update(mask, target)
                matrices[SOFT_VOTE].update(soft_probs.argmax(axis=0), target)
                matrices[HARD_VOTE].update(hard_mask, target)
        return ChunkResult({stage: m.matrix for stage, m in matrices.items()})


@dataclass(frozen=True)
class ConsensusJob(StageJob):
    """consensus: the refined stage with the models' agreed foreground written back."""

    refined_stage: str = CRF
    model_dirs: tuple[str, ...] = ()
    k: int = 2
    max_area: int = 0
    background: int = 0

    def __call__(self, file_names: Sequence[str]) -> ChunkResult:
        refined = self.folder(self.refined_stage)
        models = [PredictionSet.open(d) for d in self.model_dirs]
        result = self.output(CONSENSUS, refined.class_names)
        matrix = ConfusionMatrix(self.num_classes)
        restored_pixels = 0
        for name in file_names:
            mask, restored = consensus_overwrite(
                refined.mask(name),
                [m.mask(name) for m in models],
                self.k,
                self.num_classes,
                background=self.background,
                max_area=self.max_area,
            )
            probs = refined.probs(name)
            if restored.any():  # restored pixels carry the agreeing models' mean probabilities
                agreeing = soft_vote([m.probs(name) for m in models], [1.0] * len(models))
                probs[:, restored] = agreeing[:, restored]
            result.add(name, probs, mask=mask)
            restored_pixels += int(restored.sum())
            if self.score:
                matrix.update(mask, self.target(name))
        return ChunkResult({CONSENSUS: matrix.matrix} if self.score else {}, restored_pixels)


@dataclass(frozen=True)
class GatingJob(StageJob):
    """gating: per class, the ensemble's or the refined stage's pixels, as decided on val."""

    ensemble_stage: str = SOFT_VOTE
    refined_stage: str = CONSENSUS
    use_ensemble: tuple[bool, ...] = ()

    def __call__(self, file_names: Sequence[str]) -> ChunkResult:
        ensemble, refined = self.folder(self.ensemble_stage), self.folder(self.refined_stage)
        result = self.output(GATING, refined.class_names)
        matrix = ConfusionMatrix(self.num_classes)
        for name in file_names:
            mask, from_ensemble = apply_gating(
                ensemble.mask(name), refined.mask(name), self.use_ensemble
            )
            probs = refined.probs(name)
            probs[:, from_ensemble] = ensemble.probs(name)[:, from_ensemble]
            result.add(name, probs, mask=mask)
            if self.score:
                matrix.update(mask, self.target(name))
        return ChunkResult({GATING: matrix.matrix} if self.score else {})


def _check_shapes(file_name: str, model_names, probs, masks) -> None:
    shapes = {name: p.shape for name, p in zip(model_names, probs, strict=True)}
    if len(set(shapes.values())) > 1 or any(m.shape != probs[0].shape[1:] for m in masks):
        raise DataError(
            f"{file_name!r}: the models' predictions differ in size {shapes}; "
            "predict every model at the image's own resolution"
        )


def _check_target(file_name: str, target: np.ndarray, prediction: np.ndarray) -> None:
    if target.shape != prediction.shape:
        raise DataError(
            f"{file_name!r}: ground-truth mask is {target.shape[1]}x{target.shape[0]} but the "
            f"predictions are {prediction.shape[1]}x{prediction.shape[0]}; predict at the image's resolution"
        )

