"""Held-out scores by cross-fitting over val folds.

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

from trashseg.errors import ConfigError
from trashseg.metrics import ConfusionMatrix


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


@dataclass
class RecipePass:
    """One run of every stage into `stage_dir`, its splits partitioned into groups."""

    name: str  # "full" (fitted on all val; val and test) or "cross-fit" (val folds)
    stage_dir: Path
    groups: list[FitGroup]

    def splits(self) -> list[str]:
        return list(dict.fromkeys(g.split for g in self.groups))

    def summed(self, stage: str, groups: Sequence[FitGroup] | None = None) -> ConfusionMatrix:
        parts = [g.matrices[stage] for g in (self.groups if groups is None else groups) if stage in g.matrices]
        total = ConfusionMatrix(parts[0].num_classes, parts[0].class_names)
        for part in parts:
            total.matrix += part.matrix
        return total

