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

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trashseg.config import save_config, to_dict
from trashseg.crf import WorkerPool, crf_prediction_set
from trashseg.data.layout import PreparedDataset
from trashseg.ensemble.config import (
    CONSENSUS,
    CRF,
    ENSEMBLE_STAGES,
    GATING,
    HARD_VOTE,
    SOFT_VOTE,
    EnsembleConfig,
    enabled_stages,
)
from trashseg.ensemble.holdout import FitGroup, RecipePass, cross_fit_folds
from trashseg.ensemble.jobs import CHUNK_SIZE, ChunkResult, ConsensusJob, GatingJob, VoteJob
from trashseg.ensemble.voting import GatingDecision, decide_gating
from trashseg.ensemble.weight_fit import fit_weights
from trashseg.errors import ConfigError, DataError
from trashseg.metrics import ConfusionMatrix, SegmentationScores
from trashseg.predictions import PredictionSet, check_made_from, score_predictions

log = logging.getLogger(__name__)


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
        candidates = (*self.names, *enabled_stages(config))
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

    def _passes(self) -> list[RecipePass]:
        val, test = self.file_names[self.val], self.file_names[self.config.test_split]
        full = RecipePass("full", self.out / "stages", [FitGroup(self.val, val, (0,)), FitGroup(self.config.test_split, test, (0,))])
        passes = [full]
        if self.config.holdout_folds > 1:
            folds = cross_fit_folds(val, self.config.holdout_folds)
            others = [tuple(j for j in range(len(folds)) if j != k) for k in range(len(folds))]
            groups = [FitGroup(self.val, fold, fit_on) for fold, fit_on in zip(folds, others, strict=True)]
            passes.append(RecipePass("cross-fit", self.out / "heldout" / "stages", groups))
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

    def run_stages(self, recipe_pass: RecipePass) -> GatingDecision | None:
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

    def _job_fields(self, recipe_pass: RecipePass, group: FitGroup) -> dict:
        return dict(
            stage_dir=str(recipe_pass.stage_dir), split=group.split, dataset_dir=str(self.dataset.root),
            num_classes=self.classes.num_classes, score=group.split == self.val,
        )

    def _run_stage(self, recipe_pass: RecipePass, sources: dict[str, dict], make_job) -> dict[str, int]:
        """A per-image job over each group of a pass (`make_job(group)`): output folders created
        per split, each group's val matrices merged, meta written once every worker is done.
        Returns the pixels the job restored (consensus) per split."""
        restored: dict[str, int] = {}
        for split in recipe_pass.splits():
            outputs = {stage: PredictionSet.create(recipe_pass.stage_dir / stage / split, self.class_names, source=source)
                       for stage, source in sources.items()}
            restored[split] = 0
            for group in (g for g in recipe_pass.groups if g.split == split):
                def merge(result: ChunkResult, group=group, split=split) -> None:
                    for stage, counts in result.matrices.items():
                        matrix = group.matrices.setdefault(stage, ConfusionMatrix(self.classes.num_classes, self.class_names))
                        matrix.matrix += counts
                    restored[split] += result.restored

                what = f"{'+'.join(sources)} {split}" + (f" ({recipe_pass.name})" if recipe_pass.name != "full" else "")
                self.pool.map_chunks(make_job(group), group.file_names, CHUNK_SIZE, what, merge)
            for folder in outputs.values():
                folder.complete(self.file_names[split])
        return restored

    def vote(self, recipe_pass: RecipePass) -> None:
        """soft_vote and hard_vote (and every single model's val score)."""
        weights = [dict(zip(self.names, g.weights, strict=True)) for g in recipe_pass.groups]
        sources = {SOFT_VOTE: {"stage": SOFT_VOTE, "weights": list(recipe_pass.groups[0].weights)}, HARD_VOTE: {"stage": HARD_VOTE}}
        if recipe_pass.name != "full":
            sources[SOFT_VOTE] = {"stage": SOFT_VOTE, "pass": recipe_pass.name, "weights_by_group": weights}
        self._run_stage(recipe_pass, sources, lambda group: VoteJob(
            **self._job_fields(recipe_pass, group), model_dirs=self.model_dirs[group.split],
            model_names=self.names, weights=group.weights,
        ))

    def crf(self, recipe_pass: RecipePass, refined: str) -> str:
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

    def consensus(self, recipe_pass: RecipePass, refined: str) -> str:
        config = self.config
        restored = self._run_stage(recipe_pass, {CONSENSUS: {"stage": CONSENSUS, "input": refined}}, lambda group: ConsensusJob(
            **self._job_fields(recipe_pass, group), refined_stage=refined,
            model_dirs=tuple(self.model_dirs[group.split][i] for i in self.consensus_ids),
            k=config.consensus_k, max_area=config.consensus_max_area, background=config.background_class,
        ))
        for split, pixels in restored.items():
            log.info("consensus %s (%s): %d pixel(s) took the models' agreed class", split, recipe_pass.name, pixels)
        return CONSENSUS

    def gating(self, recipe_pass: RecipePass, refined: str) -> list[GatingDecision]:
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
        self._run_stage(recipe_pass, sources, lambda group: GatingJob(
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


