"""Object storage: one interface, two backends (a local folder, and S3 through `minio`).

A location is either a local path or `s3://bucket/prefix`; `open_store(location)` gives an
`ObjectStore` rooted there, `fetch`/`publish` move a file or folder between any location
and the local disk. Keys are `/`-separated and relative to the store's root.

Guarantees, the same on both backends:
- every object carries its sha256 (S3: `x-amz-meta-sha256`; local: a sidecar under
  `.trashseg-meta/`), and every download is checked against it into a temporary file that
  is renamed into place only when size and checksum match: a corrupt or truncated object
  raises `IntegrityError` and is never used;
- an object appears under its final key only complete (S3 PUT and multipart-complete are
  atomic; the local backend writes a temporary file and renames it);
- transient failures (connection resets, 5xx, SlowDown) are retried with exponential
  backoff (`RetryPolicy`), each retry logged; anything else raises at once.

Dataset versions (`push_dataset`, `pull_dataset`, `list_versions`) are content-addressed
by `trashseg.data.prepare.dataset_hash`:

    datasets/<version>/files/<relative path>    the dataset's files
    datasets/<version>/manifest.json            written last: a version exists once this does

An inbox collects new labeled batches for retraining:

    inbox/<batch>/images/<file_name>            the batch's images (COCO file_name relative to images/)
    inbox/<batch>/annotations.json              written last: a batch is complete once this does

Each version's manifest lists the inbox batches it includes, so the batches "newer than a
version" are exactly the complete batches it does not include (`new_batches`), whatever
their names or upload times. `absorb_inbox` merges them into a new version.

S3 connection settings come from the environment (names in `trashseg.secrets`), which
the pipelines fill from Kubernetes Secrets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TypeVar

from trashseg import secrets
from trashseg.data.prepare import dataset_hash
from trashseg.errors import ConfigError, DataError, UserError
from trashseg.progress import Progress

log = logging.getLogger(__name__)

SHA256_METADATA = "sha256"  # stored as the x-amz-meta-sha256 header on S3
LOCAL_META_DIR = ".trashseg-meta"
DATASETS_PREFIX = "datasets"
INBOX_PREFIX = "inbox"
MANIFEST_NAME = "manifest.json"
BATCH_ANNOTATIONS = "annotations.json"
CHUNK = 1024 * 1024
DEFAULT_PART_SIZE = 64 * 1024 * 1024  # S3 multipart part size; minio's minimum is 5 MiB
# S3 error codes that mean "try again later", not "your request is wrong".
TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed",
     "OperationAborted", "ThrottlingException"}
)

T = TypeVar("T")


class StorageError(UserError):
    """The object store cannot be reached or refuses a request."""


class IntegrityError(DataError):
    """An object's bytes do not match the size or sha256 recorded when it was written."""


class ObjectNotFound(DataError):
    """No object under the requested key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `attempts` tries; waits backoff_s * 2**n (capped, with jitter) in between."""

    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError(
                f"RetryPolicy backoff must be >= 0, got backoff_s={self.backoff_s}, max_backoff_s={self.max_backoff_s}"
            )

    def delay(self, retry: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2**retry)
        return base * (0.5 + random.random() / 2)  # jitter: clients retrying together spread out

    def run(self, what: str, operation: Callable[[], T], is_transient: Callable[[BaseException], bool]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return operation()
            except Exception as error:
                if not is_transient(error):
                    raise
                if attempt == self.attempts:
                    raise StorageError(
                        f"{what} failed {self.attempts} times, last with {type(error).__name__}: {error}; "
                        "check that the object store is up and reachable (TRASHSEG_S3_ENDPOINT)"
                    ) from error
                delay = self.delay(attempt - 1)
                log.warning(
                    "%s: transient %s (%s); retry %d/%d in %.2fs",
                    what, type(error).__name__, error, attempt, self.attempts - 1, delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_key(key: str) -> str:
    key = key.strip("/")
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or parts[0] == LOCAL_META_DIR or key.endswith(".partial"):
        raise DataError(
            f"invalid object key {key!r}: expected a relative '/'-separated path without '.', '..', "
            f"empty parts, a leading {LOCAL_META_DIR} or a .partial suffix (reserved for transfers)"
        )
    return key


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


@contextlib.contextmanager
def _temp_beside(dest: Path) -> Iterator[Path]:
    """A temporary path in dest's folder (same filesystem, so the final rename is atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


class ObjectStore(ABC):
    """Files in, files out, each checked; see the module docstring for the guarantees."""

    location: str

    # --- what a backend implements ---------------------------------------------------
    @abstractmethod
    def _upload(self, src: Path, key: str, size: int, sha256: str) -> None:
        """Make `key` hold src's bytes with the given checksum, appearing only when complete."""

    @abstractmethod
    def _download(self, key: str, out: IO[bytes]) -> ObjectInfo:
        """Write the object's bytes to `out`; return what was recorded when it was written."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """The object's recorded size and sha256; ObjectNotFound when absent."""

    @abstractmethod
    def keys(self, prefix: str = "") -> list[str]:
        """Keys of every object under the folder `prefix` (recursively), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; absent objects are fine."""

    # --- shared behaviour ------------------------------------------------------------
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under the folder `prefix` with its recorded size and sha256."""
        return [self.stat(key) for key in self.keys(prefix)]

    def uri(self, key: str = "") -> str:
        return f"{self.location.rstrip('/')}/{key}" if key else self.location

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def put_file(self, src: str | Path, key: str) -> ObjectInfo:
        src = Path(src)
        if not src.is_file():
            raise DataError(f"cannot upload {src}: not a file")
        key = _check_key(key)
        info = ObjectInfo(key, src.stat().st_size, sha256_file(src))
        self._upload(src, key, info.size, info.sha256)
        return info

    def get_file(self, key: str, dest: str | Path) -> ObjectInfo:
        """Download to dest, verified; dest is untouched unless the bytes check out."""
        key = _check_key(key)
        dest = Path(dest)
        with _temp_beside(dest) as tmp:
            with open(tmp, "wb") as out:
                recorded = self._download(key, out)
            size, sha = tmp.stat().st_size, sha256_file(tmp)
            if (size, sha) != (recorded.size, recorded.sha256):
                raise IntegrityError(
                    f"{self.uri(key)} is corrupt or truncated: got {size} bytes with sha256 {sha}, "
                    f"expected {recorded.size} bytes with sha256 {recorded.sha256} (recorded at upload); "
                    "re-upload it from a good copy"
                )
            os.replace(tmp, dest)
        return recorded

    def put_bytes(self, data: bytes, key: str) -> ObjectInfo:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "object"
            path.write_bytes(data)
            return self.put_file(path, key)

    def get_bytes(self, key: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "object"
            self.get_file(key, path)
            return path.read_bytes()

    def put_json(self, value: object, key: str) -> ObjectInfo:
        return self.put_bytes(json.dumps(value, indent=2, sort_keys=True).encode(), key)

    def get_json(self, key: str) -> object:
        return json.loads(self.get_bytes(key))

    def put_folder(self, src: str | Path, prefix: str) -> list[ObjectInfo]:
        """Upload every file under src to prefix/<relative path>."""
        src = Path(src)
        if not src.is_dir():
            raise DataError(f"cannot upload {src}: not a folder")
        files = [p for p in sorted(src.rglob("*")) if p.is_file()]
        progress = Progress(len(files), f"upload {src} -> {self.uri(prefix)}", unit="files")
        infos = []
        for path in files:
            info = self.put_file(path, _join(prefix, path.relative_to(src).as_posix()))
            infos.append(info)
            progress.update(1)
        return infos

    def get_folder(self, prefix: str, dest: str | Path) -> list[ObjectInfo]:
        """Download every object under prefix into dest/<key relative to prefix>."""
        prefix = _check_key(prefix)
        keys = self.keys(prefix)
        if not keys:
            raise ObjectNotFound(f"no objects under {self.uri(prefix)}")
        progress = Progress(len(keys), f"download {self.uri(prefix)} -> {dest}", unit="files")
        infos = []
        for key in keys:
            infos.append(self.get_file(key, Path(dest) / key[len(prefix) + 1:]))
            progress.update(1)
        return infos


class LocalStore(ObjectStore):
    """A folder on disk: the embedded default, and the shape of a mounted volume."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.location = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _meta_path(self, key: str) -> Path:
        return self.root / LOCAL_META_DIR / f"{key}.json"

    def _upload(self, src: Path, key: str, size: int, sha256: str) -> None:
        dest = self._path(key)
        # The checksum sidecar goes first: a reader never sees new bytes with an old checksum
        # accepted (at worst old bytes with the new checksum, which fails verification).
        meta = self._meta_path(key)
        with _temp_beside(meta) as tmp:
            tmp.write_text(json.dumps({"size": size, SHA256_METADATA: sha256}))
            os.replace(tmp, meta)
        with _temp_beside(dest) as tmp:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)

    def _recorded(self, key: str) -> ObjectInfo:
        path, meta = self._path(key), self._meta_path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {self.uri(key)}")
        if not meta.is_file():
            raise IntegrityError(
                f"{self.uri(key)} has no recorded checksum ({meta} missing): it was not written by "
                "trashseg; upload it with `trashseg data` commands or ObjectStore.put_file"
            )
        recorded = json.loads(meta.read_text())
        return ObjectInfo(key, int(recorded["size"]), recorded[SHA256_METADATA])

    def _download(self, key: str, out: IO[bytes]) -> ObjectInfo:
        recorded = self._recorded(key)
        with open(self._path(key), "rb") as f:
            shutil.copyfileobj(f, out, CHUNK)
        return recorded

    def stat(self, key: str) -> ObjectInfo:
        return self._recorded(_check_key(key))

    def keys(self, prefix: str = "") -> list[str]:
        base = self._path(_check_key(prefix)) if prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(self.root).as_posix()
            # In-flight temporaries (.partial) are not objects yet.
            if path.is_file() and not rel.startswith(LOCAL_META_DIR + "/") and not path.name.endswith(".partial"):
                keys.append(rel)
        return keys

    def delete(self, key: str) -> None:
        key = _check_key(key)
        self._path(key).unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)


@dataclass(frozen=True)
class S3Settings:
    """How to reach the S3 endpoint. `from_env` reads the variables named in trashseg.secrets."""

    endpoint: str  # host:port
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    secure: bool = True
    region: str | None = None

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
        return cls(endpoint, access or None, secret or None, secure, env.get(secrets.ENV_REGION) or None)


def _parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; expected true or false")


def _is_transient(error: BaseException) -> bool:
    import urllib3.exceptions
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(error, S3Error):
        return error.code in TRANSIENT_S3_CODES
    if isinstance(error, ServerError):
        return error.status_code >= 500
    if isinstance(error, InvalidResponseError):  # a proxy's or load balancer's non-XML error page
        status = getattr(error, "_code", 0)  # minio keeps the HTTP status only here
        return status == 429 or status >= 500
    return isinstance(
        error, ConnectionError | TimeoutError | urllib3.exceptions.HTTPError
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
        timeout_s: float = 300.0,
    ) -> None:
        import urllib3
        from minio import Minio

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = "s3://" + _join(bucket, self.prefix)
        self.settings = settings or S3Settings.from_env()
        self.retry = retry or RetryPolicy()
        self.part_size = part_size
        # Retries are ours alone (RetryPolicy), so urllib3's own are off: one policy, one log line each.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 30.0), read=timeout_s),
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
        return _join(self.prefix, key)

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1:] if self.prefix else name

    def _run(self, what: str, operation: Callable[[], T]) -> T:
        return self.retry.run(what, operation, _is_transient)

    def ensure_bucket(self) -> bool:
        """Create the bucket if missing; True when it was created."""
        if self._run(f"check bucket {self.bucket}", lambda: self.client.bucket_exists(self.bucket)):
            return False
        region = self.settings.region or "us-east-1"
        self._run(f"create bucket {self.bucket}", lambda: self.client.make_bucket(self.bucket, location=region))
        return True

    def _upload(self, src: Path, key: str, size: int, sha256: str) -> None:
        self._run(
            f"upload {src} -> {self.uri(key)}",
            lambda: self.client.fput_object(
                self.bucket, self._name(key), str(src),
                metadata={SHA256_METADATA: sha256}, part_size=self.part_size,
            ),
        )

    def _download(self, key: str, out: IO[bytes]) -> ObjectInfo:
        def attempt() -> ObjectInfo:
            out.seek(0)
            out.truncate()
            response = self._get(key)
            try:
                recorded = self._recorded(key, response.headers)
                for chunk in response.stream(CHUNK):
                    out.write(chunk)
            finally:
                response.close()
                response.release_conn()
            return recorded

        return self._run(f"download {self.uri(key)}", attempt)

    def _get(self, key: str):
        from minio.error import S3Error

        try:
            return self.client.get_object(self.bucket, self._name(key))
        except S3Error as error:
            if error.code in ("NoSuchKey", "NoSuchBucket"):
                raise ObjectNotFound(f"no object {self.uri(key)} ({error.code})") from error
            raise

    def _recorded(self, key: str, headers: Mapping[str, str]) -> ObjectInfo:
        sha = headers.get(f"x-amz-meta-{SHA256_METADATA}")
        if not sha:
            raise IntegrityError(
                f"{self.uri(key)} has no sha256 metadata: it was not written by trashseg; upload it "
                "with `trashseg data` commands or ObjectStore.put_file so downloads can be verified"
            )
        return ObjectInfo(key, int(headers["content-length"]), sha)

    def stat(self, key: str) -> ObjectInfo:
        from minio.error import S3Error

        key = _check_key(key)

        def attempt() -> ObjectInfo:
            try:
                stat = self.client.stat_object(self.bucket, self._name(key))
            except S3Error as error:
                if error.code in ("NoSuchKey", "NoSuchBucket", "ResponseCode404"):
                    raise ObjectNotFound(f"no object {self.uri(key)} ({error.code})") from error
                raise
            headers = {k.lower(): v for k, v in (stat.metadata or {}).items()}
            headers["content-length"] = str(stat.size)
            return self._recorded(key, headers)

        return self._run(f"stat {self.uri(key)}", attempt)

    def keys(self, prefix: str = "") -> list[str]:
        name = self._name(_check_key(prefix)) if prefix else self.prefix
        names = self._run(
            f"list {self.uri(prefix)}",
            lambda: [
                o.object_name
                for o in self.client.list_objects(self.bucket, prefix=name + "/" if name else None, recursive=True)
            ],
        )
        return sorted(self._key(n) for n in names)

    def delete(self, key: str) -> None:
        key = _check_key(key)
        self._run(f"delete {self.uri(key)}", lambda: self.client.remove_object(self.bucket, self._name(key)))


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


def open_store(location: str | Path, *, settings: S3Settings | None = None, retry: RetryPolicy | None = None,
               part_size: int = DEFAULT_PART_SIZE) -> ObjectStore:
    """The store rooted at a local folder or at `s3://bucket/prefix` (settings from env by default)."""
    if is_s3(location):
        bucket, prefix = split_s3(str(location))
        return S3Store(bucket, prefix, settings=settings, retry=retry, part_size=part_size)
    return LocalStore(location)


def fetch(location: str | Path, dest: str | Path, **store_options) -> Path:
    """A local path holding the file or folder at `location`.

    Local paths are returned as they are (no copy); s3:// files and folders are downloaded,
    verified, into dest.
    """
    if not is_s3(location):
        path = Path(location)
        if not path.exists():
            raise DataError(f"{path} does not exist; expected a local file/folder or an s3://bucket/key location")
        return path
    bucket, key = split_s3(str(location))
    parent, _, name = key.rpartition("/")
    store = open_store(f"s3://{bucket}/{parent}", **store_options)
    if not name:
        raise DataError(f"{location!r} names a whole bucket; expected s3://bucket/key")
    dest = Path(dest)
    if store.keys(name):  # a folder: objects below name/
        store.get_folder(name, dest)
    else:
        store.get_file(name, dest)
    return dest


def publish(src: str | Path, location: str | Path, **store_options) -> str:
    """Copy a local file or folder to a local path or s3:// location; returns the location."""
    src = Path(src)
    if not src.exists():
        raise DataError(f"cannot publish {src}: it does not exist")
    if not is_s3(location):
        dest = Path(location)
        if src.resolve() == dest.resolve():
            return str(dest)
        if src.is_dir():
            if dest.exists():
                raise DataError(f"cannot publish folder {src} to {dest}: it already exists; choose a new location")
            # Copied beside dest, then renamed: dest never holds a partial copy.
            partial = dest.with_name(f".{dest.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(src, partial)
            os.replace(partial, dest)
        else:
            with _temp_beside(dest) as tmp:
                shutil.copyfile(src, tmp)
                os.replace(tmp, dest)
        return str(dest)
    bucket, key = split_s3(str(location))
    store = open_store(f"s3://{bucket}", **store_options)
    if src.is_dir():
        store.put_folder(src, key)
    else:
        store.put_file(src, key)
    return str(location)


# --- dataset versions ---------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetManifest:
    version: str
    created: str
    files: tuple[ObjectInfo, ...]
    inbox_batches: tuple[str, ...] = ()
    parent: str | None = None

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "created": self.created,
            "parent": self.parent,
            "inbox_batches": list(self.inbox_batches),
            "files": [{"path": f.key, "size": f.size, "sha256": f.sha256} for f in self.files],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> DatasetManifest:
        return cls(
            version=data["version"],
            created=data["created"],
            files=tuple(ObjectInfo(f["path"], int(f["size"]), f["sha256"]) for f in data["files"]),
            inbox_batches=tuple(data.get("inbox_batches", ())),
            parent=data.get("parent"),
        )

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _version_prefix(version: str) -> str:
    return _join(DATASETS_PREFIX, version)


def push_dataset(
    folder: str | Path,
    store: ObjectStore,
    *,
    inbox_batches: Sequence[str] = (),
    parent: str | None = None,
) -> DatasetManifest:
    """Upload a dataset folder as a content-addressed version; files first, manifest last.

    Pushing a version that already exists uploads nothing and returns its manifest.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist or is not a folder")
    version = dataset_hash(folder)
    manifest_key = _join(_version_prefix(version), MANIFEST_NAME)
    if store.exists(manifest_key):
        log.info("dataset version %s already in %s; nothing to upload", version, store.uri())
        return read_manifest(store, version)
    files_prefix = _join(_version_prefix(version), "files")
    uploaded = store.put_folder(folder, files_prefix)
    files = tuple(ObjectInfo(i.key[len(files_prefix) + 1:], i.size, i.sha256) for i in uploaded)
    manifest = DatasetManifest(
        version=version,
        created=datetime.now(UTC).isoformat(timespec="microseconds"),
        files=files,
        inbox_batches=tuple(sorted(set(inbox_batches))),
        parent=parent,
    )
    store.put_json(manifest.to_dict(), manifest_key)
    log.info("pushed dataset version %s (%d files, %d bytes) to %s", version, len(files), manifest.total_bytes, store.uri())
    return manifest


def read_manifest(store: ObjectStore, version: str) -> DatasetManifest:
    key = _join(_version_prefix(version), MANIFEST_NAME)
    if not store.exists(key):
        known = [m.version for m in list_versions(store)]
        raise DataError(
            f"dataset version {version!r} not found in {store.uri()}; known versions: "
            f"{', '.join(known) or 'none (push one with `trashseg data push`)'}"
        )
    return DatasetManifest.from_dict(store.get_json(key))


def list_versions(store: ObjectStore) -> list[DatasetManifest]:
    """Complete versions (those with a manifest), oldest first."""
    manifests = [
        DatasetManifest.from_dict(store.get_json(key))
        for key in store.keys(DATASETS_PREFIX)
        if key.count("/") == 2 and key.endswith("/" + MANIFEST_NAME)
    ]
    return sorted(manifests, key=lambda m: (m.created, m.version))


def resolve_version(store: ObjectStore, version: str) -> str:
    """`latest` -> the newest version's hash; a hash is returned as it is."""
    if version != "latest":
        return version
    versions = list_versions(store)
    if not versions:
        raise DataError(f"no dataset versions in {store.uri()}; push one with `trashseg data push`")
    return versions[-1].version


def pull_dataset(store: ObjectStore, version: str, dest: str | Path) -> DatasetManifest:
    """Download a version into dest; every file is checked against the manifest."""
    manifest = read_manifest(store, resolve_version(store, version))
    dest = Path(dest)
    files_prefix = _join(_version_prefix(manifest.version), "files")
    progress = Progress(len(manifest.files), f"pull dataset {manifest.version}", unit="files")
    for expected in manifest.files:
        got = store.get_file(_join(files_prefix, expected.key), dest / expected.key)
        if (got.size, got.sha256) != (expected.size, expected.sha256):
            raise IntegrityError(
                f"{store.uri(_join(files_prefix, expected.key))} does not match dataset version "
                f"{manifest.version}'s manifest (sha256 {got.sha256}, expected {expected.sha256}); "
                "the version was modified after it was pushed — push the dataset again"
            )
        progress.update(1)
    return manifest


# --- inbox of new labeled batches ---------------------------------------------------------


def push_batch(folder: str | Path, store: ObjectStore, batch: str) -> list[ObjectInfo]:
    """Upload a labeled batch (folder with annotations.json + images/) to the inbox.

    Images go first and the annotation file last, so a batch is listed only once complete.
    """
    folder = Path(folder)
    annotations = folder / BATCH_ANNOTATIONS
    if not annotations.is_file() or not (folder / "images").is_dir():
        raise DataError(
            f"batch folder {folder} must hold {BATCH_ANNOTATIONS} (COCO) and images/ "
            "(the images at their COCO file_name)"
        )
    _check_key(batch)
    if "/" in batch:
        raise DataError(f"batch name {batch!r} must not contain '/'")
    prefix = _join(INBOX_PREFIX, batch)
    infos = store.put_folder(folder / "images", _join(prefix, "images"))
    infos.append(store.put_file(annotations, _join(prefix, BATCH_ANNOTATIONS)))
    return infos


def list_batches(store: ObjectStore) -> list[str]:
    """Complete inbox batches (those with an annotation file), by name."""
    return sorted(
        key.split("/")[1]
        for key in store.keys(INBOX_PREFIX)
        if key.count("/") == 2 and key.endswith("/" + BATCH_ANNOTATIONS)
    )


def new_batches(store: ObjectStore, version: str) -> list[str]:
    """Complete inbox batches that dataset `version` does not include yet."""
    included = set(read_manifest(store, resolve_version(store, version)).inbox_batches)
    return [b for b in list_batches(store) if b not in included]


def pull_batch(store: ObjectStore, batch: str, dest: str | Path) -> Path:
    dest = Path(dest)
    store.get_folder(_join(INBOX_PREFIX, batch), dest)
    return dest


def merge_batches(dataset: str | Path, batches: Mapping[str, str | Path], out: str | Path,
                  *, into: str) -> dict[str, int]:
    """Copy dataset to out and append each batch's images and annotations to its `into` file.

    `into` is the COCO annotation file (relative to the dataset folder) that receives the
    new labels. Batch images are placed at `inbox/<batch>/<file_name>` and their
    file_name rewritten to that path, so names never collide; image and annotation ids
    are renumbered after the current maximum. Categories are matched by name; a batch
    with a category the dataset does not have is rejected (nothing is dropped).
    Returns the number of images added per batch.
    """
    dataset, out = Path(dataset), Path(out)
    target = dataset / into
    if not target.is_file():
        raise DataError(f"annotation file {into!r} not found in {dataset}; expected a COCO file to merge batches into")
    if out.exists():
        raise DataError(f"merge output {out} already exists; choose an empty location")
    shutil.copytree(dataset, out)
    coco = json.loads(target.read_text())
    categories = {c["name"]: c["id"] for c in coco.get("categories", [])}
    next_image = max((im["id"] for im in coco.get("images", [])), default=0) + 1
    next_ann = max((a["id"] for a in coco.get("annotations", [])), default=0) + 1
    added: dict[str, int] = {}
    for batch, batch_dir in sorted(batches.items()):
        batch_dir = Path(batch_dir)
        batch_coco = json.loads((batch_dir / BATCH_ANNOTATIONS).read_text())
        category_map = {}
        for category in batch_coco.get("categories", []):
            if category["name"] not in categories:
                raise DataError(
                    f"batch {batch!r} has category {category['name']!r}, which the dataset does not have; "
                    f"expected one of: {', '.join(categories)}; fix the batch's categories"
                )
            category_map[category["id"]] = categories[category["name"]]
        image_map = {}
        for image in batch_coco.get("images", []):
            src = batch_dir / "images" / image["file_name"]
            if not src.is_file():
                raise DataError(f"batch {batch!r} lists image {image['file_name']!r} but {src} is missing")
            file_name = _check_key(_join(INBOX_PREFIX, batch, image["file_name"]))  # no escaping out
            (out / file_name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out / file_name)
            image_map[image["id"]] = next_image
            coco.setdefault("images", []).append({**image, "id": next_image, "file_name": file_name})
            next_image += 1
        for ann in batch_coco.get("annotations", []):
            if ann["image_id"] not in image_map or ann["category_id"] not in category_map:
                raise DataError(
                    f"batch {batch!r} annotation {ann.get('id')} refers to image {ann['image_id']} / "
                    f"category {ann['category_id']}, which the batch does not define; fix its annotations"
                )
            coco.setdefault("annotations", []).append(
                {**ann, "id": next_ann, "image_id": image_map[ann["image_id"]],
                 "category_id": category_map[ann["category_id"]]}
            )
            next_ann += 1
        added[batch] = len(image_map)
    (out / into).write_text(json.dumps(coco))
    return added


def absorb_inbox(store: ObjectStore, version: str, workdir: str | Path, *, into: str) -> DatasetManifest | None:
    """New version = `version` + every inbox batch it does not include; None when there is none.

    The retrain pipeline calls this: its result's `version` is the next run's dataset
    parameter, so KFP's cache keys on the data.
    """
    base = read_manifest(store, resolve_version(store, version))
    batches = new_batches(store, base.version)
    if not batches:
        log.info("no new inbox batches since dataset version %s", base.version)
        return None
    workdir = Path(workdir)
    base_dir = workdir / "base"
    pull_dataset(store, base.version, base_dir)
    batch_dirs = {b: pull_batch(store, b, workdir / "batches" / b) for b in batches}
    merged = workdir / "merged"
    added = merge_batches(base_dir, batch_dirs, merged, into=into)
    log.info("merged inbox batches into %s: %s", into, ", ".join(f"{b} (+{n} images)" for b, n in added.items()))
    return push_dataset(merged, store, inbox_batches=(*base.inbox_batches, *batches), parent=base.version)
