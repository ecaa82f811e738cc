"""The launcher's whole life against a Kubernetes API on 127.0.0.1, through the real client.

The test plays Trainer's controller (kube_fake.FakeCluster): it answers the launcher's
TrainJob with a node-0 pod, log lines, the checkpoint the node would mirror, and a
Complete or Failed condition.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from kube_fake import FakeCluster
from kubernetes import client

from trashseg.checkpoints import CHECKPOINT_FORMAT
from trashseg.errors import ConfigError
from trashseg.steps import RunContext
from trashseg.storage import open_store
from trashseg.trainjob.kube import ApiUnavailable, TrainerApi
from trashseg.trainjob.launcher import (
    LaunchCancelled,
    TrainerUnavailable,
    TrainJobFailed,
    launch_train_step,
    preflight_step,
    start_job,
)
from trashseg.trainjob.objects import JobSettings, LauncherPod, job_labels, job_name, train_job
from trashseg.trainjob.spec import NodeTrainSpec

pytestmark = pytest.mark.timeout(90)

RUN_ID = "5f0c3c9e-1b2a-4c5d-9e8f-0a1b2c3d4e5f"
ARCH = "segformer-b0-tiny"
NAME = job_name(RUN_ID, "base", ARCH)
POD = LauncherPod("train-model-launcher-abc12", "0000-launcher-uid", "trashseg-runs")
SETTINGS = JobSettings(image="registry.example.com/trashseg-train:0a1b2c3", num_nodes=2, gpus_per_node=4,
                       node_selector={"nvidia.com/gpu.present": "true"},
                       tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
                       timeout_s=600)


@pytest.fixture()
def cluster(monkeypatch):
    fake = FakeCluster(POD.namespace)
    server, url = fake.serve()
    fake.url = url
    monkeypatch.setenv("KFP_RUN_ID", RUN_ID)
    yield fake
    server.shutdown()


def api_for(fake: FakeCluster) -> TrainerApi:
    return TrainerApi(client.ApiClient(client.Configuration(host=fake.url)), fake.namespace)


@pytest.fixture()
def inputs(tmp_path):
    dataset = tmp_path / "dataset"
    (dataset / "images").mkdir(parents=True)
    (dataset / "dataset.json").write_text('{"version": "v1"}')
    (dataset / "images" / "a.jpg").write_bytes(b"\xff\xd8 jpeg bytes")
    return {"dataset": dataset, "store": str(tmp_path / "checkpoints"), "model": tmp_path / "model"}


def launch(fake, inputs, *, pod=POD, settings=SETTINGS, **extra):
    return launch_train_step(
        inputs["dataset"], inputs["model"], architecture=ARCH, iterations=20, image_size=64, dataset_version="v1",
        settings=["batch_size=2"], checkpoint_store=inputs["store"], run=RunContext("", "trashseg", "base"),
        job=settings.to_dict(), task="train-base", api=api_for(fake), pod=pod, **extra,
    )


def mirror_checkpoint(store: str, iteration: int = 20, miou: float = 0.42) -> None:
    """What rank 0 of the nodes leaves in the mirror: `<store>/<run>/base-<arch>/last.pt`."""
    # Every field a checkpoint must hold (the launcher reads it back as train_step does); no weights needed.
    state = {"format": CHECKPOINT_FORMAT, "iteration": iteration, "best_miou": miou, "mlflow_run_id": "mlflow-123",
             "architecture": ARCH, "classes": [], "model": {}, "image_size": 64, "config": {},
             "normalisation": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    written = Path(store).parent / "node-last.pt"
    torch.save(state, written)
    open_store(f"{store}/{RUN_ID}").put_file(written, f"base-{ARCH}/last.pt")


def play_controller(fake: FakeCluster, store: str, *, outcome: str = "Complete", before_end=None, not_uid=""):
    """Trainer's part: on the launcher's job (not the one with uid `not_uid`), a node-0 pod
    that logs, a mirrored checkpoint, an end."""

    def run():
        fake.wait_for(lambda: NAME in fake.jobs and fake.jobs[NAME]["metadata"]["uid"] != not_uid)
        pod = fake.add_node0(NAME)
        fake.log(pod, "iteration 10/20 loss 0.91 lr 1e-4 eta 0:00:05")
        if before_end:
            before_end(pod)
        fake.log(pod, "iteration 20/20 loss 0.52", done=True)
        if outcome == "Complete":
            mirror_checkpoint(store)
            fake.set_condition(NAME, "Complete", "JobSetCompleted", "jobset completed")
        else:
            fake.end_node(pod, "OOMKilled", 137)
            fake.add_event(NAME, "BackoffLimitExceeded", "node-0 exited 137 (OOMKilled)", kind="JobSet")
            fake.set_condition(NAME, "Failed", "JobSetFailed", "jobset failed: maxRestarts (3) exceeded")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_create_stream_logs_and_complete(cluster, inputs, capsys, caplog):
    caplog.set_level("INFO", logger="trashseg.trainjob.launcher")
    controller = play_controller(cluster, inputs["store"])
    result = launch(cluster, inputs)
    controller.join(5)
    assert result.val_miou == pytest.approx(0.42)
    assert result.metrics["iterations"] == 20.0 and result.model_metadata["mlflow_run_id"] == "mlflow-123"
    assert (inputs["model"] / "last.pt").is_file()  # the Model output holds the mirrored checkpoints
    out = capsys.readouterr().out
    assert "[node 0] iteration 10/20 loss 0.91" in out and "[node 0] iteration 20/20 loss 0.52" in out
    assert f"TrainJob {NAME}: Complete=True (created 0:00:0" in caplog.text  # progress: the job's status, its age
    job = cluster.jobs[NAME]
    assert [r[2] for r in cluster.requested("POST", "/trainjobs")] == [201]
    assert job["metadata"]["ownerReferences"] == [POD.owner_reference()]
    assert job["metadata"]["labels"]["trashseg.io/kfp-run-id"] == RUN_ID
    assert job["metadata"]["labels"]["trashseg.io/architecture"] == ARCH
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 4
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    spec = NodeTrainSpec.from_json(trainer["args"][trainer["args"].index("--spec") + 1])
    assert spec.run_id == RUN_ID and spec.settings == ("batch_size=2",) and spec.checkpoint_store == inputs["store"]
    run_store = open_store(f"{inputs['store']}/{RUN_ID}")
    assert spec.dataset_uri == run_store.uri(f"staged/{NAME}/dataset")
    assert run_store.get_bytes(f"staged/{NAME}/dataset/images/a.jpg") == b"\xff\xd8 jpeg bytes"  # staged for the nodes
    env = {e["name"]: e for e in trainer["env"]}
    assert env["KFP_RUN_ID"]["value"] == RUN_ID
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "trashseg-s3-credentials"
    assert all("value" not in e for n, e in env.items() if n.startswith(("AWS_", "MLFLOW_")))
    assert job["spec"]["activeDeadlineSeconds"] > SETTINGS.timeout_s  # the backstop outlives the launcher's timeout


def test_restarted_launcher_adopts_the_running_job(cluster, inputs):
    """A first launcher created the job and was killed outright (no cleanup); the second finds
    it by its name, owns it too, and sees it to the end; exactly one job ever exists."""
    first = LauncherPod("train-model-launcher-old", "0000-old-uid", POD.namespace)
    spec = NodeTrainSpec(run_id=RUN_ID, architecture=ARCH, stage="base", iterations=20, image_size=64,
                         dataset_version="v1", checkpoint_store=inputs["store"], dataset_uri="s3://b/staged/dataset")
    start_job(api_for(cluster), train_job(NAME, spec, SETTINGS, job_labels(RUN_ID, "train-base", ARCH, "base"), first), first)
    adopted = lambda pod: cluster.wait_for(lambda: cluster.requested("PATCH", "/trainjobs"))  # noqa: E731
    controller = play_controller(cluster, inputs["store"], before_end=adopted)
    launch(cluster, inputs)
    controller.join(5)
    assert len(cluster.jobs) == 1
    assert [r[2] for r in cluster.requested("POST", "/trainjobs")] == [201]
    owners = {o["uid"] for o in cluster.jobs[NAME]["metadata"]["ownerReferences"]}
    assert owners == {first.uid, POD.uid}
    assert not cluster.requested("DELETE", "/trainjobs")
    # Launched again after completion (a retried task): collected; nothing created or staged again.
    assert launch(cluster, inputs).val_miou == pytest.approx(0.42)
    assert [r[2] for r in cluster.requested("POST", "/trainjobs")] == [201]
    assert not (Path(inputs["store"]) / RUN_ID / "staged").exists()  # an adopted job's inputs are staged already


def test_failed_job_raises_with_reason_and_events(cluster, inputs):
    controller = play_controller(cluster, inputs["store"], outcome="Failed")
    with pytest.raises(TrainJobFailed) as error:
        launch(cluster, inputs)
    controller.join(5)
    message = str(error.value)
    assert "JobSetFailed: jobset failed: maxRestarts (3) exceeded" in message
    assert "BackoffLimitExceeded: node-0 exited 137 (OOMKilled)" in message
    assert "node 0 (ts-base-segformer-b0-tiny-" in message and "OOMKilled, exit code 137" in message
    assert f"kubectl describe trainjob {NAME}" in message
    assert NAME in cluster.jobs  # kept for inspection: a failed job's pods have ended, no GPU is held
    # A retry replaces the failed job (the new one resumes from the mirror) instead of re-failing.
    marker = open_store(f"{inputs['store']}/{RUN_ID}").stat(f"staged/{NAME}/dataset.staged.json")
    retry = play_controller(cluster, inputs["store"], not_uid=cluster.jobs[NAME]["metadata"]["uid"])
    result = launch(cluster, inputs)
    retry.join(5)
    assert result.val_miou == pytest.approx(0.42)
    # Staged once: the retry found the same files and uploaded nothing again.
    assert open_store(f"{inputs['store']}/{RUN_ID}").stat(f"staged/{NAME}/dataset.staged.json") == marker
    assert len(cluster.requested("DELETE", "/trainjobs")) == 1 and len(cluster.jobs) == 1


def test_sigterm_deletes_the_job(cluster, inputs):
    """The run is terminated: Argo stops the launcher with SIGTERM; the job must go with it."""

    def terminate(pod):
        cluster.wait_for(lambda: cluster.requested("GET", "?follow"))
        os.kill(os.getpid(), signal.SIGTERM)

    play_controller(cluster, inputs["store"], before_end=terminate)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(LaunchCancelled):
        launch(cluster, inputs)
    assert NAME not in cluster.jobs and len(cluster.requested("DELETE", "/trainjobs")) == 1
    assert signal.getsignal(signal.SIGTERM) is previous  # the launcher's handler is removed again


def test_timeout_deletes_the_job(cluster, inputs):
    cluster.created_offset_s = -(SETTINGS.timeout_s - 2)  # created long ago: 2 s of the timeout left
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not end within the task's timeout"):
        launch(cluster, inputs)
    assert time.monotonic() - started < 30
    assert NAME not in cluster.jobs and len(cluster.requested("DELETE", "/trainjobs")) == 1


def test_no_trainer_fails_before_anything_is_created(cluster, inputs, monkeypatch):
    cluster.crd = False
    with pytest.raises(TrainerUnavailable, match=r"TrainJob CRD is not installed.*Trainer v2\.3\.x.*ENGINE=pod"):
        launch(cluster, inputs)
    assert not cluster.requested("POST", "/trainjobs")
    assert not list((inputs["model"].parent).glob("checkpoints/*/staged"))  # nothing staged either


def test_missing_runtime_and_denied_access_are_named(cluster, inputs, monkeypatch):
    for name, value in (("TRASHSEG_POD_NAME", POD.name), ("TRASHSEG_POD_UID", POD.uid),
                        ("TRASHSEG_POD_NAMESPACE", POD.namespace)):
        monkeypatch.setenv(name, value)
    assert "trashseg" in preflight_step("trashseg", api=api_for(cluster))
    cluster.runtimes.clear()
    with pytest.raises(TrainerUnavailable, match=r"TrainingRuntime 'trashseg' not found.*with-trainer"):
        preflight_step("trashseg", api=api_for(cluster))
    cluster.denied = {("create", "trainjobs"), ("get", "pods/log")}
    with pytest.raises(TrainerUnavailable, match=r"may not create trainjobs, get pods/log in namespace trashseg-runs"):
        preflight_step("trashseg", api=api_for(cluster))


def test_two_launchers_racing_create_one_job(cluster, inputs):
    """The name is taken between the launcher's look and its create: 409 Conflict -> adopt."""
    spec = NodeTrainSpec(run_id=RUN_ID, architecture=ARCH, stage="base", iterations=20, image_size=64,
                         dataset_version="v1", checkpoint_store=inputs["store"], dataset_uri="s3://b/staged/dataset")
    other = LauncherPod("train-model-launcher-twin", "0000-twin-uid", POD.namespace)
    obj = lambda pod: train_job(NAME, spec, SETTINGS, job_labels(RUN_ID, "t", ARCH, "base"), pod)  # noqa: E731
    start_job(api_for(cluster), obj(other), other)
    job = start_job(api_for(cluster), obj(POD), POD)
    assert [r[2] for r in cluster.requested("POST", "/trainjobs")] == [201, 409] and len(cluster.jobs) == 1
    assert [o["uid"] for o in job["metadata"]["ownerReferences"]] == [other.uid, POD.uid]


def test_a_refused_call_names_the_verb_and_the_fix(cluster):
    cluster.denied = {("delete", "trainjobs")}
    with pytest.raises(Exception, match=r"refused `delete trainjobs` \(403.*with-trainer"):
        api_for(cluster).delete_job("anything")


def test_a_tracking_uri_with_a_password_never_reaches_the_job(cluster, inputs):
    with pytest.raises(ConfigError, match=r"tracking_uri hold credentials.*\*\*\*.*trashseg-mlflow-credentials") as error:
        launch_train_step(
            inputs["dataset"], inputs["model"], architecture=ARCH, iterations=20, image_size=64, dataset_version="v1",
            settings=[], checkpoint_store=inputs["store"], run=RunContext("http://bob:s3cret@mlflow:5000", "e", "base"),
            job=SETTINGS, task="train-base", api=api_for(cluster), pod=POD,
        )
    assert "s3cret" not in str(error.value)
    assert not cluster.requested("POST", "/trainjobs")
    assert not (Path(inputs["store"]) / RUN_ID / "staged").exists()  # refused before anything is uploaded


def test_a_control_plane_blip_is_waited_out_not_a_deleted_job(cluster, inputs, monkeypatch):
    """A watch that breaks (API server restarting) is retried; the job is not deleted."""
    api = api_for(cluster)
    real, calls = api.watch_job, []

    def flaky(name, timeout_s):
        calls.append(name)
        if len(calls) <= 2:
            raise ApiUnavailable("Kubernetes API `watch trainjobs` failed: 503 Service Unavailable")
        return real(name, timeout_s)

    api.watch_job = flaky
    monkeypatch.setattr("trashseg.trainjob.launcher.time.sleep", lambda s: None)
    controller = play_controller(cluster, inputs["store"])
    result = launch_train_step(
        inputs["dataset"], inputs["model"], architecture=ARCH, iterations=20, image_size=64, dataset_version="v1",
        settings=[], checkpoint_store=inputs["store"], run=RunContext("", "e", "base"), job=SETTINGS,
        task="train-base", api=api, pod=POD,
    )
    controller.join(5)
    assert result.val_miou == pytest.approx(0.42) and len(calls) >= 3
    assert not cluster.requested("DELETE", "/trainjobs")


def test_job_settings_round_trip_and_reject_unknown_keys():
    assert JobSettings.from_dict(json.loads(json.dumps(SETTINGS.to_dict()))) == SETTINGS
    with pytest.raises(Exception, match=r"unknown TrainJob settings \['gpu'\]"):
        JobSettings.from_dict({**SETTINGS.to_dict(), "gpu": 1})


def test_the_component_launches_with_the_pods_own_identity_and_kubeconfig(cluster, inputs, tmp_path, monkeypatch):
    """components/launch_training.py as the task runs it: the API from its (kube)config, its pod
    from the downward API, `job` as a KFP struct (numbers as doubles); train_model's outputs."""
    import yaml
    from kfp.dsl import Dataset, Metrics, Model

    from components.launch_training import launch_training

    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                  "clusters": [{"name": "fake", "cluster": {"server": cluster.url}}],
                  "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "runner", "namespace": POD.namespace}}],
                  "users": [{"name": "runner", "user": {"token": "not-a-real-token"}}]}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod: the kubeconfig is used
    for name, value in (("TRASHSEG_POD_NAME", POD.name), ("TRASHSEG_POD_UID", POD.uid),
                        ("TRASHSEG_POD_NAMESPACE", POD.namespace)):
        monkeypatch.setenv(name, value)
    job = {**SETTINGS.to_dict(), "num_nodes": 2.0, "gpus_per_node": 4.0, "timeout_s": 600.0}
    model, metrics = Model(name="model", uri=str(tmp_path / "model"), metadata={}), Metrics(name="m", uri=str(tmp_path / "m"), metadata={})
    controller = play_controller(cluster, inputs["store"])
    miou = launch_training.python_func(
        dataset=Dataset(name="dataset", uri=str(inputs["dataset"]), metadata={}), architecture=ARCH, iterations=20,
        image_size=64, dataset_version="v1", train_settings=["batch_size=2"], checkpoint_store=inputs["store"],
        tracking_uri="", experiment="e", job=job, task="train-base", model=model, metrics=metrics,
    )
    controller.join(5)
    assert miou == pytest.approx(0.42) and metrics.metadata["val_miou"] == pytest.approx(0.42)
    assert model.metadata["architecture"] == ARCH and (tmp_path / "model" / "last.pt").is_file()
    assert cluster.jobs[NAME]["metadata"]["ownerReferences"][0]["uid"] == POD.uid
    assert cluster.jobs[NAME]["spec"]["trainer"]["numNodes"] == 2


def test_launch_training_has_train_models_outputs():
    from components.launch_training import launch_training
    from components.train_model import train_model

    launched, trained = launch_training.component_spec, train_model.component_spec
    assert launched.outputs == trained.outputs
    assert set(trained.inputs) <= set(launched.inputs) and set(launched.inputs) - set(trained.inputs) == {"job", "task"}
