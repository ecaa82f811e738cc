"""The local-folder backend: the embedded default, and the shape of a mounted volume."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import IO

from trashseg.storage.base import (
    CHUNK,
    LOCAL_META_DIR,
    SHA256_METADATA,
    IntegrityError,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    check_key,
    temp_beside,
)


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
        with temp_beside(meta) as tmp:
            tmp.write_text(json.dumps({"size": size, SHA256_METADATA: sha256}))
            os.replace(tmp, meta)
        with temp_beside(dest) as tmp:
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
        return self._recorded(check_key(key))

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
        self._path(key).unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)
