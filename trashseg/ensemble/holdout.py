"""Held-out scores by cross-fitting over val folds, and the stage they select.

The recipe runs its stages in passes. The "full" pass fits weights and gating on all of
val and writes val and test; the "cross-fit" pass splits val into folds and runs each fold
with the parameters fitted on the other folds, so its summed confusion matrices are
held-out scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trashseg.ensemble.config import ENSEMBLE_STAGES, EnsembleConfig
from trashseg.ensemble.inputs import RecipeInputs
from trashseg.ensemble.weight_fit import SoftVoteWeights
from trashseg.errors import ConfigError
from trashseg.metrics import ConfusionMatrix, SegmentationScores

FULL_PASS = "full"
CROSS_FIT_PASS = "cross-fit"


def cross_fit_folds(file_names: Sequence[str], folds: int) -> list[list[str]]:
    """Split images into `folds` folds of near-equal size, each in the given order. The fold
    of an image depends only on the names (dealt round-robin in the order of their sha256),
    so a rerun on the same val split gets the same folds."""
    if folds > len(file_names):
        raise ConfigError(
            f"holdout_folds={folds} but val has {len(file_names)} image(s); lower holdout_folds "
            "(1 fits and scores on the same images, so the scores are optimistic)"
        )
    by_hash = sorted(file_names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    fold_of = {name: i % folds for i, name in enumerate(by_hash)}
    return [[n for n in file_names if fold_of[n] == k] for k in range(folds)]


@dataclass
class FitGroup:
    """Images of one split that a pass runs with the same fitted parameters."""

    split: str
    file_names: list[str]
    fit_on: tuple[int, ...]  # the pass's val groups whose labels fit this group's weights and gating
    weights: tuple[float, ...] = ()
    matrices: dict[str, ConfusionMatrix] = field(default_factory=dict)  # val confusion by stage

    def add_counts(self, counts_by_stage: dict[str, np.ndarray], class_names: Sequence[str]) -> None:
        """Add a chunk's val confusion counts (C x C by stage) to this group's matrices."""
        for stage, counts in counts_by_stage.items():
            matrix = self.matrices.setdefault(stage, ConfusionMatrix(len(class_names), class_names))
            matrix.matrix += counts


@dataclass
class RecipePass:
    """One run of every stage into `stage_dir`, its splits partitioned into groups."""

    name: str  # FULL_PASS (fitted on all val; val and test) or CROSS_FIT_PASS (val folds)
    stage_dir: Path
    groups: list[FitGroup]

    @property
    def is_full(self) -> bool:
        return self.name == FULL_PASS

    def splits(self) -> list[str]:
        return list(dict.fromkeys(g.split for g in self.groups))

    def fit_groups(self, group: FitGroup) -> list[FitGroup]:
        """The groups whose val labels fit `group`'s weights and gating."""
        return [self.groups[i] for i in group.fit_on]

    def summed(self, stage: str, groups: Sequence[FitGroup] | None = None) -> ConfusionMatrix:
        parts = [g.matrices[stage] for g in (self.groups if groups is None else groups) if stage in g.matrices]
        total = ConfusionMatrix(parts[0].num_classes, parts[0].class_names)
        for part in parts:
            total.matrix += part.matrix
        return total


def plan_passes(inputs: RecipeInputs, config: EnsembleConfig, out: Path) -> list[RecipePass]:
    """The full pass into OUT/stages and, with more than one fold, the cross-fit pass into
    OUT/heldout/stages; every group with its soft-vote weights."""
    val_split, test_split = inputs.val_split, config.test_split
    val = inputs.file_names(val_split)
    groups = [FitGroup(val_split, val, (0,)), FitGroup(test_split, inputs.file_names(test_split), (0,))]
    passes = [RecipePass(FULL_PASS, out / "stages", groups)]
    if config.holdout_folds > 1:
        folds = cross_fit_folds(val, config.holdout_folds)
        others = [tuple(j for j in range(len(folds)) if j != k) for k in range(len(folds))]
        fold_groups = [FitGroup(val_split, fold, fit_on) for fold, fit_on in zip(folds, others, strict=True)]
        passes.append(RecipePass(CROSS_FIT_PASS, out / "heldout" / "stages", fold_groups))
    weights = SoftVoteWeights(inputs, config)
    for recipe_pass in passes:
        for group in recipe_pass.groups:
            fit_names = [n for fit_group in recipe_pass.fit_groups(group) for n in fit_group.file_names]
            what = f"{recipe_pass.name} {group.split} ({len(group.file_names)} img)"
            group.weights = weights.fitted_on(fit_names, what)
    return passes


@dataclass(frozen=True)
class StageScores:
    """Every model and stage scored on val: held out (cross-fit) and in-sample (full pass)."""

    stages: tuple[str, ...]  # in report order: the models, then the enabled stages
    held_out: dict[str, SegmentationScores]  # the in-sample scores when there is no cross-fit
    in_sample: dict[str, SegmentationScores]
    scoring: str  # how `held_out` was obtained

    def best(self) -> str:
        """Highest held-out mIoU; on a tie the earlier (simpler) stage."""
        stages, scores = self.stages, self.held_out
        return max(stages, key=lambda s: (np.nan_to_num(scores[s].miou, nan=-1.0), -stages.index(s)))


def score_stages(passes: Sequence[RecipePass], model_names: Sequence[str], val_split: str) -> StageScores:
    full = passes[0]
    full_val = [g for g in full.groups if g.split == val_split]
    stages = tuple(name for name in (*model_names, *ENSEMBLE_STAGES) if name in full_val[0].matrices)
    in_sample = {stage: full.summed(stage, full_val).compute() for stage in stages}
    if len(passes) > 1:
        held_out = {stage: passes[1].summed(stage).compute() for stage in stages}
        scoring = f"held-out ({len(passes[1].groups)}-fold cross-fit on val)"
    else:
        held_out, scoring = in_sample, "in-sample (fitted and scored on the same val images: optimistic)"
    return StageScores(stages, held_out, in_sample, scoring)
