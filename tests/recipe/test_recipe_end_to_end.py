"""End to end on the sample data with real tiny models (CPU): two architectures ->
ensemble -> DenseCRF -> consensus -> gating -> report -> submission; then pseudo-labels
and a retraining run that logs its lineage to MLflow."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trashseg.cli import main
from trashseg.config import from_mapping
from trashseg.data.layout import PreparedDataset
from trashseg.metrics import ConfusionMatrix
from trashseg.predictions import PredictionSet

pytestmark = pytest.mark.slow

ARCHITECTURES = ("segformer-b0-tiny", "upernet-convnext-t-tiny")
SIZE = 64


def _train_config(architecture: str, iterations: int, **extra):
    from trashseg.training import TrainConfig

    return from_mapping(TrainConfig, {
        "architecture": architecture, "image_size": SIZE, "batch_size": 4, "iterations": iterations,
        "warmup_iters": 0, "lr": 1e-3, "eval_interval": 0, "checkpoint_interval": iterations,
        "num_workers": 0, "augment": {"scale_range": [1.0, 1.0], "color_jitter": 0.0},
        "tracking": {"enabled": False}, **extra,
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Sample data, prepared; two tiny models trained a few steps; val and test predicted."""
    from trashseg.data.prepare import prepare_dataset
    from trashseg.data.sample import generate_sample_dataset
    from trashseg.predict import predict
    from trashseg.training import train

    root = tmp_path_factory.mktemp("recipe_e2e")
    generate_sample_dataset(root / "source", images=12, size=SIZE, seed=0)
    prepare_dataset(root / "source", root / "data")
    for architecture in ARCHITECTURES:
        result = train(_train_config(architecture, 3), root / "data", root / "train" / architecture)
        for split in ("val", "test"):
            predict(result.last_checkpoint, root / "data", split, root / "pred" / architecture / split)
    return root


def test_recipe_report_and_submission(trained, capsys):
    root, out = trained, trained / "recipe"
    val = [str(root / "pred" / a / "val") for a in ARCHITECTURES]
    test = [str(root / "pred" / a / "test") for a in ARCHITECTURES]
    code = main(["ensemble", "--val", *val, "--test", *test, "--data", str(root / "data"), "--out", str(out),
                 "--set", "crf.workers=2", "--set", "consensus_k=2", "--set", "weight_grid=[0,1,2]"])
    assert code == 0
    assert "selected" in capsys.readouterr().out

    report = json.loads((out / "report" / "report.json").read_text())
    stages = [s["name"] for s in report["stages"]]
    assert stages == [*ARCHITECTURES, "soft_vote", "hard_vote", "crf", "consensus", "gating"]
    assert set(report["weights"]) == set(ARCHITECTURES) and sum(report["weights"].values()) == pytest.approx(1.0)
    best = max(report["stages"], key=lambda s: s["miou"])
    assert report["selected_stage"] == best["name"]
    markdown = (out / "report" / "report.md").read_text()
    assert all(f"| {name} |" in markdown or f"**{name}**" in markdown for name in stages)
    assert (out / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (out / "report" / "report.html").read_text()

    # Recompute numbers of the report from the files: the consensus stage's held-out val mIoU
    # (from the cross-fit pass's masks), its in-sample one (from the final pass's) and one
    # model's Background IoU, each from masks on disk and the prepared dataset's labels.
    dataset = PreparedDataset(root / "data")
    classes = dataset.classes()
    in_sample = {s["name"]: s for s in report["stages_in_sample"]}
    for folder, stage, key, entries in (
        (out / "heldout" / "stages" / "consensus" / "val", "consensus", "miou", report["stages"]),
        (out / "stages" / "consensus" / "val", "consensus", "miou", list(in_sample.values())),
        (root / "pred" / ARCHITECTURES[1] / "val", ARCHITECTURES[1], "Background", report["stages"]),
    ):
        predictions = PredictionSet.open(folder)
        matrix = ConfusionMatrix(classes.num_classes, classes.names)
        for sample in dataset.samples("val"):
            matrix.update(predictions.mask(sample.file_name), np.array(Image.open(sample.mask)))
        recomputed = matrix.compute()
        entry = next(s for s in entries if s["name"] == stage)
        reported = entry["miou"] if key == "miou" else entry["iou"][key]
        assert reported == pytest.approx(recomputed.miou if key == "miou" else recomputed.iou[key], abs=1e-12)

    final = PredictionSet.open(out / "final" / "test")
    assert final.source["stage"] == report["selected_stage"]
    assert set(final.source["models"]) == set(ARCHITECTURES)
    assert final.file_names == [s.file_name for s in dataset.samples("test")]
    csv_path = root / "submission.csv"
    annotations = str(dataset.split_file("test"))
    assert main(["submission", str(out / "final" / "test"), "--annotations", annotations, "--out", str(csv_path)]) == 0
    assert main(["validate-submission", str(csv_path), "--annotations", annotations]) == 0


def test_pseudo_label_retraining_logs_lineage_to_mlflow(trained):
    from mlflow.tracking import MlflowClient

    from trashseg.ensemble.config import EnsembleConfig
    from trashseg.ensemble.recipe import run_recipe
    from trashseg.pseudo_labels import PseudoLabelConfig, lineage_tags, make_pseudo_labels
    from trashseg.training import train

    root = trained
    result = run_recipe(
        [root / "pred" / a / "val" for a in ARCHITECTURES],
        [root / "pred" / a / "test" for a in ARCHITECTURES],
        root / "data",
        root / "recipe-fast",
        from_mapping(EnsembleConfig, {"weights": [1, 1], "crf_enabled": False, "gating_enabled": False}),
    )
    final = PredictionSet.open(result.final_dirs["test"])
    confidence = np.concatenate([final.probs(n).max(0).ravel() for n in final.file_names])
    tau = float(np.quantile(confidence, 0.5))  # half the test pixels are confident by construction
    pseudo = make_pseudo_labels(result.final_dirs["test"], root / "data", root / "pseudo",
                                PseudoLabelConfig(tau=tau, min_confident_fraction=0.2))
    assert pseudo.kept

    tags = lineage_tags(pseudo.dataset_dir)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = _train_config(ARCHITECTURES[0], 2, pseudo_ratio=0.5, tracking={"uri": uri, "experiment": "retrain"})
    retrained = train(config, root / "data", root / "retrain", pseudo_dataset=pseudo.dataset_dir, tags=tags)
    assert retrained.iterations == 2 and retrained.last_checkpoint.is_file()
    run = MlflowClient(tracking_uri=uri).get_run(retrained.mlflow_run_id)
    for key, value in tags.items():
        assert run.data.tags[key] == value
    assert run.data.tags["pseudo.models"] == ",".join(ARCHITECTURES)
    assert run.data.tags["pseudo.images_kept"] == str(len(pseudo.kept))
    assert run.data.params["pseudo_ratio"] == "0.5"
