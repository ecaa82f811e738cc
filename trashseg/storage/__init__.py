"""Object storage: one interface (`base`), two backends (`local`, `s3`), and the dataset
versions and inbox kept in a store (`datasets`).

A location is either a local path or `s3://bucket/prefix`; `open_store(location)` gives an
`ObjectStore` rooted there. Keys are `/`-separated and relative to the store's root.
A new backend subclasses `ObjectStore` in its own module and gets a branch in `open_store`.
"""

from __future__ import annotations

from pathlib import Path

from trashseg.storage.base import (
    IntegrityError,
    LocalWriteError,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    RetryPolicy,
    StorageError,
    sha256_file,
)
from trashseg.storage.datasets import (
    DatasetManifest,
    absorb_inbox,
    list_batches,
    list_versions,
    new_batches,
    pull_batch,
    pull_dataset,
    push_batch,
    push_dataset,
    read_manifest,
    resolve_version,
)
from trashseg.storage.local import LocalStore
from trashseg.storage.s3 import DEFAULT_PART_SIZE, S3Settings, S3Store, is_s3, split_s3

__all__ = [
    "DatasetManifest", "IntegrityError", "LocalStore", "LocalWriteError", "ObjectExists", "ObjectInfo",
    "ObjectNotFound", "ObjectStore",
    "RetryPolicy", "S3Settings", "S3Store", "StorageError", "absorb_inbox", "fetch", "is_s3", "list_batches",
    "list_versions", "new_batches", "open_store", "pull_batch", "pull_dataset", "push_batch", "push_dataset",
    "read_manifest", "resolve_version", "sha256_file", "split_s3",
]


def open_store(location: str | Path, *, settings: S3Settings | None = None, retry: RetryPolicy | None = None,
               part_size: int = DEFAULT_PART_SIZE) -> ObjectStore:
    """The store rooted at a local folder or at `s3://bucket/prefix` (settings from env by default)."""
    if is_s3(location):
        bucket, prefix = split_s3(str(location))
        return S3Store(bucket, prefix, settings=settings, retry=retry, part_size=part_size)
    return LocalStore(location)



def fetch(location: str | Path, dest: str | Path, **store_options) -> Path:
    """A local path holding the file or folder at `location` (the viewer's reads).

    Local paths are returned as they are (no copy); s3:// files and folders are downloaded,
    verified, into dest.
    """
    from trashseg.errors import DataError

    if not is_s3(location):
        path = Path(location)
        if not path.exists():
            raise DataError(f"{path} does not exist; expected a local file/folder or an s3://bucket/key location")
        return path
    bucket, key = split_s3(str(location))
    parent, _, name = key.rpartition("/")
    if not name:
        raise DataError(f"{location!r} names a whole bucket; expected s3://bucket/key")
    store = open_store(f"s3://{bucket}/{parent}", **store_options)
    dest = Path(dest)
    if store.keys(name):  # a folder: objects below name/
        store.get_folder(name, dest)
    else:
        store.get_file(name, dest)
    return dest
