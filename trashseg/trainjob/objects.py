"""The Kubernetes objects of a TrainJob launch, as plain dicts checked against Trainer's API.

Every TrainJob is built here and validated through the official pydantic models of
Kubeflow Trainer v2.3 (`kubeflow-trainer-api`): a field the API does not know, or a value
of the wrong type, fails here with its path instead of being dropped by the API server.
Credentials never enter an object: the node's environment refers to the same ConfigMap
and Secrets the pod engine uses (`valueFrom`), named in `trashseg.secrets`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from trashseg import secrets
from trashseg.errors import ConfigError
from trashseg.tracking import KFP_RUN_ID_ENV
from trashseg.trainjob.spec import NODE_MODULE, NodeTrainSpec

API_GROUP = "trainer.kubeflow.org"
API_VERSION = "v1alpha1"
TRAINJOBS = "trainjobs"
RUNTIMES = "trainingruntimes"
SUPPORTED_TRAINER = "v2.3.x"
RUNTIME_NAME = "trashseg"  # the namespaced TrainingRuntime of manifests/components/trainer
NODE = "node"  # the runtime's replicated job and its container (the torch plugin looks for this name)
PATCH_MANAGER = "trashseg.io/launcher"
GPU_RESOURCE = "nvidia.com/gpu"
SHM_VOLUME = "dshm"
# JobSet names child objects `<job>-node-<i>-<j>` and pod hostnames must fit 63 characters.
NAME_MAX = 40
LABEL_RUN, LABEL_TASK, LABEL_ARCH, LABEL_ROUND = (f"trashseg.io/{key}" for key in ("kfp-run-id", "kfp-task", "architecture", "round"))
# JobSet labels every pod with its job set (= the TrainJob's name) and its Job's completion
# index, which the torch plugin turns into PET_NODE_RANK: index 0 is node 0.
POD_JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
POD_REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"  # `node`, not an initializer's job
POD_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# The launcher's own pod, from the downward API: the TrainJob's owner.
POD_NAME_ENV, POD_UID_ENV, POD_NAMESPACE_ENV = "TRASHSEG_POD_NAME", "TRASHSEG_POD_UID", "TRASHSEG_POD_NAMESPACE"
# The node outlives a launcher that died without cleaning up by at most this much.
DEADLINE_GRACE_S = 900


@dataclass(frozen=True)
class JobSettings:
    """Per-node resources and placement of every TrainJob, fixed at compile time."""

    image: str
    num_nodes: int = 1
    gpus_per_node: int = 1
    cpu_per_node: str = "4"
    memory_per_node: str = "48Gi"
    shm_size: str = "16Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, str], ...] = ()
    timeout_s: int = 86_400  # the launcher's deadline for one job, queueing and restarts included
    runtime: str = RUNTIME_NAME

    def __post_init__(self) -> None:
        if not self.image:
            raise ConfigError("JobSettings.image is empty: the train image must be set (make compile sets it)")
        if self.num_nodes < 1 or self.gpus_per_node < 1:
            raise ConfigError(f"num_nodes={self.num_nodes}, gpus_per_node={self.gpus_per_node}: expected both >= 1")
        if self.timeout_s < 60:
            raise ConfigError(f"timeout_s={self.timeout_s}: expected at least 60 seconds for a training job")
        object.__setattr__(self, "tolerations", tuple(dict(t) for t in self.tolerations))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["tolerations"] = list(values["tolerations"])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown TrainJob settings {unknown}; valid keys: {sorted(names)}")
        # A KFP dict parameter travels as a protobuf Struct, whose numbers are doubles.
        whole = {key: int(value) for key, value in values.items() if isinstance(value, float) and value.is_integer()}
        return cls(**{**values, **whole})


@dataclass(frozen=True)
class LauncherPod:
    """The launcher's pod (downward API), which owns the TrainJobs it creates."""

    name: str
    uid: str
    namespace: str

    @classmethod
    def from_env(cls) -> LauncherPod:
        values = {env: os.environ.get(env, "") for env in (POD_NAME_ENV, POD_UID_ENV, POD_NAMESPACE_ENV)}
        missing = [env for env, value in values.items() if not value]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} not set: the launcher needs its pod's name, uid and namespace from the "
                "downward API (the pipelines set them in ENGINE=trainjob mode; recompile with `make compile`)"
            )
        return cls(values[POD_NAME_ENV], values[POD_UID_ENV], values[POD_NAMESPACE_ENV])

    def owner_reference(self) -> dict[str, Any]:
        # Not blockOwnerDeletion: that would need update rights on pods/finalizers.
        return {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid, "controller": False}


def job_name(run_id: str, stage: str, architecture: str) -> str:
    """The one TrainJob name of (run, round, architecture): a restarted launcher finds it again.
    RFC 1035, at most NAME_MAX characters; the digest keeps truncated names apart."""
    digest = hashlib.sha256(f"{run_id}\0{stage}\0{architecture}".encode()).hexdigest()[:10]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{stage}-{architecture}".lower()).strip("-")
    head = f"ts-{slug}"[: NAME_MAX - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def label_value(text: str) -> str:
    """`text` as a valid label value: [A-Za-z0-9._-], at most 63, alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._")


def job_labels(run_id: str, task: str, architecture: str, stage: str) -> dict[str, str]:
    values = {LABEL_RUN: run_id, LABEL_TASK: task, LABEL_ARCH: architecture, LABEL_ROUND: stage}
    return {key: label_value(value) for key, value in values.items()}


def node_env(run_id: str) -> list[dict[str, Any]]:
    """The node's environment: the run id, and references (never values) to the storage
    ConfigMap, the S3 Secret and the optional MLflow Secret."""
    env: list[dict[str, Any]] = [{"name": KFP_RUN_ID_ENV, "value": run_id}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    sources = (
        ("configMapKeyRef", secrets.STORAGE_CONFIG_MAP, secrets.STORAGE_CONFIG_MAP_TO_ENV, False),
        ("secretKeyRef", secrets.S3_CREDENTIALS_SECRET, secrets.S3_CREDENTIALS_SECRET_TO_ENV, False),
        ("secretKeyRef", secrets.MLFLOW_CREDENTIALS_SECRET, secrets.MLFLOW_CREDENTIALS_SECRET_TO_ENV, True),
    )
    for ref, source, key_to_env, optional in sources:
        for key, name in key_to_env.items():
            selector = {"name": source, "key": key, **({"optional": True} if optional else {})}
            env.append({"name": name, "valueFrom": {ref: selector}})
    return env


def node_command(spec: NodeTrainSpec) -> tuple[list[str], list[str]]:
    """torchrun reads PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT,
    which Trainer's torch plugin sets on every node."""
    return ["torchrun"], ["--module", NODE_MODULE, "--spec", spec.to_json()]


def refuse_credentials(spec: NodeTrainSpec) -> None:
    """The spec travels in the TrainJob's arguments, readable by whoever may read the job: a
    URI with a password or token in it (e.g. the tracking URI) is refused, not copied there."""
    leaked = sorted(name for name, value in dataclasses.asdict(spec).items() if secrets.has_credentials(str(value)))
    if leaked:
        raise ConfigError(
            f"{', '.join(leaked)} hold credentials in a URI ({secrets.redact(str([getattr(spec, n) for n in leaked]))}); "
            f"a TrainJob's arguments must not: give MLflow's through the Secret {secrets.MLFLOW_CREDENTIALS_SECRET} "
            f"(MLFLOW_TRACKING_USERNAME/PASSWORD) and the object store's through {secrets.S3_CREDENTIALS_SECRET}"
        )


def node_resources(settings: JobSettings) -> dict[str, Any]:
    gpus = str(settings.gpus_per_node)
    requests = {"cpu": settings.cpu_per_node, "memory": settings.memory_per_node, GPU_RESOURCE: gpus}
    return {"requests": requests, "limits": {"memory": settings.memory_per_node, GPU_RESOURCE: gpus}}


def runtime_patch(settings: JobSettings, labels: dict[str, str]) -> dict[str, Any]:
    """Placement, /dev/shm size and pod labels, merged into the runtime's `node` pod template."""
    key, value = secrets.PIPELINE_POD_LABEL  # MLflow's NetworkPolicy admits pods with this label
    pod_spec: dict[str, Any] = {
        "volumes": [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}}],
        "containers": [{"name": NODE, "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]}],
    }
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    pod = {"metadata": {"labels": {**labels, key: value}}, "spec": pod_spec}
    job = {"name": NODE, "template": {"spec": {"template": pod}}}
    return {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}}}


def train_job(
    name: str, spec: NodeTrainSpec, settings: JobSettings, labels: dict[str, str], owner: LauncherPod
) -> dict[str, Any]:
    """The TrainJob running `spec` on `settings.num_nodes` nodes, validated against the API."""
    refuse_credentials(spec)
    command, args = node_command(spec)
    trainer = {
        "image": settings.image, "command": command, "args": args, "env": node_env(spec.run_id),
        "numNodes": settings.num_nodes, "numProcPerNode": settings.gpus_per_node,
        "resourcesPerNode": node_resources(settings),
    }
    job = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": owner.namespace, "labels": labels,
                     "ownerReferences": [owner.owner_reference()]},
        "spec": {
            "runtimeRef": {"name": settings.runtime, "apiGroup": API_GROUP, "kind": "TrainingRuntime"},
            "trainer": trainer,
            "runtimePatches": [runtime_patch(settings, labels)],
            "activeDeadlineSeconds": settings.timeout_s + DEADLINE_GRACE_S,
        },
    }
    return validated(job)


def validated(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` (a TrainJob or TrainingRuntime) if Trainer v2.3's models accept all of it; else
    a ConfigError naming the bad or unknown fields."""
    import pydantic
    from kubeflow_trainer_api import models

    kinds = {"TrainJob": models.TrainerV1alpha1TrainJob, "TrainingRuntime": models.TrainerV1alpha1TrainingRuntime}
    kind = obj.get("kind")
    if kind not in kinds or obj.get("apiVersion") != f"{API_GROUP}/{API_VERSION}":
        raise ConfigError(f"{obj.get('apiVersion')}/{kind}: expected {API_GROUP}/{API_VERSION} {sorted(kinds)}")
    try:
        parsed = kinds[kind].from_dict(obj)
    except pydantic.ValidationError as error:
        raise ConfigError(f"{kind} {obj['metadata'].get('name')!r} does not match Trainer {SUPPORTED_TRAINER}: {error}") from None
    unknown = unknown_fields(obj, parsed.to_dict())
    if unknown:
        raise ConfigError(
            f"{kind} {obj['metadata'].get('name')!r} has fields Trainer {SUPPORTED_TRAINER} does not know: {unknown}"
        )
    return obj


def unknown_fields(given: Any, known: Any, path: str = "") -> list[str]:
    """Paths present in `given` but dropped by the model's round trip (`known`)."""
    if isinstance(given, dict):
        known = known if isinstance(known, dict) else {}
        missing = [f"{path}.{key}".lstrip(".") for key in given if key not in known and given[key] is not None]
        return missing + [p for key in given if key in known for p in unknown_fields(given[key], known[key], f"{path}.{key}")]
    if isinstance(given, list) and isinstance(known, list):
        return [p for i, (a, b) in enumerate(zip(given, known, strict=False)) for p in unknown_fields(a, b, f"{path}[{i}]")]
    return []
