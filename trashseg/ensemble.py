"""The winning recipe after training: ensemble, DenseCRF, consensus overwrite, gating.

Stages, each written as a prediction folder per split under OUT/stages/<stage>/<split>:

    soft_vote   weighted mean of the models' probabilities (weights given or fitted on val)
    hard_vote   per-pixel majority of the models' masks, ties to the higher-ranked model
    crf         DenseCRF on the soft vote (removes noise, but erases small objects)
    consensus   after CRF, pixels where >= k models agree on a foreground class get it back
    gating      per class, keep the CRF/consensus result or the plain soft vote, whichever
                had the higher IoU on val (decided on val, applied to test)

Every stage and every single model is scored on the validation split. Weights and gating
are fitted on val too, so the scores that count are held out: the stages also run on
folds of val, each fold with the parameters fitted on the other folds (OUT/heldout/stages),
and the summed confusion matrices give each stage's held-out val mIoU. The final output
(OUT/final/<split>, fitted on all of val) is the best stage by held-out mIoU unless one is
pinned; the report shows held-out and in-sample figures side by side. `run_recipe` is
the one entry point (the `ensemble_crf` pipeline component and `trashseg ensemble`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trashseg.config import check_range, save_config, to_dict
from trashseg.crf import CrfConfig, WorkerPool, crf_prediction_set
from trashseg.data.io import read_mask
from trashseg.data.layout import PreparedDataset, Sample
from trashseg.errors import ConfigError, DataError
from trashseg.fileio import write_text
from trashseg.metrics import ConfusionMatrix, SegmentationScores
from trashseg.predictions import PredictionSet, check_made_from, score_predictions

log = logging.getLogger(__name__)

SOFT_VOTE = "soft_vote"
HARD_VOTE = "hard_vote"
CRF = "crf"
CONSENSUS = "consensus"
GATING = "gating"
ENSEMBLE_STAGES = (SOFT_VOTE, HARD_VOTE, CRF, CONSENSUS, GATING)


@dataclass(frozen=True)
class EnsembleConfig:
    # Names of the prediction folders, in the order given (val and test lists alike);
    # empty = taken from each folder's source (`name`, else `architecture`).
    model_names: tuple[str, ...] = ()
    # Soft-vote weights per model; empty = fitted on val by coordinate search over weight_grid.
    weights: tuple[float, ...] = ()
    weight_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    fit_rounds: int = 3
    fit_stride: int = 4  # fit on every fit_stride-th pixel in each direction
    crf_enabled: bool = True
    crf: CrfConfig = field(default_factory=CrfConfig)
    consensus_enabled: bool = True
    consensus_k: int = 2  # at least this many models must agree
    consensus_models: tuple[str, ...] = ()  # empty = all models
    consensus_max_area: int = 0  # > 0: restore only agreed components smaller than this (pixels)
    gating_enabled: bool = True
    # Val is split into this many folds; each is scored with weights and gating fitted on the
    # others, and these held-out scores select the stage. 1 = fit and score on all val (optimistic).
    holdout_folds: int = 2
    pinned_stage: str = ""  # empty = best stage by held-out val mIoU; else a stage or model name
    val_split: str = "val"
    test_split: str = "test"
    background_class: int = 0
    workers: int = 0  # processes for the per-image stages, CRF included; 0 = one per CPU core

    def __post_init__(self) -> None:
        # Upper bounds keep a typo from running for days: each fit round scores every grid
        # value for every model, and each fold repeats the fits.
        limits = {"fit_rounds": (1, 100), "fit_stride": (1, 1024), "holdout_folds": (1, 100), "consensus_k": (1, 1000),
                  "consensus_max_area": (0, 2**31 - 1), "workers": (0, 1024), "background_class": (0, 254)}
        for name, (low, high) in limits.items():
            check_range(name, getattr(self, name), low, high)
        if len(self.weight_grid) > 100 or any(not 0 <= w <= 1000 for w in (*self.weight_grid, *self.weights)):
            raise ConfigError(
                f"weight_grid={list(self.weight_grid)[:10]}, weights={list(self.weights)[:10]}: expected at most 100 "
                "grid values, each weight in [0, 1000]"
            )
        if any(w < 0 for w in self.weights) or (self.weights and sum(self.weights) == 0):
            raise ConfigError(f"weights must be >= 0 and not all 0, got {list(self.weights)}")
        if not self.weight_grid or any(w < 0 for w in self.weight_grid):
            raise ConfigError(
                f"weight_grid must be non-empty values >= 0, got {list(self.weight_grid)}"
            )
        if len(set(self.model_names)) != len(self.model_names):
            raise ConfigError(f"model_names must be unique, got {list(self.model_names)}")
        if self.val_split == self.test_split:
            raise ConfigError(f"val_split and test_split must differ, both are {self.val_split!r}")


# ---------------------------------------------------------------- per-image operations


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


# ---------------------------------------------------------------- weight fitting


def fit_weights(
    prediction_sets: Sequence[PredictionSet],
    samples: Sequence[Sample],
    num_classes: int,
    grid: Sequence[float],
    rounds: int,
    stride: int,
) -> tuple[tuple[float, ...], float]:
    """Soft-vote weights maximising val mIoU by coordinate search; returns (weights, mIoU).

    Starts from equal weights; each round tries every grid value for each model in turn
    and keeps strict improvements; stops after a round without one. Scored on every
    `stride`-th pixel to keep memory and time bounded on full-size splits.
    """
    if len(prediction_sets) == 1:
        return (1.0,), float("nan")
    cached = [[] for _ in prediction_sets]
    targets = []
    for sample in samples:
        target = read_mask(sample.mask, num_classes)[::stride, ::stride]
        targets.append(target.reshape(-1))
        for m, prediction in enumerate(prediction_sets):
            probs = prediction.probs(sample.file_name)[:, ::stride, ::stride]
            cached[m].append(np.rint(probs * 255).astype(np.uint8).reshape(num_classes, -1))
    stacked = [np.concatenate(parts, axis=1) for parts in cached]
    target = np.concatenate(targets)

    def score(weights: Sequence[float]) -> float:
        matrix = ConfusionMatrix(num_classes)
        for start in range(0, target.size, 1 << 20):
            chunk = slice(start, start + (1 << 20))
            total = sum(
                np.float32(w) * p[:, chunk].astype(np.float32)
                for w, p in zip(weights, stacked, strict=True)
                if w
            )
            matrix.update(total.argmax(axis=0), target[chunk])
        return matrix.compute().miou

    weights = [1.0] * len(prediction_sets)
    best = score(weights)
    for _ in range(rounds):
        improved = False
        for m in range(len(weights)):
            for value in grid:
                candidate = weights[:m] + [float(value)] + weights[m + 1 :]
                if value == weights[m] or sum(candidate) == 0:
                    continue
                candidate_score = score(candidate)
                if candidate_score > best + 1e-12:
                    best, weights, improved = candidate_score, candidate, True
        if not improved:
            break
    total = sum(weights)
    return tuple(w / total for w in weights), best


# ---------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class RecipeResult:
    out_dir: Path
    model_names: tuple[str, ...]
    weights: tuple[float, ...]  # fitted on all of val: what the final predictions use
    stages: tuple[str, ...]  # everything scored on val, in report order
    scores: dict[str, SegmentationScores]  # held-out val scores by stage / model name (cross-fit)
    selected_stage: str
    final_dirs: dict[str, Path]  # split -> prediction folder of the selected stage
    report_files: dict[str, Path]  # json, markdown, png, html
    gating: GatingDecision | None
    in_sample_scores: dict[str, SegmentationScores] = field(default_factory=dict)  # fitted and scored on all val
    scoring: str = ""  # how `scores` were obtained, e.g. "held-out (2-fold cross-fit)"


def run_recipe(
    prediction_dirs_val: Sequence[str | Path],
    prediction_dirs_test: Sequence[str | Path],
    dataset_dir: str | Path,
    out_dir: str | Path,
    config: EnsembleConfig,
) -> RecipeResult:
    """Ensemble several models' predictions, refine, score every stage on val, write the best.

    `prediction_dirs_val[i]` and `prediction_dirs_test[i]` are the same model's prediction
    folders on the val and test splits of the prepared dataset at `dataset_dir`.

    The stages run twice: fitted on all of val (weights, gating) for the final output, and
    cross-fitted over `config.holdout_folds` folds of val, each fold run with the
    parameters fitted on the other folds. The cross-fit's summed confusion matrices are
    the held-out scores that select the stage (and that callers compare rounds with).
    """
    runner = RecipeRunner(prediction_dirs_val, prediction_dirs_test, dataset_dir, out_dir, config)
    with runner.pool:
        decisions = [runner.run_stages(recipe_pass) for recipe_pass in runner.passes]
    return runner.finish(decisions[0])


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
class _Group:
    """Images of one split that a pass runs with the same fitted parameters."""

    split: str
    file_names: list[str]
    fit_on: tuple[int, ...]  # the pass's val groups whose labels fit this group's weights and gating
    weights: tuple[float, ...] = ()
    matrices: dict[str, ConfusionMatrix] = field(default_factory=dict)  # val confusion by stage


@dataclass
class _Pass:
    """One run of every stage into `stage_dir`, its splits partitioned into groups."""

    name: str  # "full" (fitted on all val; val and test) or "cross-fit" (val folds)
    stage_dir: Path
    groups: list[_Group]

    def splits(self) -> list[str]:
        return list(dict.fromkeys(g.split for g in self.groups))

    def summed(self, stage: str, groups: Sequence[_Group] | None = None) -> ConfusionMatrix:
        parts = [g.matrices[stage] for g in (self.groups if groups is None else groups) if stage in g.matrices]
        total = ConfusionMatrix(parts[0].num_classes, parts[0].class_names)
        for part in parts:
            total.matrix += part.matrix
        return total


class RecipeRunner:
    """One recipe run: owns the worker pool, the per-split file lists and the passes (the
    full fit and the cross-fit); each stage method writes <pass dir>/<stage>/<split>."""

    def __init__(self, prediction_dirs_val, prediction_dirs_test, dataset_dir, out_dir, config: EnsembleConfig) -> None:
        self.out, self.config = Path(out_dir), config
        self.dataset = PreparedDataset(dataset_dir)
        self.classes = self.dataset.classes()
        val_sets = [PredictionSet.open(d) for d in prediction_dirs_val]
        test_sets = [PredictionSet.open(d) for d in prediction_dirs_test]
        self.names = _model_names(val_sets, test_sets, config)
        self.val = config.val_split
        self.splits = {config.val_split: val_sets, config.test_split: test_sets}
        samples = {split: self.dataset.samples(split) for split in self.splits}
        for split, sets in self.splits.items():
            for name, prediction in zip(self.names, sets, strict=True):
                _check_prediction_set(prediction, name, split, samples[split], self.classes.names)
                check_made_from(prediction, self.dataset, split)
        self.consensus_ids = _consensus_model_ids(self.names, config)
        candidates = (*self.names, *_enabled_stages(config))
        if config.pinned_stage and config.pinned_stage not in candidates:
            raise ConfigError(
                f"pinned_stage {config.pinned_stage!r} is not a model or an enabled stage; "
                f"choose from {', '.join(candidates)}"
            )
        self.class_names = tuple(self.classes.names)
        self.file_names = {split: [s.file_name for s in samples[split]] for split in self.splits}
        self.model_dirs = {split: tuple(str(s.root) for s in sets) for split, sets in self.splits.items()}
        self._val_sets, self._val_samples = val_sets, {s.file_name: s for s in samples[self.val]}
        self._fitted: dict[tuple[str, ...], tuple[float, ...]] = {}
        self.passes = self._passes()
        self.weights = self.passes[0].groups[0].weights
        workers = min(config.workers or os.cpu_count() or 1, max(map(len, self.file_names.values())))
        self.pool = WorkerPool(workers)

    def _passes(self) -> list[_Pass]:
        val, test = self.file_names[self.val], self.file_names[self.config.test_split]
        full = _Pass("full", self.out / "stages", [_Group(self.val, val, (0,)), _Group(self.config.test_split, test, (0,))])
        passes = [full]
        if self.config.holdout_folds > 1:
            folds = cross_fit_folds(val, self.config.holdout_folds)
            others = [tuple(j for j in range(len(folds)) if j != k) for k in range(len(folds))]
            groups = [_Group(self.val, fold, fit_on) for fold, fit_on in zip(folds, others, strict=True)]
            passes.append(_Pass("cross-fit", self.out / "heldout" / "stages", groups))
        for recipe_pass in passes:
            for group in recipe_pass.groups:
                fit_names = [n for i in group.fit_on for n in recipe_pass.groups[i].file_names]
                group.weights = self._weights(fit_names, f"{recipe_pass.name} {group.split} ({len(group.file_names)} img)")
        return passes

    def _weights(self, fit_names: Sequence[str], what: str) -> tuple[float, ...]:
        config = self.config
        if config.weights:
            if len(config.weights) != len(self.names):
                raise ConfigError(
                    f"{len(config.weights)} weights given for {len(self.names)} models ({', '.join(self.names)})"
                )
            return tuple(w / sum(config.weights) for w in config.weights)
        key = tuple(fit_names)
        if key not in self._fitted:
            weights, fitted_miou = fit_weights(
                self._val_sets, [self._val_samples[n] for n in fit_names], self.classes.num_classes,
                config.weight_grid, config.fit_rounds, config.fit_stride,
            )
            log.info("%s: weights %s fitted on %d val image(s) (mIoU %.4f on the fitting pixels)", what,
                     dict(zip(self.names, weights, strict=True)), len(fit_names), fitted_miou)
            self._fitted[key] = weights
        return self._fitted[key]

    def run_stages(self, recipe_pass: _Pass) -> GatingDecision | None:
        """Every enabled stage over one pass; returns the gating decision of its first group."""
        config = self.config
        self.vote(recipe_pass)
        refined = SOFT_VOTE
        if config.crf_enabled:
            refined = self.crf(recipe_pass, refined)
        if config.consensus_enabled:
            refined = self.consensus(recipe_pass, refined)
        if config.gating_enabled and refined != SOFT_VOTE:
            return self.gating(recipe_pass, refined)[0]
        return None

    def _job_fields(self, recipe_pass: _Pass, group: _Group) -> dict:
        return dict(
            stage_dir=str(recipe_pass.stage_dir), split=group.split, dataset_dir=str(self.dataset.root),
            num_classes=self.classes.num_classes, score=group.split == self.val,
        )

    def _run_stage(self, recipe_pass: _Pass, sources: dict[str, dict], make_job) -> dict[str, int]:
        """A per-image job over each group of a pass (`make_job(group)`): output folders created
        per split, each group's val matrices merged, meta written once every worker is done.
        Returns the pixels the job restored (consensus) per split."""
        restored: dict[str, int] = {}
        for split in recipe_pass.splits():
            outputs = {stage: PredictionSet.create(recipe_pass.stage_dir / stage / split, self.class_names, source=source)
                       for stage, source in sources.items()}
            restored[split] = 0
            for group in (g for g in recipe_pass.groups if g.split == split):
                def merge(result: _ChunkResult, group=group, split=split) -> None:
                    for stage, counts in result.matrices.items():
                        matrix = group.matrices.setdefault(stage, ConfusionMatrix(self.classes.num_classes, self.class_names))
                        matrix.matrix += counts
                    restored[split] += result.restored

                what = f"{'+'.join(sources)} {split}" + (f" ({recipe_pass.name})" if recipe_pass.name != "full" else "")
                self.pool.map_chunks(make_job(group), group.file_names, _CHUNK_SIZE, what, merge)
            for folder in outputs.values():
                folder.complete(self.file_names[split])
        return restored

    def vote(self, recipe_pass: _Pass) -> None:
        """soft_vote and hard_vote (and every single model's val score)."""
        weights = [dict(zip(self.names, g.weights, strict=True)) for g in recipe_pass.groups]
        sources = {SOFT_VOTE: {"stage": SOFT_VOTE, "weights": list(recipe_pass.groups[0].weights)}, HARD_VOTE: {"stage": HARD_VOTE}}
        if recipe_pass.name != "full":
            sources[SOFT_VOTE] = {"stage": SOFT_VOTE, "pass": recipe_pass.name, "weights_by_group": weights}
        self._run_stage(recipe_pass, sources, lambda group: _VoteJob(
            **self._job_fields(recipe_pass, group), model_dirs=self.model_dirs[group.split],
            model_names=self.names, weights=group.weights,
        ))

    def crf(self, recipe_pass: _Pass, refined: str) -> str:
        stage_dir = recipe_pass.stage_dir
        for split in recipe_pass.splits():
            crf_prediction_set(
                stage_dir / refined / split, self.dataset.root, stage_dir / CRF / split,
                self.config.crf, self.file_names[split], pool=self.pool,
            )
        for group in recipe_pass.groups:
            if group.split == self.val:
                group.matrices[CRF] = score_predictions(
                    PredictionSet.open(stage_dir / CRF / self.val), self.dataset, group.file_names
                )
        return CRF

    def consensus(self, recipe_pass: _Pass, refined: str) -> str:
        config = self.config
        restored = self._run_stage(recipe_pass, {CONSENSUS: {"stage": CONSENSUS, "input": refined}}, lambda group: _ConsensusJob(
            **self._job_fields(recipe_pass, group), refined_stage=refined,
            model_dirs=tuple(self.model_dirs[group.split][i] for i in self.consensus_ids),
            k=config.consensus_k, max_area=config.consensus_max_area, background=config.background_class,
        ))
        for split, pixels in restored.items():
            log.info("consensus %s (%s): %d pixel(s) took the models' agreed class", split, recipe_pass.name, pixels)
        return CONSENSUS

    def gating(self, recipe_pass: _Pass, refined: str) -> list[GatingDecision]:
        """Per group, the gating decided on the val matrices of the groups it is fitted on."""
        decisions = []
        for group in recipe_pass.groups:
            fit_groups = [recipe_pass.groups[i] for i in group.fit_on]
            decisions.append(decide_gating(
                recipe_pass.summed(SOFT_VOTE, fit_groups).compute(), recipe_pass.summed(refined, fit_groups).compute(),
                SOFT_VOTE, refined,
            ))
        if recipe_pass.name == "full":
            decisions[0].save(self.out / "gating.json")
        decision_of = {id(g): d for g, d in zip(recipe_pass.groups, decisions, strict=True)}
        sources = {GATING: {"stage": GATING, "decision": decisions[0].to_dict()}}
        if recipe_pass.name != "full":
            sources[GATING] = {"stage": GATING, "pass": recipe_pass.name, "decisions_by_group": [d.to_dict() for d in decisions]}
        self._run_stage(recipe_pass, sources, lambda group: _GatingJob(
            **self._job_fields(recipe_pass, group), ensemble_stage=SOFT_VOTE, refined_stage=refined,
            use_ensemble=decision_of[id(group)].use_ensemble,
        ))
        return decisions

    def finish(self, gating: GatingDecision | None) -> RecipeResult:
        """Score every stage, pick the best held-out one (or the pinned one), copy it to
        OUT/final, write the report with the held-out and the in-sample figures."""
        from trashseg.stage_report import write_stage_report

        full = self.passes[0]
        full_val = [g for g in full.groups if g.split == self.val]
        stages = tuple(name for name in (*self.names, *ENSEMBLE_STAGES) if name in full_val[0].matrices)
        in_sample = {stage: full.summed(stage, full_val).compute() for stage in stages}
        if len(self.passes) > 1:
            held_out = {stage: self.passes[1].summed(stage).compute() for stage in stages}
            scoring = f"held-out ({len(self.passes[1].groups)}-fold cross-fit on val)"
        else:
            held_out, scoring = in_sample, "in-sample (fitted and scored on the same val images: optimistic)"
        selected = self.config.pinned_stage or _best_stage(held_out, stages)
        final_dirs = {split: self._write_final(split, selected) for split in self.splits}
        save_config(self.config, self.out / "ensemble_config.json")
        weights = dict(zip(self.names, self.weights, strict=True))
        cross_fit = None
        if len(self.passes) > 1:
            cross_fit = {
                "folds": [{"images": len(g.file_names), "weights": dict(zip(self.names, g.weights, strict=True))}
                          for g in self.passes[1].groups],
            }
        report_files = write_stage_report(
            self.out / "report", held_out, stages, selected=selected, pinned=bool(self.config.pinned_stage),
            in_sample=in_sample, scoring=scoring,
            details={"models": list(self.names), "weights": weights, "gating": gating.to_dict() if gating else None,
                     "cross_fit": cross_fit},
        )
        log.info("recipe: selected %s (val mIoU %.4f %s, %.4f in-sample) -> %s", selected, held_out[selected].miou,
                 scoring, in_sample[selected].miou, self.out / "final")
        return RecipeResult(self.out, self.names, self.weights, stages, held_out, selected, final_dirs, report_files,
                            gating, in_sample, scoring)

    def _write_final(self, split: str, selected: str) -> Path:
        sets = self.splits[split]
        source_dir = sets[self.names.index(selected)].root if selected in self.names else self.passes[0].stage_dir / selected / split
        final_dir = self.out / "final" / split
        if final_dir.exists():
            shutil.rmtree(final_dir)
        shutil.copytree(source_dir, final_dir)
        final = PredictionSet.open(final_dir)
        final.source = {
            "stage": selected,
            "split": split,
            "models": {name: s.source | {"dir": str(s.root)} for name, s in zip(self.names, sets, strict=True)},
            "weights": dict(zip(self.names, self.weights, strict=True)),
            "ensemble_config": to_dict(self.config),
        }
        final.save()
        return final_dir


_CHUNK_SIZE = 4  # images per work item of the per-image stages


@dataclass(frozen=True)
class _ChunkResult:
    matrices: dict[str, np.ndarray]  # val confusion counts by stage (empty off val)
    restored: int = 0


@dataclass(frozen=True)
class _StageJob:
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
class _VoteJob(_StageJob):
    model_dirs: tuple[str, ...] = ()
    model_names: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()

    def __call__(self, file_names: Sequence[str]) -> _ChunkResult:
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
        return _ChunkResult({stage: m.matrix for stage, m in matrices.items()})


@dataclass(frozen=True)
class _ConsensusJob(_StageJob):
    refined_stage: str = CRF
    model_dirs: tuple[str, ...] = ()
    k: int = 2
    max_area: int = 0
    background: int = 0

    def __call__(self, file_names: Sequence[str]) -> _ChunkResult:
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
        return _ChunkResult({CONSENSUS: matrix.matrix} if self.score else {}, restored_pixels)


@dataclass(frozen=True)
class _GatingJob(_StageJob):
    ensemble_stage: str = SOFT_VOTE
    refined_stage: str = CONSENSUS
    use_ensemble: tuple[bool, ...] = ()

    def __call__(self, file_names: Sequence[str]) -> _ChunkResult:
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
        return _ChunkResult({GATING: matrix.matrix} if self.score else {})


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


def _enabled_stages(config: EnsembleConfig) -> tuple[str, ...]:
    refined = config.crf_enabled or config.consensus_enabled
    enabled = {
        SOFT_VOTE: True,
        HARD_VOTE: True,
        CRF: config.crf_enabled,
        CONSENSUS: config.consensus_enabled,
        GATING: config.gating_enabled and refined,
    }
    return tuple(stage for stage in ENSEMBLE_STAGES if enabled[stage])


def _best_stage(scores: dict[str, SegmentationScores], stages: Sequence[str]) -> str:
    """Highest val mIoU; on a tie the earlier (simpler) stage."""
    return max(stages, key=lambda s: (np.nan_to_num(scores[s].miou, nan=-1.0), -stages.index(s)))


def _model_names(val_sets, test_sets, config: EnsembleConfig) -> tuple[str, ...]:
    if not val_sets:
        raise ConfigError("no prediction folders given; pass one per model for val and for test")
    if len(val_sets) != len(test_sets):
        raise ConfigError(
            f"{len(val_sets)} val prediction folders but {len(test_sets)} test folders; give one of each per model"
        )
    val_names = _default_names(val_sets)
    test_names = _default_names(test_sets)
    if val_names != test_names:
        raise DataError(
            f"val and test prediction folders are not the same models in the same order: "
            f"val {val_names}, test {test_names}"
        )
    if config.model_names:
        if len(config.model_names) != len(val_sets):
            raise ConfigError(
                f"{len(config.model_names)} model_names for {len(val_sets)} prediction folders"
            )
        clashes = [n for n in config.model_names if n in ENSEMBLE_STAGES]
        if clashes:
            raise ConfigError(
                f"model_names {clashes} clash with stage names {list(ENSEMBLE_STAGES)}; rename them"
            )
        return tuple(config.model_names)
    return val_names


def _default_names(sets: Sequence[PredictionSet]) -> tuple[str, ...]:
    names: list[str] = []
    for i, prediction in enumerate(sets):
        base = str(
            prediction.source.get("name") or prediction.source.get("architecture") or f"model{i}"
        )
        name, n = base, 2
        while name in names or name in ENSEMBLE_STAGES:  # two runs of one architecture stay apart
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return tuple(names)


def _consensus_model_ids(names: Sequence[str], config: EnsembleConfig) -> list[int]:
    chosen = config.consensus_models or tuple(names)
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ConfigError(
            f"consensus_models {unknown} are not models of this ensemble; valid: {', '.join(names)}"
        )
    if config.consensus_enabled and config.consensus_k > len(chosen):
        raise ConfigError(
            f"consensus_k={config.consensus_k} but only {len(chosen)} consensus model(s): {', '.join(chosen)}"
        )
    return [names.index(n) for n in chosen]


def _check_prediction_set(
    prediction: PredictionSet, name: str, split: str, samples, class_names
) -> None:
    if tuple(prediction.class_names) != tuple(class_names):
        raise DataError(
            f"model {name} ({prediction.root}) predicts classes {prediction.class_names}, "
            f"but the dataset has {list(class_names)}"
        )
    missing = sorted({s.file_name for s in samples} - set(prediction.file_names))
    if missing:
        raise DataError(
            f"model {name} ({prediction.root}) has no {split} prediction for {len(missing)} image(s): "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; predict the whole {split} split"
        )


def _json_float(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
