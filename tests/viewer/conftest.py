"""A small viewer world on the sample data: two models' prediction folders (val, test), a real
ensemble output (run_recipe: votes, CRF, consensus, gating), a submission and an MLflow store.

One val label is planted wrong: every pixel of one object's class in PLANTED_IMAGE's mask
is relabelled, while both models (made from the true masks) keep the true class, surely.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trashseg.data.layout import PreparedDataset
from trashseg.predictions import PredictionSet
from trashseg.viewer.sources import ViewerSources

PLANTED_IMAGE_INDEX = 0  # in the val split


@dataclass(frozen=True)
class ViewerWorld:
    sources: ViewerSources
    dataset: PreparedDataset
    model_dirs: dict[str, dict[str, Path]]  # model -> split -> folder
    planted: tuple[str, int, int]  # file_name, true class, planted (wrong) label
    submission: Path


def _one_hot(mask: np.ndarray, num_classes: int, confidence: float) -> np.ndarray:
    probs = np.full((num_classes, *mask.shape), (1 - confidence) / (num_classes - 1), dtype=np.float32)
    labels = np.where(mask == 255, 0, mask)
    np.put_along_axis(probs, labels[None].astype(np.int64), confidence, axis=0)
    return probs


def _model(dataset: PreparedDataset, split: str, out: Path, name: str, noise: float, seed: int,
           truth: dict[str, np.ndarray]) -> Path:
    """A model that is right except on a random `noise` share of pixels (set to Background)."""
    classes = dataset.classes()
    rng = np.random.default_rng(seed)
    folder = PredictionSet.create(out, classes.names, source={"architecture": name, "split": split})
    for sample in dataset.samples(split):
        mask = truth.get(sample.file_name)
        if mask is None:  # test split: no labels; predict a fixed pattern
            width = Image.open(sample.image).size[0]
            mask = np.zeros((width, width), np.uint8)
            mask[: width // 2, : width // 2] = 2
        mask = mask.copy()
        mask[rng.random(mask.shape) < noise] = 0
        folder.add(sample.file_name, _one_hot(mask, classes.num_classes, 0.95))
    folder.save()
    return out


@pytest.fixture(scope="session")
def viewer_world(sample_dataset, tmp_path_factory) -> ViewerWorld:
    from trashseg.config import from_mapping
    from trashseg.ensemble.config import EnsembleConfig
    from trashseg.ensemble.recipe import run_recipe
    from trashseg.submission import write_submission_from_predictions

    root = tmp_path_factory.mktemp("viewer")
    shutil.copytree(sample_dataset, root / "data")
    dataset = PreparedDataset(root / "data")
    truth = {s.file_name: np.array(Image.open(s.mask)) for s in dataset.samples("val")}
    model_dirs = {
        name: {split: _model(dataset, split, root / name / split, name, noise, seed, truth) for split in ("val", "test")}
        for name, noise, seed in (("alpha", 0.02, 1), ("beta", 0.05, 2))
    }
    # Plant the wrong label after the models were made from the true masks.
    planted_name = dataset.samples("val")[PLANTED_IMAGE_INDEX].file_name
    mask = truth[planted_name]
    true_class = int(np.bincount(mask[mask != 255].ravel(), minlength=2)[1:].argmax()) + 1
    wrong = 1 if true_class != 1 else 2
    planted = mask.copy()
    planted[mask == true_class] = wrong
    Image.fromarray(planted).save(dataset.mask_path(planted_name))

    config = from_mapping(EnsembleConfig, {"fit_rounds": 1, "workers": 1, "crf": {"iterations": 2}})
    run_recipe([model_dirs[m]["val"] for m in model_dirs], [model_dirs[m]["test"] for m in model_dirs],
               dataset.root, root / "ensemble", config)
    submission = root / "submission.csv"
    write_submission_from_predictions(root / "ensemble" / "final" / "test", dataset.split_file("test"), submission)
    tracking_uri = _tracking_store(root)
    sources = ViewerSources(
        data=str(dataset.root),
        predictions=tuple(str(model_dirs[m][s]) for m in model_dirs for s in ("val", "test")),
        ensemble=str(root / "ensemble"),
        submission=str(submission),
        tracking_uri=tracking_uri,
    )
    return ViewerWorld(sources, dataset, model_dirs, (planted_name, true_class, wrong), submission)


def _tracking_store(root: Path) -> str:
    """An MLflow SQLite store with one tagged run and one registered version (alias champion)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("trashseg")
    run = client.create_run(experiment, run_name="train-alpha",
                            tags={"kfp.run_id": "local-abc123", "dataset_version": "d0c0ffee"})
    client.log_metric(run.info.run_id, "val_miou", 0.61)
    client.set_terminated(run.info.run_id)
    client.create_registered_model("trashseg")
    version = client.create_model_version("trashseg", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("trashseg", "champion", version.version)
    return uri
