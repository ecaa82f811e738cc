"""One train() per step with checkpoints mirrored as they are written; fine-tuning from a
bundle's checkpoint; continuing a finished run to a longer schedule."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mlflow import MlflowClient

from trashseg.cli import main as cli_main
from trashseg.config import from_mapping
from trashseg.errors import ConfigError
from trashseg.training import TrainConfig, train

ARCH = "segformer-b0-tiny"
STEP_SETTINGS = ["batch_size=1", "warmup_iters=1", "eval_interval=0", "num_workers=0", "log_interval=1", "checkpoint_interval=2"]


def _config(**changes):
    values = dict(architecture=ARCH, image_size=32, batch_size=1, iterations=4, warmup_iters=1, eval_interval=0,
                  checkpoint_interval=2, log_interval=1, num_workers=0, lr=1e-3)
    values.update(changes)
    return from_mapping(TrainConfig, values)


STEP_SCRIPT = """
import sys
from trashseg.steps import RunContext, train_step
dataset, out, store, tracking, iterations = sys.argv[1:6]
train_step(dataset, out, architecture="{arch}", iterations=int(iterations), image_size=32, dataset_version="v",
           settings={settings!r}, checkpoint_store=store, run=RunContext(tracking, "mirror", "base"))
"""


def _step_command(dataset, out, store, tracking, iterations):
    script = STEP_SCRIPT.format(arch=ARCH, settings=STEP_SETTINGS)
    return [sys.executable, "-c", script, str(dataset), str(out), str(store), tracking, str(iterations)]


def test_a_preempted_step_resumes_from_the_checkpoint_mirrored_inside_the_loop(sample_dataset, tmp_path):
    """The step is killed mid-run; a retry on a fresh node (empty model folder) resumes from the
    mirror, losing at most one checkpoint interval, and ends bitwise where an uninterrupted run does."""
    tracking, iterations = f"sqlite:///{tmp_path / 'mlflow.db'}", 16
    env = {**os.environ, "KFP_RUN_ID": "preempted-run", "OMP_NUM_THREADS": "1"}
    mirrored = tmp_path / "store" / "preempted-run" / f"base-{ARCH}" / "last.pt"
    job = subprocess.Popen(_step_command(sample_dataset, tmp_path / "node1", tmp_path / "store", tracking, iterations),
                           env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not mirrored.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGSTOP)  # freeze at once: what the mirror holds now is what a preemption leaves
    assert mirrored.exists(), job.stderr.read()[-3000:] if job.poll() is not None else "no checkpoint mirrored in 240 s"
    kept = torch.load(mirrored, weights_only=True)["iteration"]
    job.kill()
    job.wait()
    job.stderr.close()
    assert 0 < kept < iterations and kept % 2 == 0, "mirrored mid-run, at a checkpoint interval"

    from trashseg.steps import RunContext, train_step

    os.environ["KFP_RUN_ID"] = "preempted-run"
    try:
        result = train_step(sample_dataset, tmp_path / "node2", architecture=ARCH, iterations=iterations, image_size=32,
                            dataset_version="v", settings=STEP_SETTINGS, checkpoint_store=str(tmp_path / "store"),
                            run=RunContext(tracking, "mirror", "base"))
    finally:
        del os.environ["KFP_RUN_ID"]
    assert result.metrics["iterations"] == iterations
    resumed = torch.load(tmp_path / "node2" / "last.pt", weights_only=True)
    assert torch.load(mirrored, weights_only=True)["iteration"] == iterations, "the final checkpoint is mirrored too"

    train_step(sample_dataset, tmp_path / "straight", architecture=ARCH, iterations=iterations, image_size=32,
               dataset_version="v", settings=STEP_SETTINGS, checkpoint_store="", run=RunContext(tracking, "mirror", "base"))
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    for key, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key


def test_fine_tuning_starts_from_the_bundles_checkpoint(sample_dataset, tmp_path, caplog):
    from trashseg.registry import write_bundle
    from trashseg.steps import RunContext, train_step

    base = train(_config(iterations=2, tracking={"enabled": False}), sample_dataset, tmp_path / "base")
    bundle = tmp_path / "bundle"
    write_bundle({ARCH: tmp_path / "base"}, bundle, dataset_version="v", class_names=[f"c{i}" for i in range(11)])
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with caplog.at_level(logging.INFO):
        train_step(sample_dataset, tmp_path / "tuned", architecture=ARCH, iterations=1, image_size=32, dataset_version="v",
                   settings=[*STEP_SETTINGS, "warmup_iters=0", "lr=1e-12"], checkpoint_store="",
                   run=RunContext(tracking, "fine-tune", "retrain"), init_bundle_dir=bundle)
    # Same classes: every tensor loads, none is re-initialised.
    assert any("tensors loaded, 0 tensors not loaded" in r.getMessage() for r in caplog.records)
    start = torch.load(base.last_checkpoint, weights_only=True)["model"]
    tuned = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)
    for key, tensor in start.items():  # lr 1e-12: one step leaves the bundle's weights in place
        if "running" not in key and tensor.is_floating_point():
            assert torch.allclose(tensor, tuned["model"][key], atol=1e-6), key
    run = MlflowClient(tracking).get_run(tuned["mlflow_run_id"])
    assert run.data.tags["train.mode"] == "fine-tune"
    assert run.data.params["pretrained"] == str(bundle / "models" / ARCH)

    with pytest.raises(ConfigError, match="holds a 'segformer-b0-tiny' model"):
        train(_config(architecture="upernet-convnext-t-tiny", pretrained=str(tmp_path / "base"),
                      tracking={"enabled": False}), sample_dataset, tmp_path / "wrong")


def test_continuing_a_finished_run_is_a_new_run_on_a_longer_schedule(sample_dataset, tmp_path, caplog):
    tracking = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "continue"}
    first = train(_config(tracking=tracking), sample_dataset, tmp_path / "first")
    common = ["train", "--data", str(sample_dataset), "--continue-from", str(tmp_path / "first"), "--continue-to", "8"]

    assert cli_main([*common, "--out", str(tmp_path / "longer")]) == 0
    longer = torch.load(tmp_path / "longer" / "last.pt", weights_only=True)
    assert longer["iteration"] == 8 and longer["config"]["iterations"] == 8
    assert longer["mlflow_run_id"] != first.mlflow_run_id, "a new MLflow run, not the first one resumed"
    client = MlflowClient(tracking["uri"])
    run = client.get_run(longer["mlflow_run_id"])
    assert run.data.tags["train.mode"] == "continue" and run.data.tags["train.continued_from.iteration"] == "4"
    assert run.data.tags["train.continued_from.mlflow_run_id"] == first.mlflow_run_id
    assert run.data.params["continue_from"] == str(tmp_path / "first")
    # it trains on from iteration 4 with the new schedule's lr: poly decay over 8 iterations, 1 of warmup
    lrs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/lr")}
    assert sorted(lrs) == [5, 6, 7, 8]
    assert lrs[5] == pytest.approx(1e-3 * (1 - (5 - 1) / (8 - 1)))
    assert client.get_run(first.mlflow_run_id).data.params["iterations"] == "4", "the finished run is untouched"

    with pytest.raises(ConfigError, match="own output folder"):
        train(_config(iterations=8, continue_from=str(tmp_path / "first"), tracking=tracking), sample_dataset, tmp_path / "first")
    with pytest.raises(ConfigError, match="continue-from"):  # resuming never lengthens a schedule
        train(_config(iterations=8, tracking=tracking), sample_dataset, tmp_path / "first", resume=True)
    assert cli_main(["train", "--data", str(sample_dataset), "--continue-to", "8", "--out", str(tmp_path / "x")]) != 0
    assert "go together" in caplog.text
    train(_config(iterations=8, tracking={"enabled": False}), sample_dataset, tmp_path / "part", stop_after=2)
    with pytest.raises(ConfigError, match="unfinished run is resumed"):
        train(_config(iterations=8, continue_from=str(tmp_path / "part"), tracking={"enabled": False}),
              sample_dataset, tmp_path / "y")
