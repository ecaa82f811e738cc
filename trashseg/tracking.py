"""MLflow tracking for the steps that record runs: training (`trashseg.training`) and
model registration (`trashseg.registry`); evaluate and the ensemble do not record runs.

The tracking URI comes from the stage config, else `MLFLOW_TRACKING_URI`, else a local
SQLite file `sqlite:///<dir>/mlflow.db` (the embedded default). Runs are driven through
`MlflowClient` with an explicit run id (no fluent global state), metrics are buffered and
sent with `log_batch`, and every run is tagged with the KFP run id when `KFP_RUN_ID` is set.

Credentials: an http(s) URI's `user:password@` is moved into MLFLOW_TRACKING_USERNAME/PASSWORD
(the variables the pipelines set from a Secret) before MLflow sees it, with a warning, so no log
line, error or "View run at" line shows it; saved configs hold it redacted. A database URI
(postgresql://) keeps its password, which only its driver reads; logs and errors redact it.
Store failures a user can fix (a full disk, an unreachable server, a missing driver) become one
clear error through `tracking_errors`.
A local SQLite store is created atomically and a half-made one (from a kill during schema
set-up by older versions) is set aside and recreated, so a kill never breaks the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import sqlite3
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trashseg.config import to_dict
from trashseg.errors import ConfigError, DataError, OutputError, UserError
from trashseg.fileio import partial_name, temp_path
from trashseg.secrets import (
    MLFLOW_CREDENTIALS_SECRET,
    MLFLOW_CREDENTIALS_SECRET_TO_ENV,
    has_credentials,
    install_log_redaction,
    redact,
)

log = logging.getLogger(__name__)

KFP_RUN_ID_ENV = "KFP_RUN_ID"
OUTPUT_DIR_TAG = "trashseg.output_dir"  # the training folder a run writes (stale-run clean-up)
ENV_USERNAME, ENV_PASSWORD = MLFLOW_CREDENTIALS_SECRET_TO_ENV
ENV_TOKEN = "MLFLOW_TRACKING_TOKEN"  # MLflow's bearer token
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


def client_uri(uri: str) -> str:
    """`uri` without credentials, for MLflow: a `user:password@` in it is moved to the
    environment variables MLflow reads (unless they are already set), with a warning; so is
    an http(s) `token@` (to MLFLOW_TRACKING_TOKEN)."""
    install_log_redaction()
    if not has_credentials(uri):
        return uri
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https"):
        # A database URI (postgresql://user:pw@db/mlflow): its driver reads the password from
        # the URI only, so it stays there; log redaction keeps it out of every log line.
        log.warning("the MLflow tracking URI %s carries a password; it is passed to the database driver and "
                    "redacted from logs and saved configs", redact(uri))
        return uri
    variables = ENV_TOKEN if parts.password is None else f"{ENV_USERNAME} and {ENV_PASSWORD}"
    log.warning(
        "the MLflow tracking URI %s carries credentials; set %s instead (the pipelines set the user and "
        "password from the %s Secret). They are used for this process and never logged or saved",
        redact(uri), variables, MLFLOW_CREDENTIALS_SECRET,
    )
    if parts.password is None:  # https://TOKEN@host
        os.environ.setdefault(ENV_TOKEN, urllib.parse.unquote(parts.username or ""))
    elif not os.environ.get(ENV_PASSWORD):
        os.environ[ENV_USERNAME] = urllib.parse.unquote(parts.username or "")
        os.environ[ENV_PASSWORD] = urllib.parse.unquote(parts.password)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# Database drivers SQLAlchemy imports for a tracking URI's scheme, and the pip package of each.
_DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pymysql": "PyMySQL", "MySQLdb": "mysqlclient"}
_UNREACHABLE = ("Max retries exceeded", "Failed to establish a new connection", "Connection refused",
                "Name or service not known", "Temporary failure in name resolution", "timed out", "Connection aborted")


@contextlib.contextmanager
def tracking_errors(uri: str) -> Iterator[None]:
    """The tracking store's failures a user can fix, as one clear error naming the (redacted)
    URI: a full disk under a local store, an unreachable server, a missing database driver."""
    from trashseg.fileio import NO_SPACE_ERRNOS, free_space, os_error_in_chain

    try:
        yield
    except ModuleNotFoundError as error:
        if error.name not in _DRIVERS:
            raise
        raise ConfigError(
            f"tracking URI {redact(uri)} needs the database driver {error.name}, which is not installed: "
            f"`pip install '{_DRIVERS[error.name]}'` (trashseg's images include psycopg for postgresql://), "
            "or track through an MLflow server (http://...)"
        ) from None
    except UserError:
        raise
    except Exception as error:
        text = " ".join(str(error).split())
        cause = os_error_in_chain(error)
        if "database or disk is full" in text or (cause is not None and cause.errno in NO_SPACE_ERRNOS):
            where = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
            place = f"{where} ({free_space(where.parent)} free in {where.parent})" if where else redact(uri)
            raise OutputError(
                errno.ENOSPC, f"no space left on device: the MLflow store {place} cannot grow; free some space, "
                "or set tracking.uri to a store elsewhere",
            ) from None
        if any(marker in text for marker in _UNREACHABLE):
            raise UserError(
                f"the MLflow tracking server {redact(uri)} cannot be reached ({redact(text)[:200]}); start it or fix "
                "tracking.uri / MLFLOW_TRACKING_URI, or set tracking.enabled=false to run without tracking"
            ) from None
        raise


def ensure_sqlite_store(uri: str) -> None:
    """Make a `sqlite:///` store usable: create it atomically when absent (under a temporary
    name, initialised by MLflow, then linked into place), and set aside a half-made one."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :])
    if path.exists() and _half_made(path):
        aside = path.with_name(f"{path.name}.half-made-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        log.warning(
            "%s was left half-initialised (a process was killed while MLflow created its tables) and holds "
            "no run; moved it to %s and creating a new store", path, aside,
        )
    if path.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    _remove_dead_creations(path)
    with temp_path(path) as tmp:
        try:
            store = SqlAlchemyStore(f"sqlite:///{tmp}", (path.parent / "mlartifacts").resolve().as_uri())
            store.engine.dispose()
            with contextlib.suppress(FileExistsError):  # a concurrent creator won: use its store
                os.link(tmp, path)  # unlike a rename, never replaces an existing store
        finally:  # a failed creation (a full disk) leaves its journal: temp_path removes only tmp
            for side in _SQLITE_SIDE_FILES:
                Path(f"{tmp}{side}").unlink(missing_ok=True)


_SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")  # what SQLite keeps beside a database mid-transaction


def _remove_dead_creations(path: Path) -> None:
    """Remove what processes killed while creating `path` left: their temporary stores and
    those stores' SQLite journals. A creation still running (its process, named in the
    temporary name, is alive on this machine) is left alone."""
    for leftover in path.parent.glob(f"{partial_name(path)}*"):
        pid = leftover.name[len(path.name) + 2 :].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        leftover.unlink(missing_ok=True)
        log.info("removed %s, left by a process killed while creating %s", leftover, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _half_made(path: Path) -> bool:
    """True for a SQLite store whose schema set-up did not finish and that holds no run."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            revision = db.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
            runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.DatabaseError as error:
        if path.stat().st_size == 0:
            return True
        raise DataError(f"{path} is not a readable MLflow SQLite store ({error}); move it away to start a new one") from None
    if revision is not None and revision[0] == _get_latest_schema_revision():
        return False
    if runs:
        raise DataError(
            f"{path} holds {runs} MLflow run(s) in an older schema; upgrade it with `mlflow db upgrade sqlite:///{path}`"
        )
    return True


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


def _store_call(method):
    """A TrackedRun method whose store failures become `tracking_errors`' clear errors."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with tracking_errors(self.uri):
            return method(self, *args, **kwargs)

    return call


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
        self.uri = client_uri(resolve_tracking_uri(config.uri, default_dir))
        self._pending: list = []
        self._default_dir = Path(default_dir).resolve()
        with tracking_errors(self.uri):
            self._open(config, run_name, tags, resume_run_id)

    def _open(self, config: TrackingConfig, run_name: str | None, tags: Mapping[str, str] | None,
              resume_run_id: str | None) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        ensure_sqlite_store(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
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
        all_tags = {key: redact(str(value)) for key, value in (tags or {}).items() if value is not None}
        kfp_run_id = os.environ.get(KFP_RUN_ID_ENV)
        if kfp_run_id:
            all_tags["kfp.run_id"] = kfp_run_id
        all_tags[OUTPUT_DIR_TAG] = str(self._default_dir)
        self._end_stale_runs(experiment_id)
        run = self.client.create_run(experiment_id, tags=all_tags, run_name=run_name)
        self.run_id = run.info.run_id
        self.experiment_id = experiment_id
        log.info("MLflow run %s in experiment %r at %s", self.run_id, config.experiment, self.uri)

    def _end_stale_runs(self, experiment_id: str) -> None:
        """Mark KILLED the runs of this folder's own SQLite store that a killed process left
        RUNNING (only the local store: on a shared server another pod may use the same path)."""
        if self.uri != f"sqlite:///{self._default_dir / 'mlflow.db'}":
            return
        stale = self.client.search_runs(
            [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{OUTPUT_DIR_TAG}` = '{self._default_dir}'"
        )
        for run in stale:
            self.client.set_terminated(run.info.run_id, status="KILLED")
            log.warning("MLflow run %s was left RUNNING by a killed process; marked it KILLED", run.info.run_id)

    @_store_call
    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, redact(str(value))[:_MAX_PARAM_LENGTH]) for key, value in params.items()]
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

    @_store_call
    def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:_MAX_METRICS_PER_BATCH], self._pending[_MAX_METRICS_PER_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    @_store_call
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, redact(str(value))) for key, value in tags.items()])

    @_store_call
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.flush()
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @_store_call
    def end(self, status: str = "FINISHED") -> None:
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status=status)

    def end_after_error(self, error: BaseException) -> None:
        """End the run as KILLED (interrupt, SIGTERM) or FAILED without hiding `error`, the first
        one: a failure here (e.g. the disk that failed the training is full) is only logged."""
        status = "KILLED" if isinstance(error, KeyboardInterrupt | SystemExit) else "FAILED"
        try:
            self.end(status)
        except Exception as secondary:  # noqa: BLE001 - the first error is re-raised by the caller
            log.warning("could not mark MLflow run %s %s (%s); the error that ended the run follows", self.run_id, status, secondary)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.end("FINISHED")
        else:
            self.end_after_error(exc)
