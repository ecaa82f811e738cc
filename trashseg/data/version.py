"""The dataset version: a content hash of a COCO source folder (annotation files + image bytes).

`prepare` records it in ROOT/dataset.json; the store names dataset versions by it; the
pipelines pass it as `dataset_version`, so KFP's cache keys on the data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from trashseg.errors import DataError

ANNOTATION_FILES = ("train.json", "val.json", "test.json")
_CHUNK = 1 << 20


def dataset_hash(source: str | Path, image_root: str | Path | None = None) -> str:
    """sha256 over the annotation files and the bytes of every image they name.

    Stable: files are taken in a fixed order (annotation files by name, then images by
    file_name), each preceded by its name and length so no two layouts collide. A named
    image that is missing hashes as missing, so adding it later changes the hash."""
    source = Path(source)
    image_root = Path(image_root) if image_root is not None else source
    digest = hashlib.sha256()
    present, file_names = _annotation_files_and_images(source)
    for name in present:
        _update(digest, f"annotation:{name}", (source / name).read_bytes())
    for file_name in file_names:
        path = image_root / file_name
        if not path.is_file():
            _update(digest, f"missing:{file_name}", b"")
            continue
        digest.update(f"image:{file_name}:{path.stat().st_size}\n".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def hashed_files(source: str | Path) -> list[str]:
    """The files under `source` that `dataset_hash(source)` covers, as '/'-separated relative
    paths: the annotation files and the images they name that exist. Nothing else is part
    of the version."""
    source = Path(source)
    present, file_names = _annotation_files_and_images(source)
    return sorted({*present, *(name for name in file_names if (source / name).is_file())})


def _annotation_files_and_images(source: Path) -> tuple[list[str], list[str]]:
    """The annotation files present (in hash order) and the sorted image file_names they name."""
    present = [name for name in ANNOTATION_FILES if (source / name).is_file()]
    if not present:
        raise DataError(f"{source} holds none of {', '.join(ANNOTATION_FILES)}; nothing to hash")
    file_names: set[str] = set()
    for name in present:
        try:
            images = json.loads((source / name).read_bytes()).get("images", [])
            file_names.update(im["file_name"] for im in images if isinstance(im, dict) and isinstance(im.get("file_name"), str))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass  # an unreadable file is still hashed by its bytes; load_coco reports it
    return present, sorted(file_names)


def _update(digest: Any, name: str, data: bytes) -> None:
    digest.update(f"{name}:{len(data)}\n".encode())
    digest.update(data)
