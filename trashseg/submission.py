"""The competition submission CSV: write it from class maps, read it back, validate it.

    image_id,PredictionString
    batch_01_vt/0021.jpg,0 0 0 1 1 ... (65,536 class ids: the 256x256 map, row-major)

`image_id` is the image's COCO `file_name` exactly; rows follow the test annotation
file's image order. Maps of any size are resized to 256x256 by nearest neighbour.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trashseg.data.classes import ClassTable
from trashseg.errors import DataError
from trashseg.fileio import atomic_write

HEADER = ("image_id", "PredictionString")
SUBMISSION_SIZE = 256
VALUES_PER_ROW = SUBMISSION_SIZE * SUBMISSION_SIZE
MAX_CLASS_ID = 254  # 255 is the ignore index and never a valid prediction

# Token table: entry i holds the ASCII digits of i and a space, zero-padded to 4 bytes
# (one uint32). Gathering entries and deleting the zero bytes builds a whole row's
# string in two C-speed calls, ~0.5 ms per image instead of ~50 ms with str.join.
_TOKEN_BYTES = np.zeros((256, 4), dtype=np.uint8)
for _value in range(256):
    _text = f"{_value} ".encode()
    _TOKEN_BYTES[_value, : len(_text)] = np.frombuffer(_text, dtype=np.uint8)
_TOKENS = _TOKEN_BYTES.view(np.uint32).reshape(256)


_DELETE_DIGITS_AND_SPACES = str.maketrans("", "", "0123456789 ")
_NOT_DIGIT_OR_SPACE = re.compile(r"[^0-9 ]")
# Longest field accepted: a row of 65,536 three-digit ids with spaces, plus slack. A longer
# one is not a submission row, and the csv module refuses it without saying which row.
MAX_FIELD_CHARS = 4 * VALUES_PER_ROW + 1024


class SubmissionError(DataError):
    """A submission file that does not match the test set or the format."""


def resize_nearest(class_map: np.ndarray, size: int = SUBMISSION_SIZE) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) map to (size, size): source index floor(i * H / size)."""
    if class_map.ndim != 2:
        raise DataError(f"class map must be 2-D (H, W), got shape {class_map.shape}")
    height, width = class_map.shape
    if height % size == 0 and width % size == 0:  # same indices, as a cheap strided view
        return class_map[:: height // size, :: width // size]
    rows = (np.arange(size) * height) // size
    cols = (np.arange(size) * width) // size
    return class_map[rows[:, None], cols[None, :]]


def prediction_string(class_map: np.ndarray) -> str:
    """The 65,536 space-separated class ids of one map after the 256x256 resize."""
    return _prediction_bytes(class_map).decode("ascii")


def _prediction_bytes(class_map: np.ndarray) -> bytes:
    resized = resize_nearest(np.asarray(class_map))
    if not np.issubdtype(resized.dtype, np.integer):
        raise SubmissionError(f"class map has dtype {resized.dtype}; expected integer class ids (uint8)")
    low, high = int(resized.min()), int(resized.max())
    if low < 0 or high > MAX_CLASS_ID:
        raise SubmissionError(
            f"class map holds ids {low}..{high}; submission ids must be 0..{MAX_CLASS_ID}"
        )
    ids = resized.astype(np.uint8, copy=False).reshape(-1)
    return _TOKENS[ids].tobytes().translate(None, b"\x00")[:-1]  # no trailing space


def write_submission(path: str | Path, rows: Iterable[tuple[str, np.ndarray]]) -> int:
    """Write (file_name, class map) pairs, in the given order, as the submission CSV.

    Returns the number of rows. The caller decides the order (the test annotation order);
    `write_submission_from_predictions` does that from a prediction folder.
    """
    count = 0
    seen: set[str] = set()
    # A failed write (bad row, full disk) leaves no truncated CSV at `path`.
    with atomic_write(path) as handle:
        handle.write(",".join(HEADER).encode() + b"\n")
        for file_name, class_map in rows:
            if file_name in seen:
                raise SubmissionError(
                    f"image_id {file_name!r} given twice; each test image gets one row"
                )
            seen.add(file_name)
            # csv.writer would scan all ~130 kB of digits for quoting (~1.5 ms a row);
            # only the image_id can need it.
            handle.write(_csv_field(file_name).encode() + b"," + _prediction_bytes(class_map) + b"\n")
            count += 1
    return count


def _csv_field(text: str) -> str:
    """`text` quoted as the csv module would (only when it holds a comma, quote or newline)."""
    if any(char in text for char in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def annotation_image_names(annotation_file: str | Path) -> list[str]:
    """The images' file_names in the annotation file's order (the submission's row order)."""
    return [image["file_name"] for image in _read_annotations(annotation_file)["images"]]


def write_submission_from_predictions(
    prediction_dir: str | Path, annotation_file: str | Path, path: str | Path
) -> int:
    """Submission CSV from a prediction folder's masks, one row per image of `annotation_file`."""
    from trashseg.predictions import PredictionSet

    predictions = PredictionSet.open(prediction_dir)
    check_predictions_match(predictions, annotation_file)
    names = annotation_image_names(annotation_file)
    missing = sorted(set(names) - set(predictions.file_names))
    if missing:
        raise SubmissionError(
            f"{prediction_dir} has no prediction for {len(missing)} test image(s): {_first(missing)}; "
            f"predict the whole split of {annotation_file}"
        )
    return write_submission(path, ((name, predictions.mask(name)) for name in names))


def check_predictions_match(predictions, annotation_file: str | Path) -> None:
    """Refuse predictions made for another dataset or split than `annotation_file`'s.

    File names alone cannot tell two datasets apart (every export has 0001.jpg), so the
    dataset version and split recorded in predictions.json are compared with those of the
    prepared dataset that holds the annotation file (DATASET/splits/<split>.json). A bare
    COCO file outside a prepared dataset has nothing to compare against."""
    from trashseg.data.layout import PreparedDataset
    from trashseg.predictions import check_made_from

    annotation_file = Path(annotation_file)
    if annotation_file.parent.name == "splits":
        dataset = PreparedDataset(annotation_file.parent.parent)
        check_made_from(predictions, dataset, annotation_file.stem, where=str(annotation_file), error=SubmissionError)


@dataclass(frozen=True)
class Submission:
    file_names: list[str]  # row order
    maps: dict[str, np.ndarray]  # file_name -> (256, 256) uint8 class ids


def read_submission(
    path: str | Path,
    expected_file_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> Submission:
    """Read and validate a submission; raise `SubmissionError` listing every bad row.

    Checked: the header; per row, exactly 65,536 integers in 0..num_classes-1; no duplicate
    image ids; and with `expected_file_names`, no missing or unknown ids and the same order.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"submission {path} does not exist")
    problems: list[str] = []
    maps: dict[str, np.ndarray] = {}
    order: list[str] = []
    row_of: dict[str, int] = {}
    for row_number, row in _csv_rows(path):
        if row_number == 1:
            if tuple(row) != HEADER:
                raise SubmissionError(
                    f"{path}: header is {_preview(row)}, expected {','.join(HEADER)!r} as the first line "
                    "(comma-separated)"
                )
            continue
        if len(row) != 2:
            problems.append(
                f"row {row_number}: {len(row)} fields, expected 2 (image_id,PredictionString)"
            )
            continue
        image_id, text = row
        where = f"row {row_number} ({_short(image_id)!r})"
        if image_id in row_of:
            problems.append(
                f"{where}: duplicate image_id, first seen in row {row_of[image_id]}"
            )
            continue
        row_of[image_id] = row_number
        order.append(image_id)
        if text.translate(_DELETE_DIGITS_AND_SPACES):  # anything but ASCII digits and spaces
            problems.append(f"{where}: {_bad_character(text)}")
            continue
        # Only digits and spaces are left, so this C parser cannot stop early.
        values = np.fromstring(text, dtype=np.int64, sep=" ")
        if values.size != VALUES_PER_ROW:
            problems.append(f"{where}: {values.size} values, expected {VALUES_PER_ROW} (256x256)")
            continue
        upper = (num_classes - 1) if num_classes is not None else MAX_CLASS_ID
        out_of_range = (values < 0) | (values > upper)
        if out_of_range.any():
            bad_ids = np.unique(values[out_of_range])[:10].tolist()
            problems.append(f"{where}: class ids {bad_ids} outside 0..{upper}")
            continue
        maps[image_id] = values.astype(np.uint8).reshape(SUBMISSION_SIZE, SUBMISSION_SIZE)
    if expected_file_names is not None:
        expected = list(expected_file_names)
        expected_set = set(expected)
        missing = [name for name in expected if name not in row_of]
        unknown = [name for name in order if name not in expected_set]
        if missing:
            problems.append(f"missing rows for {len(missing)} test image(s): {_first(missing)}")
        for name in unknown[:_LISTED]:
            problems.append(f"row {row_of[name]} ({_short(name)!r}): image_id is not a test image")
        if len(unknown) > _LISTED:
            problems.append(f"... and {len(unknown) - _LISTED} more rows whose image_id is not a test image")
        if not missing and not unknown and order != expected:
            first = next(i for i, (a, b) in enumerate(zip(order, expected, strict=True)) if a != b)
            problems.append(
                f"rows are not in test annotation order: row {first + 2} is {order[first]!r}, "
                f"expected {expected[first]!r}"
            )
    if problems:
        raise SubmissionError(
            f"{path}: {len(problems)} problem(s):\n  "
            + "\n  ".join(problems)
            + "\nRewrite it with `trashseg submission` from a prediction folder of the test split."
        )
    return Submission(order, maps)


def _csv_rows(path: Path) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of each CSV row; `SubmissionError` for what is not a text CSV."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            row_number = 0
            for row_number, row in enumerate(reader, start=1):  # line numbers as an editor shows them
                yield row_number, row
            if row_number == 0:
                raise SubmissionError(f"{path} is empty; expected the header {','.join(HEADER)!r} and one row per image")
        except UnicodeDecodeError as error:
            raise SubmissionError(
                f"{path} is not a UTF-8 text CSV ({error.reason} at byte {error.start}); is it a binary file?"
            ) from None
        except csv.Error as error:
            # e.g. "field larger than field limit" or "line contains NUL"
            raise SubmissionError(
                f"{path}: row {reader.line_num} cannot be read as CSV ({error}); a row is "
                f"image_id,PredictionString with at most {MAX_FIELD_CHARS:,} characters per field"
            ) from None


def _bad_character(text: str) -> str:
    match = _NOT_DIGIT_OR_SPACE.search(text)
    char, position = match.group(), match.start()
    token = text[max(0, text.rfind(" ", 0, position) + 1) : position + 1 + 20].split(" ")[0]
    hint = ""
    if char.isspace():
        hint = "; separate class ids with single spaces (not tabs or other whitespace)"
    elif char.isdigit():
        hint = "; class ids are written with ASCII digits 0-9"
    return (
        f"value {token[:40]!r} is not a class id (a non-negative integer): character {char!r} "
        f"(U+{ord(char):04X}) at position {position}{hint}"
    )


_LISTED = 20  # names listed in one problem; the count says how many there are


def _first(names: Sequence[str]) -> str:
    listed = ", ".join(_short(name) for name in names[:_LISTED])
    return listed + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _preview(row: list[str]) -> str:
    text = repr(row)
    return text if len(text) <= 120 else text[:120] + "...]"


def validate_submission(path: str | Path, annotation_file: str | Path) -> Submission:
    """Validate against a test annotation file: its images (in order) and its categories."""
    annotations = _read_annotations(annotation_file)
    categories = annotations.get("categories")
    if not categories:
        raise SubmissionError(
            f"{annotation_file} has no 'categories'; the valid class ids come from them"
        )
    classes = ClassTable.from_categories(categories)
    names = annotation_image_names(annotation_file)
    return read_submission(path, expected_file_names=names, num_classes=classes.num_classes)


def _read_annotations(annotation_file: str | Path) -> dict:
    """The COCO file's top level, checked as far as a submission needs: images with file_names."""
    from trashseg.data.jsonio import read_json

    data = read_json(annotation_file)  # DataError for a missing, binary or non-JSON file
    images = data.get("images")
    if not isinstance(images, list) or not all(
        isinstance(image, dict) and isinstance(image.get("file_name"), str) for image in images
    ):
        raise DataError(
            f"annotation file {annotation_file} needs an 'images' list whose entries each have a "
            "'file_name' string; expected a COCO file"
        )
    categories = data.get("categories")
    if categories is not None and not (
        isinstance(categories, list) and all(isinstance(c, dict) and "id" in c and "name" in c for c in categories)
    ):
        raise DataError(f"annotation file {annotation_file}: 'categories' must be a list of {{id, name}} objects")
    return data

