"""Compile-time cluster settings and the helpers that apply them to pipeline tasks.

Everything a task needs from the cluster is set through these helpers, so every task of
both pipelines gets the same treatment: its image from `components.images`, CPU/memory
requests, the KFP run id as `KFP_RUN_ID` (from the pod's `pipeline/runid` label, so it
never enters a cache key), and, only where the task needs them, the S3 settings and
credentials (ConfigMap and Secret) and the optional MLflow credentials (Secret), all named
in `trashseg.secrets`.
GPU tasks also get the accelerator request, `TRASHSEG_PROCESSES` (their steps run one process
per GPU), GPU tolerations and node selector, and
/dev/shm as a memory-backed emptyDir (PyTorch DataLoader workers share tensors there;
the container default of 64 MiB is far too small).

The training engine is chosen at compile time (`engine`): `trainjob` (the cluster default)
makes each training task a small CPU launcher that runs the training as a Kubeflow Trainer
TrainJob on `nodes` nodes of `gpus_per_task` GPUs each (`job_settings` carries the per-node
resources and placement into the launcher); `pod` trains inside the KFP task's own GPU pod,
on one node, with Argo retries.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import kubernetes
from kfp.dsl import PipelineTask

from components.images import DEFAULT_IMAGES, Images
from trashseg import secrets
from trashseg.launch import PROCESSES_ENV
from trashseg.tracking import KFP_RUN_ID_ENV
from trashseg.trainjob import objects as trainjob

GPU_RESOURCE = trainjob.GPU_RESOURCE
RUN_ID_FIELD_PATH = "metadata.labels['pipeline/runid']"
ENGINES = ("trainjob", "pod")
# The launcher's own pod, from the downward API: the owner of the TrainJobs it creates.
POD_FIELDS = {
    trainjob.POD_NAME_ENV: "metadata.name", trainjob.POD_UID_ENV: "metadata.uid",
    trainjob.POD_NAMESPACE_ENV: "metadata.namespace",
}


@dataclass(frozen=True)
class ClusterSettings:
    images: Images = DEFAULT_IMAGES
    gpus_per_task: int = 1
    gpu_node_selector: tuple[str, str] = ("nvidia.com/gpu.present", "true")
    shm_size: str = "16Gi"
    # Cores per GPU of a training/prediction task: 2 data-loader workers at ~170 images/s per
    # core (benchmarks/data_bench.py, 640-px JPEGs at 512), 1 training process, 1 spare. No GPU
    # training rate is measured yet to check 2 workers against (`make gpu-check`; README).
    train_cpu_per_gpu: int = 4
    train_memory: str = "48Gi"
    cpu_task_cpu: str = "2"
    cpu_task_memory: str = "8Gi"
    ensemble_cpu: str = "8"  # DenseCRF runs a process per core
    ensemble_memory: str = "32Gi"
    training_retries: int = 3
    retry_backoff: str = "120s"
    retry_backoff_factor: float = 2.0
    # The retry window (set_retry's backoff_max_duration) becomes Argo's retry deadline,
    # counted from the FIRST attempt's start: no retry after it, and a retried attempt is
    # killed when it passes. So it must hold the whole training plus its retries (days), not
    # one attempt. It is sized from the iterations at a budgeted time per iteration (a
    # deliberately slow figure, not a measurement: raise it for slower cards), times a slack
    # for queueing for a GPU again, re-done checkpoint intervals and backoffs.
    seconds_per_iteration: float = 2.0
    retry_window_slack: float = 2.0
    retry_window_floor_s: int = 86_400
    # Size the window for this many iterations when it exceeds the pipeline's default
    # (iterations is a run-time parameter; the window is fixed at compile time).
    max_iterations: int = 0
    # ParallelFor width over architectures; 0 = all at once (one GPU each).
    parallelism: int = 0
    # trainjob: each training task launches a Kubeflow Trainer TrainJob (the launcher is a CPU
    # task; the job's deadline, sized like the retry window, replaces Argo's retries); pod:
    # the task's own GPU pod trains, on one node.
    engine: str = "trainjob"
    nodes: int = 1  # nodes per TrainJob (trainjob engine), each with gpus_per_task GPUs
    trainer_runtime: str = trainjob.RUNTIME_NAME
    launcher_cpu: str = "1"
    launcher_memory: str = "4Gi"  # stages the prepared dataset, pulls the checkpoints back

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.nodes < 1 or (self.engine == "pod" and self.nodes != 1):
            raise ValueError(
                f"nodes={self.nodes} with engine={self.engine}: expected >= 1, and exactly 1 with ENGINE=pod "
                "(a KFP pod is one node; use ENGINE=trainjob for several)"
            )
        if self.gpus_per_task < 1:
            raise ValueError(f"gpus_per_task={self.gpus_per_task}: training needs at least 1 GPU per task")
        if self.train_cpu_per_gpu < 1:
            raise ValueError(f"train_cpu_per_gpu={self.train_cpu_per_gpu}: a GPU task needs at least 1 core per GPU")
        if self.training_retries < 0 or self.parallelism < 0 or self.max_iterations < 0:
            raise ValueError("training_retries, parallelism and max_iterations must be >= 0")
        if self.seconds_per_iteration <= 0 or self.retry_window_slack < 1:
            raise ValueError("seconds_per_iteration must be > 0 and retry_window_slack >= 1")

    def retry_window_s(self, iterations: int) -> int:
        """Seconds from the first training attempt's start during which retries may run."""
        budgeted = max(iterations, self.max_iterations) * self.seconds_per_iteration * self.retry_window_slack
        return max(self.retry_window_floor_s, int(budgeted))


    def job_settings(self, iterations: int) -> trainjob.JobSettings:
        """What every TrainJob gets per node; its timeout is sized like the pod engine's retry window."""
        return trainjob.JobSettings(
            image=self.images.train, num_nodes=self.nodes, gpus_per_node=self.gpus_per_task,
            cpu_per_node=str(self.train_cpu_per_gpu * self.gpus_per_task), memory_per_node=self.train_memory,
            shm_size=self.shm_size, node_selector=dict([self.gpu_node_selector]),
            tolerations=({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},),
            timeout_s=self.retry_window_s(iterations), runtime=self.trainer_runtime,
        )


def run_id_env(task: PipelineTask) -> PipelineTask:
    kubernetes.use_field_path_as_env(task, env_name=KFP_RUN_ID_ENV, field_path=RUN_ID_FIELD_PATH)
    return task


def object_store_access(task: PipelineTask) -> PipelineTask:
    """Endpoint/bucket from the ConfigMap and credentials from the Secret, as env vars."""
    kubernetes.use_config_map_as_env(task, secrets.STORAGE_CONFIG_MAP, secrets.STORAGE_CONFIG_MAP_TO_ENV)
    kubernetes.use_secret_as_env(task, secrets.S3_CREDENTIALS_SECRET, secrets.S3_CREDENTIALS_SECRET_TO_ENV)
    return task


def mlflow_access(task: PipelineTask) -> PipelineTask:
    """MLflow client credentials from their Secret, when the cluster has one (optional)."""
    kubernetes.use_secret_as_env(
        task, secrets.MLFLOW_CREDENTIALS_SECRET, secrets.MLFLOW_CREDENTIALS_SECRET_TO_ENV, optional=True
    )
    return task


def cpu_task(
    task: PipelineTask,
    settings: ClusterSettings,
    *,
    cpu: str | None = None,
    memory: str | None = None,
    object_store: bool = False,
    mlflow: bool = False,
    cache: bool = False,
) -> PipelineTask:
    task.set_container_image(settings.images.base)
    task.set_cpu_request(cpu or settings.cpu_task_cpu).set_memory_request(memory or settings.cpu_task_memory)
    task.set_caching_options(cache)
    run_id_env(task)
    if object_store:
        object_store_access(task)
    if mlflow:
        mlflow_access(task)
    return task


def gpu_task(
    task: PipelineTask,
    settings: ClusterSettings,
    *,
    retry_iterations: int | None,
    cache: bool,
    object_store: bool,
    mlflow: bool,
) -> PipelineTask:
    """`retry_iterations`: retry on failure, in a window sized for a training of that many
    iterations; None: no retries."""
    task.set_container_image(settings.images.train)
    task.set_cpu_request(str(settings.train_cpu_per_gpu * settings.gpus_per_task))
    task.set_memory_request(settings.train_memory)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(settings.gpus_per_task)
    # The step starts one process per requested GPU (trashseg.launch); said explicitly, not guessed.
    task.set_env_variable(PROCESSES_ENV, str(settings.gpus_per_task))
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    kubernetes.add_node_selector(task, *settings.gpu_node_selector)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=settings.shm_size)
    task.set_caching_options(cache)
    if retry_iterations is not None:
        task.set_retry(
            num_retries=settings.training_retries,
            backoff_duration=settings.retry_backoff,
            backoff_factor=settings.retry_backoff_factor,
            backoff_max_duration=f"{settings.retry_window_s(retry_iterations)}s",
        )
    run_id_env(task)
    if object_store:
        object_store_access(task)
    if mlflow:
        mlflow_access(task)
    return task


def launcher_task(task: PipelineTask, settings: ClusterSettings, *, cache: bool = False,
                  object_store: bool = False) -> PipelineTask:
    """A CPU task that talks to the Kubernetes API about TrainJobs: it also gets its own pod's
    name, uid and namespace (downward API). Argo does not retry it: a relaunch would re-attach
    to the job anyway, and the job's restarts (JobSet maxRestarts) are the fault tolerance."""
    cpu_task(task, settings, cpu=settings.launcher_cpu, memory=settings.launcher_memory, cache=cache,
             object_store=object_store)
    for env, field_path in POD_FIELDS.items():
        kubernetes.use_field_path_as_env(task, env_name=env, field_path=field_path)
    return task


DEFAULT_SETTINGS = ClusterSettings()
