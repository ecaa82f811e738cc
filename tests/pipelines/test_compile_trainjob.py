"""ENGINE=trainjob (the cluster default): training tasks are CPU launchers of Kubeflow Trainer
TrainJobs; no KFP pod requests a GPU for training; each launcher carries what it needs."""

import subprocess
import sys

import pytest
from test_compile import (
    CREDENTIAL_PATTERNS,
    IMAGES,
    PLANTED,
    ROOT,
    compile_with_planted_credentials,
    executor_of,
    k8s,
    tasks,
)

from pipelines.cluster import POD_FIELDS, RUN_ID_FIELD_PATH, ClusterSettings
from pipelines.compile import compile_pipelines
from pipelines.full import DEFAULT_ITERATIONS
from pipelines.retrain import DEFAULT_FINETUNE_ITERATIONS
from trashseg import secrets
from trashseg.trainjob.objects import JobSettings, LauncherPod, job_labels, train_job
from trashseg.trainjob.spec import NodeTrainSpec

NODES, GPUS = 2, 8
SETTINGS = ClusterSettings(images=IMAGES, gpus_per_task=GPUS, nodes=NODES)
DEFAULT_ITERATIONS_OF = {"full": DEFAULT_ITERATIONS, "retrain": DEFAULT_FINETUNE_ITERATIONS}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_with_planted_credentials(tmp_path_factory.mktemp("build-trainjob"), SETTINGS)


def launchers(spec):
    return [(name, t) for _, name, t in tasks(spec) if executor_of(spec, t).startswith("exec-launch-training")]


def test_trainjob_is_the_default_engine():
    assert ClusterSettings().engine == "trainjob" and ClusterSettings().nodes == 1


@pytest.mark.parametrize("pipeline", ["full", "retrain"])
def test_no_kfp_pod_requests_a_gpu_for_training(compiled, pipeline):
    _, spec, _ = compiled[pipeline]
    executors = spec["deploymentSpec"]["executors"]
    with_gpu = {name for name, e in executors.items() if "accelerator" in e["container"]["resources"]}
    assert with_gpu and all(name.startswith("exec-predict") for name in with_gpu), with_gpu  # prediction only
    assert not [name for name in executors if name.startswith("exec-train-model")]
    assert launchers(spec)
    for name, task in launchers(spec):
        container = executors[executor_of(spec, task)]["container"]
        assert container["image"] == IMAGES.base, name  # the CPU image
        assert float(container["resources"]["resourceCpuRequest"]) <= 2, name
        assert "retryPolicy" not in task, name  # the job's restarts and the launcher's timeout replace Argo retries


@pytest.mark.parametrize("pipeline", ["full", "retrain"])
def test_each_launcher_carries_what_it_needs(compiled, pipeline):
    _, spec, platform = compiled[pipeline]
    for name, task in launchers(spec):
        config = k8s(platform, executor_of(spec, task))
        fields = {use["name"]: use["fieldPath"] for use in config["fieldPathAsEnv"]}
        assert fields == {"KFP_RUN_ID": RUN_ID_FIELD_PATH, **POD_FIELDS}, name  # run id; its pod, the job's owner
        assert [use["secretName"] for use in config["secretAsEnv"]] == [secrets.S3_CREDENTIALS_SECRET], name
        assert config["configMapAsEnv"][0]["configMapName"] == secrets.STORAGE_CONFIG_MAP, name
        job = JobSettings.from_dict(task["inputs"]["parameters"]["job"]["runtimeValue"]["constant"])
        assert (job.num_nodes, job.gpus_per_node, job.image) == (NODES, GPUS, IMAGES.train), name
        assert job.timeout_s == SETTINGS.retry_window_s(DEFAULT_ITERATIONS_OF[pipeline]), name
        assert job.node_selector == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in job.tolerations
        assert task["inputs"]["parameters"]["task"]["runtimeValue"]["constant"].startswith("train-"), name
        # What the launcher will create from it is a valid Trainer v2.3 TrainJob.
        spec_ = NodeTrainSpec(run_id="r", architecture="a", stage="base", iterations=1, image_size=64,
                              dataset_version="v", checkpoint_store="s3://b/c", dataset_uri="s3://b/d")
        built = train_job("ts-x", spec_, job, job_labels("r", "train-base", "a", "base"), LauncherPod("p", "u", "ns"))
        assert built["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == str(GPUS)


@pytest.mark.parametrize(("pipeline", "before"), [("full", "check-weights"), ("retrain", "prepare-data")])
def test_trainer_is_checked_on_a_cpu_before_any_gpu(compiled, pipeline, before):
    _, spec, platform = compiled[pipeline]
    by_name = {name: task for _, name, task in tasks(spec)}
    check = by_name["check-trainer"]
    assert "check-trainer" in by_name[before]["dependentTasks"]
    executor = executor_of(spec, check)
    assert "accelerator" not in str(spec["deploymentSpec"]["executors"][executor])
    assert check["inputs"]["parameters"]["runtime"]["runtimeValue"]["constant"] == "trashseg"
    assert {"name": "TRASHSEG_POD_NAMESPACE", "fieldPath": "metadata.namespace"} in k8s(platform, executor)["fieldPathAsEnv"]


@pytest.mark.parametrize("pipeline", ["full", "retrain"])
def test_no_credentials_in_trainjob_yaml(compiled, pipeline):
    text, *_ = compiled[pipeline]
    for value in PLANTED.values():
        assert value not in text
    for pattern in CREDENTIAL_PATTERNS:
        assert not pattern.search(text), pattern.pattern


def test_submit_flags_a_run_longer_than_the_trainjob_timeout(compiled, tmp_path):
    from pipelines.submit import retry_window_warning

    package = tmp_path / "full.yaml"
    package.write_text(compiled["full"][0])
    assert retry_window_warning(package, {"iterations": DEFAULT_ITERATIONS}) is None
    assert "the TrainJob timeout" in retry_window_warning(package, {"iterations": 10 * DEFAULT_ITERATIONS})


def test_pod_mode_has_no_launcher_and_refuses_several_nodes(tmp_path):
    paths = compile_pipelines(tmp_path, ClusterSettings(images=IMAGES, engine="pod"))
    text = paths["full"].read_text()
    assert "launch-training" not in text and "check-trainer" not in text and "exec-train-model" in text
    refused = subprocess.run(
        [sys.executable, "-m", "pipelines.compile", "--engine", "pod", "--nodes", "2", "--out", str(tmp_path / "no")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode == 2 and "exactly 1 with ENGINE=pod" in refused.stderr
