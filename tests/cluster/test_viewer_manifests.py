"""The viewer's cluster deployment (overlays/with-viewer): restricted pod, object-store
credentials from trashseg's Secret, MLflow in the cluster, reachable only from the namespace."""

from __future__ import annotations

from test_cluster_manifests import by_kind, pod_spec, render

from trashseg import secrets

VIEWER = "trashseg-viewer"


def test_viewer_is_only_in_its_overlay():
    assert VIEWER not in by_kind(render("dev"), "Deployment")
    assert VIEWER in by_kind(render("with-viewer"), "Deployment")


def test_viewer_reads_the_store_with_trashseg_credentials_and_meets_restricted():
    objects = render("with-viewer")
    deployment = by_kind(objects, "Deployment")[VIEWER]
    spec = pod_spec(deployment)
    container = spec["containers"][0]
    sources = {ref.get("secretRef", ref.get("configMapRef"))["name"] for ref in container["envFrom"]}
    assert sources == {secrets.S3_CREDENTIALS_SECRET, secrets.STORAGE_CONFIG_MAP, VIEWER}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == secrets.MLFLOW_TRACKING_URI
    assert "exec trashseg view" in container["args"][0] and "--address 0.0.0.0 --port 8501" in container["args"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/_stcore/health"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
    assert context["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", "/cache"}
    assert spec["automountServiceAccountToken"] is False
    service = by_kind(objects, "Service")[VIEWER]["spec"]
    assert service["selector"] == {"app.kubernetes.io/name": VIEWER} and service["ports"][0]["port"] == 8501
    config = by_kind(objects, "ConfigMap")[VIEWER]["data"]
    assert set(config) == {f"TRASHSEG_VIEWER_{k}" for k in ("DATA", "PREDICTIONS", "ENSEMBLE", "SUBMISSION")}


def test_only_the_namespace_reaches_the_viewer():
    policy = by_kind(render("with-viewer"), "NetworkPolicy")["trashseg-viewer-from-namespace"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": VIEWER}
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["from"] == [{"podSelector": {}}]  # every pod of this namespace, nothing outside it
    assert rule["ports"] == [{"port": 8501, "protocol": "TCP"}]
