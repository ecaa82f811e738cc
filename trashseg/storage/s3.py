"""The S3 backend (through `minio`). Connection settings come from the environment
(names in `trashseg.secrets`), which the pipelines fill from Kubernetes Secrets."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from trashseg import secrets
from trashseg.errors import ConfigError, DataError
from trashseg.storage.base import (
    CHUNK,
    SHA256_METADATA,
    IntegrityError,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    RetryPolicy,
    StorageError,
    check_key,
    join_key,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PART_SIZE = 64 * 1024 * 1024  # S3 multipart part size; minio's minimum is 5 MiB
# S3 error codes that mean "try again later", not "your request is wrong".
TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
     "OperationAborted", "ThrottlingException", "ConditionalRequestConflict"}
)
# Timeouts and the per-operation deadline, overridable from the environment.
ENV_CONNECT_TIMEOUT = "TRASHSEG_S3_CONNECT_TIMEOUT_S"
ENV_READ_TIMEOUT = "TRASHSEG_S3_READ_TIMEOUT_S"
ENV_DEADLINE = "TRASHSEG_S3_DEADLINE_S"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A transfer's deadline grows by its size at this rate, so big objects get the time they need.
MIN_TRANSFER_RATE = 1024 * 1024  # bytes/s


class IncompleteResponse(ConnectionError):
    """A response cut short by a broken connection (headers missing or cut mid-value): transient."""


@dataclass(frozen=True)
class S3Settings:
    """How to reach the S3 endpoint. `from_env` reads the variables named in trashseg.secrets."""

    endpoint: str  # host:port
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    secure: bool = True
    region: str | None = None
    # A connection must open within connect_timeout_s, and a started request may go
    # read_timeout_s without receiving a byte (the server's processing of one multipart part
    # included) before the attempt counts as failed and is retried. One object operation,
    # all its retries together, gives up after deadline_s plus its size / MIN_TRANSFER_RATE.
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    deadline_s: float = 1800.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "read_timeout_s", "deadline_s"):
            value = getattr(self, name)
            if not value > 0 or value == float("inf"):
                raise ConfigError(f"S3Settings.{name} must be a finite number of seconds > 0, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if environ is None else environ
        endpoint = env.get(secrets.ENV_ENDPOINT, "").strip()
        if not endpoint:
            raise ConfigError(
                f"s3:// locations need {secrets.ENV_ENDPOINT} (host:port or http(s)://host:port) set; "
                f"on the cluster it comes from the ConfigMap {secrets.STORAGE_CONFIG_MAP}, locally export it"
            )
        secure = _parse_bool(env.get(secrets.ENV_SECURE, "true"), secrets.ENV_SECURE)
        for scheme, scheme_secure in (("https://", True), ("http://", False)):
            if endpoint.startswith(scheme):
                endpoint, secure = endpoint[len(scheme):], scheme_secure
        endpoint = endpoint.rstrip("/")
        if "/" in endpoint:
            raise ConfigError(
                f"{secrets.ENV_ENDPOINT}={endpoint!r} has a path; expected host:port with an optional http(s):// scheme"
            )
        access, secret = env.get(secrets.ENV_ACCESS_KEY), env.get(secrets.ENV_SECRET_KEY)
        if bool(access) != bool(secret):
            raise ConfigError(
                f"set both {secrets.ENV_ACCESS_KEY} and {secrets.ENV_SECRET_KEY} or neither "
                f"(on the cluster both come from the Secret {secrets.S3_CREDENTIALS_SECRET})"
            )
        timeouts = {
            field_name: _parse_seconds(env[var], var)
            for field_name, var in (("connect_timeout_s", ENV_CONNECT_TIMEOUT), ("read_timeout_s", ENV_READ_TIMEOUT),
                                    ("deadline_s", ENV_DEADLINE))
            if env.get(var, "").strip()
        }
        return cls(endpoint, access or None, secret or None, secure, env.get(secrets.ENV_REGION) or None, **timeouts)


def _parse_seconds(value: str, name: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{name}={value!r} is not a number of seconds > 0; expected e.g. {name}=60")
    return seconds


def _parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; expected true or false")


def _is_transient(error: BaseException) -> bool:
    from xml.etree.ElementTree import ParseError

    import urllib3.exceptions
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(error, S3Error):
        return error.code in TRANSIENT_S3_CODES
    if isinstance(error, ServerError):
        return error.status_code >= 500
    if isinstance(error, InvalidResponseError):  # a proxy's or load balancer's non-XML error page
        status = getattr(error, "_code", 0)  # minio keeps the HTTP status only here
        return status == 429 or status >= 500
    # ParseError: an error reply whose XML body was cut off by the connection.
    return isinstance(
        error, ConnectionError | TimeoutError | urllib3.exceptions.HTTPError | ParseError
    )


class S3Store(ObjectStore):
    """`s3://bucket/prefix` through the minio client (MinIO, SeaweedFS, Ceph, AWS...)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        settings: S3Settings | None = None,
        retry: RetryPolicy | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        import urllib3
        from minio import Minio

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = "s3://" + join_key(bucket, self.prefix)
        self.settings = settings or S3Settings.from_env()
        self.retry = retry or RetryPolicy()
        self.part_size = part_size
        # Retries are ours alone (RetryPolicy), so urllib3's own are off: one policy, one log line each.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.settings.connect_timeout_s, read=self.settings.read_timeout_s),
            retries=False,
            maxsize=10,
        )
        self.client = Minio(
            self.settings.endpoint,
            access_key=self.settings.access_key,
            secret_key=self.settings.secret_key,
            secure=self.settings.secure,
            region=self.settings.region,
            http_client=http,
        )

    def _name(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1:] if self.prefix else name

    def _deadline(self, size: int = 0) -> float:
        """When an operation moving `size` bytes, starting now, gives up (time.monotonic())."""
        return time.monotonic() + self.settings.deadline_s + size / MIN_TRANSFER_RATE

    def _run(self, what: str, operation: Callable[[], T], *, deadline: Callable[[], float] | None = None) -> T:
        if deadline is None:
            fixed = self._deadline()
            deadline = lambda: fixed  # noqa: E731
        return self.retry.run(what, operation, _is_transient, deadline=deadline)

    def ensure_bucket(self) -> bool:
        """Create the bucket if missing; True when it was created."""
        if self._run(f"check bucket {self.bucket}", lambda: self.client.bucket_exists(self.bucket)):
            return False
        region = self.settings.region or "us-east-1"
        self._run(f"create bucket {self.bucket}", lambda: self.client.make_bucket(self.bucket, location=region))
        return True

    def _upload(self, src: Path, key: str, size: int, sha256: str, *, create_only: bool = False) -> None:
        if create_only:
            self._run(f"create {self.uri(key)}", lambda: self._put_if_absent(src, key, sha256))
            return
        deadline = self._deadline(size)
        self._run(
            f"upload {src} -> {self.uri(key)}",
            lambda: self.client.fput_object(
                self.bucket, self._name(key), str(src),
                metadata={SHA256_METADATA: sha256}, part_size=self.part_size,
            ),
            deadline=lambda: deadline,
        )

    def _put_if_absent(self, src: Path, key: str, sha256: str) -> None:
        """One PUT with `If-None-Match: *`: the server creates the key only if it is free
        (S3 since 2024, MinIO, moto). Small objects only (markers): no multipart."""
        from minio.error import S3Error

        data = src.read_bytes()
        if len(data) > self.part_size:
            raise DataError(f"create-only objects must be under {self.part_size} bytes; {src} has {len(data)}")
        headers = {"If-None-Match": "*", f"x-amz-meta-{SHA256_METADATA}": sha256,
                   "Content-Type": "application/octet-stream"}
        try:
            # minio's public put_object turns unknown headers into user metadata; this is its PutObject call.
            self.client._put_object(self.bucket, self._name(key), data, headers=headers)
        except S3Error as error:
            if error.code == "PreconditionFailed":  # ConditionalRequestConflict (a racing write) is retried
                raise ObjectExists(f"{self.uri(key)} already exists; it is written once and never replaced") from error
            raise

    def _download(self, key: str, out: IO[bytes]) -> ObjectInfo:
        limit = [self._deadline()]  # pushed back by the object's size once a response tells it
        start = time.monotonic()

        def attempt() -> ObjectInfo:
            out.seek(0)
            out.truncate()
            response = self._get(key)
            try:
                length = response.headers.get("content-length") or ""
                if length.isdigit():
                    limit[0] = max(limit[0], start + self.settings.deadline_s + int(length) / MIN_TRANSFER_RATE)
                # The body first: a response cut in its headers shows up as a short body or
                # a missing Content-Length, both transient, before the checksum is judged.
                # read1 returns what one socket read brings, so the deadline holds against a trickle.
                while chunk := response.read1(CHUNK):
                    if time.monotonic() > limit[0]:
                        raise StorageError(
                            f"download {self.uri(key)} passed its deadline ({self.settings.deadline_s:g}s plus its size at "
                            f"{MIN_TRANSFER_RATE / 2**20:g} MiB/s) while receiving data; allow more time "
                            f"with {ENV_DEADLINE} or check the network"
                        )
                    out.write(chunk)
                headers = {k.lower(): v for k, v in response.headers.items()}
            finally:
                response.close()
                response.release_conn()
            recorded = self._recorded(key, headers)
            if not recorded.sha256:
                confirmed = self._head(key)  # a second, independent response decides
                if not confirmed.sha256:
                    raise self._foreign(key)
                raise IncompleteResponse(f"the response for {self.uri(key)} lost its sha256 header in transit")
            return recorded

        return self._run(f"download {self.uri(key)}", attempt, deadline=lambda: limit[0])

    def _get(self, key: str):
        from minio.error import S3Error

        try:
            return self.client.get_object(self.bucket, self._name(key))
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchBucket"):
                raise ObjectNotFound(f"no object {self.uri(key)} ({error.code})") from error
            raise

    def _recorded(self, key: str, headers: Mapping[str, str]) -> ObjectInfo:
        """What the response's headers record; sha256 "" when the header is absent.

        A header block cut by the connection lacks Content-Length or ends mid-value:
        IncompleteResponse (retried), never a verdict on the object."""
        length, sha = headers.get("content-length"), headers.get(f"x-amz-meta-{SHA256_METADATA}")
        if length is None or not length.isdigit():
            raise IncompleteResponse(f"the response for {self.uri(key)} has no valid Content-Length ({length!r})")
        if sha is not None and not SHA256_HEX.fullmatch(sha):
            raise IncompleteResponse(f"the response for {self.uri(key)} has a cut sha256 header ({sha!r})")
        return ObjectInfo(key, int(length), sha or "")

    def _foreign(self, key: str) -> IntegrityError:
        return IntegrityError(
            f"{self.uri(key)} has no sha256 metadata: it was not written by trashseg; upload it "
            "with `trashseg data` commands or ObjectStore.put_file so downloads can be verified"
        )

    def _head(self, key: str) -> ObjectInfo:
        from minio.error import S3Error

        try:
            stat = self.client.stat_object(self.bucket, self._name(key))
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchBucket", "ResponseCode404"):
                raise ObjectNotFound(f"no object {self.uri(key)} ({error.code})") from error
            raise
        # minio reads a missing Content-Length as size 0: judge the raw headers instead.
        return self._recorded(key, {k.lower(): v for k, v in (stat.metadata or {}).items()})

    def stat(self, key: str) -> ObjectInfo:
        key = check_key(key)

        def attempt() -> ObjectInfo:
            recorded = self._head(key)
            if not recorded.sha256:
                recorded = self._head(key)  # the header may have been cut in transit: ask again
                if not recorded.sha256:
                    raise self._foreign(key)
            return recorded

        return self._run(f"stat {self.uri(key)}", attempt)

    def keys(self, prefix: str = "") -> list[str]:
        name = self._name(check_key(prefix)) if prefix else self.prefix
        names = self._run(
            f"list {self.uri(prefix)}",
            lambda: [
                o.object_name
                for o in self.client.list_objects(self.bucket, prefix=name + "/" if name else None, recursive=True)
            ],
        )
        return sorted(self._key(n) for n in names)

    def delete(self, key: str) -> None:
        key = check_key(key)
        self._run(f"delete {self.uri(key)}", lambda: self.client.remove_object(self.bucket, self._name(key)))

    def remove_listed(self, key: str) -> None:
        # DeleteObjects carries the name in its XML body, not the URL path, so no client or
        # proxy can normalise `a/../b` into another object's name (minio refuses `..` names
        # in paths for that reason).
        from minio.deleteobjects import DeleteObject

        name = f"{self.prefix}/{key}" if self.prefix else key

        def attempt() -> None:
            errors = list(self.client.remove_objects(self.bucket, [DeleteObject(name)]))
            if errors:
                raise StorageError(f"cannot delete {self.uri(key)!r}: {errors[0].code} {errors[0].message}")

        self._run(f"delete {self.uri(key)!r}", attempt)


def is_s3(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def split_s3(location: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    if not is_s3(location):
        raise DataError(f"{location!r} is not an s3:// location; expected s3://bucket/prefix")
    bucket, _, key = location[len("s3://"):].partition("/")
    if not bucket:
        raise DataError(f"{location!r} names no bucket; expected s3://bucket/prefix")
    return bucket, key.strip("/")
