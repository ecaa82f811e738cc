"""Each component's Python function, called directly with real files, in pipeline order.

One small world is built once (module fixture): a sample dataset pushed to a local object
store, two tiny models trained by the train component, their predictions, the ensemble,
and so on; each test checks one component's outputs.
"""

import json
import math
from pathlib import Path

import pytest
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Markdown,
    Metrics,
    Model,
    PipelineTaskFinalStatus,
)
from mlflow import MlflowClient

from components.bundle_models import bundle_models
from components.check_inbox import check_inbox
from components.ensemble_crf import ensemble_crf
from components.evaluate import evaluate
from components.fetch_champion import fetch_champion
from components.make_pseudo_labels import make_pseudo_labels
from components.make_submission import make_submission
from components.merge_inbox import merge_inbox
from components.predict import predict
from components.prepare_data import prepare_data
from components.record_no_new_data import record_no_new_data
from components.record_status import record_status
from components.register_model import register_model
from components.select_round import select_round
from components.train_model import train_model
from trashseg.data.sample import generate_sample_dataset
from trashseg.errors import UserError
from trashseg.storage import LocalStore, push_batch, push_dataset
from trashseg.submission import validate_submission

ARCHITECTURES = ["segformer-b0-tiny", "mask2former-swin-t-tiny"]
TRAIN_SETTINGS = ["batch_size=2", "warmup_iters=1", "eval_interval=0", "num_workers=0", "log_interval=2", "checkpoint_interval=2"]
RUN_ID = "component-test-run"


def artifact(cls, root: Path, name: str):
    return cls(name=name, uri=str(root / name), metadata={})


class World:
    """Paths and results shared by the tests, filled in pipeline order by the fixture."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("components")
    w = World()
    w.root = root
    w.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    generate_sample_dataset(root / "sample", images=16, size=48, seed=3)
    w.store = LocalStore(root / "store")
    w.version = push_dataset(root / "sample", w.store).version

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KFP_RUN_ID", RUN_ID)
        w.dataset, w.data_report, w.stats = (artifact(c, root, n) for c, n in ((Dataset, "dataset"), (Markdown, "data_report"), (HTML, "stats")))
        w.prepared_hash = prepare_data.python_func(
            source=str(root / "store"), dataset_version=w.version, val_fraction=0.2, seed=0,
            dataset=w.dataset, report=w.data_report, stats=w.stats,
        )
        w.models, w.train_metrics, w.train_scores, w.val_preds, w.test_preds, w.predicted = {}, {}, {}, {}, {}, {}
        for arch in ARCHITECTURES:
            model, metrics = artifact(Model, root, f"model-{arch}"), artifact(Metrics, root, f"train-metrics-{arch}")
            w.train_scores[arch] = train_model.python_func(
                dataset=w.dataset, architecture=arch, iterations=4, image_size=48, dataset_version=w.version,
                train_settings=TRAIN_SETTINGS, checkpoint_store=str(root / "checkpoints"),
                tracking_uri=w.tracking_uri, experiment="components", model=model, metrics=metrics,
            )
            w.models[arch], w.train_metrics[arch] = model, metrics
            w.val_preds[arch], w.test_preds[arch] = (artifact(Dataset, root, f"pred-{s}-{arch}") for s in ("val", "test"))
            w.predicted[arch] = predict.python_func(
                model=model, dataset=w.dataset, val_predictions=w.val_preds[arch], test_predictions=w.test_preds[arch]
            )

        w.eval_metrics, w.confusion, w.eval_report = (artifact(c, root, n) for c, n in ((Metrics, "eval"), (ClassificationMetrics, "confusion"), (HTML, "eval.html")))
        w.eval_miou = evaluate.python_func(
            predictions=w.val_preds[ARCHITECTURES[0]], dataset=w.dataset, split="val", title="segformer",
            metrics=w.eval_metrics, confusion=w.confusion, report=w.eval_report,
        )
        w.ensemble, w.stage_md, w.stage_html, w.ensemble_metrics = (artifact(c, root, n) for c, n in ((Dataset, "ensemble"), (Markdown, "stages.md"), (HTML, "stages.html"), (Metrics, "ensemble-metrics")))
        w.ensemble_miou = ensemble_crf.python_func(
            val_predictions=[w.val_preds[a] for a in ARCHITECTURES], test_predictions=[w.test_preds[a] for a in ARCHITECTURES],
            dataset=w.dataset, ensemble_settings=["fit_rounds=1", "crf.iterations=2", "crf.workers=1"],
            ensemble=w.ensemble, report=w.stage_md, report_html=w.stage_html, metrics=w.ensemble_metrics,
        )
        # A second round's ensemble (no CRF, pinned to the hard vote), compared with the first.
        w.ensemble2 = artifact(Dataset, root, "ensemble2")
        w.ensemble2_miou = ensemble_crf.python_func(
            val_predictions=[w.val_preds[a] for a in ARCHITECTURES], test_predictions=[w.test_preds[a] for a in ARCHITECTURES],
            dataset=w.dataset, ensemble_settings=["fit_rounds=1", "crf_enabled=false", "pinned_stage=hard_vote"],
            ensemble=w.ensemble2, report=artifact(Markdown, root, "stages2.md"), report_html=artifact(HTML, root, "stages2.html"),
            metrics=artifact(Metrics, root, "ensemble2-metrics"),
        )
        w.selection, w.selection_md = artifact(Artifact, root, "selection"), artifact(Markdown, root, "selection.md")
        w.kept_round = select_round.python_func(
            base_ensemble=w.ensemble, pseudo_ensemble=w.ensemble2, tracking_uri=w.tracking_uri, experiment="components",
            selection=w.selection, report=w.selection_md,
        )
        w.pseudo = artifact(Dataset, root, "pseudo")
        w.pseudo_kept = make_pseudo_labels.python_func(
            ensemble=w.ensemble, dataset=w.dataset, pseudo_settings=["tau=0.05", "min_confident_fraction=0.0"], pseudo_dataset=w.pseudo,
        )
        w.submission = artifact(Artifact, root, "submission.csv")
        w.rows = make_submission.python_func(ensemble=w.ensemble, dataset=w.dataset, submission=w.submission)
        w.bundle = artifact(Model, root, "bundle")
        w.bundled = bundle_models.python_func(models=list(w.models.values()), dataset=w.dataset, dataset_version=w.version, bundle=w.bundle)
        w.decision = artifact(Markdown, root, "decision.md")
        w.promoted = register_model.python_func(
            bundle=w.bundle, dataset=w.dataset, score=w.ensemble_miou, model_name="components", min_improvement=0.0,
            tracking_uri=w.tracking_uri, experiment="components", decision=w.decision, round_selection=w.selection,
        )
    return w


def test_prepare_data_verifies_the_version(world, tmp_path):
    assert world.prepared_hash == world.version
    assert (Path(world.dataset.path) / "splits" / "train.json").is_file()
    assert "train" in Path(world.data_report.path).read_text()
    assert "data:image/png;base64," in Path(world.stats.path).read_text()
    with pytest.raises(UserError, match="not a content hash"):
        prepare_data.python_func(
            source=str(world.root / "store"), dataset_version="latest", val_fraction=0.2, seed=0,
            dataset=artifact(Dataset, tmp_path, "d"), report=artifact(Markdown, tmp_path, "r"), stats=artifact(HTML, tmp_path, "s"),
        )


def test_train_model_logs_metrics_and_mirrors_checkpoints(world):
    for arch in ARCHITECTURES:
        model = world.models[arch]
        assert model.metadata["architecture"] == arch and (Path(model.path) / "last.pt").is_file()
        assert world.train_metrics[arch].metadata["iterations"] == 4.0
        # mirrored under <store>/<KFP run id>/<stage>-<architecture>/ for a retried task to resume
        assert (world.root / "checkpoints" / RUN_ID / f"base-{arch}" / "last.pt").is_file()
    run = MlflowClient(world.tracking_uri).get_run(world.models[ARCHITECTURES[0]].metadata["mlflow_run_id"])
    assert run.data.tags["kfp.run_id"] == RUN_ID and run.data.tags["dataset.version"] == world.version


def test_train_model_resumes_from_the_mirror(world, tmp_path, monkeypatch):
    """A retry (same run id and stage) finds the finished checkpoint and does not train again."""
    monkeypatch.setenv("KFP_RUN_ID", RUN_ID)
    arch = ARCHITECTURES[0]
    retried = artifact(Model, tmp_path, "retried")
    train_model.python_func(
        dataset=world.dataset, architecture=arch, iterations=4, image_size=48, dataset_version=world.version,
        train_settings=TRAIN_SETTINGS, checkpoint_store=str(world.root / "checkpoints"), tracking_uri=world.tracking_uri,
        experiment="components", model=retried, metrics=artifact(Metrics, tmp_path, "m"),
    )
    original = (Path(world.models[arch].path) / "last.pt").read_bytes()
    assert (Path(retried.path) / "last.pt").read_bytes() == original
    assert retried.metadata["mlflow_run_id"] == world.models[arch].metadata["mlflow_run_id"]


def test_predict_writes_every_image(world):
    for split, predictions in (("val", world.val_preds), ("test", world.test_preds)):
        expected = [im["file_name"] for im in json.loads((Path(world.dataset.path) / "splits" / f"{split}.json").read_text())["images"]]
        for arch in ARCHITECTURES:
            meta = json.loads((Path(predictions[arch].path) / "predictions.json").read_text())
            assert meta["file_names"] == expected and meta["source"]["architecture"] == arch
            assert meta["source"]["split"] == split
    sizes = [len(json.loads((Path(world.dataset.path) / "splits" / f"{s}.json").read_text())["images"]) for s in ("val", "test")]
    assert all(world.predicted[arch] == sum(sizes) for arch in ARCHITECTURES)  # one task, both splits


def test_evaluate_outputs_metrics_confusion_and_html(world):
    logged = world.eval_metrics.metadata
    assert math.isclose(logged["miou"], world.eval_miou) and 0 <= logged["pixel_accuracy"] <= 1
    assert any(key.startswith("iou/") for key in logged)
    confusion = world.confusion.metadata["confusionMatrix"]
    names = [c["displayName"] for c in confusion["annotationSpecs"]]
    assert names[0] == "Background" and len(confusion["rows"]) == len(names) == 11
    total = sum(sum(row["row"]) for row in confusion["rows"])
    val_pixels = 48 * 48 * len(json.loads((Path(world.dataset.path) / "splits" / "val.json").read_text())["images"])
    assert total == val_pixels
    page = Path(world.eval_report.path).read_text()
    assert page.count("data:image/png;base64,") >= 3  # IoU chart, confusion matrix, overlays


def test_ensemble_crf_reports_stages(world):
    assert math.isclose(world.ensemble_metrics.metadata["val_miou"], world.ensemble_miou)
    assert world.ensemble.metadata["selected_stage"] in Path(world.stage_md.path).read_text()
    assert (Path(world.ensemble.path) / "final" / "test" / "predictions.json").is_file()
    assert "<img" in Path(world.stage_html.path).read_text()


def test_select_round_keeps_the_better_held_out_round(world):
    selection = json.loads(Path(world.selection.path).read_text())
    scores = {r["name"]: r["miou"] for r in selection["rounds"]}
    assert scores == {"base": pytest.approx(world.ensemble_miou), "pseudo": pytest.approx(world.ensemble2_miou)}
    expected = "pseudo" if world.ensemble2_miou > world.ensemble_miou else "base"
    assert world.kept_round == selection["selected"] == expected
    assert selection["margin"] == pytest.approx(abs(world.ensemble_miou - world.ensemble2_miou))
    assert f"Round kept: **{expected}**" in Path(world.selection_md.path).read_text()
    assert selection["reason"] in Path(world.decision.path).read_text()


def test_pseudo_labels_and_submission(world):
    assert world.pseudo_kept >= 1 and (Path(world.pseudo.path) / "lineage.json").is_file()
    lineage = json.loads((Path(world.pseudo.path) / "lineage.json").read_text())
    assert lineage["confidence"]["stage"] == "soft_vote"  # not the CRF marginals
    test_file = Path(world.dataset.path) / "splits" / "test.json"
    assert world.rows == len(validate_submission(world.submission.path, test_file).file_names)


def test_register_then_retrain_components(world, tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_RUN_ID", RUN_ID)
    assert world.bundled == ARCHITECTURES and world.promoted is True
    assert "promoted to **champion**" in Path(world.decision.path).read_text()

    bundle = artifact(Model, tmp_path, "champion")
    architectures = fetch_champion.python_func(model_name="components", tracking_uri=world.tracking_uri, bundle=bundle)
    assert architectures == ARCHITECTURES
    assert bundle.metadata == {"version": "1", "dataset_version": world.version}
    assert (Path(bundle.path) / "models" / ARCHITECTURES[1] / "last.pt").is_file()

    store = str(world.root / "store")
    empty = check_inbox.python_func(data_store=store, model_name="components", tracking_uri=world.tracking_uri)
    assert (empty.base_version, empty.new_batches, empty.batches) == (world.version, 0, [])
    summary = artifact(Markdown, tmp_path, "summary")
    assert record_no_new_data.python_func(base_version=world.version, tracking_uri=world.tracking_uri, experiment="components", summary=summary) == "NO_NEW_DATA"
    assert world.version in Path(summary.path).read_text()

    batch = tmp_path / "batch"
    generate_sample_dataset(tmp_path / "more", images=4, size=48, seed=9)
    (batch / "images").mkdir(parents=True)
    (tmp_path / "more" / "train").rename(batch / "images" / "train")  # file_names are train/...
    (tmp_path / "more" / "train.json").rename(batch / "annotations.json")
    push_batch(batch, world.store, "batch-1")
    found = check_inbox.python_func(data_store=store, model_name="components", tracking_uri=world.tracking_uri)
    assert (found.new_batches, found.batches) == (1, ["batch-1"])
    merged = merge_inbox.python_func(data_store=store, base_version=world.version)
    assert merged != world.version and len(merged) == 64

    status = artifact(Markdown, tmp_path, "status")
    state = record_status.python_func(
        status=PipelineTaskFinalStatus(
            state="FAILED", pipeline_job_resource_name="run", pipeline_task_name="exit-handler-1", error_code=1,
            error_message="train-model: out of memory",
        ), pipeline="full", tracking_uri=world.tracking_uri,
        experiment="components", summary=status,
    )
    assert state == "FAILED" and "out of memory" in Path(status.path).read_text()
    runs = MlflowClient(world.tracking_uri).search_runs(
        [MlflowClient(world.tracking_uri).get_experiment_by_name("components").experiment_id],
        filter_string="tags.`pipeline.state` = 'FAILED'",
    )
    assert len(runs) == 1 and runs[0].data.tags["kfp.run_id"] == RUN_ID

