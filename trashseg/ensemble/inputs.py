"""The recipe's inputs, opened and checked: every model's prediction folders on val and test
against the prepared dataset and the config, and the models' names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trashseg.data.classes import ClassTable
from trashseg.data.layout import PreparedDataset, Sample
from trashseg.ensemble.config import ENSEMBLE_STAGES, EnsembleConfig, enabled_stages
from trashseg.errors import ConfigError, DataError
from trashseg.predictions import PredictionSet, check_made_from


@dataclass(frozen=True)
class RecipeInputs:
    """The checked inputs of one run; every split's lists in model order."""

    dataset: PreparedDataset
    classes: ClassTable
    names: tuple[str, ...]  # the models' names, in the order given
    prediction_sets: dict[str, list[PredictionSet]]  # split (val, then test) -> one per model
    samples: dict[str, list[Sample]]  # split -> its images in annotation-file order
    val_split: str
    consensus_ids: tuple[int, ...]  # the models that vote in the consensus overwrite

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.classes.names)

    def file_names(self, split: str) -> list[str]:
        return [s.file_name for s in self.samples[split]]

    def model_dirs(self, split: str) -> tuple[str, ...]:
        return tuple(str(s.root) for s in self.prediction_sets[split])


def open_inputs(
    prediction_dirs_val: Sequence[str | Path],
    prediction_dirs_test: Sequence[str | Path],
    dataset_dir: str | Path,
    config: EnsembleConfig,
) -> RecipeInputs:
    """Every check of the inputs, before any work: the same models on val and test, each
    covering its split and predicted from this dataset, and the names the config uses."""
    dataset = PreparedDataset(dataset_dir)
    classes = dataset.classes()
    val_sets = [PredictionSet.open(d) for d in prediction_dirs_val]
    test_sets = [PredictionSet.open(d) for d in prediction_dirs_test]
    names = _model_names(val_sets, test_sets, config)
    prediction_sets = {config.val_split: val_sets, config.test_split: test_sets}
    samples = {split: dataset.samples(split) for split in prediction_sets}
    for split, sets in prediction_sets.items():
        for name, prediction in zip(names, sets, strict=True):
            _check_prediction_set(prediction, name, split, samples[split], classes.names)
            check_made_from(prediction, dataset, split)
    consensus_ids = _consensus_model_ids(names, config)
    _check_pinned_stage(names, config)
    return RecipeInputs(
        dataset, classes, names, prediction_sets, samples, config.val_split, tuple(consensus_ids)
    )


def _check_pinned_stage(names: Sequence[str], config: EnsembleConfig) -> None:
    candidates = (*names, *enabled_stages(config))
    if config.pinned_stage and config.pinned_stage not in candidates:
        raise ConfigError(
            f"pinned_stage {config.pinned_stage!r} is not a model or an enabled stage; "
            f"choose from {', '.join(candidates)}"
        )


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


