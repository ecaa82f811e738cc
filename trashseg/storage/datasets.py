"""Dataset versions and the inbox of new labelled batches, on any `ObjectStore`.

Dataset versions (`push_dataset`, `pull_dataset`, `list_versions`) are content-addressed
by `trashseg.data.version.dataset_hash`:

    datasets/<version>/files/<relative path>    the dataset's files
    datasets/<version>/manifest.json            written last: a version exists once this does

An inbox collects new labeled batches for retraining:

    inbox/<batch>/images/<file_name>            the batch's images (COCO file_name relative to images/)
    inbox/<batch>/annotations.json              written last: a batch is complete once this does

Each version's manifest lists the inbox batches it includes, so the batches "newer than a
version" are exactly the complete batches it does not include (`new_batches`), whatever
their names or upload times. `absorb_inbox` merges them into a new version (the COCO
merge itself is data logic: `trashseg.data.merge.merge_batches`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from trashseg.data.merge import BATCH_ANNOTATIONS, INBOX_PREFIX, merge_batches
from trashseg.data.version import dataset_hash
from trashseg.errors import DataError
from trashseg.progress import Progress
from trashseg.storage.base import IntegrityError, ObjectInfo, ObjectStore, check_key, join_key

log = logging.getLogger(__name__)

DATASETS_PREFIX = "datasets"
MANIFEST_NAME = "manifest.json"

@dataclass(frozen=True)
class DatasetManifest:
    version: str
    created: str
    files: tuple[ObjectInfo, ...]
    inbox_batches: tuple[str, ...] = ()
    parent: str | None = None
    source: str | None = None  # what a mirrored version copies (a weights hub id); None for datasets

    def to_dict(self) -> dict:
        data = {
            "version": self.version,
            "created": self.created,
            "parent": self.parent,
            "inbox_batches": list(self.inbox_batches),
            "files": [{"path": f.key, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        if self.source is not None:
            data["source"] = self.source
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> DatasetManifest:
        return cls(
            version=data["version"],
            created=data["created"],
            files=tuple(ObjectInfo(f["path"], int(f["size"]), f["sha256"]) for f in data["files"]),
            inbox_batches=tuple(data.get("inbox_batches", ())),
            parent=data.get("parent"),
            source=data.get("source"),
        )

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _version_prefix(version: str, prefix: str = DATASETS_PREFIX) -> str:
    return join_key(prefix, version)


def push_dataset(
    folder: str | Path,
    store: ObjectStore,
    *,
    inbox_batches: Sequence[str] = (),
    parent: str | None = None,
    prefix: str = DATASETS_PREFIX,
    version: str | None = None,
    source: str | None = None,
) -> DatasetManifest:
    """Upload a dataset folder as a content-addressed version; files first, manifest last.

    Pushing a version that already exists uploads nothing and returns its manifest.
    `prefix`, `version` (the folder's content hash) and `source` let other content-addressed
    folders (mirrored weights, `trashseg.weights`) use the same versions under their own prefix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist or is not a folder")
    version = version or dataset_hash(folder)
    manifest_key = join_key(_version_prefix(version, prefix), MANIFEST_NAME)
    if store.exists(manifest_key):
        log.info("version %s already in %s; nothing to upload", version, store.uri(prefix))
        return read_manifest(store, version, prefix=prefix)
    files_prefix = join_key(_version_prefix(version, prefix), "files")
    uploaded = store.put_folder(folder, files_prefix)
    files = tuple(ObjectInfo(i.key[len(files_prefix) + 1:], i.size, i.sha256) for i in uploaded)
    manifest = DatasetManifest(
        version=version,
        created=datetime.now(UTC).isoformat(timespec="microseconds"),
        files=files,
        inbox_batches=tuple(sorted(set(inbox_batches))),
        parent=parent,
        source=source,
    )
    store.put_json(manifest.to_dict(), manifest_key)
    log.info("pushed version %s (%d files, %d bytes) to %s", version, len(files), manifest.total_bytes, store.uri(prefix))
    return manifest


def read_manifest(store: ObjectStore, version: str, *, prefix: str = DATASETS_PREFIX) -> DatasetManifest:
    key = join_key(_version_prefix(version, prefix), MANIFEST_NAME)
    if not store.exists(key):
        known = [m.version for m in list_versions(store, prefix=prefix)]
        raise DataError(
            f"dataset version {version!r} not found in {store.uri()}; known versions: "
            f"{', '.join(known) or 'none (push one with `trashseg data push`)'}"
        )
    return DatasetManifest.from_dict(store.get_json(key))


def list_versions(store: ObjectStore, *, prefix: str = DATASETS_PREFIX) -> list[DatasetManifest]:
    """Complete versions (those with a manifest), oldest first."""
    manifests = [
        DatasetManifest.from_dict(store.get_json(key))
        for key in store.keys(prefix)
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


def pull_dataset(store: ObjectStore, version: str, dest: str | Path, *, prefix: str = DATASETS_PREFIX) -> DatasetManifest:
    """Download a version into dest; every file is checked against the manifest."""
    manifest = read_manifest(store, resolve_version(store, version) if prefix == DATASETS_PREFIX else version, prefix=prefix)
    dest = Path(dest)
    files_prefix = join_key(_version_prefix(manifest.version, prefix), "files")
    progress = Progress(len(manifest.files), f"pull dataset {manifest.version}", unit="files")
    for expected in manifest.files:
        got = store.get_file(join_key(files_prefix, expected.key), dest / expected.key)
        if (got.size, got.sha256) != (expected.size, expected.sha256):
            raise IntegrityError(
                f"{store.uri(join_key(files_prefix, expected.key))} does not match dataset version "
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
    check_key(batch)
    if "/" in batch:
        raise DataError(f"batch name {batch!r} must not contain '/'")
    prefix = join_key(INBOX_PREFIX, batch)
    infos = store.put_folder(folder / "images", join_key(prefix, "images"))
    infos.append(store.put_file(annotations, join_key(prefix, BATCH_ANNOTATIONS)))
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
    store.get_folder(join_key(INBOX_PREFIX, batch), dest)
    return dest


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
