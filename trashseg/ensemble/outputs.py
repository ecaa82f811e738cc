"""What a recipe run leaves in OUT besides the stages: the selected stage as final/<split>,
ensemble_config.json and the stage report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trashseg.config import save_config, to_dict
from trashseg.ensemble.config import EnsembleConfig
from trashseg.ensemble.holdout import RecipePass, StageScores
from trashseg.ensemble.inputs import RecipeInputs
from trashseg.ensemble.voting import GatingDecision
from trashseg.predictions import PredictionSet
from trashseg.stage_report import write_stage_report


@dataclass(frozen=True)
class RecipeOutputs:
    out: Path
    inputs: RecipeInputs
    config: EnsembleConfig
    passes: Sequence[RecipePass]  # the full pass first, then the cross-fit pass if any

    @property
    def weights(self) -> tuple[float, ...]:
        """The soft-vote weights fitted on all of val: what the final predictions use."""
        return self.passes[0].groups[0].weights

    def write_final(self, split: str, selected: str) -> Path:
        """A copy of the selected stage's (or model's) `split` folder, its source naming the
        models, weights and config that made it."""
        names, sets = self.inputs.names, self.inputs.prediction_sets[split]
        if selected in names:
            source_dir = sets[names.index(selected)].root
        else:
            source_dir = self.passes[0].stage_dir / selected / split
        final_dir = self.out / "final" / split
        if final_dir.exists():
            shutil.rmtree(final_dir)
        shutil.copytree(source_dir, final_dir)
        final = PredictionSet.open(final_dir)
        final.source = {
            "stage": selected,
            "split": split,
            "models": {name: s.source | {"dir": str(s.root)} for name, s in zip(names, sets, strict=True)},
            "weights": dict(zip(names, self.weights, strict=True)),
            "ensemble_config": to_dict(self.config),
        }
        final.save()
        return final_dir

    def save_config(self) -> None:
        save_config(self.config, self.out / "ensemble_config.json")

    def write_report(
        self, scores: StageScores, selected: str, gating: GatingDecision | None
    ) -> dict[str, Path]:
        """The stage report under OUT/report: held-out and in-sample figures, the weights
        (per fold too) and the gating."""
        names = self.inputs.names
        cross_fit = None
        if len(self.passes) > 1:
            folds = self.passes[1].groups
            cross_fit = {
                "folds": [{"images": len(g.file_names), "weights": dict(zip(names, g.weights, strict=True))}
                          for g in folds],
            }
        details = {
            "models": list(names),
            "weights": dict(zip(names, self.weights, strict=True)),
            "gating": gating.to_dict() if gating else None,
            "cross_fit": cross_fit,
        }
        return write_stage_report(
            self.out / "report", scores.held_out, scores.stages, selected=selected,
            pinned=bool(self.config.pinned_stage), in_sample=scores.in_sample, scoring=scores.scoring,
            details=details,
        )
