"""Merging labelled batches (COCO + images, as uploaded to the store's inbox) into a dataset source folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from trashseg.errors import DataError
from trashseg.fileio import write_text

INBOX_PREFIX = "inbox"  # merged batch images live at <dataset>/inbox/<batch>/<file_name>
BATCH_ANNOTATIONS = "annotations.json"  # a batch folder: annotations.json + images/


def _inside(*parts: str) -> str:
    """`parts` joined as a relative path that cannot escape the dataset folder."""
    path = PurePosixPath(*(p.strip("/") for p in parts if p.strip("/")))
    if path.is_absolute() or any(p in ("", ".", "..") for p in path.parts):
        raise DataError(f"batch image path {str(path)!r} must be relative, without '.' or '..' parts; fix its file_name")
    return str(path)


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
            file_name = _inside(INBOX_PREFIX, batch, image["file_name"])  # no escaping out
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
    write_text(out / into, json.dumps(coco))
    return added

