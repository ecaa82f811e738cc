"""The launcher and the node joined for real: a TrainJob created through the Kubernetes API runs.

The launcher (`launch_train_step`, what components/launch_training.py calls) speaks to the
fake API server through the real `kubernetes` client; the fake's LocalTrainer runs the
created TrainJob as Trainer would: one `torchrun` per node with the job's command, args and
env (references resolved from a ConfigMap/Secret table: a reference the table cannot resolve
fails the job, as a pod that cannot start) and the PET_* variables, node 0's output as its
pod's log. The nodes share nothing but the local checkpoint store.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from kube_fake import FakeCluster, LocalTrainer
from kubernetes import client

from trashseg import secrets
from trashseg.steps import RunContext, train_step
from trashseg.trainjob.kube import TrainerApi
from trashseg.trainjob.launcher import TrainJobFailed, launch_train_step
from trashseg.trainjob.objects import JobSettings, LauncherPod, job_name

pytestmark = pytest.mark.timeout(600)

RUN_ID = "0e2e0e2e-1b2a-4c5d-9e8f-0a1b2c3d4e5f"
ARCH = "segformer-b0-tiny"
ITERATIONS, IMAGE_SIZE = 4, 32
SETTINGS = ["batch_size=1", "warmup_iters=1", "eval_interval=4", "checkpoint_interval=2", "num_workers=0",
            "log_interval=1", "lr=1e-3", "tracking.enabled=false"]
POD = LauncherPod("launch-training-e2e", "0000-e2e-uid", "trashseg-runs")
JOB = JobSettings(image="registry.example.com/trashseg-train:e2e", num_nodes=2, gpus_per_node=1, timeout_s=600)
SECRET_KEY = "e2e-secret-value-never-logged"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cluster(monkeypatch, tmp_path):
    fake = FakeCluster(POD.namespace)
    base_env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    base_env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")  # the image's own env
    trainer = LocalTrainer(
        fake, tmp_path / "nodes", base_env=base_env,
        config_maps={secrets.STORAGE_CONFIG_MAP: {"TRASHSEG_S3_ENDPOINT": "http://127.0.0.1:9", "TRASHSEG_S3_SECURE": "false",
                                                  "AWS_REGION": "us-east-1", "TRASHSEG_BUCKET": "trashseg"}},
        secrets={secrets.S3_CREDENTIALS_SECRET: {"AWS_ACCESS_KEY_ID": "e2e-access", "AWS_SECRET_ACCESS_KEY": SECRET_KEY}},
    )
    server, url = fake.serve()
    fake.api = TrainerApi(client.ApiClient(client.Configuration(host=url)), fake.namespace)
    monkeypatch.setenv("KFP_RUN_ID", RUN_ID)
    yield fake
    trainer.close()
    server.shutdown()


def launch(fake: FakeCluster, dataset: Path, model: Path, store: Path, settings=SETTINGS):
    return launch_train_step(
        dataset, model, architecture=ARCH, iterations=ITERATIONS, image_size=IMAGE_SIZE, dataset_version="v-e2e",
        settings=settings, checkpoint_store=str(store), run=RunContext("", "trashseg", "base"), job=JOB.to_dict(),
        task="train-base", api=fake.api, pod=POD,
    )


@pytest.mark.slow  # two torchrun nodes, then train_step's 2 processes: about a minute on 2 busy cores
def test_a_launched_trainjob_trains_on_two_nodes_what_train_step_trains_with_two_processes(
        cluster, sample_dataset, tmp_path, capsys):
    result = launch(cluster, sample_dataset, tmp_path / "model", tmp_path / "store")

    name = job_name(RUN_ID, "base", ARCH)
    assert [r[2] for r in cluster.requested("POST", "/trainjobs")] == [201] and list(cluster.jobs) == [name]
    out = capsys.readouterr().out
    assert f"validation at iteration {ITERATIONS}: mIoU {result.val_miou:.4f}" in out  # node 0's training, streamed
    assert "train segformer-b0-tiny" in cluster.trainer.node_log(name, 0)
    assert "train segformer-b0-tiny" not in cluster.trainer.node_log(name, 1)  # rank 1 logs warnings only
    assert SECRET_KEY not in out
    saved = torch.load(tmp_path / "model" / "last.pt", weights_only=True)
    assert saved["iteration"] == ITERATIONS and saved["world_size"] == 2
    assert result.metrics == {"iterations": float(ITERATIONS), "val_miou": result.val_miou} and result.val_miou > 0
    assert (tmp_path / "model" / "best.pt").is_file() and result.model_metadata["architecture"] == ARCH

    plain = train_step(sample_dataset, tmp_path / "plain", architecture=ARCH, iterations=ITERATIONS,
                       image_size=IMAGE_SIZE, dataset_version="v-e2e", settings=SETTINGS, checkpoint_store="",
                       run=RunContext("", "trashseg", "base"), processes=2)
    assert (plain.val_miou, plain.metrics) == (result.val_miou, result.metrics)
    reference = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)
    for key, tensor in reference["model"].items():  # 2 nodes x 1 process == 1 node x 2 processes, bitwise
        assert torch.equal(tensor, saved["model"][key]), key


def test_a_node_that_fails_fails_the_launch_with_its_exit_and_log(cluster, sample_dataset, tmp_path, capsys):
    with pytest.raises(TrainJobFailed) as error:
        launch(cluster, sample_dataset, tmp_path / "model", tmp_path / "store", settings=["no_such_setting=1"])
    assert "JobSetFailed: node 0 exited with code 1" in str(error.value)
    assert "Error, exit code 1" in str(error.value)  # how node 0's container ended
    assert "no_such_setting" in capsys.readouterr().out  # the node's one-line error, in the launcher's log
