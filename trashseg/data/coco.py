"""Load and validate COCO instance-annotation files.

Every problem is reported with its record id and reason, all of them at once:

- fatal problems make the file unusable and raise `DataError` listing every one (nothing
  is written): unreadable JSON, missing required keys or wrong types, duplicate ids,
  file_names that leave the image root or are shared by two images,
  annotations with an unknown category or image id, no `annotations` key in a labelled file;
- recoverable problems skip the record and list it in a `ValidationReport`: polygons with
  fewer than 3 points, non-finite or far-outside coordinates, malformed RLE, empty or
  zero-area segmentations, bboxes outside the image, images larger than `MAX_IMAGE_PIXELS`,
  image files missing, unreadable or too large to decode, image sizes on disk that differ
  from the JSON. The annotations of a skipped image are skipped too, each listed with that
  reason.

Geometry is checked before pycocotools sees it: its polygon rasteriser allocates for the
unclipped perimeter (a NaN or 1e8 coordinate asks for gigabytes, and so do a million points
zig-zagging inside the image) and its RLE decoder writes past its buffer when the runs sum
to more than height*width. The work is bounded before anything is rasterised: at most
`MAX_POLYGON_POINTS` points and `MAX_POLYGON_BOUNDARY` boundary pixels per annotation,
`MAX_FILE_BOUNDARY` boundary pixels per file.

Text that cannot reach a file or a terminal is refused where it enters: a file_name with a
lone surrogate, a NUL, or a path component over 255 bytes skips its image; two file_names
naming the same file (`./a/1.jpg`, `a/1.jpg`) or the same mask (`1.jpg`, `1.png`) are fatal.
Every image file is decoded in full, so a file cut short is skipped here, not found later.

The kept records are served through a `pycocotools.coco.COCO` index. A file without an
`annotations` key is valid only when loaded with `unlabelled=True` (a test set); the
report then carries a note saying so.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import posixpath
import warnings
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from trashseg.data.classes import ClassTable, text_problem
from trashseg.data.jsonio import non_finite_or_deep, parse_json, write_json
from trashseg.errors import DataError, printable

REQUIRED_TOP_LEVEL = ("images", "categories")
REQUIRED_IMAGE_KEYS = ("id", "file_name", "width", "height")
REQUIRED_ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation")
REQUIRED_CATEGORY_KEYS = ("id", "name")
# COCO bboxes are floats drawn by annotators; a box may overshoot the border by rounding.
BBOX_TOLERANCE_PX = 1.0
# Polygon vertices may lie outside the image (pycocotools clips them) but not farther than
# this many image sizes: beyond that the rasteriser's memory grows with the coordinate.
POLYGON_MARGIN = 1.0
# Largest width*height accepted (PIL's own decompression-bomb limit): masks are decoded
# at full size, one byte per pixel.
MAX_IMAGE_PIXELS = 89_478_485
# Work bounds of the polygon rasteriser (pycocotools allocates about 120 bytes per boundary
# pixel): points of one annotation, its boundary length in pixels (sum over edges of the
# longer of |dx|, |dy|), and the boundary length of all annotations of one file.
MAX_POLYGON_POINTS = 100_000
MAX_POLYGON_BOUNDARY = 1_000_000
MAX_FILE_BOUNDARY = 500_000_000
# Longest path component most filesystems accept (NAME_MAX), in bytes.
MAX_NAME_BYTES = 255
MAX_FATAL_SHOWN = 1000  # fatal problems listed in one error (a broken file can have millions)


@dataclass(frozen=True)
class SkippedRecord:
    kind: str  # "image" or "annotation"
    id: int
    reason: str
    image_id: int | None = None  # the annotation's image (so a viewer can show it there)
    file_name: str | None = None  # a skipped image's file_name, as the JSON spells it

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"

    @property
    def label(self) -> str:
        """'image 3 ('a/1.jpg')': the record's kind, id and, for an image, its file_name (escaped)."""
        name = f" ({_quoted(self.file_name)})" if self.file_name is not None else ""
        return f"{self.kind} {self.id}{name}"


@dataclass
class ValidationReport:
    """Records skipped while loading one annotation file, with their reasons."""

    source: str
    skipped: list[SkippedRecord] = field(default_factory=list)
    images_total: int = 0
    annotations_total: int = 0
    notes: list[str] = field(default_factory=list)  # facts a reader must know, e.g. "unlabelled"
    image_root: str = ""  # the folder file_names were resolved against

    def skip(
        self, kind: str, record_id: int, reason: str, image_id: int | None = None, file_name: str | None = None
    ) -> None:
        self.skipped.append(SkippedRecord(kind, record_id, reason, image_id, file_name))

    @property
    def skipped_images(self) -> list[SkippedRecord]:
        return [s for s in self.skipped if s.kind == "image"]

    @property
    def skipped_annotations(self) -> list[SkippedRecord]:
        return [s for s in self.skipped if s.kind == "annotation"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "images_total": self.images_total,
            "annotations_total": self.annotations_total,
            "images_skipped": len(self.skipped_images),
            "annotations_skipped": len(self.skipped_annotations),
            "notes": list(self.notes),
            "image_root": self.image_root,
            "skipped": [
                {"kind": s.kind, "id": s.id, "reason": s.reason}
                | ({"image_id": s.image_id} if s.image_id is not None else {})
                | ({"file_name": s.file_name} if s.file_name is not None else {})
                for s in self.skipped
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        return cls(
            source=data["source"],
            skipped=[
                SkippedRecord(s["kind"], s["id"], s["reason"], s.get("image_id"), s.get("file_name"))
                for s in data["skipped"]
            ],
            images_total=data["images_total"],
            annotations_total=data["annotations_total"],
            notes=list(data.get("notes", [])),
            image_root=data.get("image_root", ""),
        )

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_dict(), indent=2)

    @property
    def images_kept(self) -> int:
        return self.images_total - len(self.skipped_images)

    def summary(self) -> str:
        return (
            f"{self.source}: kept {self.images_kept}/{self.images_total} images, "
            f"{self.annotations_total - len(self.skipped_annotations)}/{self.annotations_total} annotations; "
            f"skipped {len(self.skipped)} record(s)"
            + "".join(f"; note: {note}" for note in self.notes)
        )

    def reason_counts(self) -> list[tuple[str, str, int, list[SkippedRecord]]]:
        """(kind, reason pattern, count, records) per kind of problem, most frequent first.

        A pattern is the reason with paths and numbers blanked, so 1,500 "image file X is
        missing" lines group as one."""
        groups: dict[tuple[str, str], list[SkippedRecord]] = {}
        for record in self.skipped:
            groups.setdefault((record.kind, reason_pattern(record.reason)), []).append(record)
        ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
        return [(kind, pattern, len(records), records) for (kind, pattern), records in ordered]

    def terminal_summary(self, *, examples: int = 3, full_report: str | Path | None = None) -> str:
        """Counts per reason with the first few examples, instead of one line per record."""
        lines = []
        for kind, pattern, count, records in self.reason_counts():
            lines.append(f"skipped {count} {kind}(s): {pattern}")
            lines += [f"  e.g. {record}" for record in records[:examples]]
            if count > examples:
                lines.append(f"  ... and {count - examples} more")
        if self.skipped:
            where = f"in {full_report}" if full_report else "with --report FILE"
            lines.append(f"every skipped record with its reason is listed {where}")
        lines.append(self.summary())
        return "\n".join(printable(line) for line in lines)  # one record, one line, whatever its names hold

    def nothing_usable(self) -> str | None:
        """Why no image survived validation, or None when some did."""
        if self.images_total and self.images_kept:
            return None
        if not self.images_total:
            return f"{self.source} lists no images"
        missing = sum("is missing" in s.reason for s in self.skipped_images)
        if missing == self.images_total:
            return (
                f"all {self.images_total:,} image files are missing under {self.image_root or 'the image root'}; "
                "check --image-root (file_names are relative to it; default: the annotation file's folder)"
            )
        return f"all {self.images_total:,} images were skipped; see the reasons above"


def reason_pattern(reason: str) -> str:
    """`reason` with file paths and numbers replaced by placeholders (for grouping)."""
    import re

    text = re.sub(r"image file [^\s'\")]+", "image file <path>", reason)
    text = re.sub(r"\b\d+x\d+\b", "<n>x<n>", text)  # sizes: "100000x100000" is one value, not "<n>x1<n>"
    text = re.sub(r"(?<![\w.])/[^\s'\")]+", "<path>", text)  # absolute paths inside messages
    text = re.sub(r"its image \d+", "its image <id>", text)
    # A number starts after a non-word character ("x100" and "a12" stay whole), may carry
    # thousands separators ("10,000,000") or a fraction and exponent.
    return re.sub(r"(?<![A-Za-z0-9_])-?(\d{1,3}(,\d{3})+|\d+(\.\d+)?(e[+-]?\d+)?)", "<n>", text)


@dataclass
class CocoDataset:
    """The kept records of one validated annotation file."""

    path: Path
    image_root: Path
    data: dict[str, Any]  # the file's top level with only kept images and annotations
    report: ValidationReport
    has_annotations: bool  # False for a test set without an `annotations` key
    coco: Any = field(repr=False)  # pycocotools.coco.COCO over the kept records
    file_names: frozenset[str] = frozenset()  # every image's file_name, skipped ones too (the version hashes them)

    @property
    def images(self) -> list[dict]:
        """Kept images, in file order."""
        return self.data["images"]

    @property
    def annotations(self) -> list[dict]:
        return self.data.get("annotations", [])

    @property
    def categories(self) -> list[dict]:
        return self.data["categories"]

    @property
    def class_table(self) -> ClassTable:
        return ClassTable.from_categories(self.categories)

    def image_path(self, image: dict) -> Path:
        return self.image_root / image["file_name"]

    def annotations_of(self, image_id: int) -> list[dict]:
        return self.coco.imgToAnns.get(image_id, [])

    def subset(self, image_ids: set[int] | list[int]) -> dict[str, Any]:
        """A COCO dict with the given images (in file order) and their annotations."""
        wanted = set(image_ids)
        unknown = wanted - {im["id"] for im in self.images}
        if unknown:
            raise DataError(f"{self.path}: subset asks for unknown image ids {sorted(unknown)[:10]}")
        subset = {key: value for key, value in self.data.items() if key not in ("images", "annotations")}
        subset["images"] = [im for im in self.images if im["id"] in wanted]
        if self.has_annotations:
            subset["annotations"] = [a for a in self.annotations if a["image_id"] in wanted]
        return subset


def write_coco(data: dict[str, Any], path: str | Path) -> None:
    """Write a COCO dict compactly and deterministically (same dict -> same bytes), strict JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)


def load_coco(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    check_files: bool = True,
    unlabelled: bool = False,
) -> CocoDataset:
    """Validate and load `path`. Image file_names are relative to `image_root`
    (default: the annotation file's folder). `check_files=False` skips the on-disk checks
    (for work that needs only the JSON). `unlabelled=True` accepts a file without an
    `annotations` key (a test set); otherwise that key is required."""
    path = Path(path)
    document = parse_json(path, compact=compact_polygons)
    data = document.value
    if not isinstance(data, dict):
        raise DataError(
            f"annotation file {path}: top level is a {type(data).__name__}, expected a COCO object "
            "with 'images', 'categories' and 'annotations'"
        )
    image_root = Path(image_root) if image_root is not None else path.parent
    fatal = _fatal_problems(data)
    if "annotations" not in data and not unlabelled:
        fatal.append(
            "top level: missing key 'annotations'; a training or validation file needs its "
            "annotations (for an unlabelled test file, use --unlabelled / load it as the test split)"
        )
    _raise_fatal(path, fatal)

    has_annotations = "annotations" in data
    report = ValidationReport(
        source=str(path),
        images_total=len(data["images"]),
        annotations_total=len(data.get("annotations", [])),
        image_root=str(image_root),
    )
    if not has_annotations:
        report.notes.append("no 'annotations' key: loaded as an unlabelled test file (no masks)")
    kept_images = []
    for image in data["images"]:
        reason = _image_record_problem(image) or (_image_file_problem(image, image_root) if check_files else None)
        if reason:
            report.skip("image", image["id"], reason, file_name=image["file_name"])
        else:
            kept_images.append(image)
    kept_annotations = _kept_annotations(path, data.get("annotations", []), kept_images, report)

    kept = {key: value for key, value in data.items() if key not in ("images", "annotations")}
    kept["images"] = kept_images
    if has_annotations:
        kept["annotations"] = kept_annotations
    return CocoDataset(
        path=path,
        image_root=image_root,
        data=kept,
        report=report,
        has_annotations=has_annotations,
        coco=_coco_index(kept),
        file_names=frozenset(image["file_name"] for image in data["images"]),
    )


def compact_polygons(obj: dict) -> None:
    """Store each polygon of an annotation (`obj`, as it is parsed) as an array of numbers:
    8 bytes a coordinate instead of a float object and a pointer (32), so a parsed file
    takes about a third of the memory. Polygons that are not flat lists of numbers (or hold
    integers beyond a float) stay lists, for validation to report."""
    segmentation = obj.get("segmentation")
    if not isinstance(segmentation, list) or "image_id" not in obj:
        return
    for index, polygon in enumerate(segmentation):
        if not isinstance(polygon, list):
            continue
        types = {type(v) for v in polygon}
        if types <= {float, int} and types:
            with contextlib.suppress(OverflowError):
                segmentation[index] = array("q" if types == {int} else "d", polygon)


def _raise_fatal(path: Path, fatal: list[str]) -> None:
    if fatal:
        shown = fatal[:MAX_FATAL_SHOWN]
        more = f"\n  ... and {len(fatal) - len(shown)} more" if len(fatal) > len(shown) else ""
        raise DataError(
            f"annotation file {path} cannot be used: {len(fatal)} problem(s):\n  "
            + "\n  ".join(shown)
            + more
            + "\nFix these records in the file and run `trashseg validate-data` again."
        )


def _kept_annotations(path: Path, annotations: list[dict], kept_images: list[dict], report: ValidationReport) -> list:
    """The annotations that pass; the others are skipped in `report` with their reason.

    Two passes: the cheap geometry checks bound the rasteriser's work (per annotation and
    for the whole file) before the second pass rasterises anything."""
    kept_image_by_id = {im["id"]: im for im in kept_images}
    skipped_image_ids = {s.id for s in report.skipped_images}
    candidates, boundary = [], 0
    for annotation in annotations:
        image_id = annotation["image_id"]
        if image_id in skipped_image_ids:
            report.skip("annotation", annotation["id"], f"its image {image_id} was skipped", image_id)
            continue
        reason, work = annotation_geometry(annotation, kept_image_by_id[image_id])
        if reason:
            report.skip("annotation", annotation["id"], reason, image_id)
        else:
            candidates.append(annotation)
            boundary += work
    if boundary > MAX_FILE_BOUNDARY:
        _raise_fatal(path, [
            f"its polygons' boundaries total {boundary:,} pixels, more than the {MAX_FILE_BOUNDARY:,} one file may "
            "ask the rasteriser for; split the file or simplify the polygons"
        ])
    kept = []
    for annotation in candidates:
        image_id = annotation["image_id"]
        reason = _annotation_area_problem(annotation, kept_image_by_id[image_id])
        if reason:
            report.skip("annotation", annotation["id"], reason, image_id)
        else:
            kept.append(annotation)
    return kept


def _coco_index(data: dict[str, Any]) -> Any:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.copy(data)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        coco.createIndex()
    return coco


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    # math.isfinite would overflow on a huge JSON integer; integers are always finite.
    return _is_number(value) and (not isinstance(value, float) or math.isfinite(value))


def number_text(value: Any, *, grouped: bool = False) -> str:
    """`value` for a message: huge integers (a float would overflow) by their digit count;
    `grouped`: thousands separators."""
    if _is_int(value) and abs(value) >= 10**15:
        return f"{'-' if value < 0 else ''}<an integer of {len(str(abs(value)))} digits>"
    if _is_int(value) and grouped:
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return _quoted(value, 60)[1:-1] if isinstance(value, str) else _quoted(str(value), 200)[1:-1]


def _quoted(text: str, limit: int = 120) -> str:
    """`text` quoted and escaped (a lone surrogate or newline cannot break a line or a file)."""
    shown = repr(text[:limit]).encode("ascii", "backslashreplace").decode("ascii")
    return shown + ("..." if len(text) > limit else "")


def _fatal_problems(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for key in REQUIRED_TOP_LEVEL:
        if key not in data:
            problems.append(f"top level: missing required key {key!r}")
        elif not isinstance(data[key], list):
            problems.append(f"top level: {key!r} must be a list, got {type(data[key]).__name__}")
    if "annotations" in data and not isinstance(data["annotations"], list):
        problems.append(f"top level: 'annotations' must be a list, got {type(data['annotations']).__name__}")
    if problems:
        return problems
    for key, value in data.items():  # extra top-level keys are copied into every split file
        reason = None if key in REQUIRED_TOP_LEVEL + ("annotations",) else non_finite_or_deep(value, _quoted(key))
        if reason:
            problems.append(f"top level: {reason}")

    category_ids = _check_records(data["categories"], "category", REQUIRED_CATEGORY_KEYS, problems)
    image_ids = _check_records(data["images"], "image", REQUIRED_IMAGE_KEYS, problems)
    problems += _file_name_problems(data["images"])
    for image in data["images"]:
        if not isinstance(image, dict):
            continue
        for key in ("width", "height"):
            if key in image and not (_is_int(image[key]) and image[key] > 0):
                problems.append(
                    f"image {number_text(image.get('id'))}: {key} must be a positive integer, got {number_text(image[key])}"
                )
    problems += _category_problems(data["categories"], problems)

    annotations = data.get("annotations", [])
    _check_records(annotations, "annotation", REQUIRED_ANNOTATION_KEYS, problems)
    for annotation in annotations:
        if not isinstance(annotation, dict):
            continue
        ann_id = number_text(annotation.get("id"))
        for key in ("category_id", "image_id"):
            if key in annotation and not _is_int(annotation[key]):
                problems.append(f"annotation {ann_id}: {key} must be an integer, got {number_text(annotation[key])}")
        if _is_int(annotation.get("category_id")) and annotation["category_id"] not in category_ids:
            problems.append(
                f"annotation {ann_id}: category_id {number_text(annotation['category_id'])} is not in categories "
                f"(known: {sorted(category_ids)[:20]})"
            )
        if _is_int(annotation.get("image_id")) and annotation["image_id"] not in image_ids:
            problems.append(f"annotation {ann_id}: image_id {number_text(annotation['image_id'])} is not in images")
    return problems


def _category_problems(categories: list, problems_so_far: list[str]) -> list[str]:
    """Ids below 0, NaN or deep values, and whatever the class table refuses (too many, bad names)."""
    problems = []
    for category in categories:
        if not isinstance(category, dict):
            continue
        if _is_int(category.get("id")) and category["id"] < 0:
            problems.append(f"category {category['id']}: id must be >= 0")
        reason = non_finite_or_deep(category, "the category")
        if reason:
            problems.append(f"category {number_text(category.get('id'))}: {reason}")
    if not problems and not any(p.startswith("category") for p in problems_so_far):
        try:
            ClassTable.from_categories(categories)
        except DataError as error:
            problems.append(f"categories: {error}")
    return problems


def output_key(file_name: str) -> str:
    """What a file_name is written as: its normalised path without suffix (the image is
    written at the path, the mask at the path with .png), so equal keys collide."""
    return str(PurePosixPath(posixpath.normpath(file_name)).with_suffix(""))


def _file_name_problems(images: list) -> list[str]:
    """file_names that leave the image root, name no file, or collide with another's output."""
    problems, first_with_key = [], {}
    for image in images:
        if not (isinstance(image, dict) and "file_name" in image):
            continue
        name, image_id = image["file_name"], number_text(image.get("id"))
        if not (isinstance(name, str) and name):
            problems.append(f"image {image_id}: file_name must be a non-empty string, got {_quoted(repr(name))}")
        elif PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            # Outputs are written at file_name under a folder; it must stay inside it.
            problems.append(
                f"image {image_id}: file_name {_quoted(name)} must be a relative path without '..' "
                "(relative to the image root)"
            )
        elif posixpath.normpath(name) == "." or name.endswith("/"):
            problems.append(f"image {image_id}: file_name {_quoted(name)} names a folder, not a file")
        elif (key := output_key(name)) in first_with_key:
            other_id, other_name = first_with_key[key]
            if posixpath.normpath(name) == posixpath.normpath(other_name):
                spelled = "" if name == other_name else f" (spelled {_quoted(other_name)} there)"
                problems.append(
                    f"image {image_id}: file_name {_quoted(name)} is also used by image {other_id}{spelled}; "
                    "each image needs its own file"
                )
            else:
                problems.append(
                    f"image {image_id}: file_name {_quoted(name)} would write the same mask "
                    f"(masks/{_quoted(key)[1:-1]}.png) as image {other_id}'s {_quoted(other_name)}; file_names "
                    "must differ apart from their suffix: rename one"
                )
        else:
            first_with_key[key] = (image_id, name)
    return problems


def _check_records(records: list, kind: str, required: tuple[str, ...], problems: list[str]) -> set[int]:
    """Check required keys, integer ids and duplicates; return the valid ids."""
    id_counts = Counter(r["id"] for r in records if isinstance(r, dict) and _is_int(r.get("id")))
    seen: set[int] = set()
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            problems.append(f"{kind} #{index}: expected an object, got {type(record).__name__}")
            continue
        missing = [key for key in required if key not in record]
        label = f"{kind} {number_text(record['id'])}" if "id" in record else f"{kind} #{index} (no id)"
        if missing:
            problems.append(f"{label}: missing required key(s) {', '.join(missing)}")
        if "id" not in record:
            continue
        if not _is_int(record["id"]):
            problems.append(f"{label}: id must be an integer, got {_quoted(repr(record['id']), 60)}")
            continue
        if id_counts[record["id"]] > 1 and record["id"] not in seen:
            problems.append(
                f"{kind} {number_text(record['id'])}: duplicate id ({id_counts[record['id']]} {kind}s share it); "
                "ids must be unique"
            )
        seen.add(record["id"])
    return seen


def _image_record_problem(image: dict) -> str | None:
    """Why an image record cannot be used whatever its file holds, or None."""
    name = image["file_name"]
    reason = text_problem(name)
    if reason:
        return f"file_name {reason}; rename the file"
    too_long = next((part for part in PurePosixPath(name).parts if len(part.encode()) > MAX_NAME_BYTES), None)
    if too_long is not None:
        return (
            f"file_name component {_quoted(too_long, 40)} is {len(too_long.encode())} bytes, more than the "
            f"{MAX_NAME_BYTES} a filesystem accepts; shorten it"
        )
    pixels = image["width"] * image["height"]
    if pixels > MAX_IMAGE_PIXELS:
        return (
            f"image is {number_text(image['width'])}x{number_text(image['height'])} ({number_text(pixels, grouped=True)} pixels) "
            f"in the JSON, more than {MAX_IMAGE_PIXELS:,}; downscale it and its annotations"
        )
    reason = non_finite_or_deep(image, "the image record")
    return f"{reason}; fix the record" if reason else None


def _image_file_problem(image: dict, image_root: Path) -> str | None:
    """Why the image file cannot be used: it is decoded in full, exactly as training reads it."""
    from trashseg.data.images import read_rgb

    file = image_root / image["file_name"]
    try:
        height, width = read_rgb(file).shape[:2]
    except DataError as error:
        return str(error)
    if (width, height) != (image["width"], image["height"]):
        return (
            f"image file {file} is {width}x{height} on disk but {image['width']}x{image['height']} "
            "in the JSON (width x height)"
        )
    return None


def annotation_problem(annotation: dict, image: dict) -> str | None:
    """Why an annotation cannot be used on `image`, or None when it is fine."""
    reason, _ = annotation_geometry(annotation, image)
    return reason or _annotation_area_problem(annotation, image)


def annotation_geometry(annotation: dict, image: dict) -> tuple[str | None, int]:
    """(why the annotation's shape cannot be rasterised or None, its boundary length in
    pixels): the checks that need no rasterising."""
    height, width = image["height"], image["width"]
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        if not segmentation:
            return "empty segmentation (no polygons)", 0
        for index, polygon in enumerate(segmentation):
            # Parsed polygons of numbers are arrays already (compact_polygons); a list is checked
            # value by value (type() is, not isinstance: bools are not coordinates).
            if not (isinstance(polygon, array) or isinstance(polygon, list) and all(
                type(v) is float or type(v) is int for v in polygon
            )):
                return f"polygon {index} is not a flat list of numbers", 0
            if len(polygon) % 2:
                return f"polygon {index} has an odd number of coordinates ({len(polygon)})", 0
            if len(polygon) < 6:
                return f"polygon {index} has {len(polygon) // 2} point(s); a polygon needs at least 3", 0
        reason, boundary = polygon_problem(segmentation, height, width)
    elif isinstance(segmentation, dict):
        reason, boundary = _rle_problem(segmentation, height, width), 0
    else:
        return f"segmentation must be a polygon list or an RLE object, got {type(segmentation).__name__}", 0
    if reason:
        return reason, 0
    others = {key: value for key, value in annotation.items() if key != "segmentation"}
    if isinstance(segmentation, dict):
        others["segmentation"] = segmentation
    reason = _bbox_problem(annotation.get("bbox"), height, width) or non_finite_or_deep(others, "the annotation")
    return reason, boundary


def _bbox_problem(bbox: Any, height: int, width: int) -> str | None:
    if bbox is None:
        return None
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
        return f"bbox must be [x, y, width, height] of finite numbers, got {_quoted(repr(bbox), 80)}"
    if any(abs(v) > 4 * max(height, width) + 8 for v in bbox):  # also keeps huge integers out of float sums
        return f"bbox [{', '.join(number_text(v) for v in bbox)}] lies far outside the {width}x{height} image"
    x, y, w, h = bbox
    tol = BBOX_TOLERANCE_PX
    if w < 0 or h < 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return f"bbox {bbox} lies outside the {width}x{height} image"
    return None


def _annotation_area_problem(annotation: dict, image: dict) -> str | None:
    area = float(segmentation_area(annotation["segmentation"], image["height"], image["width"]))
    return "zero-area segmentation (covers no pixel of the image)" if area <= 0 else None


def _rle_problem(rle: dict, height: int, width: int) -> str | None:
    if "counts" not in rle or "size" not in rle:
        return "RLE segmentation needs 'counts' and 'size'"
    size = rle["size"]
    if not isinstance(size, list) or list(size) != [height, width]:
        return f"RLE size {size} differs from the image's [height, width] [{height}, {width}]"
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            return "uncompressed RLE counts must be non-negative integers"
        if sum(counts) != height * width:
            return f"uncompressed RLE counts sum to {sum(counts)}, expected height*width = {height * width}"
    elif isinstance(counts, str):
        runs = compressed_rle_runs(counts)
        if runs is None:
            return "compressed RLE counts are not a valid COCO RLE string"
        if any(run < 0 for run in runs):
            return "compressed RLE counts decode to a negative run length"
        if sum(runs) != height * width:
            return f"compressed RLE counts cover {sum(runs)} pixels, expected height*width = {height * width}"
    else:
        return f"RLE counts must be a list (uncompressed) or a string (compressed), got {type(counts).__name__}"
    return None


def polygon_problem(polygons: list, height: int, width: int) -> tuple[str | None, int]:
    """(why these polygons must not be rasterised or None, their boundary length in pixels).

    Refused: too many points, non-finite or far-outside vertices, a boundary longer than
    `MAX_POLYGON_BOUNDARY` (the rasteriser's memory grows with it, not with the image).
    Vectorised: a file holds millions of vertices."""
    points = sum(len(polygon) for polygon in polygons) // 2
    if points > MAX_POLYGON_POINTS:
        return f"polygons have {points:,} points, more than the {MAX_POLYGON_POINTS:,} accepted per annotation", 0
    boundary = 0
    for index, polygon in enumerate(polygons):
        try:
            vertices = np.array(polygon, dtype=np.float64).reshape(-1, 2)
        except OverflowError:  # an integer beyond any float: far outside by definition
            far = next(v for v in polygon if abs(v) > 1e300)
            axis = "xy"[polygon.index(far) % 2]
            return f"polygon {index} has {axis} coordinate {number_text(far)}, far outside the image", 0
        for column, (axis, size) in enumerate((("x", width), ("y", height))):
            values = vertices[:, column]
            bad = ~np.isfinite(values)
            if bad.any():
                return f"polygon {index} has a non-finite {axis} coordinate ({values[bad][0]})", 0
            low, high = -POLYGON_MARGIN * size, (1 + POLYGON_MARGIN) * size
            outside = (values < low) | (values > high)
            if outside.any():
                return (
                    f"polygon {index} has {axis} coordinate {number_text(float(values[outside][0]))}, far outside the "
                    f"image (0..{size}; accepted {low:g}..{high:g})"
                ), 0
        edges = np.abs(vertices - np.roll(vertices, 1, axis=0)).max(axis=1)
        boundary += int(np.ceil(edges).sum()) + len(edges)
    if boundary > MAX_POLYGON_BOUNDARY:
        return (
            f"polygons' boundary is {boundary:,} pixels long, more than the {MAX_POLYGON_BOUNDARY:,} accepted per "
            f"annotation (a {width}x{height} image's outline is {2 * (width + height):,}); simplify the polygon"
        ), 0
    return None, boundary


def polygon_coordinate_problem(polygons: list, height: int, width: int) -> str | None:
    """Why these polygons must not be rasterised, or None (`polygon_problem` without the length)."""
    return polygon_problem(polygons, height, width)[0]


def compressed_rle_runs(counts: str) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string (pycocotools' `rleFrString`), or
    None when it is not one. Decoded here so bad runs are caught before pycocotools,
    whose decoder does not check them, writes a mask from them."""
    runs: list[int] = []
    position, length = 0, len(counts)
    while position < length:
        value, shift, more = 0, 0, True
        while more:
            if position >= length:
                return None
            char = ord(counts[position]) - 48
            if not 0 <= char < 64:
                return None
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def segmentation_rle(segmentation: list | dict, height: int, width: int) -> dict:
    """One compressed RLE for a polygon list or an (un)compressed RLE segmentation.

    Polygons are checked first (cheaply) even here: a caller that skipped validation gets
    a `DataError`, never a rasteriser that exhausts memory."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        reason = polygon_problem(segmentation, height, width)[0]
        if reason:
            raise DataError(f"segmentation cannot be rasterised: {reason}")
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def segmentation_area(segmentation: list | dict, height: int, width: int) -> int:
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(segmentation_rle(segmentation, height, width)))


def decode_rle(rle: dict) -> np.ndarray:
    """(height, width) bool mask of one compressed RLE."""
    from pycocotools import mask as mask_utils

    # pycocotools' Cython arrays predate numpy 2's `copy` keyword; the warning is harmless.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)

