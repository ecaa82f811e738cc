"""The Kubernetes API calls of a TrainJob launch, through the official `kubernetes` client.

One small class, `TrainerApi`, bound to one namespace (the launcher's): TrainJob create /
get / watch / patch / delete, the TrainingRuntime and the API group's presence, node 0's
pod and its log, the job's events, and access reviews. Every call that the API refuses
for lack of permission raises `AccessDenied` naming the verb, the resource and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from trashseg.errors import ConfigError
from trashseg.trainjob.objects import (
    API_GROUP,
    API_VERSION,
    NODE,
    POD_INDEX_LABEL,
    POD_JOBSET_LABEL,
    POD_REPLICATED_JOB_LABEL,
    RUNTIMES,
    TRAINJOBS,
)

log = logging.getLogger(__name__)

RBAC_FIX = ("apply the with-trainer overlay (`make deploy OVERLAY=with-trainer`), which grants the pipeline runner "
            "this in the runs namespace, or compile with ENGINE=pod")


class AccessDenied(ConfigError):
    """The pipeline runner's service account may not do what the launcher needs."""


class ApiUnavailable(RuntimeError):
    """The API server did not answer usefully for now (connection lost, 5xx, 429, 410 Gone):
    worth another try, unlike a refusal."""


def transient_errors() -> tuple[type[BaseException], ...]:
    """What a watcher retries: ApiUnavailable and the HTTP layer's own failures."""
    import urllib3

    return ApiUnavailable, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError


@dataclass(frozen=True)
class PodRef:
    name: str
    uid: str
    phase: str
    ended: str = ""  # how the node container last ended, e.g. "OOMKilled, exit code 137"


class TrainerApi:
    """Kubernetes calls for TrainJobs in `namespace`."""

    def __init__(self, api_client, namespace: str) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.auth = client.AuthorizationV1Api(api_client)

    @classmethod
    def connect(cls, namespace: str) -> TrainerApi:
        """In a pod: its service account; elsewhere: the kubeconfig's current context
        ($KUBECONFIG as it is now; the client reads it only once, at import)."""
        import os

        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        return cls(client.ApiClient(), namespace)

    # ------------------------------------------------------------------ discovery and access

    def trainjobs_served(self) -> bool:
        """Whether the API server serves trainjobs in trainer.kubeflow.org/v1alpha1 (the CRD is installed)."""
        try:
            resources = self.custom.get_api_resources(API_GROUP, API_VERSION)
        except _api_exception() as error:
            if error.status == 404:
                return False
            raise _translate(error, "get", f"/apis/{API_GROUP}/{API_VERSION}") from None
        return any(resource.name == TRAINJOBS for resource in resources.resources or [])

    def runtime(self, name: str) -> dict[str, Any] | None:
        return self._get(RUNTIMES, name)

    def allowed(self, verb: str, resource: str, group: str = "", subresource: str = "") -> bool:
        """A SelfSubjectAccessReview: may this service account do `verb` on `resource` here?"""
        from kubernetes import client

        attributes = client.V1ResourceAttributes(
            namespace=self.namespace, verb=verb, group=group, resource=resource, subresource=subresource or None
        )
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes))
        try:
            return bool(self.auth.create_self_subject_access_review(review).status.allowed)
        except _api_exception() as error:
            raise _translate(error, "create", "selfsubjectaccessreviews.authorization.k8s.io") from None

    # ------------------------------------------------------------------ TrainJobs

    def create_job(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """(the job, True) when created now; (the existing job, False) when the name is taken (409)."""
        try:
            return self.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, TRAINJOBS, obj), True
        except _api_exception() as error:
            if error.status != 409:
                raise _translate(error, "create", TRAINJOBS) from None
        existing = self.get_job(obj["metadata"]["name"])
        if existing is None:  # deleted between the two calls: try once more
            return self.create_job(obj)
        return existing, False

    def get_job(self, name: str) -> dict[str, Any] | None:
        return self._get(TRAINJOBS, name)

    def patch_job(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.custom.patch_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, TRAINJOBS, name, patch)
        except _api_exception() as error:
            raise _translate(error, "patch", TRAINJOBS) from None

    def delete_job(self, name: str) -> bool:
        """Delete the job and (in the background) its JobSet and pods; False if it was already gone."""
        try:
            self.custom.delete_namespaced_custom_object(
                API_GROUP, API_VERSION, self.namespace, TRAINJOBS, name, propagation_policy="Background"
            )
            return True
        except _api_exception() as error:
            if error.status == 404:
                return False
            raise _translate(error, "delete", TRAINJOBS) from None

    def watch_job(self, name: str, timeout_s: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, job) as the job changes, for up to `timeout_s` (the server ends the watch)."""
        from kubernetes import watch

        stream = watch.Watch().stream(
            self.custom.list_namespaced_custom_object, API_GROUP, API_VERSION, self.namespace, TRAINJOBS,
            field_selector=f"metadata.name={name}", timeout_seconds=max(1, int(timeout_s)),
        )
        try:
            for event in stream:
                yield event["type"], event["object"]
        except _api_exception() as error:
            raise _translate(error, "watch", TRAINJOBS) from None

    # ------------------------------------------------------------------ pods, logs, events

    def node0_pod(self, job: str) -> PodRef | None:
        """The newest pod of node 0 (rank 0 writes the progress lines), or None before it exists."""
        selector = f"{POD_JOBSET_LABEL}={job},{POD_REPLICATED_JOB_LABEL}={NODE},{POD_INDEX_LABEL}=0"
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        except _api_exception() as error:
            raise _translate(error, "list", "pods") from None
        if not pods:
            return None
        newest = max(pods, key=lambda pod: (pod.metadata.creation_timestamp is not None, pod.metadata.creation_timestamp))
        status = newest.status
        return PodRef(newest.metadata.name, newest.metadata.uid, (status and status.phase) or "Pending", _ended(status))

    def follow_log(self, pod: str) -> Iterator[str]:
        """The node container's log lines as they are written, until the container ends."""
        try:
            response = self.core.read_namespaced_pod_log(
                pod, self.namespace, container=NODE, follow=True, _preload_content=False
            )
        except _api_exception() as error:
            raise _translate(error, "get", "pods/log") from None
        pending = b""
        try:
            for chunk in response.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from (line.decode("utf-8", "replace") for line in lines)
            if pending:
                yield pending.decode("utf-8", "replace")
        finally:
            response.release_conn()

    def events(self, name: str, limit: int = 10) -> list[str]:
        """The latest events of the job and of its JobSet (same name), oldest first."""
        try:
            items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        except _api_exception() as error:
            raise _translate(error, "list", "events") from None
        items.sort(key=lambda e: str(e.last_timestamp or e.event_time or e.metadata.creation_timestamp or ""))
        return [f"{e.type} {e.involved_object.kind} {e.reason}: {e.message}" for e in items[-limit:]]

    def _get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, self.namespace, plural, name)
        except _api_exception() as error:
            if error.status == 404:
                return None
            raise _translate(error, "get", plural) from None


def _ended(status) -> str:
    """The node container's termination (current, else last) as `reason, exit code N`."""
    for container in (status and status.container_statuses) or []:
        if container.name != NODE:
            continue
        for state in (container.state, container.last_state):
            if state is not None and state.terminated is not None:
                return f"{state.terminated.reason or 'terminated'}, exit code {state.terminated.exit_code}"
    return ""


def _api_exception():
    from kubernetes.client.exceptions import ApiException

    return ApiException


def _translate(error, verb: str, resource: str) -> Exception:
    """A refused call as an error that names what was refused; others keep the API's reason."""
    if error.status in (401, 403):
        return AccessDenied(
            f"the Kubernetes API refused `{verb} {resource}` ({error.status} {error.reason}); the pipeline "
            f"runner's service account needs it: {RBAC_FIX}"
        )
    detail = (error.body or "").strip()[:500] if isinstance(error.body, str) else ""
    text = f"Kubernetes API `{verb} {resource}` failed: {error.status} {error.reason} {detail}".strip()
    if error.status in (0, 410, 429) or (error.status or 0) >= 500:
        return ApiUnavailable(text)
    return RuntimeError(text)
