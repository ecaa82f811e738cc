"""Running the enabled stages over one pass: each stage writes <pass dir>/<stage>/<split> and
adds its val confusion matrices to the pass's groups."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from trashseg.crf import WorkerPool, crf_prediction_set
from trashseg.ensemble.config import CONSENSUS, CRF, GATING, HARD_VOTE, SOFT_VOTE, EnsembleConfig
from trashseg.ensemble.holdout import FitGroup, RecipePass
from trashseg.ensemble.inputs import RecipeInputs
from trashseg.ensemble.jobs import (
    CHUNK_SIZE,
    ChunkResult,
    ConsensusJob,
    GatingJob,
    StageJob,
    VoteJob,
)
from trashseg.ensemble.voting import GatingDecision, decide_gating
from trashseg.predictions import PredictionSet, score_predictions

log = logging.getLogger(__name__)


class StageRunner:
    """Runs the stages of every pass of one recipe run in one worker pool."""

    def __init__(self, inputs: RecipeInputs, config: EnsembleConfig, pool: WorkerPool, out: Path) -> None:
        self.inputs, self.config, self.pool, self.out = inputs, config, pool, out

    def run(self, recipe_pass: RecipePass) -> GatingDecision | None:
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

    def vote(self, recipe_pass: RecipePass) -> None:
        """soft_vote and hard_vote (and every single model's val score)."""
        names = self.inputs.names
        sources = {
            SOFT_VOTE: {"stage": SOFT_VOTE, "weights": list(recipe_pass.groups[0].weights)},
            HARD_VOTE: {"stage": HARD_VOTE},
        }
        if not recipe_pass.is_full:
            weights = [dict(zip(names, g.weights, strict=True)) for g in recipe_pass.groups]
            sources[SOFT_VOTE] = {"stage": SOFT_VOTE, "pass": recipe_pass.name, "weights_by_group": weights}
        self._run_job(recipe_pass, sources, lambda group: VoteJob(
            **self._job_fields(recipe_pass, group), model_dirs=self.inputs.model_dirs(group.split),
            model_names=names, weights=group.weights,
        ))

    def crf(self, recipe_pass: RecipePass, refined: str) -> str:
        inputs, stage_dir = self.inputs, recipe_pass.stage_dir
        for split in recipe_pass.splits():
            crf_prediction_set(
                stage_dir / refined / split, inputs.dataset.root, stage_dir / CRF / split,
                self.config.crf, inputs.file_names(split), pool=self.pool,
            )
        for group in recipe_pass.groups:
            if group.split == inputs.val_split:
                group.matrices[CRF] = score_predictions(
                    PredictionSet.open(stage_dir / CRF / inputs.val_split), inputs.dataset, group.file_names
                )
        return CRF

    def consensus(self, recipe_pass: RecipePass, refined: str) -> str:
        config, inputs = self.config, self.inputs
        sources = {CONSENSUS: {"stage": CONSENSUS, "input": refined}}
        restored = self._run_job(recipe_pass, sources, lambda group: ConsensusJob(
            **self._job_fields(recipe_pass, group), refined_stage=refined,
            model_dirs=tuple(inputs.model_dirs(group.split)[i] for i in inputs.consensus_ids),
            k=config.consensus_k, max_area=config.consensus_max_area, background=config.background_class,
        ))
        for split, pixels in restored.items():
            log.info("consensus %s (%s): %d pixel(s) took the models' agreed class", split, recipe_pass.name, pixels)
        return CONSENSUS

    def gating(self, recipe_pass: RecipePass, refined: str) -> list[GatingDecision]:
        """Per group, the gating decided on the val matrices of the groups it is fitted on."""
        decisions = [_decide_gating(recipe_pass, group, refined) for group in recipe_pass.groups]
        if recipe_pass.is_full:
            decisions[0].save(self.out / "gating.json")
            sources = {GATING: {"stage": GATING, "decision": decisions[0].to_dict()}}
        else:
            by_group = [d.to_dict() for d in decisions]
            sources = {GATING: {"stage": GATING, "pass": recipe_pass.name, "decisions_by_group": by_group}}
        decision_of = {id(g): d for g, d in zip(recipe_pass.groups, decisions, strict=True)}
        self._run_job(recipe_pass, sources, lambda group: GatingJob(
            **self._job_fields(recipe_pass, group), ensemble_stage=SOFT_VOTE, refined_stage=refined,
            use_ensemble=decision_of[id(group)].use_ensemble,
        ))
        return decisions

    def _job_fields(self, recipe_pass: RecipePass, group: FitGroup) -> dict:
        """The `StageJob` fields of a group's job: where it reads and writes, whether it scores."""
        inputs = self.inputs
        return dict(
            stage_dir=str(recipe_pass.stage_dir), split=group.split, dataset_dir=str(inputs.dataset.root),
            num_classes=inputs.num_classes, score=group.split == inputs.val_split,
        )

    def _run_job(
        self, recipe_pass: RecipePass, sources: dict[str, dict], make_job: Callable[[FitGroup], StageJob]
    ) -> dict[str, int]:
        """A per-image job over each group of a pass (`make_job(group)`): output folders created
        per split (`sources`: stage -> its source record), each group's val matrices merged, meta
        written once every worker is done. Returns the pixels the job restored (consensus) per split."""
        restored: dict[str, int] = {}
        for split in recipe_pass.splits():
            outputs = [
                PredictionSet.create(recipe_pass.stage_dir / stage / split, self.inputs.class_names, source=source)
                for stage, source in sources.items()
            ]
            what = f"{'+'.join(sources)} {split}" + ("" if recipe_pass.is_full else f" ({recipe_pass.name})")
            groups = [g for g in recipe_pass.groups if g.split == split]
            restored[split] = sum(self._run_group(make_job(group), group, what) for group in groups)
            for folder in outputs:
                folder.complete(self.inputs.file_names(split))
        return restored

    def _run_group(self, job: StageJob, group: FitGroup, what: str) -> int:
        """`job` on a group's images in the pool; returns the pixels it restored."""
        restored = 0

        def merge(result: ChunkResult) -> None:
            nonlocal restored
            group.add_counts(result.matrices, self.inputs.class_names)
            restored += result.restored

        self.pool.map_chunks(job, group.file_names, CHUNK_SIZE, what, merge)
        return restored


def _decide_gating(recipe_pass: RecipePass, group: FitGroup, refined: str) -> GatingDecision:
    fit_groups = recipe_pass.fit_groups(group)
    ensemble = recipe_pass.summed(SOFT_VOTE, fit_groups).compute()
    return decide_gating(ensemble, recipe_pass.summed(refined, fit_groups).compute(), SOFT_VOTE, refined)
