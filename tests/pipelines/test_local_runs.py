"""full.py and retrain.py run end to end through kfp.local on a very small sample.

One full run (both rounds, two tiny architectures) is shared: the first tests check its
outputs, the retrain tests then run against its object store and MLflow registry.
"""

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.console import TaskConsole
from pipelines.local import run_full, run_retrain, summary
from pipelines.run_summary import results_table
from trashseg.data.sample import generate_sample_dataset
from trashseg.registry import CHALLENGER, CHAMPION
from trashseg.storage import LocalStore, push_batch
from trashseg.submission import validate_submission

pytestmark = pytest.mark.slow

TINY = dict(
    architectures=["segformer-b0-tiny", "mask2former-swin-t-tiny"],
    iterations=3,
    image_size=48,
    train_settings=["batch_size=2", "warmup_iters=1", "eval_interval=0", "num_workers=0", "log_interval=1"],
    ensemble_settings=["fit_rounds=1", "crf.iterations=2", "crf.workers=1"],
)
MODEL = "trashseg-e2e"


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    with pytest.MonkeyPatch.context() as patch:
        # the runner sets both for its tasks; restored afterwards
        patch.setenv("KFP_RUN_ID", "unset")
        patch.setenv("OMP_NUM_THREADS", "1")
        # as `make demo` runs it: status lines on the terminal, everything in the log file
        console = TaskConsole(out / "logs" / "full.log", terminal=io.StringIO())
        with console:
            run = run_full(
                out, **TINY, sample_images=16, pseudo_round=True, pseudo_ratio=0.5, model_name=MODEL,
                pseudo_settings=["tau=0.05", "min_confident_fraction=0.0"],
            )
        console.close()
    return out, run, console


def executor_output(task_dir: Path) -> dict:
    return json.loads((task_dir / "executor_output.json").read_text())


def test_full_run_shows_status_lines_and_a_results_table(full_run):
    _, run, console = full_run
    shown = console.terminal.getvalue().splitlines()
    assert len(shown) < 60 and not any("KFP Executor" in line for line in shown)  # the executor logs are in the file
    for task in ("prepare-data", "ensemble-crf", "register-model", "record-status"):
        assert any(re.fullmatch(rf"\[\d+:\d\d\] start  {task}(-\d+)?", line) for line in shown), task
        assert any(re.fullmatch(rf"\[\d+:\d\d\] done   {task}(-\d+)?  \d+\.\d s", line) for line in shown), task
    for architecture in TINY["architectures"]:  # one train and one predict task per model and round
        for task in ("train-model", "predict", "predict-2"):
            assert sum(f"done   {task} ({architecture})" in line for line in shown) == 1, "\n".join(shown)
    log = console.log_path.read_text()
    assert log.count("KFP Executor") > 100 and "Got executor_input" in log
    table = results_table(run.run_dir, run.rounds)
    assert re.search(r"^\s+base\s+pseudo$", table, re.MULTILINE) and "pseudo = ensemble-crf-2" in table
    for row in [*TINY["architectures"], "soft_vote", "crf", "consensus", "selected stage"]:
        assert re.search(rf"^\s+{row}\s+\S+\s+\S+$", table, re.MULTILINE), row  # both rounds
    assert re.search(r"registry: trashseg-e2e v\d+ promoted to champion", table)


def test_full_run_writes_a_valid_submission(full_run):
    _, run, _ = full_run
    (submission,) = run.outputs("make-submission", "submission")
    (test_file,) = run.outputs("prepare-data", "dataset/splits/test.json")
    rows = validate_submission(submission, test_file).file_names
    assert rows == [im["file_name"] for im in json.loads(test_file.read_text())["images"]]
    assert str(submission.relative_to(run.run_dir)) in summary(run)


def test_full_run_metrics_hold_miou_and_confusion_matrix(full_run):
    _, run, _ = full_run
    evaluations = sorted(p.parent for p in run.run_dir.glob("**/evaluate*/executor_output.json"))
    # each model of both rounds, and both ensembles
    assert len(evaluations) == 6
    for task in evaluations:
        artifacts = executor_output(task)["artifacts"]
        metrics = artifacts["metrics"]["artifacts"][0]["metadata"]
        assert 0.0 <= metrics["miou"] <= 1.0 and "pixel_accuracy" in metrics
        matrix = artifacts["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
        assert matrix["annotationSpecs"][0]["displayName"] == "Background"
        assert len(matrix["rows"]) == len(matrix["annotationSpecs"]) == 11
        assert "data:image/png;base64," in (task / "report").read_text()
    (stage_report,) = run.outputs("ensemble-crf-2", "report")
    assert "Selected:" in stage_report.read_text()


def test_full_run_is_tracked_in_mlflow(full_run):
    _, run, _ = full_run
    client = MlflowClient(run.tracking_uri)
    experiment = client.get_experiment_by_name("trashseg").experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.`kfp.run_id` = '{run.kfp_run_id}'")
    steps = sorted(r.data.tags.get("trashseg.step", "") for r in runs)
    assert steps.count("train") == 4  # two architectures, two rounds
    assert {"register", "status"} <= set(steps)
    (status,) = [r for r in runs if r.data.tags.get("trashseg.step") == "status"]
    assert status.data.tags["pipeline.state"] == "SUCCEEDED"
    pseudo = [r for r in runs if r.data.tags.get("kfp.stage") == "pseudo"]
    assert len(pseudo) == 2 and all(float(r.data.params["pseudo_ratio"]) == 0.5 for r in pseudo)
    for retrained in pseudo:  # the pseudo-labels' lineage reaches MLflow
        tags = retrained.data.tags
        assert tags["pseudo.models"] == ",".join(TINY["architectures"]) and tags["pseudo.tau"] == "0.05"
        assert len(tags["pseudo.images_sha256"]) == 64 and json.loads(tags["pseudo.ensemble_config"])["fit_rounds"] == 1
        assert tags["pseudo.confidence_stage"] == "soft_vote"
    champion = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert champion.tags["kfp.run_id"] == run.kfp_run_id and champion.tags["dataset_version"] == run.dataset_version

    # The run kept the round with the better held-out val mIoU, and says so everywhere.
    (selection_file,) = run.outputs("select-round", "selection")
    selection = json.loads(selection_file.read_text())
    scores = {r["name"]: r["miou"] for r in selection["rounds"]}
    assert selection["selected"] == max(scores, key=lambda name: (scores[name], name == "base"))
    (register_run,) = [r for r in runs if r.data.tags.get("trashseg.step") == "register"]
    assert register_run.data.tags["round.selected"] == selection["selected"] == status.data.tags["round.selected"]
    assert float(champion.tags["holdout_miou"]) == pytest.approx(scores[selection["selected"]])
    (decision,) = run.outputs("register-model", "decision")
    assert selection["reason"] in decision.read_text()
    (status_summary,) = run.outputs("record-status", "summary")
    assert selection["reason"] in status_summary.read_text()


def test_retrain_without_new_data_ends_early(full_run):
    out, first, _ = full_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KFP_RUN_ID", "unset")
        patch.setenv("OMP_NUM_THREADS", "1")
        run = run_retrain(out, **_retrain_settings(), model_name=MODEL)
    assert not list(run.run_dir.glob("**/train-model*"))
    (note,) = run.outputs("record-no-new-data", "summary")
    assert first.dataset_version in note.read_text()
    client = MlflowClient(run.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("trashseg").experiment_id], filter_string=f"tags.`kfp.run_id` = '{run.kfp_run_id}'"
    )
    assert {r.data.tags.get("pipeline.state") for r in runs} == {"NO_NEW_DATA", "SUCCEEDED"}


def test_retrain_with_new_batch_promotes_only_if_better(full_run, tmp_path):
    out, first, _ = full_run
    client = MlflowClient(first.tracking_uri)
    store = LocalStore(out / "store")

    push_batch(_labelled_batch(tmp_path / "b1", seed=11), store, "batch-1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KFP_RUN_ID", "unset")
        patch.setenv("OMP_NUM_THREADS", "1")
        # any score beats the champion's by more than -1: promoted
        better = run_retrain(out, **_retrain_settings(), model_name=MODEL, min_improvement=-1.0)
    champion = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert champion.tags["kfp.run_id"] == better.kfp_run_id
    new_version = champion.tags["dataset_version"]
    assert new_version != first.dataset_version
    assert "batch-1" in json.loads((out / "store" / "datasets" / new_version / "manifest.json").read_text())["inbox_batches"]
    finetuned = client.search_runs(
        [client.get_experiment_by_name("trashseg").experiment_id],
        filter_string=f"tags.`kfp.run_id` = '{better.kfp_run_id}' and tags.`trashseg.step` = 'train'",
    )
    assert len(finetuned) == 2 and all(r.data.params["pretrained"] not in ("", "None") for r in finetuned)
    (decision,) = better.outputs("register-model", "decision")
    assert "promoted to **champion**" in decision.read_text()

    push_batch(_labelled_batch(tmp_path / "b2", seed=12), store, "batch-2")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KFP_RUN_ID", "unset")
        patch.setenv("OMP_NUM_THREADS", "1")
        # nothing beats it by more than 1 (mIoU <= 1): kept as challenger
        worse = run_retrain(out, **_retrain_settings(), model_name=MODEL, min_improvement=1.0)
    challenger = client.get_model_version_by_alias(MODEL, CHALLENGER)
    assert challenger.tags["kfp.run_id"] == worse.kfp_run_id and challenger.tags["promoted"] == "false"
    assert client.get_model_version_by_alias(MODEL, CHAMPION).version == champion.version
    (decision,) = worse.outputs("register-model", "decision")
    assert "kept as **challenger**" in decision.read_text()


def _retrain_settings():
    return {key: TINY[key] for key in ("iterations", "image_size", "train_settings", "ensemble_settings")}


def _labelled_batch(folder: Path, seed: int) -> Path:
    """A new labelled batch as it lands in the inbox: annotations.json + images/<file_name>."""
    generated = folder / "generated"
    generate_sample_dataset(generated, images=4, size=48, seed=seed)
    (folder / "batch" / "images").mkdir(parents=True)
    shutil.move(generated / "train", folder / "batch" / "images" / "train")  # file_name = train/...
    shutil.move(generated / "train.json", folder / "batch" / "annotations.json")
    return folder / "batch"
