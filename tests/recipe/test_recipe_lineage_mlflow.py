"""Retraining with pseudo-labels tags its MLflow run with the labels' lineage (real MLflow server)."""

import json

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image
from recipe_builders import one_hot, write_predictions

from trashseg.data.layout import PreparedDataset
from trashseg.pseudo_labels import PseudoLabelConfig, images_hash, make_pseudo_labels
from trashseg.steps import RunContext, train_step


def test_train_step_tags_the_pseudo_lineage(mlflow_server, sample_dataset, tmp_path):
    dataset = PreparedDataset(sample_dataset)
    classes = dataset.classes()
    rng = np.random.default_rng(0)
    labels, vote = {}, {}
    for sample in dataset.samples("test"):
        width, height = Image.open(sample.image).size
        mask = rng.integers(0, classes.num_classes, (height, width)).astype(np.uint8)
        labels[sample.file_name] = one_hot(mask, classes.num_classes, 0.99)
        vote[sample.file_name] = one_hot(mask, classes.num_classes, 0.95 if len(vote) % 2 else 0.5)
    ensemble_config = {"consensus_k": 2, "crf_enabled": True}
    write_predictions(tmp_path / "final", labels, {"stage": "consensus", "models": {"a": {}, "b": {}},
                                                   "weights": {"a": 0.5, "b": 0.5}, "ensemble_config": ensemble_config},
                      class_names=classes.names)
    write_predictions(tmp_path / "vote", vote, {"stage": "soft_vote"}, class_names=classes.names)
    pseudo = make_pseudo_labels(tmp_path / "final", sample_dataset, tmp_path / "pseudo",
                                PseudoLabelConfig(tau=0.9, min_confident_fraction=0.5), confidence_dir=tmp_path / "vote")
    assert 0 < len(pseudo.kept) < len(labels)  # the soft vote's confidence dropped the unsure half

    settings = ["batch_size=2", "warmup_iters=0", "eval_interval=0", "checkpoint_interval=2", "num_workers=0"]
    result = train_step(
        sample_dataset, tmp_path / "model", architecture="segformer-b0-tiny", iterations=2, image_size=32,
        dataset_version="v", settings=settings, checkpoint_store="",
        run=RunContext(mlflow_server, "lineage", "pseudo"), pseudo_dataset_dir=pseudo.dataset_dir, pseudo_ratio=0.5,
    )
    tags = MlflowClient(mlflow_server).get_run(result.model_metadata["mlflow_run_id"]).data.tags
    assert tags["kfp.stage"] == "pseudo"
    assert tags["pseudo.models"] == "a,b" and tags["pseudo.stage"] == "consensus"
    assert json.loads(tags["pseudo.ensemble_config"]) == ensemble_config
    assert tags["pseudo.tau"] == "0.9" and tags["pseudo.confidence_stage"] == "soft_vote"
    assert tags["pseudo.images_sha256"] == images_hash(pseudo.kept)
    assert tags["pseudo.images_kept"] == str(len(pseudo.kept))
    assert float(tags["pseudo.kept_pixel_share"]) == 1.0  # every pixel of a kept image was sure
