"""Manifests: every overlay renders with kubectl kustomize, validates strictly, meets policy."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from trashseg import secrets
from trashseg.trainjob import objects as trainjob

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir())
# The kubectl in build/tools is 1.34; validate against the same API version.
KUBERNETES_VERSION = "1.34.0"
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}
# Pipeline runs execute here (manifests/runs): baseline enforced, restricted warned/audited.
RUNS_NAMESPACE = "trashseg-runs"


def kubectl() -> str:
    path = os.environ.get("KUBECTL") or str(ROOT / "build" / "tools" / "kubectl")
    if not os.access(path, os.X_OK):
        pytest.fail(f"kubectl not found at {path}: run `make tools` (or set KUBECTL=/path/to/kubectl)")
    return path


def render(overlay: str) -> list[dict]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def pod_spec(obj: dict) -> dict:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_expected_overlays_exist():
    assert OVERLAYS == ["dev", "prod", "with-minio", "with-trainer", "with-viewer"]


def test_every_object_validates_strictly(rendered):
    overlay, objects = rendered
    assert len(objects) > 10
    for obj in objects:
        if obj["apiVersion"].startswith(f"{trainjob.API_GROUP}/"):  # no Kubernetes schema: Trainer v2.3's models
            trainjob.validated(obj)
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")


def test_every_pod_meets_restricted_pod_security(rendered):
    overlay, objects = rendered
    workloads = [o for o in objects if o["kind"] in POD_TEMPLATE_KINDS]
    assert {o["metadata"]["name"] for o in workloads} >= {"mlflow", "mlflow-db", "bucket-init"}
    for obj in workloads:
        spec = pod_spec(obj)
        where = f"{overlay}: {obj['kind']}/{obj['metadata']['name']}"
        pod_ctx = spec.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, where
        assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        for container in spec.get("initContainers", []) + spec["containers"]:
            ctx = container.get("securityContext", {})
            assert ctx.get("allowPrivilegeEscalation") is False, f"{where}/{container['name']}"
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{container['name']}"
            assert not ctx.get("capabilities", {}).get("add"), f"{where}/{container['name']}"
            assert not ctx.get("privileged"), f"{where}/{container['name']}"
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 0)) != 0, f"{where}/{container['name']}"
            assert "resources" in container and container["resources"].get("requests"), f"{where}/{container['name']}"
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{where}: unpinned {image}"
        assert obj["metadata"]["namespace"] == secrets.NAMESPACE, f"{where} is outside the restricted namespace"
    namespace = by_kind(objects, "Namespace")[secrets.NAMESPACE]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_pipeline_runs_have_a_baseline_namespace_that_reports_restricted(rendered):
    """KFP's driver/launcher and Argo's init/wait containers set no securityContext: the
    restricted profile would refuse every task pod, baseline admits them (and still refuses
    privileged, host namespaces, hostPath, added capabilities)."""
    overlay, objects = rendered
    labels = by_kind(objects, "Namespace")[RUNS_NAMESPACE]["metadata"]["labels"]
    assert {mode: labels[f"pod-security.kubernetes.io/{mode}"] for mode in ("enforce", "warn", "audit")} == {
        "enforce": "baseline", "warn": "restricted", "audit": "restricted",
    }, overlay
    in_runs = {(o["kind"], o["metadata"]["name"]) for o in objects if o["metadata"].get("namespace") == RUNS_NAMESPACE}
    runner = secrets.PIPELINE_SERVICE_ACCOUNT
    assert {("ServiceAccount", runner), ("Role", runner), ("RoleBinding", runner),
            ("ConfigMap", secrets.STORAGE_CONFIG_MAP), ("ResourceQuota", "gpu-quota")} <= in_runs, overlay
    assert not {kind for kind, _ in in_runs} & POD_TEMPLATE_KINDS, f"{overlay}: a service of ours in {RUNS_NAMESPACE}"
    assert all(o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"), f"{overlay}: unplaced object"


def test_mlflow_proxies_artifacts_to_s3_and_is_probed(rendered):
    _, objects = rendered
    mlflow = by_kind(objects, "Deployment")["mlflow"]
    container = pod_spec(mlflow)["containers"][0]
    script = " ".join(container["args"])
    assert "--artifacts-destination \"s3://$TRASHSEG_BUCKET/mlflow\"" in script
    assert "--serve-artifacts" in script and "postgresql://" in script
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    sources = {ref.get("secretRef", ref.get("configMapRef"))["name"] for ref in container["envFrom"]}
    assert sources == {secrets.S3_CREDENTIALS_SECRET, secrets.POSTGRES_SECRET, secrets.STORAGE_CONFIG_MAP}
    assert "mlflow" in by_kind(objects, "Service") and "mlflow-db" in by_kind(objects, "Service")
    claims = by_kind(objects, "StatefulSet")["mlflow-db"]["spec"]["volumeClaimTemplates"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"]


def test_network_policies_limit_mlflow_and_database(rendered):
    _, objects = rendered
    policies = by_kind(objects, "NetworkPolicy")
    mlflow = policies["mlflow-from-pipelines"]["spec"]
    assert mlflow["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    key, value = secrets.PIPELINE_POD_LABEL
    runs_only = {"kubernetes.io/metadata.name": RUNS_NAMESPACE}
    assert mlflow["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": runs_only}, "podSelector": {"matchLabels": {key: value}}}
    ]
    database = policies["mlflow-db-from-mlflow"]["spec"]
    assert [peer["podSelector"]["matchLabels"] for peer in database["ingress"][0]["from"]] == [
        {"app.kubernetes.io/name": "mlflow"}
    ]
    for policy in policies.values():  # other namespaces: only the runs namespace's task pods
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                assert "ipBlock" not in peer
                if "namespaceSelector" in peer:
                    assert peer == {"namespaceSelector": {"matchLabels": runs_only}, "podSelector": {"matchLabels": {key: value}}}


def test_pipeline_rbac_is_least_privilege(rendered):
    _, objects = rendered
    role = by_kind(objects, "Role")[secrets.PIPELINE_SERVICE_ACCOUNT]
    assert secrets.PIPELINE_SERVICE_ACCOUNT in by_kind(objects, "ServiceAccount")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "secrets" not in rule["resources"], rule
        assert not {"create", "delete"} & set(rule["verbs"]) or rule["resources"] == ["workflowtaskresults"], rule
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")


def test_overlays_differ_only_where_intended():
    dev, prod, minio = (render(o) for o in ("dev", "prod", "with-minio"))
    gpu = {name: by_kind(objs, "ResourceQuota")["gpu-quota"]["spec"]["hard"]["requests.nvidia.com/gpu"]
           for name, objs in (("dev", dev), ("prod", prod))}
    assert gpu == {"dev": "1", "prod": "8"}
    assert by_kind(prod, "Deployment")["mlflow"]["spec"]["replicas"] == 2
    assert by_kind(dev, "Deployment")["mlflow"]["spec"]["replicas"] == 1
    config = {name: by_kind(objs, "ConfigMap")[secrets.STORAGE_CONFIG_MAP]["data"]
              for name, objs in (("dev", dev), ("with-minio", minio))}
    assert config["dev"][secrets.ENV_ENDPOINT].startswith("minio-service.kubeflow.")  # Kubeflow's store
    assert config["with-minio"][secrets.ENV_ENDPOINT] == "minio.trashseg.svc.cluster.local:9000"
    assert set(config["dev"]) == set(secrets.STORAGE_CONFIG_MAP_TO_ENV)
    assert "minio" in by_kind(minio, "StatefulSet") and "minio" not in by_kind(dev, "StatefulSet")
    assert by_kind(minio, "StatefulSet")["minio"]["spec"]["volumeClaimTemplates"]


def test_no_secret_carries_real_data(rendered):
    overlay, objects = rendered
    # Secrets are created out of band (README); a rendered Secret would overwrite them.
    assert not by_kind(objects, "Secret"), f"{overlay} renders a Secret"
    templates = sorted((MANIFESTS / "secrets").glob("*.yaml"))
    names = set()
    for path in templates:
        secret = yaml.safe_load(path.read_text())
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
        assert secret["kind"] == "Secret" and "data" not in secret
        assert all(value == "" for value in secret["stringData"].values()), f"{path} holds a value"
        names.add(secret["metadata"]["name"])
        if secret["metadata"]["name"] == secrets.S3_CREDENTIALS_SECRET:
            assert set(secret["stringData"]) == set(secrets.S3_CREDENTIALS_SECRET_TO_ENV)
        else:
            assert set(secret["stringData"]) == set(secrets.POSTGRES_SECRET_KEYS)
    assert names == {secrets.S3_CREDENTIALS_SECRET, secrets.POSTGRES_SECRET}


def test_trainer_overlay_adds_the_runtime_and_the_launchers_rbac():
    """with-trainer = dev + a namespaced TrainingRuntime for Trainer v2.3 and the launcher's Role."""
    objects = render("with-trainer")
    dev_names = {(o["kind"], o["metadata"]["name"]) for o in render("dev")}
    added = [o for o in objects if (o["kind"], o["metadata"]["name"]) not in dev_names]
    assert {(o["kind"], o["metadata"]["name"]) for o in added} == {
        ("TrainingRuntime", trainjob.RUNTIME_NAME), ("Role", "trashseg-trainjob-launcher"),
        ("RoleBinding", "trashseg-trainjob-launcher"),
    }
    assert all(o["metadata"]["namespace"] == RUNS_NAMESPACE for o in added)
    runtime = trainjob.validated(by_kind(objects, "TrainingRuntime")[trainjob.RUNTIME_NAME])
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    jobset = runtime["spec"]["template"]["spec"]
    assert jobset["failurePolicy"]["maxRestarts"] >= 1
    assert jobset["failurePolicy"]["rules"][0]["action"] == "RestartJobSetAndIgnoreMaxRestarts"  # preemption
    (node,) = jobset["replicatedJobs"]
    assert node["name"] == trainjob.NODE
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert node["template"]["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"] == [{"type": "DisruptionTarget"}]
    pod = node["template"]["spec"]["template"]
    key, value = secrets.PIPELINE_POD_LABEL
    assert pod["metadata"]["labels"][key] == value  # the nodes may reach MLflow
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = spec["containers"]
    assert container["name"] == trainjob.NODE
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert container["image"] == "ghcr.io/trashseg/trashseg-train:main"
    assert {"name": trainjob.SHM_VOLUME, "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert {"name": trainjob.SHM_VOLUME, "emptyDir": {"medium": "Memory"}} in spec["volumes"]


def test_launcher_rbac_is_what_the_launcher_checks_and_nothing_more():
    from trashseg.trainjob.launcher import NEEDED_ACCESS

    objects = render("with-trainer")
    role = by_kind(objects, "Role")["trashseg-trainjob-launcher"]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    needed = {(group, resource + (f"/{sub}" if sub else ""), verb) for verb, resource, group, sub in NEEDED_ACCESS}
    assert needed <= granted
    reads = {"get", "list", "watch"}
    assert {g for g in granted if g[2] not in reads} == {
        (trainjob.API_GROUP, trainjob.TRAINJOBS, verb) for verb in ("create", "patch", "delete")
    }
    assert {r for _, r, _ in granted} == {"trainjobs", "trainingruntimes", "pods", "pods/log", "events"}
    binding = by_kind(objects, "RoleBinding")["trashseg-trainjob-launcher"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": secrets.PIPELINE_SERVICE_ACCOUNT, "namespace": RUNS_NAMESPACE}
    ]
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    assert "trashseg-trainjob-launcher" not in by_kind(render("dev"), "Role")
