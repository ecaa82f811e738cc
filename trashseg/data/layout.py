"""Where things live in a prepared dataset folder (the `prepare` step's output).

    ROOT/classes.json            the class table (ClassTable.save)
    ROOT/splits/<split>.json     COCO annotation file per split (test: images, maybe no annotations)
    ROOT/images/<file_name>      image files, at their COCO file_name
    ROOT/masks/<file_name>.png   uint8 class-id masks (255 = ignore), file_name's suffix replaced
    ROOT/report.json             validation report (skipped records with reasons)
    ROOT/stats/                  dataset statistics (JSON + PNG plots)
    ROOT/lineage.json            optional: where the data came from (e.g. pseudo-labels)

Training, prediction and evaluation read only through this module, so pseudo-label
datasets (same layout) are read exactly like labelled ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trashseg.data.classes import ClassTable
from trashseg.errors import DataError


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
    def report_file(self) -> Path:
        return self.root / "report.json"

    @property
    def stats_dir(self) -> Path:
        return self.root / "stats"

    @property
    def lineage_file(self) -> Path:
        return self.root / "lineage.json"

    def split_file(self, split: str) -> Path:
        return self.root / "splits" / f"{split}.json"

    def image_path(self, file_name: str) -> Path:
        return self.root / "images" / file_name

    def mask_path(self, file_name: str) -> Path:
        return self.root / "masks" / Path(file_name).with_suffix(".png")

    def classes(self) -> ClassTable:
        return ClassTable.load(self.classes_file)

    def dataset_version(self) -> str | None:
        """The content hash this dataset was prepared from (dataset.json), or None when it
        records none (a folder not written by `prepare`, or one that cannot be read here)."""
        import json

        try:
            version = json.loads((self.root / "dataset.json").read_bytes()).get("hash")
        except (OSError, ValueError, AttributeError):
            return None
        return version if isinstance(version, str) else None

    def splits(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "splits").glob("*.json"))

    def samples(self, split: str) -> list[Sample]:
        """The split's images in annotation-file order."""
        path = self.split_file(split)
        if not path.is_file():
            raise DataError(
                f"split {split!r} not found in {self.root} (no {path}); available: {', '.join(self.splits()) or 'none'}"
            )
        from trashseg.data.coco import read_json

        try:
            images = read_json(path).get("images", [])
            return [Sample(im["file_name"], self.image_path(im["file_name"]), self.mask_path(im["file_name"])) for im in images]
        except (KeyError, TypeError) as error:
            raise DataError(
                f"split file {path} is malformed ({type(error).__name__}: {error}); re-run `trashseg prepare`"
            ) from None
