"""The dataset version: a content hash of a COCO source folder (annotation files + image bytes).

`prepare` records it in ROOT/dataset.json; the store names dataset versions by it; the
pipelines pass it as `dataset_version`, so KFP's cache keys on the data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trashseg.errors import DataError

ANNOTATION_FILES = ("train.json", "val.json", "test.json")
_CHUNK = 1 << 20


def dataset_hash(
    source: str | Path, image_root: str | Path | None = None, *, file_names: Iterable[str] | None = None
) -> str:
    """sha256 over the annotation files and the bytes of every image they name.

    Stable: files are taken in a fixed order (annotation files by name, then images by
    file_name), each preceded by its name and length so no two layouts collide. A named
    image that is missing hashes as missing, so adding it later changes the hash.
    `file_names`: every image file_name of the annotation files, when the caller has parsed
    them already (prepare), so they are not parsed a second time. Files are read in chunks."""
    source = Path(source)
    image_root = Path(image_root) if image_root is not None else source
    digest = hashlib.sha256()
    if file_names is None:
        present, names = _annotation_files_and_images(source)
    else:
        present, names = _present(source), sorted(file_names)
    for name in present:
        _update_file(digest, f"annotation:{name}", source / name)
    for file_name in names:
        path = image_root / file_name
        if not _is_file(path):
            _update(digest, f"missing:{file_name}", b"")
            continue
        _update_file(digest, f"image:{file_name}", path)
    return digest.hexdigest()


def hashed_files(source: str | Path) -> list[str]:
    """The files under `source` that `dataset_hash(source)` covers, as '/'-separated relative
    paths: the annotation files and the images they name that exist. Nothing else is part
    of the version."""
    source = Path(source)
    present, file_names = _annotation_files_and_images(source)
    return sorted({*present, *(name for name in file_names if _is_file(source / name))})


def _present(source: Path) -> list[str]:
    present = [name for name in ANNOTATION_FILES if (source / name).is_file()]
    if not present:
        raise DataError(f"{source} holds none of {', '.join(ANNOTATION_FILES)}; nothing to hash")
    return present


def _annotation_files_and_images(source: Path) -> tuple[list[str], list[str]]:
    """The annotation files present (in hash order) and the sorted image file_names they name."""
    present = _present(source)
    file_names: set[str] = set()
    for name in present:
        try:
            images = json.loads((source / name).read_bytes()).get("images", [])
            file_names.update(im["file_name"] for im in images if isinstance(im, dict) and isinstance(im.get("file_name"), str))
        except (ValueError, RecursionError, AttributeError, TypeError):
            pass  # an unreadable file is still hashed by its bytes; load_coco reports it
    return present, sorted(file_names)


def _is_file(path: Path) -> bool:
    """`path.is_file()`, False also for names no filesystem takes (too long, NUL, lone surrogate)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _update_file(digest: Any, name: str, path: Path) -> None:
    """As `_update(digest, name, path.read_bytes())`, reading in chunks."""
    with path.open("rb") as handle:
        digest.update(_encode(f"{name}:{os.fstat(handle.fileno()).st_size}\n"))
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)


def _encode(text: str) -> bytes:
    # surrogatepass: a lone surrogate in a (skipped) file_name still hashes, as its own bytes.
    return text.encode("utf-8", "surrogatepass")


def _update(digest: Any, name: str, data: bytes) -> None:
    digest.update(_encode(f"{name}:{len(data)}\n"))
    digest.update(data)
