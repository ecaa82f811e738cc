"""Reading and writing the JSON files of a dataset, guarded against hostile input.

Python's parser accepts things a dataset must not carry, or fails with exceptions no
caller expects. Here every one of them becomes a `DataError` naming the file:

- a file larger than `MAX_JSON_BYTES` (parsed COCO takes several times its size in memory);
- arrays or objects nested deeper than the parser's stack (`RecursionError`);
- integers longer than Python's 4,300-digit conversion limit (`ValueError`);
- a key repeated inside one object (two "annotations" arrays): the parser keeps the last
  and drops the other silently, so the file is refused, naming the key.

`NaN`, `Infinity` and `-Infinity` are parsed (as floats) but counted, so a loader can
skip the records holding them; `write_json` never writes them (they are not JSON).

This module imports nothing else of trashseg's data package, so `classes`, `coco` and
`layout` can all read through it without importing one another.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trashseg.errors import DataError
from trashseg.fileio import atomic_write, os_error_fix, write_text

# Largest annotation file accepted. Parsed (polygons as arrays), a polygon-heavy COCO file
# takes about 3.5 times its size in memory (benchmarks/prepare_memory_bench.py).
MAX_JSON_BYTES = 2 << 30
# Deepest nesting accepted below a record (COCO needs 3: segmentation -> polygon -> number).
MAX_RECORD_DEPTH = 32


class _DuplicateKey(Exception):
    def __init__(self, key: str, keys: list[str]) -> None:
        super().__init__(key)
        self.key, self.keys = key, keys


@dataclass(frozen=True)
class JsonDocument:
    value: Any
    non_finite: int  # how many NaN / Infinity literals the file holds


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(key, list(obj)[:8])
    return obj


def parse_json(
    path: str | Path, what: str = "annotation file", *, compact: Callable[[dict], None] | None = None
) -> JsonDocument:
    """Parse a JSON file; `DataError` naming `what` and the path for every way it can fail.

    `compact(obj)` may shrink each object in place as soon as it is parsed (COCO polygons to
    arrays), so the parse never holds the bulky form of the whole file."""
    path = Path(path)
    try:
        if not path.is_file():
            raise DataError(f"{what} {path} does not exist; pass the path of a .json file")
        size = path.stat().st_size
    except OSError as error:
        raise DataError(f"{what} {path} cannot be read: {os_error_fix(error)}") from None
    if size > MAX_JSON_BYTES:
        raise DataError(
            f"{what} {path} is {size / 2**30:.1f} GiB, more than the {MAX_JSON_BYTES / 2**30:.0f} GiB accepted "
            "(parsed, it would need several times that in memory); split it into several files"
        )
    non_finite = 0

    def constant(name: str) -> float:
        nonlocal non_finite
        non_finite += 1
        return float(name)

    try:
        if compact is None:
            hook = _unique_keys
        else:

            def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
                obj = _unique_keys(pairs)
                compact(obj)
                return obj

        value = json.loads(_read_text(path), parse_constant=constant, object_pairs_hook=hook)
    except _DuplicateKey as error:
        raise DataError(
            f"{what} {path}: key {error.key!r} appears twice in one object (keys {error.keys}); JSON parsers keep "
            "only the last one, so the other would be dropped silently: merge or rename them"
        ) from None
    except RecursionError:
        raise DataError(f"{what} {path} nests arrays or objects too deeply to read; COCO needs only a few levels") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, too-long integers, bad encoding
        raise DataError(f"{what} {path} is not readable JSON ({_short(str(error))}); fix or re-export it") from None
    except OSError as error:
        raise DataError(f"{what} {path} cannot be read: {os_error_fix(error)}") from None
    return JsonDocument(value, non_finite)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    # Decoded here so the bytes are freed before parsing (one copy of the file, not two).
    return data.decode(json.detect_encoding(data[:4]))


def read_json_value(path: str | Path, what: str = "annotation file") -> Any:
    return parse_json(path, what).value


def read_json(path: str | Path) -> dict[str, Any]:
    """An annotation file's top-level object."""
    data = read_json_value(path)
    if not isinstance(data, dict):
        raise DataError(
            f"annotation file {path}: top level is a {type(data).__name__}, expected a COCO object "
            "with 'images', 'categories' and 'annotations'"
        )
    return data


def write_json(path: str | Path, value: Any, *, indent: int | None = None) -> None:
    """Write `value` atomically as strict JSON (compact unless `indent`); a NaN is a bug upstream.

    Compact objects are written record by record (the same bytes as one `json.dumps`), so a
    split file is never held in memory as one string beside the records it came from."""
    try:
        if indent is not None:
            write_text(path, _dumps(value, indent) + "\n")
            return
        with atomic_write(path, "w") as handle:
            _write_compact(handle, value)
            handle.write("\n")
    except ValueError as error:
        raise DataError(f"refusing to write {path}: {error} (JSON has no NaN or Infinity)") from None


def _dumps(value: Any, indent: int | None = None) -> str:
    separators = (",", ":") if indent is None else None
    return json.dumps(value, indent=indent, separators=separators, allow_nan=False, default=_plain)


def _write_compact(handle: Any, value: Any) -> None:
    """`value` as `_dumps(value)`, streamed one top-level entry / list item at a time."""
    if not isinstance(value, dict):
        handle.write(_dumps(value))
        return
    handle.write("{")
    for position, (key, item) in enumerate(value.items()):
        handle.write(("," if position else "") + _dumps(str(key)) + ":")
        if isinstance(item, list):
            handle.write("[")
            for index, element in enumerate(item):
                handle.write(("," if index else "") + _dumps(element))
            handle.write("]")
        else:
            handle.write(_dumps(item))
    handle.write("}")


def _plain(value: Any) -> Any:
    """JSON for the compact forms a loader may keep (arrays of numbers)."""
    if isinstance(value, array):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def non_finite_or_deep(value: Any, name: str = "the value", max_depth: int = MAX_RECORD_DEPTH) -> str | None:
    """Where `value` (called `name`) holds a NaN / Infinity or nests deeper than `max_depth`,
    or None. Iterative, so a deep value cannot exhaust the stack here."""
    stack: list[tuple[Any, str, int]] = [(value, name, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{where} is {item} (JSON has no NaN or Infinity)"
        if isinstance(item, dict | list):
            if depth >= max_depth:
                return f"{where} nests more than {max_depth} levels deep"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack += [(v, f"{where}.{ascii(k)[1:-1]}" if isinstance(k, str) else f"{where}[{k}]", depth + 1) for k, v in pairs]
    return None


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
