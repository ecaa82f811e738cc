"""MLflow tracking (real server and local SQLite default) and a 2-process DDP run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from trashseg.config import from_mapping
from trashseg.models import load_checkpoint
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


# ---------------------------------------------------------------- one process per GPU in the steps

STEP_SETTINGS = ["warmup_iters=1", "eval_interval=0", "num_workers=0", "log_interval=1", "checkpoint_interval=3", "lr=1e-3", "batch_size=1"]


def _train_step(dataset, out, tracking_uri, *, processes, grad_accum):
    from trashseg.steps import RunContext, train_step

    train_step(
        dataset, out, architecture="segformer-b0-tiny", iterations=3, image_size=32, dataset_version="v",
        settings=[*STEP_SETTINGS, f"grad_accum={grad_accum}"], checkpoint_store="",
        run=RunContext(tracking_uri, "steps-ddp", "base"), processes=processes,
    )
    return torch.load(out / "last.pt", weights_only=True)


def _weights(state):
    """The trained parameters (BatchNorm running statistics left out: under DDP they are rank 0's)."""
    return torch.cat([v.float().ravel() for k, v in state["model"].items() if v.is_floating_point() and "running" not in k])


def test_train_and_predict_steps_run_one_process_per_gpu(sample_dataset, tmp_path):
    """2 gloo processes x batch 1 reach the weights of 1 process x batch 1 x grad_accum 2: the same
    global batch, the same samples and model-side random draws. They differ by float reduction
    order only, so the distance must be tiny next to a run with half the global batch."""
    from trashseg.models import build_model

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    two = _train_step(sample_dataset, tmp_path / "two", tracking, processes=2, grad_accum=1)
    one = _train_step(sample_dataset, tmp_path / "one", tracking, processes=1, grad_accum=2)
    half = _train_step(sample_dataset, tmp_path / "half", tracking, processes=1, grad_accum=1)
    assert two["world_size"] == 2 and one["world_size"] == 1 and two["iteration"] == 3
    assert set(two) == set(one) and sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    ), "the 2-process output folder holds what the 1-process one does"
    torch.manual_seed(0)
    moved = (_weights(one) - _weights({"model": build_model("segformer-b0-tiny", 11).state_dict()})).norm()
    same_batch = ((_weights(two) - _weights(one)).norm() / moved).item()
    half_batch = ((_weights(half) - _weights(one)).norm() / moved).item()
    assert same_batch < 0.05 and half_batch > 0.3, (same_batch, half_batch)  # measured: 0.009 and 0.81
    runs = MlflowClient(tracking).search_runs([MlflowClient(tracking).get_experiment_by_name("steps-ddp").experiment_id])
    assert len(runs) == 3, "rank 0 alone opens the MLflow run"

    from trashseg.predictions import PredictionSet
    from trashseg.steps import predict_step

    assert predict_step(tmp_path / "one", sample_dataset, {"val": tmp_path / "p2"}, processes=2) == 9
    assert predict_step(tmp_path / "one", sample_dataset, {"val": tmp_path / "p1"}, processes=1) == 9
    sharded, single = PredictionSet.open(tmp_path / "p2"), PredictionSet.open(tmp_path / "p1")
    assert sharded.file_names == single.file_names and sharded.source == single.source
    for name in single.file_names:
        assert np.abs(sharded.probs(name) - single.probs(name)).max() <= 1 / 255 + 1e-6, name


def test_find_unused_parameters_only_where_a_step_leaves_parameters_without_gradient():
    from trashseg.models import _FULL_SIZE, UNUSED_PARAMETERS, build_model, has_unused_parameters

    assert UNUSED_PARAMETERS <= set(_FULL_SIZE)
    torch.manual_seed(0)
    for name in ("segformer-b0-tiny", "upernet-convnext-t-tiny", "upernet-swin-t-tiny"):
        model = build_model(name, 3).train()
        model.loss(torch.randn(1, 3, 32, 32), torch.randint(0, 3, (1, 32, 32))).backward()
        unused = [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert has_unused_parameters(name) == bool(unused), (name, unused)


def test_processes_per_task_reads_the_pipelines_setting(monkeypatch):
    from trashseg.errors import ConfigError
    from trashseg.launch import processes_per_task

    monkeypatch.setenv("TRASHSEG_PROCESSES", "3")
    assert processes_per_task() == 3 or torch.cuda.is_available()
    monkeypatch.setenv("TRASHSEG_PROCESSES", "two")
    with pytest.raises(ConfigError, match="TRASHSEG_PROCESSES='two'"):
        processes_per_task()
    monkeypatch.delenv("TRASHSEG_PROCESSES")
    assert processes_per_task() == max(torch.cuda.device_count(), 1)


def test_under_torchrun_a_step_runs_in_its_worker(monkeypatch):
    """A TrainJob node's worker is already one of torchrun's processes: no second spawn."""
    from trashseg.errors import ConfigError
    from trashseg.launch import processes_per_task, run_per_process

    monkeypatch.setenv("TRASHSEG_PROCESSES", "4")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "1")
    assert processes_per_task() == 1
    assert run_per_process(os.getpid, (), 1) == [os.getpid()]  # in this process
    with pytest.raises(ConfigError, match="inside a torchrun worker"):
        run_per_process(os.getpid, (), 2)


def test_plan_training_takes_where_to_record_from_the_run_and_keeps_a_disabled_tracking(sample_dataset, tmp_path):
    from trashseg.steps import RunContext, plan_training

    run = RunContext("http://mlflow:5000", "exp", "pseudo")
    job = plan_training(sample_dataset, tmp_path, architecture="segformer-b0-tiny", iterations=3, image_size=32,
                        settings=["warmup_iters=1", "tracking.enabled=false"], checkpoint_store="s3://b/ckpt",
                        run_id="run-1", run=run, tags={"kfp.task": "t"})
    assert (job.config.tracking.uri, job.config.tracking.experiment, job.config.tracking.enabled) == ("http://mlflow:5000", "exp", False)
    assert job.mirror_uri == "s3://b/ckpt/run-1" and job.prefix == "pseudo-segformer-b0-tiny"
    assert job.tags == {"kfp.task": "t", "kfp.stage": "pseudo"} and job.config.pseudo_ratio == 0.0
    assert plan_training(sample_dataset, tmp_path, architecture="segformer-b0-tiny", iterations=3, image_size=32,
                         settings=["warmup_iters=1"], checkpoint_store="s3://b/ckpt", run_id="", run=run).mirror_uri == ""
