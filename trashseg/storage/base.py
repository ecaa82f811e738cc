"""The object store interface every backend implements, its errors and its retry policy.

Guarantees, the same on every backend:
- every object carries its sha256 (S3: `x-amz-meta-sha256`; local: a sidecar under
  `.trashseg-meta/`), and every download is checked against it into a temporary file that
  is renamed into place only when size and checksum match: a corrupt or truncated object
  raises `IntegrityError` and is never used;
- an object appears under its final key only complete (S3 PUT and multipart-complete are
  atomic; the local backend writes a temporary file and renames it);
- transient failures (connection resets, responses cut short, 5xx, SlowDown, timeouts) are
  retried with exponential backoff (`RetryPolicy`), each retry logged as it happens, until
  the attempts or the operation's deadline run out; anything else raises at once;
- `create_only` writes (`put_bytes(..., create_only=True)`) fail with `ObjectExists` when
  the key is taken, atomically: of two concurrent writers exactly one wins;
- local writes never leave a partial file under its final name; a failed one (disk full,
  read-only) raises `LocalWriteError` naming the path and the free space there.

A backend implements `_upload`, `_download`, `stat`, `keys` and `delete`; the checked
file, bytes, JSON and folder transfers are written once here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from trashseg.errors import ConfigError, DataError, UserError
from trashseg.fileio import free_space
from trashseg.progress import Progress

log = logging.getLogger(__name__)

SHA256_METADATA = "sha256"  # stored as the x-amz-meta-sha256 header on S3
LOCAL_META_DIR = ".trashseg-meta"
CHUNK = 1024 * 1024

T = TypeVar("T")


class StorageError(UserError):
    """The object store cannot be reached or refuses a request."""


class IntegrityError(DataError):
    """An object's bytes do not match the size or sha256 recorded when it was written."""


class ObjectNotFound(DataError):
    """No object under the requested key."""


class ObjectExists(DataError):
    """A create-only write found its key already taken."""


class LocalWriteError(UserError):
    """A local file could not be written (disk full, quota, read-only); its partial is removed."""


# errnos that mean "this destination cannot take the write" rather than a network fault.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


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

    def run(self, what: str, operation: Callable[[], T], is_transient: Callable[[BaseException], bool],
            *, deadline: Callable[[], float] | None = None) -> T:
        """operation() until it succeeds; `deadline()` (a time.monotonic() value, which a
        transfer may push back once it knows its size) ends the retries early."""
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
                if deadline is not None and time.monotonic() + delay >= deadline():
                    raise StorageError(
                        f"{what} gave up at its deadline after {attempt} attempt(s), last with "
                        f"{type(error).__name__}: {error}; check that the object store is up and reachable "
                        "(TRASHSEG_S3_ENDPOINT), or allow more time with TRASHSEG_S3_DEADLINE_S"
                    ) from error
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


def check_key(key: str) -> str:
    key = key.strip("/")
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or parts[0] == LOCAL_META_DIR or key.endswith(".partial"):
        raise DataError(
            f"invalid object key {key!r}: expected a relative '/'-separated path without '.', '..', "
            f"empty parts, a leading {LOCAL_META_DIR} or a .partial suffix (reserved for transfers)"
        )
    return key


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def safe_join(root: str | Path, relative: str, *, what: str = "path") -> Path:
    """root/relative, refusing any `relative` that could land outside root.

    Names that come from a store (manifest entries, listed keys) are untrusted: an absolute
    path, a `..`, a backslash or a symlinked folder under root would otherwise escape it."""
    parts = relative.split("/")
    if (not relative or relative.startswith("/") or "\\" in relative or "\0" in relative
            or any(p in ("", ".", "..") for p in parts) or (len(parts[0]) > 1 and parts[0][1] == ":")):
        raise DataError(
            f"refusing {what} {relative!r}: expected a relative '/'-separated path without '.', '..', "
            "empty parts, backslashes or a drive letter, which stays inside the destination"
        )
    root = Path(root)
    path = root / relative
    resolved_root = root.resolve()
    if not path.resolve().is_relative_to(resolved_root):
        raise DataError(f"refusing {what} {relative!r}: it resolves to {path.resolve()}, outside {resolved_root} "
                        "(a symlinked folder); remove the symlink or pull into a fresh folder")
    return path


@contextlib.contextmanager
def reporting_write_errors(dest: Path) -> Iterator[None]:
    """Turn a failed local write (disk full, quota, read-only) into LocalWriteError with the facts.

    Unlike `fileio.temp_path`, other OS errors pass unchanged: a connection reset while a
    download streams into a file is the network's fault, and the retry logic needs it as is."""
    try:
        yield
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise
        full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        fix = "free space there" if full else "make that folder writable"
        raise LocalWriteError(
            f"cannot write {dest}: {error.strerror or error} ({free_space(dest.parent)} free on {dest.parent}); the partial file was "
            f"removed: {fix} (or choose another destination) and run the command again"
        ) from error


@contextlib.contextmanager
def temp_beside(dest: Path) -> Iterator[Path]:
    """A temporary path in dest's folder (same filesystem, so the final rename is atomic).

    The temporary is removed whatever happens; a write error becomes LocalWriteError."""
    with reporting_write_errors(dest):
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
    def _upload(self, src: Path, key: str, size: int, sha256: str, *, create_only: bool = False) -> None:
        """Make `key` hold src's bytes with the given checksum, appearing only when complete.

        create_only: raise ObjectExists instead when the key exists, atomically."""

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

    def remove_listed(self, key: str) -> None:
        """Delete an object by the exact name a listing gave, even one `check_key` refuses (a
        stray `..` key another tool wrote): the name is never resolved as a path. Backends
        whose listings cannot hold such names (a local folder) need nothing more than delete."""
        self.delete(key)

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

    def put_file(self, src: str | Path, key: str, *, create_only: bool = False) -> ObjectInfo:
        src = Path(src)
        if not src.is_file():
            raise DataError(f"cannot upload {src}: not a file")
        key = check_key(key)
        info = ObjectInfo(key, src.stat().st_size, sha256_file(src))
        self._upload(src, key, info.size, info.sha256, create_only=create_only)
        return info

    def get_file(self, key: str, dest: str | Path) -> ObjectInfo:
        """Download to dest, verified; dest is untouched unless the bytes check out."""
        key = check_key(key)
        dest = Path(dest)
        with temp_beside(dest) as tmp:
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

    def put_bytes(self, data: bytes, key: str, *, create_only: bool = False) -> ObjectInfo:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "object"
            with reporting_write_errors(path):
                path.write_bytes(data)
            return self.put_file(path, key, create_only=create_only)

    def get_bytes(self, key: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "object"
            self.get_file(key, path)
            return path.read_bytes()

    def put_json(self, value: object, key: str, *, create_only: bool = False) -> ObjectInfo:
        return self.put_bytes(json.dumps(value, indent=2, sort_keys=True).encode(), key, create_only=create_only)

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
            info = self.put_file(path, join_key(prefix, path.relative_to(src).as_posix()))
            infos.append(info)
            progress.update(1)
        return infos

    def get_folder(self, prefix: str, dest: str | Path) -> list[ObjectInfo]:
        """Download every object under prefix into dest/<key relative to prefix>."""
        prefix = check_key(prefix)
        keys = self.keys(prefix)
        if not keys:
            raise ObjectNotFound(f"no objects under {self.uri(prefix)}")
        progress = Progress(len(keys), f"download {self.uri(prefix)} -> {dest}", unit="files")
        infos = []
        for key in keys:
            infos.append(self.get_file(key, safe_join(dest, key[len(prefix) + 1:], what=f"key {self.uri(key)}")))
            progress.update(1)
        return infos
