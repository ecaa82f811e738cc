"""Class tables: class id -> name, built from a COCO file's `categories`.

Class 0 is always Background. COCO categories are sorted by id and numbered 1..N, so
the reference taxonomy (category ids 1..10) keeps its ids; a category with id 0 is taken
as the background itself. Nothing outside `DEFAULT_TAXONOMY` assumes a class count.
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trashseg.errors import DataError

BACKGROUND = "Background"

# The reference trash dataset (DESIGN.md), in class-id order.
DEFAULT_TAXONOMY: tuple[str, ...] = (
    "Background",
    "General trash",
    "Paper",
    "Paper pack",
    "Metal",
    "Glass",
    "Plastic",
    "Styrofoam",
    "Plastic bag",
    "Battery",
    "Clothing",
)

DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (192, 0, 128),
    (0, 128, 192),
    (0, 128, 64),
    (128, 0, 0),
    (64, 0, 128),
    (64, 0, 192),
    (192, 128, 64),
    (192, 192, 128),
    (64, 64, 128),
    (128, 0, 192),
)


@dataclass(frozen=True)
class ClassTable:
    names: tuple[str, ...]  # index = class id
    category_ids: tuple[int | None, ...]  # COCO category id of each class; None = background

    def __post_init__(self) -> None:
        if len(self.names) != len(self.category_ids):
            raise DataError("class table: names and category_ids differ in length")
        if len(self.names) < 2:
            raise DataError("class table needs Background plus at least one category")
        if len(set(self.names)) != len(self.names):
            raise DataError(f"class table: duplicate class names in {list(self.names)}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def category_to_class(self) -> dict[int, int]:
        return {cat: idx for idx, cat in enumerate(self.category_ids) if cat is not None}

    @classmethod
    def from_categories(cls, categories: Sequence[Mapping]) -> ClassTable:
        background_name = BACKGROUND
        foreground = []
        for category in sorted(categories, key=lambda c: c["id"]):
            if category["id"] == 0:
                background_name = str(category["name"])
            else:
                foreground.append(category)
        return cls(
            names=(background_name, *(str(c["name"]) for c in foreground)),
            category_ids=(None, *(int(c["id"]) for c in foreground)),
        )

    @classmethod
    def default(cls) -> ClassTable:
        return cls(names=DEFAULT_TAXONOMY, category_ids=(None, *range(1, len(DEFAULT_TAXONOMY))))

    def palette(self) -> np.ndarray:
        """(C, 3) uint8 colours: the reference palette for the default taxonomy, else evenly spaced hues."""
        if self.names == DEFAULT_TAXONOMY:
            return np.array(DEFAULT_PALETTE, dtype=np.uint8)
        colours = [(0, 0, 0)]
        for i in range(1, self.num_classes):
            r, g, b = colorsys.hsv_to_rgb((i - 1) / (self.num_classes - 1), 0.75, 0.95)
            colours.append((int(r * 255), int(g * 255), int(b * 255)))
        return np.array(colours, dtype=np.uint8)

    def to_json(self) -> list[dict]:
        return [
            {"id": idx, "name": name, "category_id": cat}
            for idx, (name, cat) in enumerate(zip(self.names, self.category_ids, strict=True))
        ]

    @classmethod
    def from_json(cls, records: Sequence[Mapping]) -> ClassTable:
        ordered = sorted(records, key=lambda r: r["id"])
        if [r["id"] for r in ordered] != list(range(len(ordered))):
            raise DataError("classes.json: class ids must be 0..N-1 without gaps")
        return cls(
            names=tuple(r["name"] for r in ordered),
            category_ids=tuple(r.get("category_id") for r in ordered),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ClassTable:
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"class table {path} not found: is {path.parent} a prepared dataset? "
                "Create one with `trashseg prepare SOURCE OUT`"
            )
        return cls.from_json(json.loads(path.read_text()))
