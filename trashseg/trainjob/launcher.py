"""The launcher's life: one TrainJob per architecture and round, from a small CPU task.

    preflight -> stage inputs in the store -> create (or adopt) the TrainJob
      -> watch it, following node 0's log -> Complete: pull the checkpoints, return the result
                                          -> Failed: raise with its reason and events

Idempotent: the job's name is derived from (KFP run id, round, architecture), so a
restarted launcher finds the job it started (409 -> adopt; its own pod is added as an
owner); a job that already completed is only collected, a failed one is replaced (the new
one resumes from the mirrored checkpoints); staged inputs are uploaded once.

No orphans, three layers deep:
1. SIGTERM (Argo stopping the task when the run is terminated), the launcher's own
   timeout, or any launcher error: the TrainJob is deleted before the launcher exits.
2. The TrainJob's ownerReference is the launcher's pod: when that pod is deleted (the
   run deleted, pod GC), Kubernetes' garbage collector deletes the job and its pods.
3. `activeDeadlineSeconds` = the launcher's timeout + a grace: a launcher killed outright
   (SIGKILL, node loss) leaves a job that Trainer stops at its deadline.
A failed job holds no GPU (its pods have ended); it is kept for `kubectl describe` until
its owner goes, or the next launch of the same (run, round, architecture) replaces it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from trashseg.errors import ConfigError, UserError
from trashseg.secrets import redact
from trashseg.tracking import KFP_RUN_ID_ENV
from trashseg.trainjob.kube import RBAC_FIX, TrainerApi, transient_errors
from trashseg.trainjob.objects import (
    API_GROUP,
    RUNTIMES,
    SUPPORTED_TRAINER,
    TRAINJOBS,
    JobSettings,
    LauncherPod,
    job_labels,
    job_name,
    train_job,
)
from trashseg.trainjob.spec import NodeTrainSpec

log = logging.getLogger(__name__)

COMPLETE, FAILED = "Complete", "Failed"
WATCH_S = 60  # one watch request; between two, the job is read again (a missed event costs this much)
LOG_POLL_S = 5.0
HEARTBEAT_S = 600.0  # the job's status is logged at least this often
STAGED = "staged"  # `<checkpoint_store>/<run_id>/staged/<job>/...`: inputs, apart from the checkpoints
# What the launcher does in the runs namespace; preflight asks for each before any GPU is requested.
NEEDED_ACCESS = (
    *((verb, TRAINJOBS, API_GROUP, "") for verb in ("create", "get", "watch", "patch", "delete")),
    ("get", RUNTIMES, API_GROUP, ""),
    ("list", "pods", "", ""),
    ("get", "pods", "", "log"),
    ("list", "events", "", ""),
)
INSTALL_FIX = (f"install Kubeflow Trainer {SUPPORTED_TRAINER} (>= 2.3) on the cluster, or compile the pipelines "
               "with ENGINE=pod (`make compile ENGINE=pod`) to train in plain KFP pods")


class TrainerUnavailable(ConfigError):
    """The cluster cannot run TrainJobs for this namespace: names the missing piece and the fix."""


class TrainJobFailed(UserError):
    """The TrainJob ended Failed; the message holds its reason, message and recent events."""


class JobTimeout(TimeoutError):
    """The job did not end within the task's timeout."""


class LaunchCancelled(BaseException):
    """SIGTERM: the run was terminated. A BaseException, so nothing on the way catches it."""


def preflight(api: TrainerApi, runtime: str) -> None:
    """Fail at once, on a CPU, when Trainer is not installed, the runtime is missing or RBAC denies."""
    if not api.trainjobs_served():
        raise TrainerUnavailable(
            f"the cluster does not serve trainjobs.{API_GROUP}/v1alpha1 (the TrainJob CRD is not installed): {INSTALL_FIX}"
        )
    denied = [f"{verb} {resource + ('/' + sub if sub else '')}" for verb, resource, group, sub in NEEDED_ACCESS
              if not api.allowed(verb, resource, group, sub)]
    if denied:
        raise TrainerUnavailable(
            f"the pipeline runner may not {', '.join(denied)} in namespace {api.namespace}: {RBAC_FIX}"
        )
    if api.runtime(runtime) is None:
        raise TrainerUnavailable(
            f"TrainingRuntime {runtime!r} not found in namespace {api.namespace}: apply the with-trainer overlay "
            f"(`make deploy OVERLAY=with-trainer`), which installs it, or compile with ENGINE=pod"
        )
    log.info("Trainer ready in %s: trainjobs served, runtime %s present, access granted", api.namespace, runtime)


def preflight_step(runtime: str, api: TrainerApi | None = None) -> str:
    """The check-trainer task: preflight for the launcher's namespace. Returns a one-line summary."""
    api = api or TrainerApi.connect(LauncherPod.from_env().namespace)
    preflight(api, runtime)
    return f"TrainJobs can run in {api.namespace} with runtime {runtime}"


def launch_train_step(
    dataset_dir: str | Path,
    model_dir: str | Path,
    *,
    architecture: str,
    iterations: int,
    image_size: int,
    dataset_version: str,
    settings: Sequence[str],
    checkpoint_store: str,
    run,
    job: JobSettings | dict[str, Any],
    task: str,
    pseudo_dataset_dir: str | Path | None = None,
    pseudo_ratio: float = 0.0,
    init_bundle_dir: str | Path | None = None,
    weights_store: str = "",
    api: TrainerApi | None = None,
    pod: LauncherPod | None = None,
):
    """`steps.train_step`'s contract, trained by a TrainJob: the same result, read from the
    checkpoints the nodes mirrored to `<checkpoint_store>/<run id>/<stage>-<architecture>/`.
    `run`: a `steps.RunContext`; `job`: JobSettings (or its dict, as the component passes it)."""
    from trashseg.steps import _train_step_result
    from trashseg.storage import open_store

    job = job if isinstance(job, JobSettings) else JobSettings.from_dict(job)
    run_id = _run_id(checkpoint_store)
    pod = pod or LauncherPod.from_env()
    api = api or TrainerApi.connect(pod.namespace)
    preflight(api, job.runtime)
    name = job_name(run_id, run.stage, architecture)
    store = open_store(f"{checkpoint_store.rstrip('/')}/{run_id}")
    existing = _reusable(api, name)
    if existing is None:
        inputs = {"dataset": dataset_dir, "pseudo_dataset": pseudo_dataset_dir, "init_bundle": init_bundle_dir}
        uris = {key: store.uri(f"{STAGED}/{name}/{key}") for key, folder in inputs.items() if folder is not None}
        spec = NodeTrainSpec(
            run_id=run_id, architecture=architecture, stage=run.stage, iterations=iterations, image_size=image_size,
            dataset_version=dataset_version, checkpoint_store=checkpoint_store, dataset_uri=uris["dataset"],
            settings=tuple(settings), pseudo_dataset_uri=uris.get("pseudo_dataset", ""),
            pseudo_ratio=pseudo_ratio if pseudo_dataset_dir is not None else 0.0,
            init_bundle_uri=uris.get("init_bundle", ""), weights_store=weights_store,
            tracking_uri=run.tracking_uri, experiment=run.experiment, extra={"kfp.task": task},
        )
        obj = train_job(name, spec, job, job_labels(run_id, task, architecture, run.stage), pod)  # checked first
        stage_inputs(store, name, inputs)
        existing = start_job(api, obj, pod)
    else:
        existing = adopt(api, existing, pod)
    if job_state(existing) != COMPLETE:
        with delete_on_abort(api, name):
            supervise(api, name, deadline=_created(existing) + job.timeout_s)
    model_dir = Path(model_dir)
    store.get_folder(f"{run.stage}-{architecture}", model_dir)
    return _train_step_result(model_dir, architecture, dataset_version)


def _run_id(checkpoint_store: str) -> str:
    run_id = os.environ.get(KFP_RUN_ID_ENV, "")
    if not run_id or not checkpoint_store:
        raise ConfigError(
            f"{KFP_RUN_ID_ENV}={run_id!r}, checkpoint_store={checkpoint_store!r}: a TrainJob needs both, since its "
            "nodes share nothing but the checkpoint store (the pipelines set the run id on every task)"
        )
    return run_id


def _reusable(api: TrainerApi, name: str) -> dict[str, Any] | None:
    """The job of an earlier launch, unless it failed (then it is deleted, to be replaced)."""
    job = api.get_job(name)
    if job is not None and job_state(job) == FAILED:
        log.warning("TrainJob %s failed earlier (%s); deleting it and starting again from the mirrored checkpoints",
                    name, _condition_text(job))
        api.delete_job(name)
        _wait_gone(api, name)
        return None
    return job


def _wait_gone(api: TrainerApi, name: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while api.get_job(name) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"TrainJob {name} is still being deleted after {timeout_s:.0f} s; retry the task later")
        time.sleep(1.0)


def start_job(api: TrainerApi, obj: dict[str, Any], pod: LauncherPod) -> dict[str, Any]:
    """Create the job, or adopt the one a previous launcher created under the same name
    (exactly one per name), adding this launcher's pod to its owners."""
    job, created = api.create_job(obj)
    if not created:  # another launcher of the same task got there first
        return adopt(api, job, pod)
    log.info("created TrainJob %s in %s: %d node(s)", obj["metadata"]["name"], api.namespace,
             obj["spec"]["trainer"]["numNodes"])
    return job


def adopt(api: TrainerApi, job: dict[str, Any], pod: LauncherPod) -> dict[str, Any]:
    """Attach to an earlier launcher's job, adding this launcher's pod to its owners: the
    garbage collector deletes it only when every owning launcher pod is gone."""
    name, owners = job["metadata"]["name"], job["metadata"].get("ownerReferences") or []
    if all(owner.get("uid") != pod.uid for owner in owners):
        job = api.patch_job(name, {"metadata": {"ownerReferences": [*owners, pod.owner_reference()]}})
    log.info("attached to TrainJob %s (created %s by an earlier launcher)", name, job["metadata"].get("creationTimestamp"))
    return job


def stage_inputs(store, job: str, folders: dict[str, str | Path | None]) -> dict[str, str]:
    """Upload each given folder to `staged/<job>/<name>/` once; a relaunch finds the same
    files (names and sizes, recorded in `<name>.staged.json`) and uploads nothing."""
    uris = {}
    for name, folder in folders.items():
        if folder is None:
            continue
        folder, prefix = Path(folder), f"{STAGED}/{job}/{name}"
        manifest = sorted([p.relative_to(folder).as_posix(), p.stat().st_size] for p in folder.rglob("*") if p.is_file())
        marker = f"{prefix}.staged.json"
        if store.exists(marker) and store.get_json(marker) == manifest:
            log.info("%s already staged at %s", name, store.uri(prefix))
        else:
            store.put_folder(folder, prefix)
            store.put_json(manifest, marker)
        uris[name] = store.uri(prefix)
    return uris


def job_state(job: dict[str, Any]) -> str:
    """Complete or Failed once the job has ended, else ''."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in (COMPLETE, FAILED) and condition.get("status") == "True":
            return condition["type"]
    return ""


def _condition_text(job: dict[str, Any]) -> str:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == FAILED and condition.get("status") == "True":
            return f"{condition.get('reason') or 'no reason'}: {condition.get('message') or 'no message'}"
    return "no Failed condition"


def _created(job: dict[str, Any]) -> float:
    """The job's creation time (epoch seconds): the deadline counts from there, so relaunches do not extend it."""
    stamp = job["metadata"].get("creationTimestamp")
    if not stamp:
        return time.time()
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@contextlib.contextmanager
def delete_on_abort(api: TrainerApi, name: str):
    """Delete the job when the launcher stops without the job having ended: SIGTERM (the run
    terminated), its timeout, or an error of the launcher. A Failed job is left for inspection."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _cancel)
    try:
        yield
    except TrainJobFailed:
        raise
    except BaseException as error:
        log.error("stopping (%s): deleting TrainJob %s so that no node keeps its GPUs", type(error).__name__, name)
        try:
            api.delete_job(name)
        except Exception as cleanup:  # noqa: BLE001 - the original error is what the task reports
            log.error("could not delete TrainJob %s (%s); delete it: kubectl delete trainjob %s -n %s",
                      name, cleanup, name, api.namespace)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _cancel(signum, frame) -> None:
    raise LaunchCancelled("SIGTERM: the run was terminated or the task stopped")


def supervise(api: TrainerApi, name: str, *, deadline: float, write: Callable[[str], None] = print) -> dict[str, Any]:
    """Watch the job to its end while node 0's log is streamed; the ended job on Complete."""
    stop = threading.Event()
    follower = threading.Thread(target=follow_node0, args=(api, name, stop, write), daemon=True, name=f"logs-{name}")
    follower.start()
    try:
        job = wait_for_end(api, name, deadline)
    except BaseException:
        stop.set()
        follower.join(timeout=0.5)  # its stream may never end: do not hold up the cleanup
        raise
    stop.set()
    follower.join(timeout=10.0)  # the last lines of an ended node
    if job_state(job) == FAILED:
        events = "\n  ".join(api.events(name)) or "(none)"
        node0 = api.node0_pod(name)
        ended = f"\n node 0 ({node0.name}): {node0.ended}" if node0 is not None and node0.ended else ""
        raise TrainJobFailed(
            f"TrainJob {name} failed: {_condition_text(job)}{ended}\n recent events:\n  {events}\n"
            f"inspect it with `kubectl describe trainjob {name} -n {api.namespace}`; a retry of this task starts a new "
            "job that resumes from the mirrored checkpoints"
        )
    log.info("TrainJob %s complete", name)
    return job


def wait_for_end(api: TrainerApi, name: str, deadline: float) -> dict[str, Any]:
    """The job once Complete or Failed; TimeoutError at the deadline; an error if it disappears.
    The API server being unreachable for a while is waited out (up to the deadline): a
    multi-day training is not deleted for a blip of the control plane."""
    report, failures = _Reporter(name), 0
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise JobTimeout(f"TrainJob {name} did not end within the task's timeout; it is deleted")
        try:
            job = _watch_once(api, name, min(remaining, WATCH_S), report)
            failures = 0
        except transient_errors() as error:
            failures += 1
            log.warning("watching TrainJob %s: %s (try %d; retrying)", name, error, failures)
            time.sleep(min(remaining, min(60.0, 2.0 ** failures)))
            continue
        report(job)
        if job_state(job):
            return job


def _watch_once(api: TrainerApi, name: str, timeout_s: float, report: Callable[[dict], None]) -> dict[str, Any]:
    """The job as it last changed within one watch, or as read after it (a missed event)."""
    for kind, job in api.watch_job(name, timeout_s=timeout_s):
        if kind == "DELETED":
            raise RuntimeError(f"TrainJob {name} was deleted by someone else while the launcher watched it")
        if job_state(job):
            return job
        report(job)
    job = api.get_job(name)
    if job is None:
        raise RuntimeError(f"TrainJob {name} was deleted by someone else while the launcher watched it")
    return job


class _Reporter:
    """Logs the job's status when it changes, and every HEARTBEAT_S anyway (with how long it has
    run): its conditions and its nodes' job counts."""

    def __init__(self, name: str) -> None:
        self.name, self.last, self.logged_at = name, "", 0.0

    def __call__(self, job: dict[str, Any]) -> None:
        status = job.get("status") or {}
        conditions = ", ".join(f"{c.get('type')}={c.get('status')}" for c in status.get("conditions") or [])
        jobs = ", ".join(
            f"{j.get('name')}: {j.get('active', 0)} active, {j.get('succeeded', 0)} succeeded, {j.get('failed', 0)} failed"
            for j in status.get("jobsStatus") or []
        )
        text = f"TrainJob {self.name}: {conditions or 'no conditions yet'}{'; ' + jobs if jobs else ''}"
        if text != self.last or time.monotonic() - self.logged_at > HEARTBEAT_S:
            running = timedelta(seconds=int(time.time() - _created(job)))
            log.info("%s (created %s ago)", text, running)
            self.last, self.logged_at = text, time.monotonic()


def follow_node0(api: TrainerApi, name: str, stop: threading.Event, write: Callable[[str], None]) -> None:
    """Write node 0's log lines, pod after pod (a restarted job has new pods), until `stop`."""
    followed: set[str] = set()
    while not stop.is_set():
        try:
            pod = api.node0_pod(name)
            if pod is None or pod.uid in followed or pod.phase == "Pending":
                stop.wait(LOG_POLL_S)
                continue
            write(f"[{name} node 0: pod {pod.name}]")
            for line in api.follow_log(pod.name):
                write(f"[node 0] {redact(line)}")
            followed.add(pod.uid)
        except Exception as error:  # noqa: BLE001 - logs are a view: the watch decides the outcome
            log.warning("node 0's log of %s: %s (retrying)", name, error)
            stop.wait(LOG_POLL_S)
