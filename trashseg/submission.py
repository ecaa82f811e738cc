"""The competition submission CSV: write it from class maps, read it back, validate it.

    image_id,PredictionString
    batch_01_vt/0021.jpg,0 0 0 1 1 ... (65,536 class ids: the 256x256 map, row-major)

`image_id` is the image's COCO `file_name` exactly; rows follow the test annotation
file's image order. Maps of any size are resized to 256x256 by nearest neighbour.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trashseg.data.classes import ClassTable
from trashseg.errors import DataError

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    seen: set[str] = set()
    with path.open("wb") as handle:
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
    names = annotation_image_names(annotation_file)
    missing = sorted(set(names) - set(predictions.file_names))
    if missing:
        raise SubmissionError(
            f"{prediction_dir} has no prediction for {len(missing)} test image(s): "
            f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}; "
            f"predict the whole split of {annotation_file}"
        )
    return write_submission(path, ((name, predictions.mask(name)) for name in names))


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
    # A row is ~130-200 kB of text, beyond the csv module's default field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 4 * VALUES_PER_ROW + 1024))
    problems: list[str] = []
    maps: dict[str, np.ndarray] = {}
    order: list[str] = []
    row_of: dict[str, int] = {}
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(header) != HEADER:
            raise SubmissionError(
                f"{path}: header is {header!r}, expected {','.join(HEADER)!r} as the first line"
            )
        for row_number, row in enumerate(reader, start=2):  # line numbers as an editor shows them
            if len(row) != 2:
                problems.append(
                    f"row {row_number}: {len(row)} fields, expected 2 (image_id,PredictionString)"
                )
                continue
            image_id, text = row
            where = f"row {row_number} ({image_id!r})"
            if image_id in row_of:
                problems.append(
                    f"{where}: duplicate image_id, first seen in row {row_of[image_id]}"
                )
                continue
            row_of[image_id] = row_number
            order.append(image_id)
            if text.translate(_DELETE_DIGITS_AND_SPACES):  # anything but digits and spaces
                bad = next(token for token in text.split() if not token.isdigit())
                problems.append(f"{where}: value {bad!r} is not a class id (a non-negative integer)")
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
            problems.append(f"missing rows for {len(missing)} test image(s): {', '.join(missing)}")
        for name in unknown:
            problems.append(f"row {row_of[name]} ({name!r}): image_id is not a test image")
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


def validate_submission(path: str | Path, annotation_file: str | Path) -> Submission:
    """Validate against a test annotation file: its images (in order) and its categories."""
    annotations = _read_annotations(annotation_file)
    categories = annotations.get("categories")
    if not categories:
        raise SubmissionError(
            f"{annotation_file} has no 'categories'; the valid class ids come from them"
        )
    classes = ClassTable.from_categories(categories)
    names = [image["file_name"] for image in annotations["images"]]
    return read_submission(path, expected_file_names=names, num_classes=classes.num_classes)


def _read_annotations(annotation_file: str | Path) -> dict:
    path = Path(annotation_file)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"annotation file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict) or "images" not in data:
        raise DataError(f"annotation file {path} has no 'images' list; expected a COCO file")
    return data

