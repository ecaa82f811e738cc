"""Dataset versions and the inbox of new labelled batches, on any `ObjectStore`.

Dataset versions (`push_dataset`, `pull_dataset`, `list_versions`) are content-addressed
by `trashseg.data.version.dataset_hash`:

    datasets/<version>/files/<relative path>    the dataset's files
    datasets/<version>/manifest.json            written last: a version exists once this does

A version holds exactly the files its hash covers (`trashseg.data.version.hashed_files`):
a push refuses any other file in the folder, and a pull refuses a manifest entry that
would land outside the destination, verifies every file and re-hashes the result, so a
rewritten manifest plus rewritten objects is caught. `push_dataset(..., repair=True)`
re-uploads the objects of an existing version that fail verification.

An inbox collects new labeled batches for retraining:

    inbox/<batch>/images/<file_name>            the batch's images (COCO file_name relative to images/)
    inbox/<batch>/annotations.json              written last: a batch is complete once this does
    inbox/<batch>/batch.json                    written first, create-only: claims the name

A batch name is immutable once pushed: `batch.json` records the batch's content digest
and is created atomically (S3 `If-None-Match: *`; the local store's lock), so of two
pushes under one name exactly one proceeds; the other is refused before it writes
anything, unless it carries the very same content (then it resumes or is a no-op).

Each version's manifest lists the inbox batches it includes, so the batches "newer than a
version" are exactly the complete batches it does not include (`new_batches`), whatever
their names or upload times. `absorb_inbox` merges them into a new version (the COCO
merge itself is data logic: `trashseg.data.merge.merge_batches`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from trashseg.data.merge import BATCH_ANNOTATIONS, INBOX_PREFIX, merge_batches
from trashseg.data.version import dataset_hash, hashed_files
from trashseg.errors import DataError
from trashseg.progress import Progress
from trashseg.storage.base import (
    IntegrityError,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    check_key,
    join_key,
    reporting_write_errors,
    safe_join,
    sha256_file,
)

log = logging.getLogger(__name__)

DATASETS_PREFIX = "datasets"
MANIFEST_NAME = "manifest.json"
BATCH_MARKER = "batch.json"
REPAIR_HINT = "repair it from a good copy of the dataset with `trashseg data push --repair FOLDER`"

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


@dataclass(frozen=True)
class VersionKind:
    """What a content-addressed version holds: where its versions live, how a folder hashes
    to its version name, and which of its files the version is made of (each with size and
    sha256). Datasets are one kind; mirrored weights (`trashseg.weights`) another."""

    prefix: str
    content_hash: Callable[[Path], str]
    covered_files: Callable[[Path], Sequence[str]]  # relative paths the content hash covers
    noun: str = "dataset"


DATASETS = VersionKind(DATASETS_PREFIX, dataset_hash, hashed_files)


def _version_prefix(version: str, kind: VersionKind | None = None) -> str:
    return join_key((kind or DATASETS).prefix, version)


def push_dataset(
    folder: str | Path,
    store: ObjectStore,
    *,
    inbox_batches: Sequence[str] = (),
    parent: str | None = None,
    repair: bool = False,
    kind: VersionKind | None = None,
    source: str | None = None,
) -> DatasetManifest:
    """Upload a dataset folder as a content-addressed version; files first, manifest last.

    Pushing a version that already exists uploads nothing and returns its manifest; with
    `repair`, every stored file is verified first and the ones that are missing, corrupt or
    different from the folder's are uploaded again (and a rewritten manifest restored).
    `kind` (default datasets) and `source` let other content-addressed folders (mirrored
    weights) use the same versions under their own prefix.
    """
    kind = kind or DATASETS
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist or is not a folder")
    version = kind.content_hash(folder)
    local = _version_files(folder, kind)
    manifest_key = join_key(_version_prefix(version, kind), MANIFEST_NAME)
    if store.exists(manifest_key):
        if repair:
            return _repair_version(folder, store, version, local, kind)
        _refuse_damaged(store, version, local, kind)
        log.info("%s version %s already in %s; nothing to upload (its files' records match; `--repair` "
                 "verifies every byte)", kind.noun, version, store.uri(kind.prefix))
        return read_manifest(store, version, kind=kind)
    files_prefix = join_key(_version_prefix(version, kind), "files")
    progress = Progress(len(local), f"upload {folder} -> {store.uri(files_prefix)}", unit="files")
    for info in local:
        store.put_file(folder / info.key, join_key(files_prefix, info.key))
        progress.update(1)
    manifest = DatasetManifest(
        version=version,
        created=datetime.now(UTC).isoformat(timespec="microseconds"),
        files=local,
        inbox_batches=tuple(sorted(set(inbox_batches))),
        parent=parent,
        source=source,
    )
    store.put_json(manifest.to_dict(), manifest_key)
    log.info("pushed %s version %s (%d files, %d bytes) to %s", kind.noun, version, len(local), manifest.total_bytes,
             store.uri(kind.prefix))
    return manifest


def _version_files(folder: Path, kind: VersionKind) -> tuple[ObjectInfo, ...]:
    """The folder's files that make up its version, each with size and sha256.

    A file the hash does not cover would ride along unverified (and be dropped when the
    version already exists), so any such file is refused."""
    covered = kind.covered_files(folder)
    for rel in covered:
        safe_join(folder, rel, what=f"file_name in {folder}")  # a `../` image would not round-trip
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    extra = sorted(present - set(covered))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise DataError(
            f"{folder} holds {len(extra)} file(s) that no annotation file names: {shown}; a dataset version "
            "holds only train/val/test.json and the images they name (its hash covers nothing else), "
            "so move these files out of the folder and push again"
        )
    return tuple(ObjectInfo(rel, (folder / rel).stat().st_size, sha256_file(folder / rel)) for rel in covered)


def _refuse_damaged(store: ObjectStore, version: str, local: tuple[ObjectInfo, ...], kind: VersionKind) -> None:
    """Raise IntegrityError naming --repair when the stored version visibly differs from
    `local`: a file missing, or recorded with another size or checksum, a stray key, an
    unreadable manifest. Records only (one stat per file), so a re-push stays cheap; a
    repair downloads and verifies every byte."""
    files_prefix = join_key(_version_prefix(version, kind), "files")
    problems = []
    try:
        manifest = read_manifest(store, version, kind=kind)
        if set(manifest.files) != set(local):
            problems.append("its manifest lists other files")
    except (IntegrityError, ValueError, KeyError, TypeError) as error:
        problems.append(f"its manifest is unreadable ({error})")
    for info in local:
        key = join_key(files_prefix, info.key)
        try:
            stored = store.stat(key)
        except (IntegrityError, ObjectNotFound) as error:
            problems.append(str(error))
            continue
        if (stored.size, stored.sha256) != (info.size, info.sha256):
            problems.append(f"{info.key} is stored with {stored.size} bytes / another checksum")
    wanted = {join_key(files_prefix, info.key) for info in local}
    problems += [f"stray object {key!r}" for key in store.keys(files_prefix) if key not in wanted]
    if problems:
        raise IntegrityError(
            f"{kind.noun} version {version} in {store.uri(kind.prefix)} is damaged ({len(problems)} problem(s), "
            f"e.g. {'; '.join(problems[:3])}); nothing was uploaded: {REPAIR_HINT}"
        )


def _repair_version(
    folder: Path, store: ObjectStore, version: str, local: tuple[ObjectInfo, ...], kind: VersionKind
) -> DatasetManifest:
    """Make the stored version match `folder` (which hashes to it): re-upload what fails verification."""
    prefix = _version_prefix(version, kind)
    files_prefix = join_key(prefix, "files")
    manifest_key = join_key(prefix, MANIFEST_NAME)
    try:
        stored = DatasetManifest.from_dict(store.get_json(manifest_key))
    except (IntegrityError, ValueError, KeyError, TypeError) as error:
        log.warning("manifest of %s is unreadable (%s); rewriting it", version, error)
        stored = None
    repaired = 0
    progress = Progress(len(local), f"verify dataset {version}", unit="files")
    with tempfile.TemporaryDirectory(prefix="trashseg-verify-") as work:
        for info in local:
            key = join_key(files_prefix, info.key)
            try:
                got = store.get_file(key, Path(work) / "object")
                ok = (got.size, got.sha256) == (info.size, info.sha256)
            except (IntegrityError, ObjectNotFound) as error:
                log.warning("%s: %s", store.uri(key), error)
                ok = False
            if not ok:
                store.put_file(folder / info.key, key)
                repaired += 1
            progress.update(1)
    wanted = {join_key(files_prefix, info.key) for info in local}
    for key in store.keys(files_prefix):
        if key not in wanted:  # never read: a stray name may hold `..`, so it is deleted by name only
            log.warning("removing %r: not part of dataset version %s", store.uri(key), version)
            store.remove_listed(key)
            repaired += 1
    manifest = DatasetManifest(
        version=version,
        created=stored.created if stored else datetime.now(UTC).isoformat(timespec="microseconds"),
        files=local,
        inbox_batches=stored.inbox_batches if stored else (),
        parent=stored.parent if stored else None,
    )
    if stored != manifest:
        store.put_json(manifest.to_dict(), manifest_key)
        repaired += 1
    log.info("repaired dataset version %s in %s: %d object(s) rewritten", version, store.uri(), repaired)
    return manifest


def read_manifest(store: ObjectStore, version: str, *, kind: VersionKind | None = None) -> DatasetManifest:
    kind = kind or DATASETS
    key = join_key(_version_prefix(version, kind), MANIFEST_NAME)
    if not store.exists(key):
        known = [m.version for m in list_versions(store, kind=kind)]
        raise DataError(
            f"{kind.noun} version {version!r} not found in {store.uri(kind.prefix)}; known versions: "
            f"{', '.join(known) or 'none (push one with `trashseg data push`)'}"
        )
    manifest = _load_manifest(store, key)
    if manifest.version != version:
        raise IntegrityError(f"{store.uri(key)} claims version {manifest.version!r}, not {version!r}; {REPAIR_HINT}")
    for entry in manifest.files:
        if not (isinstance(entry.key, str) and isinstance(entry.sha256, str) and len(entry.sha256) == 64
                and entry.size >= 0):
            raise IntegrityError(f"{store.uri(key)} has a malformed file entry {entry!r}; {REPAIR_HINT}")
    return manifest


def _load_manifest(store: ObjectStore, key: str) -> DatasetManifest:
    try:
        return DatasetManifest.from_dict(store.get_json(key))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise IntegrityError(f"{store.uri(key)} is not a readable manifest ({error!r}); {REPAIR_HINT}") from error


def list_versions(store: ObjectStore, *, kind: VersionKind | None = None) -> list[DatasetManifest]:
    """Complete versions (those with a manifest), oldest first."""
    manifests = [
        _load_manifest(store, key)
        for key in store.keys((kind or DATASETS).prefix)
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


def pull_dataset(store: ObjectStore, version: str, dest: str | Path, *, kind: VersionKind | None = None) -> DatasetManifest:
    """Download a version into dest, verified: each file against the manifest, then the
    whole against the version's content hash.

    Files are gathered in a folder beside dest and moved in only once all of them check
    out, so a failed pull (corrupt object, disk full) leaves dest as it was."""
    kind = kind or DATASETS
    manifest = read_manifest(store, resolve_version(store, version) if kind is DATASETS else version, kind=kind)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DataError(f"cannot pull dataset version {manifest.version} into {dest}: it is a file; expected a folder")
    files_prefix = join_key(_version_prefix(manifest.version, kind), "files")
    with reporting_write_errors(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".pulling", dir=dest.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would become dest's mode
    try:
        for expected in manifest.files:  # every path is checked before anything is written
            safe_join(staging, expected.key, what=f"manifest entry of dataset version {manifest.version}")
        progress = Progress(len(manifest.files), f"pull dataset {manifest.version}", unit="files")
        for expected in manifest.files:
            key = join_key(files_prefix, expected.key)
            try:
                got = store.get_file(key, staging / expected.key)
            except (IntegrityError, ObjectNotFound) as error:
                raise IntegrityError(f"dataset version {manifest.version} is damaged: {error}; {REPAIR_HINT}") from error
            if (got.size, got.sha256) != (expected.size, expected.sha256):
                raise IntegrityError(
                    f"{store.uri(key)} does not match dataset version {manifest.version}'s manifest (sha256 "
                    f"{got.sha256}, expected {expected.sha256}): the version was modified after it was pushed; "
                    f"{REPAIR_HINT}"
                )
            progress.update(1)
        _check_content(staging, manifest, store, kind)
        _move_into(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _check_content(folder: Path, manifest: DatasetManifest, store: ObjectStore, kind: VersionKind) -> None:
    """The pulled files are exactly what the version name (its content hash) stands for."""
    covered, listed = set(kind.covered_files(folder)), {f.key for f in manifest.files}
    uncovered = sorted(listed - covered)
    if uncovered:
        raise IntegrityError(
            f"dataset version {manifest.version} in {store.uri()} lists file(s) its content hash does not cover: "
            f"{', '.join(uncovered[:5])}; the manifest was altered after the push; {REPAIR_HINT}"
        )
    actual = kind.content_hash(folder)
    if actual != manifest.version:
        raise IntegrityError(
            f"dataset version {manifest.version} in {store.uri()} downloads as content that hashes to {actual}: its "
            f"manifest and files were altered after the push; {REPAIR_HINT}"
        )


def _move_into(staging: Path, dest: Path) -> None:
    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
        return
    with reporting_write_errors(dest):
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                target = dest / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)


# --- inbox of new labeled batches ---------------------------------------------------------


def push_batch(folder: str | Path, store: ObjectStore, batch: str) -> list[ObjectInfo]:
    """Upload a labeled batch (folder with annotations.json + images/) to the inbox.

    The name is claimed first (create-only batch.json with the batch's content digest),
    then images go up and the annotation file last, so a batch is listed only once
    complete. A name already claimed by other content is refused (DataError) before
    anything is written; the same content again resumes an interrupted push or, when
    complete, uploads nothing.
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
    images = sorted(p for p in (folder / "images").rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in [*images, annotations]:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    if not _claim_batch(store, batch, digest.hexdigest(), len(images) + 1):
        log.info("inbox batch %s is already in %s with this content; nothing to upload", batch, store.uri())
        return [store.stat(key) for key in store.keys(prefix) if not key.endswith("/" + BATCH_MARKER)]
    progress = Progress(len(images), f"upload batch {batch} -> {store.uri(prefix)}", unit="files")
    infos = []
    for path in images:
        infos.append(store.put_file(path, join_key(prefix, path.relative_to(folder).as_posix())))
        progress.update(1)
    infos.append(store.put_file(annotations, join_key(prefix, BATCH_ANNOTATIONS)))
    return infos


def _claim_batch(store: ObjectStore, batch: str, content_sha256: str, files: int) -> bool:
    """Claim the batch name for this content: True to upload, False when already complete.

    Raises DataError when the name holds other content (or predates batch markers)."""
    prefix = join_key(INBOX_PREFIX, batch)
    marker_key = join_key(prefix, BATCH_MARKER)
    complete = store.exists(join_key(prefix, BATCH_ANNOTATIONS))
    refusal = (f"inbox batch {batch!r} already exists in {store.uri()} with other content; a batch name is "
               "immutable once pushed, so push this batch under a new name (e.g. with a date or counter)")
    if complete and not store.exists(marker_key):
        raise DataError(refusal)  # pushed before batch markers: its content is not on record
    marker = {"batch": batch, "content_sha256": content_sha256, "files": files,
              "created": datetime.now(UTC).isoformat(timespec="microseconds")}
    with contextlib.suppress(ObjectExists):
        store.put_json(marker, marker_key, create_only=True)
    # Read back even after our own create: a server that ignores If-None-Match may have let a
    # rival's marker replace ours, and a retried create of ours reports ObjectExists.
    claimed = store.get_json(marker_key)
    if not isinstance(claimed, dict) or claimed.get("content_sha256") != content_sha256:
        raise DataError(refusal)
    return not complete


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
    """The batch's images/ and annotations.json in dest (its name marker stays in the store)."""
    dest = Path(dest)
    prefix = join_key(INBOX_PREFIX, batch)
    store.get_folder(join_key(prefix, "images"), dest / "images")
    store.get_file(join_key(prefix, BATCH_ANNOTATIONS), dest / BATCH_ANNOTATIONS)
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
