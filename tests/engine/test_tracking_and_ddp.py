"""MLflow tracking (real server and local SQLite default) and a 2-process DDP run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from trashseg.checkpoints import load_checkpoint
from trashseg.config import from_mapping
from trashseg.tracking import TrackedRun, TrackingConfig
from trashseg.training import TrainConfig, train


def _tiny(**changes):
    values = dict(architecture="segformer-b0-tiny", image_size=48, batch_size=2, iterations=4, warmup_iters=1,
                  eval_interval=2, checkpoint_interval=4, log_interval=1, num_workers=0)
    values.update(changes)
    return from_mapping(TrainConfig, values)


def test_training_logs_to_a_real_mlflow_server(mlflow_server, sample_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_RUN_ID", "kfp-run-123")
    config = _tiny(tracking={"uri": mlflow_server, "experiment": "engine-test"})
    result = train(config, sample_dataset, tmp_path / "run", tags={"team": "engine"})

    client = MlflowClient(mlflow_server)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["architecture"] == "segformer-b0-tiny"
    assert run.data.params["augment.scale_range"] == "[0.5, 2.0]"
    assert run.data.params["tracking.experiment"] == "engine-test"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 4
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/miou")] == [2, 4]
    assert run.data.metrics["val/best_miou"] == result.best_miou
    dataset_hash = json.loads((sample_dataset / "dataset.json").read_text())["hash"]
    tags = run.data.tags
    assert tags["architecture"] == "segformer-b0-tiny" and tags["dataset.version"] == dataset_hash
    assert tags["kfp.run_id"] == "kfp-run-123" and tags["team"] == "engine"
    assert len(tags.get("git.sha", "")) == 40 or shutil.which("git") is None

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "classes.json", "checkpoint"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "checkpoint/best.pt", str(tmp_path / "dl"))
    state = torch.load(local, weights_only=True)
    assert state["architecture"] == "segformer-b0-tiny" and state["iteration"] == result.best_iteration


def test_local_sqlite_default_and_batched_metrics(sample_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = train(_tiny(iterations=2, eval_interval=0), sample_dataset, tmp_path)
    database = tmp_path / "mlflow.db"
    assert database.is_file()
    client = MlflowClient(f"sqlite:///{database}")
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["iterations"] == "2" and "train/loss" in run.data.metrics
    assert {a.path for a in client.list_artifacts(result.mlflow_run_id)} >= {"config.json", "checkpoint"}
    assert (tmp_path / "mlartifacts").is_dir(), "local artifacts live beside the database"

    # metrics are buffered and sent together, not one request per value
    with TrackedRun(TrackingConfig(experiment="batching"), tmp_path) as tracked:
        for step in range(3):
            tracked.log_metrics({"a": step, "b": 2 * step}, step=step)
        assert client.get_run(tracked.run_id).data.metrics == {}
        tracked.flush()
        assert client.get_run(tracked.run_id).data.metrics == {"a": 2.0, "b": 4.0}
        assert len(client.get_metric_history(tracked.run_id, "b")) == 3


def _torchrun_train(dataset, out, *extra):
    trashseg = str(Path(sys.executable).parent / "trashseg")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
        trashseg, "train", "--data", str(dataset), "--out", str(out),
        "--set", "architecture=segformer-b0-tiny", "--set", "image_size=48", "--set", "batch_size=2",
        "--set", "iterations=3", "--set", "warmup_iters=1", "--set", "eval_interval=3", "--set", "num_workers=0",
        "--set", "log_interval=1", "--set", "tracking.enabled=false", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired as error:
        stderr = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr or ""
        pytest.fail(f"torchrun did not finish in 300 s; its log ends:\n{stderr[-4000:]}")
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_two_process_ddp_run_on_cpu_trains_and_resumes_exactly(sample_dataset, tmp_path):
    done = _torchrun_train(sample_dataset, tmp_path / "ddp")
    state = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["iteration"] == 3
    assert len(state["rng_per_rank"]) == 2
    model, meta = load_checkpoint(tmp_path / "ddp" / "best.pt")
    assert meta.architecture == "segformer-b0-tiny" and model.num_classes == 11
    # only rank 0 logs progress and reports
    assert done.stderr.count("train segformer-b0-tiny 3/3") == 1
    assert json.loads(done.stdout)["last_checkpoint"] == str(tmp_path / "ddp" / "last.pt")

    _torchrun_train(sample_dataset, tmp_path / "split", "--stop-after", "1")
    _torchrun_train(sample_dataset, tmp_path / "split", "--resume")
    resumed = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    for key, tensor in state["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key
