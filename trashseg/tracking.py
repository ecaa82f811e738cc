"""MLflow tracking for the steps that record runs: training (`trashseg.training`) and
model registration (`trashseg.registry`); evaluate and the ensemble do not record runs.

The tracking URI comes from the stage config, else `MLFLOW_TRACKING_URI`, else a local
SQLite file `sqlite:///<dir>/mlflow.db` (the embedded default). Runs are driven through
`MlflowClient` with an explicit run id (no fluent global state), metrics are buffered and
sent with `log_batch`, and every run is tagged with the KFP run id when `KFP_RUN_ID` is set.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trashseg.config import to_dict
from trashseg.errors import ConfigError

log = logging.getLogger(__name__)

KFP_RUN_ID_ENV = "KFP_RUN_ID"
# MLflow's per-request limits for log_batch.
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_LENGTH = 6000


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<output dir>/mlflow.db
    experiment: str = "trashseg"
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.experiment.strip():
            raise ConfigError("tracking.experiment is empty; give an MLflow experiment name, e.g. trashseg")
        if self.uri is not None and "://" not in self.uri:
            raise ConfigError(
                f"tracking.uri={self.uri!r} is not a URI; expected e.g. http://mlflow:5000 or sqlite:///path/mlflow.db"
            )


def resolve_tracking_uri(configured: str | None, default_dir: str | Path) -> str:
    if configured:
        return configured
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    default_dir = Path(default_dir).resolve()
    default_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{default_dir / 'mlflow.db'}"


def flatten_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Dotted `key -> str(value)` of a (nested) config dataclass or mapping."""
    data = to_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM_LENGTH]
    return flat


def git_sha(repo_dir: str | Path | None = None) -> str | None:
    """The commit of the source tree, or None outside a git checkout (e.g. in an image)."""
    from_env = os.environ.get("TRASHSEG_GIT_SHA")  # baked into container images at build time
    if from_env:
        return from_env
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class TrackedRun:
    """One MLflow run. Use as a context manager: the run ends FINISHED, or FAILED on error."""

    def __init__(
        self,
        config: TrackingConfig,
        default_dir: str | Path,
        *,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        resume_run_id: str | None = None,
    ) -> None:
        """Create a run, or continue `resume_run_id` (a resumed training) when this store has it."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(config.uri, default_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self._pending: list = []
        if resume_run_id is not None:
            try:
                run = self.client.get_run(resume_run_id)
            except MlflowException:
                run = None
                log.warning("MLflow run %s is not in %s; starting a new run", resume_run_id, self.uri)
            if run is not None:
                self.run_id: str = run.info.run_id
                self.experiment_id = run.info.experiment_id
                self.client.update_run(self.run_id, status="RUNNING")
                log.info("MLflow run %s continued at %s", self.run_id, self.uri)
                return
        experiment = self.client.get_experiment_by_name(config.experiment)
        if experiment is None:
            artifact_location = None
            if self.uri.startswith("sqlite:///"):
                # Keep a local run's artifacts beside its database, not in the current directory.
                db_dir = Path(self.uri[len("sqlite:///") :]).parent
                artifact_location = (db_dir / "mlartifacts").resolve().as_uri()
            experiment_id = self.client.create_experiment(config.experiment, artifact_location=artifact_location)
        else:
            experiment_id = experiment.experiment_id
        all_tags = {key: str(value) for key, value in (tags or {}).items() if value is not None}
        kfp_run_id = os.environ.get(KFP_RUN_ID_ENV)
        if kfp_run_id:
            all_tags["kfp.run_id"] = kfp_run_id
        run = self.client.create_run(experiment_id, tags=all_tags, run_name=run_name)
        self.run_id = run.info.run_id
        self.experiment_id = experiment_id
        log.info("MLflow run %s in experiment %r at %s", self.run_id, config.experiment, self.uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:_MAX_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _MAX_PARAMS_PER_BATCH])

    def log_config(self, config: Any) -> None:
        self.log_params(flatten_params(config))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metrics; they are sent in batches by `flush` (called when the buffer fills and at the end)."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self._pending += [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        if len(self._pending) >= _MAX_METRICS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:_MAX_METRICS_PER_BATCH], self._pending[_MAX_METRICS_PER_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.flush()
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type else "FINISHED")
