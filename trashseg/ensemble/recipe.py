"""`run_recipe`, the recipe's one entry point (the `ensemble_crf` pipeline component and
`trashseg ensemble`): inputs checked, passes planned (weights fitted), stages run, the best
held-out stage written to OUT/final with its report."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trashseg.crf import WorkerPool
from trashseg.ensemble.config import EnsembleConfig
from trashseg.ensemble.holdout import plan_passes, score_stages
from trashseg.ensemble.inputs import RecipeInputs, open_inputs
from trashseg.ensemble.outputs import RecipeOutputs
from trashseg.ensemble.stages import StageRunner
from trashseg.ensemble.voting import GatingDecision
from trashseg.metrics import SegmentationScores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecipeResult:
    """What `run_recipe` wrote and scored."""

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
    out = Path(out_dir)
    inputs = open_inputs(prediction_dirs_val, prediction_dirs_test, dataset_dir, config)
    passes = plan_passes(inputs, config, out)
    with WorkerPool(_worker_count(inputs, config)) as pool:
        runner = StageRunner(inputs, config, pool, out)
        decisions = [runner.run(recipe_pass) for recipe_pass in passes]
    gating = decisions[0]  # the full pass's, fitted on all of val
    scores = score_stages(passes, inputs.names, inputs.val_split)
    selected = config.pinned_stage or scores.best()
    outputs = RecipeOutputs(out, inputs, config, passes)
    final_dirs = {split: outputs.write_final(split, selected) for split in inputs.prediction_sets}
    outputs.save_config()
    report_files = outputs.write_report(scores, selected, gating)
    log.info("recipe: selected %s (val mIoU %.4f %s, %.4f in-sample) -> %s", selected,
             scores.held_out[selected].miou, scores.scoring, scores.in_sample[selected].miou, out / "final")
    return RecipeResult(out, inputs.names, outputs.weights, scores.stages, scores.held_out, selected,
                        final_dirs, report_files, gating, scores.in_sample, scores.scoring)


def _worker_count(inputs: RecipeInputs, config: EnsembleConfig) -> int:
    """As configured (0: one per CPU core), never more than the largest split has images."""
    largest = max(len(inputs.file_names(split)) for split in inputs.prediction_sets)
    return min(config.workers or os.cpu_count() or 1, largest)
