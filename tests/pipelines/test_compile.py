"""Compile both pipelines and check the compiled spec: cluster settings, images, secrets, cache keys."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.images import Images
from pipelines.cluster import RUN_ID_FIELD_PATH, ClusterSettings
from pipelines.compile import compile_pipelines
from pipelines.full import DEFAULT_ITERATIONS
from pipelines.retrain import DEFAULT_FINETUNE_ITERATIONS
from trashseg import secrets

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Images("registry.example.com/team", "0a1b2c3")
GPUS = 2
# Values planted in the compiling process's environment: none may reach the YAML.
PLANTED = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDACCESSKEY",
    "AWS_SECRET_ACCESS_KEY": "planted/secret+key/value0123456789",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password",
    "MLFLOW_TRACKING_URI": "http://planted-tracking-host:5000",
    "TRASHSEG_S3_ENDPOINT": "planted-endpoint.example:9000",
}
CREDENTIAL_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key ids
    # a credential-named key with a value; the value may only name an env var (secretKey: AWS_...)
    re.compile(r"(?i:password|passwd|secret_?key|access_?key|token)\s*[:=]\s*['\"]?(?![A-Z][A-Z0-9_]*\s*$)[A-Za-z0-9/+=_-]{6,}", re.MULTILINE),
    re.compile(r"(?i)minioadmin"),
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),  # user:password@host in a URL
]


def compile_with_planted_credentials(out, settings: ClusterSettings) -> dict:
    """Each compiled pipeline as (its text, its YAML documents...), compiled while PLANTED credentials
    are in the environment, so a test can show that none of them reached the YAML."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in PLANTED.items():
            patch.setenv(name, value)
        paths = compile_pipelines(out, settings)
    return {name: (path.read_text(), *yaml.safe_load_all(path.read_text())) for name, path in paths.items()}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    # ENGINE=pod: the KFP pod trains (test_compile_trainjob.py covers the default, trainjob)
    settings = ClusterSettings(images=IMAGES, gpus_per_task=GPUS, engine="pod")
    return compile_with_planted_credentials(tmp_path_factory.mktemp("build"), settings)


def tasks(spec):
    """(component name, task name, task) of every task in every DAG of the spec."""
    dags = [("root", spec["root"]["dag"])]
    dags += [(name, comp["dag"]) for name, comp in spec["components"].items() if "dag" in comp]
    for owner, dag in dags:
        for task_name, task in dag["tasks"].items():
            yield owner, task_name, task


def executor_of(spec, task):
    return spec["components"][task["componentRef"]["name"]].get("executorLabel", "")


def k8s(platform, executor):
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(executor, {})


@pytest.mark.parametrize("pipeline", ["full", "retrain"])
def test_training_tasks_get_gpu_toleration_shm_and_retries(compiled, pipeline):
    _, spec, platform = compiled[pipeline]
    training = [(name, t) for _, name, t in tasks(spec) if executor_of(spec, t).startswith("exec-train-model")]
    assert training, "no training task found"
    for name, task in training:
        executor = executor_of(spec, task)
        resources = spec["deploymentSpec"]["executors"][executor]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu", name
        assert resources["accelerator"]["resourceCount"] == str(GPUS), name  # the count set at compile time
        cores = ClusterSettings().train_cpu_per_gpu * GPUS  # the data loaders scale with the GPUs they feed
        assert resources["resourceCpuRequest"] == str(cores), name
        env = spec["deploymentSpec"]["executors"][executor]["container"]["env"]
        assert {"name": "TRASHSEG_PROCESSES", "value": str(GPUS)} in env, name  # one process per GPU
        config = k8s(platform, executor)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in config["tolerations"], name
        assert config["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}, name
        assert {"mountPath": "/dev/shm", "medium": "Memory"}.items() <= config["emptyDirMounts"][0].items(), name
        retry = task["retryPolicy"]
        assert retry["maxRetryCount"] >= 1 and retry["backoffDuration"] and retry["backoffFactor"] > 1, name
        # the object store (checkpoint mirror for resume) comes from the Secret and ConfigMap
        assert secrets.S3_CREDENTIALS_SECRET in [use["secretName"] for use in config["secretAsEnv"]]
        assert config["configMapAsEnv"][0]["configMapName"] == secrets.STORAGE_CONFIG_MAP


@pytest.mark.parametrize("pipeline", ["full", "retrain"])
def test_loops_are_unnamed_so_collected_finds_its_producer(compiled, pipeline):
    # Backends up to 2.15 look a Collected producer up by the loop's taskInfo name, which a
    # ParallelFor(name=...) changes away from its task key (kubeflow/pipelines#13239).
    _, spec, _ = compiled[pipeline]
    loops = {name: t for _, name, t in tasks(spec) if "parameterIterator" in t or "artifactIterator" in t}
    assert loops, "no ParallelFor found"
    for name, task in loops.items():
        assert task["taskInfo"]["name"] == name
    collected_from = {
        binding["taskOutputArtifact"]["producerTask"]
        for _, _, t in tasks(spec)
        for binding in t.get("inputs", {}).get("artifacts", {}).values()
        if "taskOutputArtifact" in binding
    } & set(loops)
    assert collected_from, "no task consumes a loop's Collected outputs"


@pytest.mark.parametrize(("pipeline", "iterations"), [("full", DEFAULT_ITERATIONS), ("retrain", DEFAULT_FINETUNE_ITERATIONS)])
def test_retry_window_holds_the_whole_training(compiled, pipeline, iterations):
    # Argo's retry deadline runs from the first attempt's start: it must hold the budgeted
    # training (days), not one hour.
    _, spec, _ = compiled[pipeline]
    settings = ClusterSettings()
    windows = {
        int(t["retryPolicy"]["backoffMaxDuration"].removesuffix("s"))
        for _, _, t in tasks(spec)
        if executor_of(spec, t).startswith("exec-train-model")
    }
    assert windows == {settings.retry_window_s(iterations)}
    (window,) = windows
    assert window >= iterations * settings.seconds_per_iteration * settings.retry_window_slack
    assert window >= settings.retry_window_floor_s >= 86_400
    if pipeline == "full":
        assert window >= 3 * 86_400  # 80k iterations: days
    # only training retries; prediction is cheap to rerun with the whole run
    assert all("retryPolicy" not in t for _, _, t in tasks(spec) if executor_of(spec, t).startswith("exec-predict"))


def test_retry_window_grows_with_max_iterations_and_has_a_floor():
    settings = ClusterSettings(max_iterations=200_000)
    budget = settings.seconds_per_iteration * settings.retry_window_slack
    assert settings.retry_window_s(DEFAULT_ITERATIONS) == int(200_000 * budget) > ClusterSettings().retry_window_s(DEFAULT_ITERATIONS)
    assert ClusterSettings().retry_window_s(10) == 86_400
    with pytest.raises(ValueError, match="seconds_per_iteration"):
        ClusterSettings(seconds_per_iteration=0)


@pytest.mark.parametrize("pipeline", ["full", "retrain"])
def test_every_task_has_image_requests_and_run_id(compiled, pipeline):
    _, spec, platform = compiled[pipeline]
    executors = spec["deploymentSpec"]["executors"]
    assert executors
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] in IMAGES.all(), f"{name}: {container['image']}"
        assert not container["image"].endswith(":latest")
        assert container["resources"]["resourceCpuRequest"] and container["resources"]["resourceMemoryRequest"], name
        gpu = "accelerator" in container["resources"]
        assert container["image"] == (IMAGES.train if gpu else IMAGES.base), name
        # the KFP run id for MLflow tags comes from the pod label, never a parameter
        assert {"name": "KFP_RUN_ID", "fieldPath": RUN_ID_FIELD_PATH} in k8s(platform, name)["fieldPathAsEnv"], name


@pytest.mark.parametrize("pipeline", ["full", "retrain"])
def test_no_credentials_in_yaml(compiled, pipeline):
    text, _, platform = compiled[pipeline]
    for value in PLANTED.values():
        assert value not in text
    for pattern in CREDENTIAL_PATTERNS:
        assert not pattern.search(text), pattern.pattern
    # secrets are referenced by name only; MLflow's is optional (servers without auth)
    allowed = {secrets.S3_CREDENTIALS_SECRET: False, secrets.MLFLOW_CREDENTIALS_SECRET: True}
    mlflow_users = set()
    for name, config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        for use in config.get("secretAsEnv", []):
            assert set(use) <= {"secretName", "secretNameParameter", "keyToEnv", "optional"}, name
            assert allowed[use["secretName"]] == use["optional"], name
            if use["secretName"] == secrets.MLFLOW_CREDENTIALS_SECRET:
                mlflow_users.add(name.removeprefix("exec-").rstrip("-0123456789"))
    expected = {"record-status", "train-model", "register-model"}
    if pipeline == "full":
        expected |= {"select-round"}
    if pipeline == "retrain":
        expected |= {"check-inbox", "fetch-champion", "record-no-new-data"}
    assert mlflow_users == expected


def test_the_pseudo_round_registers_only_if_it_wins(compiled):
    """select-round decides which round's ensemble and bundle are submitted and registered;
    both registrations of the pseudo-round branch carry its selection artifact."""
    _, spec, _ = compiled["full"]
    registers = [(owner, task) for owner, _, task in tasks(spec) if task["componentRef"]["name"].startswith("comp-register-model")]
    assert len(registers) == 3  # pseudo round kept, base round kept, no pseudo round
    with_selection = [(owner, task) for owner, task in registers if "round_selection" in task["inputs"].get("artifacts", {})]
    assert len(with_selection) == 2
    conditions = set()
    for owner, task in with_selection:
        assert task["inputs"]["artifacts"]["round_selection"]["componentInputArtifact"].endswith("select-round-selection")
        parent = next(t for _, _, t in tasks(spec) if t["componentRef"]["name"] == owner)
        conditions.add(parent["triggerPolicy"]["condition"])
    assert conditions == {
        "inputs.parameter_values['pipelinechannel--select-round-Output'] == 'pseudo'",
        "!(inputs.parameter_values['pipelinechannel--select-round-Output'] == 'pseudo')",
    }
    assert spec["components"]["comp-select-round"]["inputDefinitions"]["artifacts"].keys() == {"base_ensemble", "pseudo_ensemble"}


def test_dataset_version_keys_every_cached_task(compiled):
    _, spec, _ = compiled["full"]
    cached = [(name, t) for _, name, t in tasks(spec) if t.get("cachingOptions", {}).get("enableCache")]
    executors = {executor_of(spec, t) for _, t in cached}
    assert executors == {"exec-prepare-data", "exec-train-model", "exec-train-model-2"}
    for name, task in cached:
        source = task["inputs"]["parameters"]["dataset_version"]["componentInputParameter"]
        assert source in ("dataset_version", "pipelinechannel--dataset_version"), name
    # the pipeline's own parameter is what feeds them, and it is required (no default)
    assert "defaultValue" not in spec["root"]["inputDefinitions"]["parameters"]["dataset_version"]


def test_retrain_caches_on_the_merged_version(compiled):
    _, spec, _ = compiled["retrain"]
    cached = [(name, t) for _, name, t in tasks(spec) if t.get("cachingOptions", {}).get("enableCache")]
    assert {executor_of(spec, t) for _, t in cached} == {"exec-prepare-data", "exec-train-model"}
    for name, task in cached:
        binding = task["inputs"]["parameters"]["dataset_version"]
        # the new version's hash, from the merge task (directly or through the loop's channel)
        producer = binding.get("taskOutputParameter", {}).get("producerTask") or binding.get("componentInputParameter")
        assert "merge-inbox" in producer, name


def test_compile_cli_takes_images_from_arguments(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.compile", "--registry", "reg.example.com/x", "--version", "abc1234",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    text = (tmp_path / "full.yaml").read_text()
    assert "reg.example.com/x/trashseg-train:abc1234" in text and (tmp_path / "retrain.yaml").is_file()
    refused = subprocess.run(
        [sys.executable, "-m", "pipelines.compile", "--version", "latest", "--out", str(tmp_path / "no")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode == 2 and "never 'latest'" in refused.stderr
    assert not (tmp_path / "no").exists()


def test_images_reject_bad_tags():
    for tag in ("latest", "", "a b", "-x"):
        with pytest.raises(ValueError, match="tag"):
            Images("ghcr.io/trashseg", tag)
    with pytest.raises(ValueError, match="registry"):
        Images("Ghcr.io/Trash/", "abc")


def test_full_pipeline_checks_mirrored_weights_on_a_cpu_before_any_gpu_task(compiled):
    _, spec, *_ = compiled["full"]
    by_name = {task_name: task for _, task_name, task in tasks(spec)}
    check = by_name["check-weights"]
    assert check["inputs"]["parameters"]["weights_store"]["componentInputParameter"].endswith("data_store")
    # prepare waits for the check, and every training task consumes prepare's dataset.
    assert "check-weights" in by_name["prepare-data"]["dependentTasks"]
    executors = spec["deploymentSpec"]["executors"]
    assert "accelerator" not in str(executors[executor_of(spec, check)])
    trains = [task for _, name, task in tasks(spec) if name.startswith("train-model")]
    assert trains and all("accelerator" in str(executors[executor_of(spec, task)]) for task in trains)
    for task in trains:
        assert task["inputs"]["parameters"]["weights_store"]["componentInputParameter"].endswith("data_store")
