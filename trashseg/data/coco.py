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
unclipped perimeter (a NaN or 1e8 coordinate asks for gigabytes) and its RLE decoder
writes past its buffer when the runs sum to more than height*width.

The kept records are served through a `pycocotools.coco.COCO` index. A file without an
`annotations` key is valid only when loaded with `unlabelled=True` (a test set); the
report then carries a note saying so.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trashseg.data.classes import ClassTable
from trashseg.errors import DataError
from trashseg.fileio import write_text

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


@dataclass(frozen=True)
class SkippedRecord:
    kind: str  # "image" or "annotation"
    id: int
    reason: str
    image_id: int | None = None  # the annotation's image (so a viewer can show it there)

    def __str__(self) -> str:
        return f"{self.kind} {self.id}: {self.reason}"


@dataclass
class ValidationReport:
    """Records skipped while loading one annotation file, with their reasons."""

    source: str
    skipped: list[SkippedRecord] = field(default_factory=list)
    images_total: int = 0
    annotations_total: int = 0
    notes: list[str] = field(default_factory=list)  # facts a reader must know, e.g. "unlabelled"
    image_root: str = ""  # the folder file_names were resolved against

    def skip(self, kind: str, record_id: int, reason: str, image_id: int | None = None) -> None:
        self.skipped.append(SkippedRecord(kind, record_id, reason, image_id))

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
                for s in self.skipped
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        return cls(
            source=data["source"],
            skipped=[SkippedRecord(s["kind"], s["id"], s["reason"], s.get("image_id")) for s in data["skipped"]],
            images_total=data["images_total"],
            annotations_total=data["annotations_total"],
            notes=list(data.get("notes", [])),
            image_root=data.get("image_root", ""),
        )

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

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
        return "\n".join(lines)

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
    text = re.sub(r"(?<![\w.])/[^\s'\")]+", "<path>", text)  # absolute paths inside messages
    text = re.sub(r"its image \d+", "its image <id>", text)
    return re.sub(r"(?<![A-Za-z])-?\d+(\.\d+)?(e[+-]?\d+)?", "<n>", text)


@dataclass
class CocoDataset:
    """The kept records of one validated annotation file."""

    path: Path
    image_root: Path
    data: dict[str, Any]  # the file's top level with only kept images and annotations
    report: ValidationReport
    has_annotations: bool  # False for a test set without an `annotations` key
    coco: Any = field(repr=False)  # pycocotools.coco.COCO over the kept records

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
    """Write a COCO dict compactly and deterministically (same dict -> same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(data, separators=(",", ":")) + "\n")


def read_json_value(path: str | Path, what: str = "annotation file") -> Any:
    """Parse a JSON file; `DataError` naming `what` and the path when it is missing or not JSON
    (binary files included)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; pass the path of a .json file")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{what} {path} is not readable JSON ({error}); fix or re-export it") from None


def read_json(path: str | Path) -> dict[str, Any]:
    data = read_json_value(path)
    if not isinstance(data, dict):
        raise DataError(
            f"annotation file {path}: top level is a {type(data).__name__}, expected a COCO object "
            "with 'images', 'categories' and 'annotations'"
        )
    return data


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
    data = read_json(path)
    image_root = Path(image_root) if image_root is not None else path.parent
    fatal = _fatal_problems(data)
    if "annotations" not in data and not unlabelled:
        fatal.append(
            "top level: missing key 'annotations'; a training or validation file needs its "
            "annotations (for an unlabelled test file, use --unlabelled / load it as the test split)"
        )
    if fatal:
        raise DataError(
            f"annotation file {path} cannot be used: {len(fatal)} problem(s):\n  "
            + "\n  ".join(fatal)
            + "\nFix these records in the file and run `trashseg validate-data` again."
        )

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
        reason = _image_size_problem(image) or (_image_file_problem(image, image_root) if check_files else None)
        if reason:
            report.skip("image", image["id"], reason)
        else:
            kept_images.append(image)
    kept_image_by_id = {im["id"]: im for im in kept_images}
    skipped_image_ids = {s.id for s in report.skipped_images}

    kept_annotations = []
    for annotation in data.get("annotations", []):
        image_id = annotation["image_id"]
        if image_id in skipped_image_ids:
            report.skip("annotation", annotation["id"], f"its image {image_id} was skipped", image_id)
            continue
        reason = annotation_problem(annotation, kept_image_by_id[image_id])
        if reason:
            report.skip("annotation", annotation["id"], reason, image_id)
        else:
            kept_annotations.append(annotation)

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
    )


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

    category_ids = _check_records(data["categories"], "category", REQUIRED_CATEGORY_KEYS, problems)
    image_ids = _check_records(data["images"], "image", REQUIRED_IMAGE_KEYS, problems)
    first_with_name: dict[str, Any] = {}
    for image in data["images"]:
        if not isinstance(image, dict):
            continue
        if "file_name" in image:
            name = image["file_name"]
            if not (isinstance(name, str) and name):
                problems.append(f"image {image.get('id')}: file_name must be a non-empty string, got {name!r}")
            elif Path(name).is_absolute() or ".." in Path(name).parts:
                # Outputs are written at file_name under a folder; it must stay inside it.
                problems.append(
                    f"image {image.get('id')}: file_name {name!r} must be a relative path without '..' "
                    "(relative to the image root)"
                )
            elif name in first_with_name:
                problems.append(
                    f"image {image.get('id')}: file_name {name!r} is also used by image {first_with_name[name]}; "
                    "each image needs its own file"
                )
            else:
                first_with_name[name] = image.get("id")
        for key in ("width", "height"):
            if key in image and not (_is_int(image[key]) and image[key] > 0):
                problems.append(f"image {image.get('id')}: {key} must be a positive integer, got {image[key]!r}")
    for category in data["categories"]:
        if isinstance(category, dict) and _is_int(category.get("id")) and category["id"] < 0:
            problems.append(f"category {category['id']}: id must be >= 0")

    annotations = data.get("annotations", [])
    _check_records(annotations, "annotation", REQUIRED_ANNOTATION_KEYS, problems)
    for annotation in annotations:
        if not isinstance(annotation, dict):
            continue
        ann_id = annotation.get("id")
        for key in ("category_id", "image_id"):
            if key in annotation and not _is_int(annotation[key]):
                problems.append(f"annotation {ann_id}: {key} must be an integer, got {annotation[key]!r}")
        if _is_int(annotation.get("category_id")) and annotation["category_id"] not in category_ids:
            problems.append(
                f"annotation {ann_id}: category_id {annotation['category_id']!r} is not in categories "
                f"(known: {sorted(category_ids)})"
            )
        if _is_int(annotation.get("image_id")) and annotation["image_id"] not in image_ids:
            problems.append(f"annotation {ann_id}: image_id {annotation['image_id']!r} is not in images")
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
        label = f"{kind} {record['id']}" if "id" in record else f"{kind} #{index} (no id)"
        if missing:
            problems.append(f"{label}: missing required key(s) {', '.join(missing)}")
        if "id" not in record:
            continue
        if not _is_int(record["id"]):
            problems.append(f"{label}: id must be an integer, got {record['id']!r}")
            continue
        if id_counts[record["id"]] > 1 and record["id"] not in seen:
            problems.append(
                f"{kind} {record['id']}: duplicate id ({id_counts[record['id']]} {kind}s share it); ids must be unique"
            )
        seen.add(record["id"])
    return seen


def _image_size_problem(image: dict) -> str | None:
    pixels = image["width"] * image["height"]
    if pixels > MAX_IMAGE_PIXELS:
        return (
            f"image is {image['width']}x{image['height']} ({pixels:,} pixels) in the JSON, more than "
            f"{MAX_IMAGE_PIXELS:,}; downscale it and its annotations"
        )
    return None


def _image_file_problem(image: dict, image_root: Path) -> str | None:
    from trashseg.data.images import open_image

    file = image_root / image["file_name"]
    try:
        with open_image(file) as opened:
            width, height = opened.size
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
    height, width = image["height"], image["width"]
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        if not segmentation:
            return "empty segmentation (no polygons)"
        for index, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
                return f"polygon {index} is not a flat list of numbers"
            if len(polygon) % 2:
                return f"polygon {index} has an odd number of coordinates ({len(polygon)})"
            if len(polygon) < 6:
                return f"polygon {index} has {len(polygon) // 2} point(s); a polygon needs at least 3"
        reason = polygon_coordinate_problem(segmentation, height, width)
        if reason:
            return reason
    elif isinstance(segmentation, dict):
        reason = _rle_problem(segmentation, height, width)
        if reason:
            return reason
    else:
        return f"segmentation must be a polygon list or an RLE object, got {type(segmentation).__name__}"

    area = float(segmentation_area(segmentation, height, width))
    if area <= 0:
        return "zero-area segmentation (covers no pixel of the image)"

    bbox = annotation.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
            return f"bbox must be [x, y, width, height] of finite numbers, got {bbox!r}"
        x, y, w, h = bbox
        tol = BBOX_TOLERANCE_PX
        if w < 0 or h < 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return f"bbox {bbox} lies outside the {width}x{height} image"
    return None


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


def polygon_coordinate_problem(polygons: list, height: int, width: int) -> str | None:
    """Why these polygons must not be rasterised (non-finite or far-outside vertices), or None."""
    for index, polygon in enumerate(polygons):
        xs, ys = polygon[0::2], polygon[1::2]
        for axis, values, size in (("x", xs, width), ("y", ys, height)):
            bad = next((v for v in values if not _is_finite_number(v)), None)
            if bad is not None:
                return f"polygon {index} has a non-finite {axis} coordinate ({bad})"
            low, high = -POLYGON_MARGIN * size, (1 + POLYGON_MARGIN) * size
            far = next((v for v in values if not low <= v <= high), None)
            if far is not None:
                return (
                    f"polygon {index} has {axis} coordinate {far:g}, far outside the image "
                    f"(0..{size}; accepted {low:g}..{high:g})"
                )
    return None


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
        reason = polygon_coordinate_problem(segmentation, height, width)
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

