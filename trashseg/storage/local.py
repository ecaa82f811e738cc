"""The local-folder backend: the embedded default, and the shape of a mounted volume.

An object is two files, its bytes at ROOT/<key> and its checksum at
ROOT/.trashseg-meta/<key>.json. Writers of a key serialise on an exclusive lock
(ROOT/.trashseg-meta/<key>.lock, flock: released when the process dies) and rename both
files into place under it; readers take the shared lock to read the checksum and open the
bytes. So no reader ever sees a checksum and bytes from different writes, and two
concurrent writers of one key end with one writer's complete object, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from trashseg.storage.base import (
    CHUNK,
    LOCAL_META_DIR,
    SHA256_METADATA,
    IntegrityError,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StorageError,
    check_key,
    reporting_write_errors,
    temp_beside,
)


class LocalStore(ObjectStore):
    """A folder on disk: the embedded default, and the shape of a mounted volume."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.location = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(
                f"store location {root} is a file, not a folder: give a folder (created if absent) or s3://bucket/prefix"
            )

    def _path(self, key: str) -> Path:
        return self.root / key

    def _meta_path(self, key: str) -> Path:
        return self.root / LOCAL_META_DIR / f"{key}.json"

    @contextlib.contextmanager
    def _locked(self, key: str, *, exclusive: bool) -> Iterator[None]:
        lock = self.root / LOCAL_META_DIR / f"{key}.lock"
        try:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the key's first lock: make its folder (rarely, so not each time)
                lock.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            if not exclusive and error.errno in (errno.EROFS, errno.EACCES):
                yield  # a read-only store: nobody can write it, so reading needs no lock
                return
            with reporting_write_errors(lock):
                raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _upload(self, src: Path, key: str, size: int, sha256: str, *, create_only: bool = False) -> None:
        dest, meta = self._path(key), self._meta_path(key)
        # Both temporaries are complete before either rename, and the renames happen under
        # the key's lock, so a failure (disk full) leaves the old object whole.
        with temp_beside(meta) as meta_tmp, temp_beside(dest) as data_tmp:
            meta_tmp.write_text(json.dumps({"size": size, SHA256_METADATA: sha256}))
            shutil.copyfile(src, data_tmp)
            with self._locked(key, exclusive=True):
                if create_only and dest.is_file():
                    raise ObjectExists(f"{self.uri(key)} already exists; it is written once and never replaced")
                os.replace(meta_tmp, meta)
                os.replace(data_tmp, dest)

    def _recorded(self, key: str) -> ObjectInfo:
        path, meta = self._path(key), self._meta_path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object {self.uri(key)}")
        if not meta.is_file():
            raise IntegrityError(
                f"{self.uri(key)} has no recorded checksum ({meta} missing): it was not written by "
                "trashseg; upload it with `trashseg data` commands or ObjectStore.put_file"
            )
        try:
            recorded = json.loads(meta.read_text())
            return ObjectInfo(key, int(recorded["size"]), str(recorded[SHA256_METADATA]))
        except (ValueError, KeyError, TypeError) as error:
            raise IntegrityError(
                f"{self.uri(key)} has an unreadable checksum record {meta} ({error!r}); re-upload it from a good copy"
            ) from error

    def _download(self, key: str, out: IO[bytes]) -> ObjectInfo:
        with self._locked(key, exclusive=False):
            recorded = self._recorded(key)
            data = open(self._path(key), "rb")  # this inode stays ours even if a writer renames over it
        with data:
            shutil.copyfileobj(data, out, CHUNK)
        return recorded

    def stat(self, key: str) -> ObjectInfo:
        key = check_key(key)
        if not self._path(key).is_file():  # no lock file is made for a mere look-up
            raise ObjectNotFound(f"no object {self.uri(key)}")
        with self._locked(key, exclusive=False):
            recorded = self._recorded(key)
            # The size of the bytes as they are, as S3's HEAD reports it: bytes changed behind
            # the store's back show up as a size that differs from the file pushed.
            return ObjectInfo(key, self._path(key).stat().st_size, recorded.sha256)

    def keys(self, prefix: str = "") -> list[str]:
        base = self._path(check_key(prefix)) if prefix else self.root
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
        key = check_key(key)
        with self._locked(key, exclusive=True):
            self._path(key).unlink(missing_ok=True)
            self._meta_path(key).unlink(missing_ok=True)
