"""Names that tie the cluster together: Kubernetes Secrets/ConfigMaps and the env vars they fill.

This is the one place these names are fixed. The manifests (manifests/), the README's
"Running on a cluster" section and the pipelines (via `kfp.kubernetes.use_secret_as_env`
and `use_config_map_as_env`) all use exactly these names; `trashseg.storage` reads the
environment variables.

    Secret trashseg-s3-credentials   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    ConfigMap trashseg-storage       TRASHSEG_S3_ENDPOINT, TRASHSEG_S3_SECURE, AWS_REGION,
                                     TRASHSEG_BUCKET
    Secret trashseg-postgres         POSTGRES_USER, POSTGRES_PASSWORD (MLflow's database only)
    Secret trashseg-mlflow-credentials  MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD
                                     (optional: only for an MLflow server with authentication)

Each Secret/ConfigMap key is named like the environment variable it becomes, so the
mappings below are identities; they exist so callers never spell a name twice.
Credentials are never pipeline parameters, compile-time defaults or log lines: `redact`
removes a URI's password from text, `install_log_redaction` from every log record.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import Any

# Object store credentials (a Secret: the only place credentials live).
S3_CREDENTIALS_SECRET = "trashseg-s3-credentials"
ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
S3_CREDENTIALS_SECRET_TO_ENV = {ENV_ACCESS_KEY: ENV_ACCESS_KEY, ENV_SECRET_KEY: ENV_SECRET_KEY}

# Where the object store is (a ConfigMap: not secret, but set per cluster).
STORAGE_CONFIG_MAP = "trashseg-storage"
ENV_ENDPOINT = "TRASHSEG_S3_ENDPOINT"  # host:port, or http(s)://host:port
ENV_SECURE = "TRASHSEG_S3_SECURE"  # "true"/"false"; TLS on or off (ignored when the endpoint has a scheme)
ENV_REGION = "AWS_REGION"
ENV_BUCKET = "TRASHSEG_BUCKET"  # the bucket the bucket-init Job creates and pipelines use
STORAGE_CONFIG_MAP_TO_ENV = {
    name: name for name in (ENV_ENDPOINT, ENV_SECURE, ENV_REGION, ENV_BUCKET)
}

# MLflow's PostgreSQL credentials; read only by the database and the tracking server.
POSTGRES_SECRET = "trashseg-postgres"
POSTGRES_SECRET_KEYS = ("POSTGRES_USER", "POSTGRES_PASSWORD")

# Optional MLflow client credentials, for a tracking server behind authentication (the
# in-cluster one below has none). Pipeline tasks that talk to MLflow read this Secret
# when it exists (`use_secret_as_env(..., optional=True)`); MLflow reads the env vars.
MLFLOW_CREDENTIALS_SECRET = "trashseg-mlflow-credentials"
MLFLOW_CREDENTIALS_SECRET_TO_ENV = {name: name for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}

# The in-cluster tracking server (manifests/base/mlflow.yaml). Clients need no S3
# credentials: the server proxies artifacts to the object store.
NAMESPACE = "trashseg"
MLFLOW_TRACKING_URI = f"http://mlflow.{NAMESPACE}.svc.cluster.local:5000"
PIPELINE_SERVICE_ACCOUNT = "trashseg-pipeline-runner"
# Pods carrying this label may reach MLflow (the NetworkPolicy in manifests/base/network.yaml);
# KFP v2 puts it on every pipeline task pod.
PIPELINE_POD_LABEL = ("pipelines.kubeflow.org/v2_component", "true")

# ------------------------------------------------------------------ redaction
# A URI's scheme and network location: `netloc` ends where urllib's does (the first /, ? or #),
# and its user part ends at the LAST @ (urllib's rpartition), so a password holding @ is
# found whole. The credentials are then read by urllib itself, the parser clients use.
_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<netloc>[^/?#\s]*)")
REDACTED = "***"


def _redacted_uri(match: re.Match) -> str:
    scheme, netloc = match["scheme"], match["netloc"]
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return match[0]
    try:
        parts = urllib.parse.urlsplit(f"{scheme}://{netloc}")
        password = parts.password
    except ValueError:  # e.g. a malformed port: still never show what precedes the @
        password = ""
    if password is not None:  # `user:password@`: the user stays, the password goes
        return f"{scheme}://{userinfo.partition(':')[0]}:{REDACTED}@{host}"
    if scheme.lower() in ("http", "https"):  # `https://TOKEN@host`: a user alone is usually a token
        return f"{scheme}://{REDACTED}@{host}"
    return match[0]


def has_credentials(uri: str | None) -> bool:
    return bool(uri) and redact(uri) != uri


def redact(text: str) -> str:
    """`text` with the password of every `scheme://user:password@` URI in it, and the token of
    every `http(s)://token@` URI, replaced by ***."""
    if "@" not in text:
        return text
    return _URI.sub(_redacted_uri, text)


def redact_values(data: Any) -> Any:
    """A copy of plain data (dicts, lists, strings) with every string `redact`ed: what saved
    configs, checkpoints and MLflow params hold."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: redact_values(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(redact_values(value) for value in data)
    return data


def install_log_redaction() -> None:
    """Redact every log record (trashseg's and third parties', e.g. MLflow's "View run at"
    lines) as it is created, message and traceback text both. Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacting", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's to report, not ours
            return record
        if "@" in message:
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory.redacting = True
    logging.setLogRecordFactory(factory)
