"""A Kubernetes API server on 127.0.0.1 for the paths a TrainJob launcher uses.

Real HTTP, spoken to by the real `kubernetes` client: API discovery of trainer.kubeflow.org,
SelfSubjectAccessReview, TrainingRuntime get, TrainJob create / get / merge-patch / delete /
list + watch (JSON lines, chunked), pods list by label, pod log follow (chunked), events.
The test plays the Trainer controller through `add_node0`, `log`, `set_condition`, or lets
`LocalTrainer` run each created TrainJob for real: one local torchrun per node.
Bodies POSTed as TrainJobs are checked through the Trainer v2.3 models, as admission would.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from process_tree import kill_process_tree

from trashseg.errors import ConfigError
from trashseg.trainjob.objects import (
    NODE,
    POD_INDEX_LABEL,
    POD_JOBSET_LABEL,
    POD_REPLICATED_JOB_LABEL,
    validated,
)

GROUP = "/apis/trainer.kubeflow.org/v1alpha1"
JOBS = re.compile(rf"^{GROUP}/namespaces/(?P<ns>[^/]+)/trainjobs(?:/(?P<name>[^/]+))?$")
RUNTIME = re.compile(rf"^{GROUP}/namespaces/(?P<ns>[^/]+)/trainingruntimes/(?P<name>[^/]+)$")
PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$")
EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$")
SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def _now(offset_s: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + offset_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeCluster:
    def __init__(self, namespace: str = "trashseg-runs") -> None:
        self.namespace = namespace
        self.crd = True
        self.runtimes = {"trashseg"}
        self.denied: set[tuple[str, str]] = set()  # (verb, resource[/sub]) the service account may not do
        self.jobs: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.logs: dict[str, list[str]] = {}
        self.log_done: set[str] = set()
        self.events: list[dict] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.created_offset_s = 0.0  # creationTimestamp of new jobs, relative to now
        self.version = 0
        self.changed = threading.Condition()
        self.trainer: LocalTrainer | None = None  # runs created jobs for real when set

    # ---------------------------------------------------------------- the test's controller

    def wait_for(self, predicate, timeout_s: float = 20.0):
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not (result := predicate()):
                if time.monotonic() > deadline:
                    raise AssertionError("the launcher did not get there in time")
                self.changed.wait(timeout=0.1)  # requests are recorded without a notify: poll
            return result

    def requested(self, method: str, path_part: str) -> list[tuple[str, str, int]]:
        return [r for r in self.requests if r[0] == method and path_part in r[1]]

    def put_job(self, obj: dict) -> None:
        with self.changed:
            self.version += 1
            obj["metadata"].update(uid=str(uuid.uuid4()), resourceVersion=str(self.version),
                                   creationTimestamp=_now(self.created_offset_s))
            self.jobs[obj["metadata"]["name"]] = obj
            self.changed.notify_all()

    def set_condition(self, name: str, kind: str, reason: str = "", message: str = "") -> None:
        with self.changed:
            if name not in self.jobs:  # deleted by the launcher meanwhile
                return
            self.version += 1
            job = self.jobs[name]
            job["metadata"]["resourceVersion"] = str(self.version)
            condition = {"type": kind, "status": "True", "reason": reason, "message": message,
                         "lastTransitionTime": _now()}
            job.setdefault("status", {}).setdefault("conditions", []).append(condition)
            self.changed.notify_all()

    def add_node0(self, job: str, phase: str = "Running") -> str:
        name = f"{job}-node-0-0-{uuid.uuid4().hex[:5]}"
        with self.changed:
            self.pods[name] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": self.namespace, "uid": str(uuid.uuid4()), "creationTimestamp": _now(),
                             "labels": {POD_JOBSET_LABEL: job, POD_REPLICATED_JOB_LABEL: NODE, POD_INDEX_LABEL: "0"}},
                "status": {"phase": phase},
            }
            self.logs[name] = []
            self.changed.notify_all()
        return name

    def end_node(self, pod: str, reason: str, exit_code: int, phase: str = "Failed") -> None:
        with self.changed:
            self.pods[pod]["status"] = {"phase": phase, "containerStatuses": [{
                "name": NODE, "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"terminated": {"reason": reason, "exitCode": exit_code}}}]}
            self.changed.notify_all()

    def log(self, pod: str, *lines: str, done: bool = False) -> None:
        with self.changed:
            self.logs[pod].extend(lines)
            if done:
                self.log_done.add(pod)
            self.changed.notify_all()

    def add_event(self, name: str, reason: str, message: str, kind: str = "TrainJob") -> None:
        self.events.append({"metadata": {"name": f"{name}.{uuid.uuid4().hex[:6]}", "creationTimestamp": _now()},
                            "involvedObject": {"kind": kind, "name": name}, "reason": reason, "message": message,
                            "type": "Warning", "lastTimestamp": _now()})

    def serve(self) -> tuple[ThreadingHTTPServer, str]:
        cluster = self

        class Handler(_Handler):
            pass

        Handler.cluster = cluster
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}"


class LocalTrainer:
    """Trainer's controller and the kubelet, for real on 127.0.0.1: each created TrainJob runs
    `trainer.command` + `trainer.args` once per node (`torchrun` is `python -m torch.distributed.run`)
    with the job's env (references resolved from `config_maps` / `secrets`, as the kubelet does),
    the PET_* variables Trainer's torch plugin sets, and a TMPDIR of its own (a node's disk).
    Node 0's output is its pod's log; the job ends Complete, or Failed with how a node exited."""

    def __init__(self, cluster: FakeCluster, work: Path, *, config_maps: dict[str, dict[str, str]],
                 secrets: dict[str, dict[str, str]], base_env: dict[str, str]) -> None:
        self.cluster, self.work, self.base_env = cluster, Path(work), base_env
        self.sources = {"configMapKeyRef": config_maps, "secretKeyRef": secrets}
        self.processes: dict[str, list[subprocess.Popen]] = {}
        cluster.trainer = self

    def start(self, job: dict) -> None:
        threading.Thread(target=self._run, args=(job,), daemon=True).start()

    def stop(self, name: str) -> None:
        """The job deleted: its pods go (SIGKILL, as after the grace period)."""
        for process in self.processes.get(name, []):
            if process.poll() is None:
                kill_process_tree(process.pid)  # the workers too: torchrun gives each its own session

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name)

    def node_log(self, name: str, rank: int) -> str:
        return (self.work / name / f"node-{rank}.log").read_text(errors="replace")

    def env(self, entries: list[dict]) -> dict[str, str]:
        """The container's env; KeyError naming an unresolvable, non-optional reference."""
        env = {}
        for entry in entries:
            if "value" in entry:
                env[entry["name"]] = entry["value"]
                continue
            (kind, ref), = entry["valueFrom"].items()
            value = self.sources[kind].get(ref["name"], {}).get(ref["key"])
            if value is not None:
                env[entry["name"]] = value
            elif not ref.get("optional"):
                raise KeyError(f"{kind} {ref['name']}/{ref['key']} not found (env {entry['name']})")
        return env

    def _run(self, job: dict) -> None:
        name, trainer = job["metadata"]["name"], job["spec"]["trainer"]
        try:
            env = self.env(trainer.get("env") or [])
        except KeyError as error:
            return self.cluster.set_condition(name, "Failed", "CreateContainerConfigError", error.args[0])
        assert trainer["command"] == ["torchrun"], trainer["command"]
        nodes, port = trainer["numNodes"], _free_port()
        pod = self.cluster.add_node0(name)
        processes = self.processes.setdefault(name, [])
        for rank in range(nodes):
            disk = self.work / name / f"node-{rank}"
            disk.mkdir(parents=True, exist_ok=True)
            node_env = {**self.base_env, **env, "TMPDIR": str(disk), "PET_NNODES": str(nodes),
                        "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]), "PET_NODE_RANK": str(rank),
                        "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
            with open(self.work / name / f"node-{rank}.log", "wb") as log:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "torch.distributed.run", *trainer.get("args", [])], env=node_env,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        self._follow(pod, self.work / name / "node-0.log", processes[0])
        codes = [process.wait() for process in processes]
        failed = [(rank, code) for rank, code in enumerate(codes) if code != 0]
        self.cluster.end_node(pod, "Error" if codes[0] else "Completed", codes[0], "Failed" if codes[0] else "Succeeded")
        if failed:
            rank, code = failed[0]
            self.cluster.set_condition(name, "Failed", "JobSetFailed", f"node {rank} exited with code {code}")
        else:
            self.cluster.set_condition(name, "Complete", "JobSetCompleted", "jobset completed")

    def _follow(self, pod: str, path: Path, process: subprocess.Popen) -> None:
        """Node 0's log file, line by line into its pod's log, until the process has ended."""
        with open(path, "rb") as log:
            pending = b""
            while True:
                ended = process.poll() is not None
                pending += log.read()
                *lines, pending = pending.split(b"\n")
                if lines:
                    self.cluster.log(pod, *(line.decode("utf-8", "replace") for line in lines))
                if ended:
                    break
                time.sleep(0.2)
        self.cluster.log(pod, *([pending.decode("utf-8", "replace")] if pending else []), done=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cluster: FakeCluster

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    # ---------------------------------------------------------------- routing

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        self.query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        self.body = json.loads(self.rfile.read(length)) if length else None
        c = self.cluster
        if url.path == GROUP and method == "GET":
            return self._discovery()
        if url.path == SSAR and method == "POST":
            return self._review()
        for pattern, handler in ((JOBS, self._jobs), (RUNTIME, self._runtime), (PODS, self._pods), (LOG, self._log),
                                 (EVENTS, self._events)):
            if match := pattern.match(url.path):
                return handler(method, url.path, **match.groupdict())
        self._status(404, "NotFound", f"no route {method} {url.path}", c)

    def _flag(self, name: str) -> bool:
        """A boolean query parameter as the API server parses it (Go's ParseBool): the Python
        client sends `follow=True`, `watch=True`."""
        return self.query.get(name, "false") in ("1", "t", "T", "true", "True", "TRUE")

    def _denied(self, verb: str, resource: str, path: str) -> bool:
        if (verb, resource) in self.cluster.denied:
            self._status(403, "Forbidden", f'cannot {verb} resource "{resource}"', self.cluster, path=path, method=verb)
            return True
        return False

    def _discovery(self) -> None:
        if not self.cluster.crd:
            return self._status(404, "NotFound", "the server could not find the requested resource", self.cluster)
        resources = [{"name": name, "singularName": name[:-1], "namespaced": True, "kind": kind,
                      "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                     for name, kind in (("trainjobs", "TrainJob"), ("trainingruntimes", "TrainingRuntime"))]
        self._json(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "trainer.kubeflow.org/v1alpha1",
                         "resources": resources}, GROUP)

    def _review(self) -> None:
        attrs = self.body["spec"]["resourceAttributes"]
        resource = attrs["resource"] + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
        allowed = (attrs["verb"], resource) not in self.cluster.denied
        self._json(201, {**self.body, "status": {"allowed": allowed}}, SSAR)

    def _runtime(self, method: str, path: str, ns: str, name: str) -> None:
        if name not in self.cluster.runtimes:
            return self._status(404, "NotFound", f'trainingruntimes "{name}" not found', self.cluster, path=path)
        self._json(200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
                         "metadata": {"name": name, "namespace": ns}, "spec": {}}, path)

    def _jobs(self, method: str, path: str, ns: str, name: str | None) -> None:
        c = self.cluster
        verb = {"GET": "watch" if self._flag("watch") else ("get" if name else "list"),
                "POST": "create", "PATCH": "patch", "DELETE": "delete"}[method]
        if self._denied(verb, "trainjobs", path):
            return None
        if method == "POST":
            return self._create(path)
        if name is None:
            return self._watch(path) if verb == "watch" else self._list(path)
        job = c.jobs.get(name)
        if job is None:
            return self._status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found', c, path=path, method=method)
        if method == "DELETE":
            with c.changed:
                del c.jobs[name]
                c.changed.notify_all()
            if c.trainer:
                c.trainer.stop(name)
        if method == "PATCH":
            with c.changed:
                c.version += 1
                job["metadata"].update(self.body.get("metadata", {}), resourceVersion=str(c.version))
                c.changed.notify_all()
        self._json(200, job, path, method)

    def _create(self, path: str) -> None:
        c, obj = self.cluster, self.body
        try:
            validated(obj)
        except ConfigError as error:
            return self._status(422, "Invalid", str(error), c, path=path, method="POST")
        if obj["metadata"]["name"] in c.jobs:
            return self._status(409, "AlreadyExists", f'trainjobs "{obj["metadata"]["name"]}" already exists', c,
                                path=path, method="POST")
        c.put_job(obj)
        if c.trainer:
            c.trainer.start(obj)
        self._json(201, obj, path, "POST")

    def _selected(self) -> list[dict]:
        wanted = self.query.get("fieldSelector", "").removeprefix("metadata.name=")
        return [job for name, job in self.cluster.jobs.items() if not wanted or name == wanted]

    def _list(self, path: str) -> None:
        self._json(200, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList",
                         "metadata": {"resourceVersion": str(self.cluster.version)}, "items": self._selected()}, path)

    def _watch(self, path: str) -> None:
        """ADDED for what exists, MODIFIED on each change, DELETED when gone; ends at timeoutSeconds."""
        c = self.cluster
        deadline = time.monotonic() + float(self.query.get("timeoutSeconds", 30))
        self._start_stream(200, path, "GET")
        sent: dict[str, str] = {}
        with c.changed:
            while time.monotonic() < deadline:
                current = {job["metadata"]["name"]: job for job in self._selected()}
                for name in list(sent):
                    if name not in current:
                        self._chunk({"type": "DELETED", "object": {"metadata": {"name": name}, "kind": "TrainJob",
                                                                   "apiVersion": "trainer.kubeflow.org/v1alpha1"}})
                        del sent[name]
                for name, job in current.items():
                    if sent.get(name) != job["metadata"]["resourceVersion"]:
                        self._chunk({"type": "MODIFIED" if name in sent else "ADDED", "object": job})
                        sent[name] = job["metadata"]["resourceVersion"]
                c.changed.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
        self._end_stream()

    def _pods(self, method: str, path: str, ns: str) -> None:
        if self._denied("list", "pods", path):
            return None
        wanted = dict(pair.split("=", 1) for pair in self.query.get("labelSelector", "").split(",") if pair)
        items = [pod for pod in self.cluster.pods.values()
                 if all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        self._json(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}, path)

    def _log(self, method: str, path: str, ns: str, name: str) -> None:
        c = self.cluster
        if self._denied("get", "pods/log", path):
            return None
        if name not in c.logs:
            return self._status(404, "NotFound", f'pods "{name}" not found', c, path=path)
        self._start_stream(200, path, "GET", content_type="text/plain")
        sent = 0
        with c.changed:
            while True:
                lines = c.logs[name][sent:]
                if lines:
                    self._raw(("\n".join(lines) + "\n").encode())
                    sent += len(lines)
                if name in c.log_done or not self._flag("follow"):
                    break
                c.changed.wait(timeout=0.5)
        self._end_stream()

    def _events(self, method: str, path: str, ns: str) -> None:
        if self._denied("list", "events", path):
            return None
        wanted = self.query.get("fieldSelector", "").removeprefix("involvedObject.name=")
        items = [e for e in self.cluster.events if e["involvedObject"]["name"] == wanted]
        self._json(200, {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items}, path)

    # ---------------------------------------------------------------- responses

    def _status(self, code: int, reason: str, message: str, cluster, *, path: str = "", method: str | None = None) -> None:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}
        self._json(code, body, path or self.path, method)

    def _json(self, code: int, body: dict, path: str, method: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.cluster.requests.append((method or self.command, path, code))
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self, code: int, path: str, method: str, content_type: str = "application/json") -> None:
        self.cluster.requests.append((method, path + ("?watch" if self.query.get("watch") else "?follow"), code))
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, event: dict) -> None:
        self._raw((json.dumps(event) + "\n").encode())

    def _raw(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
