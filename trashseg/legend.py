"""Colour legends: which colour is which class, for every overlay (reports and the viewer)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from trashseg.data.classes import ClassTable


def hex_colour(rgb) -> str:
    """'#rrggbb' of an RGB triple in 0..255 (rounded)."""
    red, green, blue = (int(round(float(v))) for v in rgb)
    return f"#{red:02x}{green:02x}{blue:02x}"


def legend(class_table: ClassTable, present: Iterable[int] | None = None) -> list[tuple[str, str]]:
    """(name, '#rrggbb') for the classes in `present` (default all), in class-id order."""
    palette = class_table.palette()
    ids = sorted(set(present)) if present is not None else range(class_table.num_classes)
    return [(class_table.names[i], hex_colour(palette[i])) for i in ids if 0 <= i < class_table.num_classes]


def legend_html(entries: Sequence[tuple[str, str]]) -> str:
    """One line of colour chips with their names (inline styles: reports are single files)."""
    chips = "".join(
        f"<span style='display:inline-block;margin:0 .8em .2em 0'><span style='display:inline-block;"
        f"width:.9em;height:.9em;background:{colour};border:1px solid #888;vertical-align:middle'></span>"
        f" {html.escape(name)}</span>"
        for name, colour in entries
    )
    return f"<div class='trashseg-legend'>{chips}</div>"
