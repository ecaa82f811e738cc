"""Where things live in a prepared dataset folder (the `prepare` step's output).

    ROOT/classes.json            the class table (ClassTable.save)
    ROOT/splits/<split>.json     COCO annotation file per split (test: images, maybe no annotations)
    ROOT/images/<file_name>      image files, at their COCO file_name
    ROOT/masks/<file_name>.png   uint8 class-id masks (255 = ignore), file_name's suffix replaced
    ROOT/dataset.json            the dataset version (content hash of the source) and split counts
    ROOT/report.json             validation report (skipped records with reasons)
    ROOT/stats/                  dataset statistics (JSON + PNG plots)
    ROOT/lineage.json            optional: where the data came from (e.g. pseudo-labels)
    ROOT/.unfinished             present while `prepare` writes (a killed run leaves it behind)

A folder is complete when it has no `.unfinished` marker and has its `dataset.json`
(written last by `prepare`) or, for a pseudo-label dataset, its `lineage.json` (written
last by `pseudo_labels`). Every consumer opens it through `classes()` or `samples()`,
which refuse an incomplete folder.

Every path of a prepared dataset is named here, and every pixel read goes through
`trashseg.data.io`, so pseudo-label datasets (same layout) are read exactly like labelled ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trashseg.data.classes import ClassTable
from trashseg.errors import DataError

IGNORE_INDEX = 255  # mask value of pixels no loss or metric counts


@dataclass(frozen=True)
class Sample:
    file_name: str  # the COCO file_name, the image's identity everywhere (submission image_id)
    image: Path
    mask: Path


@dataclass(frozen=True)
class PreparedDataset:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def classes_file(self) -> Path:
        return self.root / "classes.json"

    @property
    def dataset_file(self) -> Path:
        return self.root / "dataset.json"

    @property
    def report_file(self) -> Path:
        return self.root / "report.json"

    @property
    def stats_dir(self) -> Path:
        return self.root / "stats"

    @property
    def lineage_file(self) -> Path:
        return self.root / "lineage.json"

    @property
    def unfinished_file(self) -> Path:
        return self.root / ".unfinished"

    def check_complete(self) -> None:
        """`DataError` when the folder is not a finished dataset (see the module docstring)."""
        if self.unfinished_file.exists():
            raise DataError(
                f"{self.root} is an unfinished dataset: the `prepare` that wrote it failed or was killed; "
                "run `trashseg prepare` again into it (it clears the leftovers) or into a new folder"
            )
        if self.classes_file.is_file() and not (self.dataset_file.is_file() or self.lineage_file.is_file()):
            raise DataError(
                f"{self.root} has no dataset.json, so `prepare` never finished it (dataset.json is written last); "
                "re-run `trashseg prepare` into a new folder"
            )

    def split_file(self, split: str) -> Path:
        return self.root / "splits" / f"{split}.json"

    def image_path(self, file_name: str) -> Path:
        return self.root / "images" / file_name

    def mask_path(self, file_name: str) -> Path:
        return self.root / "masks" / Path(file_name).with_suffix(".png")

    def classes(self) -> ClassTable:
        self.check_complete()
        return ClassTable.load(self.classes_file)

    def metadata(self) -> dict:
        """ROOT/dataset.json as written by `prepare` ({} when absent, e.g. a pseudo-label dataset)."""
        if not self.dataset_file.is_file():
            return {}
        try:
            meta = json.loads(self.dataset_file.read_bytes())
        except (OSError, ValueError) as error:
            raise DataError(f"{self.dataset_file} is not readable JSON ({error}); re-run prepare") from None
        if not isinstance(meta, dict):
            raise DataError(f"{self.dataset_file} holds {type(meta).__name__}, expected a JSON object; re-run prepare")
        return meta

    def dataset_version(self) -> str | None:
        """The content hash `prepare` recorded, or None when the folder has none."""
        version = self.metadata().get("hash")
        return str(version) if version else None

    def splits(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "splits").glob("*.json"))

    def samples(self, split: str) -> list[Sample]:
        """The split's images in annotation-file order."""
        self.check_complete()
        path = self.split_file(split)
        if not path.is_file():
            raise DataError(
                f"split {split!r} not found in {self.root} (no {path}); available: {', '.join(self.splits()) or 'none'}"
            )
        from trashseg.data.jsonio import read_json

        try:
            images = read_json(path).get("images", [])
            return [Sample(im["file_name"], self.image_path(im["file_name"]), self.mask_path(im["file_name"])) for im in images]
        except (KeyError, TypeError) as error:
            raise DataError(
                f"split file {path} is malformed ({type(error).__name__}: {error}); re-run `trashseg prepare`"
            ) from None
