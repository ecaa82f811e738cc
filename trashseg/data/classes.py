"""Class tables: class id -> name, built from a COCO file's `categories`.

Class 0 is always Background. The other COCO categories are sorted by id and numbered
1..N, whatever their ids (0, 5, 17 -> 1, 2, 3), so the reference taxonomy (category ids
1..10) keeps its ids. A category id can be 0 and still be a real class (one public trash
dataset has "Aluminium foil" there); only a category *named* Background is taken as the
background itself. The mapping is recorded per class (`category_id`) in classes.json, and
everything downstream of the masks uses class ids. Nothing outside `DEFAULT_TAXONOMY`
assumes a class count.
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trashseg.data.jsonio import read_json_value
from trashseg.errors import DataError, printable
from trashseg.fileio import write_text

BACKGROUND = "Background"
# Masks are uint8 and 255 is the ignore index (layout.IGNORE_INDEX), so class ids are
# 0..254: Background plus at most 254 categories.
MAX_CLASSES = 255
# Longest class name accepted (names go into reports, plots and terminal lines).
MAX_NAME_CHARS = 200
# Category names taken as the background itself (lower case; "backgroud" is a misspelling
# seen in published trash datasets).
BACKGROUND_NAMES = frozenset({"background", "backgroud"})

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


def text_problem(text: str) -> str | None:
    """Why `text` cannot be written to a UTF-8 file or terminal (a lone surrogate, a NUL), or None."""
    if "\0" in text:
        return "holds a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"is not valid Unicode (lone surrogate {text[error.start]!r} at position {error.start})"
    return None


@dataclass(frozen=True)
class ClassTable:
    names: tuple[str, ...]  # index = class id
    category_ids: tuple[int | None, ...]  # COCO category id of each class; None = background

    def __post_init__(self) -> None:
        if len(self.names) != len(self.category_ids):
            raise DataError("class table: names and category_ids differ in length")
        if len(self.names) < 2:
            raise DataError("class table needs Background plus at least one category")
        if len(self.names) > MAX_CLASSES:
            raise DataError(
                f"{len(self.names) - 1} categories (+ Background = {len(self.names)} classes) do not fit a mask: "
                f"at most {MAX_CLASSES - 1} categories, as class ids 0..{MAX_CLASSES - 1} are uint8 and "
                f"{MAX_CLASSES} is the ignore index; merge or drop categories"
            )
        for name in self.names:
            if not text_problem(name) and len(name) <= MAX_NAME_CHARS:
                continue
            raise DataError(
                f"class name {name[:MAX_NAME_CHARS]!r}: {text_problem(name) or f'longer than {MAX_NAME_CHARS} characters'}; "
                "rename the category"
            )
        if len(set(self.names)) != len(self.names):
            raise DataError(f"class table: duplicate class names in {list(self.names)[:20]}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def category_to_class(self) -> dict[int, int]:
        return {cat: idx for idx, cat in enumerate(self.category_ids) if cat is not None}

    @classmethod
    def from_categories(cls, categories: Sequence[Mapping]) -> ClassTable:
        background: Mapping | None = None
        foreground = []
        for category in sorted(categories, key=lambda c: c["id"]):
            if str(category["name"]).strip().lower() in BACKGROUND_NAMES and background is None:
                background = category
            else:
                foreground.append(category)
        return cls(
            names=(str(background["name"]) if background else BACKGROUND, *(str(c["name"]) for c in foreground)),
            category_ids=(int(background["id"]) if background else None, *(int(c["id"]) for c in foreground)),
        )

    def mapping_lines(self) -> list[str]:
        """'COCO category 0 -> class 1 (Aluminium foil)' for every class, for reports."""
        return [
            f"COCO category {cat} -> class {idx} ({printable(name)})" if cat is not None
            else f"(no category) -> class {idx} ({printable(name)})"
            for idx, (name, cat) in enumerate(zip(self.names, self.category_ids, strict=True))
        ]

    @property
    def is_identity(self) -> bool:
        """True when every COCO category id equals its class id (the reference layout)."""
        return all(cat in (None, idx) for idx, cat in enumerate(self.category_ids))

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
        write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ClassTable:
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"class table {path} not found: is {path.parent} a prepared dataset? "
                "Create one with `trashseg prepare SOURCE OUT`"
            )
        records = read_json_value(path, "class table")
        try:
            return cls.from_json(records)
        except (KeyError, TypeError, AttributeError) as error:
            raise DataError(
                f"class table {path} is malformed ({type(error).__name__}: {error}); expected a list of "
                "{id, name, category_id} objects as `trashseg prepare` writes it"
            ) from None
