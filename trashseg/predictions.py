"""A prediction folder: per-image class probabilities (for the ensemble) and argmax masks.

    PRED/predictions.json             meta: classes, file_names (in split order), source, dtype, codec
    PRED/probs/<file_name>.npy.lz4    (C, H, W) probabilities: an .npy file in one LZ4 frame
    PRED/masks/<file_name>.png        uint8 argmax class ids

Writing: `create` makes the folder; `add` writes one image's entries (from any process,
see `entry_writer`); `save` (or `complete`) writes the meta file last, so a folder with
meta is complete.

Probabilities are stored as uint8 (p * 255, rounded; at most 1/510 off, far below what
changes an argmax in practice) or float16. The codec is LZ4 (its fastest level), chosen by
measurement (benchmarks/predictions_bench.py): it reads and writes uint8 maps more than 5x
faster than the old zlib .npz, for ~30% more bytes; zstd level 1 is as small as zlib but
decodes at half LZ4's speed. Both frames hold a plain .npy file (`lz4 -d` / `zstd -d` gives
one). Folders written before the codec was recorded (`probs/<file_name>.npz`, zlib) and zstd
folders are still read, and `codec=` still writes either (for comparisons).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lz4.frame
import numpy as np
import zstandard
from PIL import Image

from trashseg.data.io import read_mask
from trashseg.data.layout import PreparedDataset
from trashseg.errors import DataError
from trashseg.fileio import atomic_write, write_text
from trashseg.metrics import ConfusionMatrix

ProbabilityDtype = Literal["uint8", "float16"]
Codec = Literal["lz4", "zstd", "zlib"]
META_FILE = "predictions.json"
DEFAULT_CODEC: Codec = "lz4"
# zlib: np.savez_compressed, the only format before the meta recorded a codec.
PROBS_SUFFIX = {"lz4": ".npy.lz4", "zstd": ".npy.zst", "zlib": ".npz"}
LEGACY_CODEC: Codec = "zlib"
ZSTD_LEVEL = 1  # higher levels shrink these maps by <1% at 2-3x the time
LZ4_LEVEL = 0  # fast mode; high-compression level 3 writes 7x slower for 14% fewer bytes
_NPY_HEADER_MAX = 4096  # an .npy header of a 3-d array is well under this
MAX_PROBS_BYTES = 4 << 30  # one image's stored map; 11 classes of 8192^2 float16 are 1.5 GB
# Masks are small next to the probabilities; PNG's fastest level writes ~5x faster than
# its default for ~20% more bytes.
MASK_PNG_LEVEL = 1


def _check_format(dtype: str, codec: str, where: str = "") -> None:
    if dtype not in ("uint8", "float16"):
        raise DataError(f"{where}probability dtype {dtype!r} is not supported; use 'uint8' or 'float16'")
    if codec not in PROBS_SUFFIX:
        raise DataError(
            f"{where}probability codec {codec!r} is not supported; use one of {', '.join(PROBS_SUFFIX)} "
            "(a folder from a newer trashseg? upgrade, or recreate it with `trashseg predict`)"
        )


def quantise(probs: np.ndarray, dtype: ProbabilityDtype) -> np.ndarray:
    """Probabilities as stored: uint8 rounds p * 255 (half up) after clipping to [0, 1]."""
    if dtype == "float16":
        return probs.astype(np.float16)
    scaled = np.multiply(probs, 255, dtype=np.float32)
    np.clip(scaled, 0, 255, out=scaled)
    scaled += 0.5
    return scaled.astype(np.uint8)


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """uint8 argmax over axis 0, ties to the lower class like np.argmax: one pass per class
    over contiguous planes is ~1.7x faster than np.argmax's strided reduction."""
    best = probs[0].copy()
    labels = np.zeros(probs.shape[1:], np.uint8)
    for class_id in range(1, probs.shape[0]):
        higher = probs[class_id] > best
        labels[higher] = class_id
        np.maximum(best, probs[class_id], out=best)
    return labels


def encode_probs(stored: np.ndarray, codec: Codec) -> bytes:
    if codec == "zlib":
        buffer = io.BytesIO()
        np.savez_compressed(buffer, probs=stored)
        return buffer.getvalue()
    # An .npy file (header, then the raw array) fed into one frame without copying the array.
    stored = np.ascontiguousarray(stored)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(stored))
    size, body = header.tell() + stored.nbytes, memoryview(stored).cast("B")
    if codec == "lz4":
        frame = lz4.frame.LZ4FrameCompressor(compression_level=LZ4_LEVEL)
        return frame.begin(source_size=size) + frame.compress(header.getvalue()) + frame.compress(body) + frame.flush()
    frame = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj(size=size)
    return frame.compress(header.getvalue()) + frame.compress(body) + frame.flush()


def decode_probs(data: bytes, codec: Codec) -> np.ndarray:
    """The stored array (read-only for lz4 and zstd: a view of the decompressed bytes)."""
    if codec == "zlib":
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return archive["probs"]
    declared = lz4.frame.get_frame_info(data)["content_size"] if codec == "lz4" else zstandard.frame_content_size(data)
    if not 0 < declared <= MAX_PROBS_BYTES:  # checked before allocating: the frame says its size
        raise ValueError(f"the frame declares {declared} bytes (unknown or over {MAX_PROBS_BYTES})")
    raw = lz4.frame.decompress(data) if codec == "lz4" else zstandard.ZstdDecompressor().decompress(data)
    header = io.BytesIO(raw[:_NPY_HEADER_MAX])
    version = np.lib.format.read_magic(header)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(header)
    if dtype.hasobject:
        raise ValueError(f"an array of {dtype} (objects), not numbers")
    count = int(np.prod(shape))
    if len(raw) != header.tell() + count * dtype.itemsize:
        raise ValueError(f"the frame holds {len(raw) - header.tell()} bytes of array data, expected {count * dtype.itemsize}")
    array = np.frombuffer(raw, dtype, count=count, offset=header.tell())
    return array.reshape(shape, order="F" if fortran_order else "C")


@dataclass
class PredictionSet:
    root: Path
    class_names: list[str]
    file_names: list[str] = field(default_factory=list)
    dtype: ProbabilityDtype = "uint8"
    source: dict = field(default_factory=dict)  # e.g. architecture, checkpoint, split, tta
    codec: Codec = DEFAULT_CODEC

    @classmethod
    def create(
        cls,
        root: str | Path,
        class_names: Sequence[str],
        *,
        dtype: ProbabilityDtype = "uint8",
        source: dict | None = None,
        codec: Codec = DEFAULT_CODEC,
    ) -> PredictionSet:
        _check_format(dtype, codec)
        root = Path(root)
        (root / "probs").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        return cls(root, list(class_names), [], dtype, dict(source or {}), codec)

    @classmethod
    def entry_writer(
        cls, root: str | Path, class_names: Sequence[str], dtype: ProbabilityDtype = "uint8", codec: Codec = DEFAULT_CODEC
    ) -> PredictionSet:
        """A worker's handle on a folder the parent `create`d (with the same dtype and codec):
        it only `add`s entries; the parent lists them with `complete` once every worker is done."""
        return cls(Path(root), list(class_names), [], dtype, {}, codec)

    def complete(self, file_names: Sequence[str]) -> None:
        """Parent side of a parallel write: record `file_names` (split order) and write the meta."""
        self.file_names = list(file_names)
        self.save()

    @classmethod
    def open(cls, root: str | Path) -> PredictionSet:
        root = Path(root)
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise DataError(f"{root} is not a prediction folder (no {META_FILE}); create it with `trashseg predict`")
        try:
            meta = json.loads(meta_path.read_bytes())
            opened = cls(
                root, meta["class_names"], meta["file_names"], meta["dtype"], meta.get("source", {}),
                meta.get("codec", LEGACY_CODEC),
            )
        except (ValueError, KeyError, TypeError) as error:  # not JSON, or not our meta
            raise DataError(
                f"{meta_path} is not a trashseg prediction meta file ({type(error).__name__}: {error}); "
                "recreate the folder with `trashseg predict`"
            ) from None
        _check_format(opened.dtype, opened.codec, where=f"{meta_path}: ")
        return opened

    def probs_path(self, file_name: str) -> Path:
        return self.root / "probs" / (file_name + PROBS_SUFFIX[self.codec])

    def mask_path(self, file_name: str) -> Path:
        return self.root / "masks" / Path(file_name).with_suffix(".png")

    def add(self, file_name: str, probs: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Store one image's (C, H, W) probabilities and its mask (default: their argmax).

        An explicit `mask` is for post-processed results (consensus overwrite, gating)
        whose labels are not the argmax of any one probability map.
        """
        if probs.ndim != 3 or probs.shape[0] != len(self.class_names):
            raise DataError(
                f"{file_name}: probabilities of shape {probs.shape}, expected ({len(self.class_names)}, H, W)"
            )
        if mask is not None and mask.shape != probs.shape[1:]:
            raise DataError(f"{file_name}: mask of shape {mask.shape}, expected {probs.shape[1:]}")
        probs = np.asarray(probs, dtype=np.float32)
        data = encode_probs(quantise(probs, self.dtype), self.codec)
        with atomic_write(self.probs_path(file_name)) as handle:
            handle.write(data)
        labels = Image.fromarray(argmax_classes(probs) if mask is None else mask.astype(np.uint8))
        with atomic_write(self.mask_path(file_name)) as handle:
            labels.save(handle, format="PNG", compress_level=MASK_PNG_LEVEL)
        if file_name not in self.file_names:
            self.file_names.append(file_name)

    def probs(self, file_name: str) -> np.ndarray:
        """(C, H, W) float32 probabilities."""
        path = self.probs_path(file_name)
        if not path.is_file():
            raise DataError(f"{self.root}: no probabilities for {file_name!r} ({path} missing)")
        try:
            stored = decode_probs(path.read_bytes(), self.codec)
        except (ValueError, OSError, RuntimeError, zstandard.ZstdError) as error:  # truncated or not ours
            raise DataError(
                f"{path}: unreadable {self.codec} probabilities ({type(error).__name__}: {error}); "
                "recreate the folder with `trashseg predict`"
            ) from None
        if stored.ndim != 3 or stored.shape[0] != len(self.class_names) or stored.dtype not in (np.uint8, np.float16):
            raise DataError(
                f"{path}: stored probabilities are {stored.dtype} {stored.shape}, expected uint8 or float16 "
                f"({len(self.class_names)}, H, W); recreate the folder with `trashseg predict`"
            )
        if stored.dtype == np.uint8:
            return np.multiply(stored, np.float32(1 / 255), dtype=np.float32)
        return stored.astype(np.float32)

    def mask(self, file_name: str) -> np.ndarray:
        return np.array(Image.open(self.mask_path(file_name)))

    def save(self) -> None:
        """Write the meta file (atomically) last, so a folder with meta is complete."""
        meta = {
            "class_names": self.class_names, "file_names": self.file_names, "dtype": self.dtype, "codec": self.codec,
            "source": self.source,
        }
        write_text(self.root / META_FILE, json.dumps(meta, indent=2) + "\n")


def score_predictions(predictions: PredictionSet, dataset: PreparedDataset, file_names: Sequence[str]) -> ConfusionMatrix:
    """The confusion matrix of `predictions`' masks against `dataset`'s masks over `file_names`."""
    matrix = ConfusionMatrix(len(predictions.class_names), predictions.class_names)
    for file_name in file_names:
        target = read_mask(dataset.mask_path(file_name), len(predictions.class_names))
        predicted = predictions.mask(file_name)
        if predicted.shape != target.shape:
            raise DataError(
                f"{file_name}: prediction is {predicted.shape}, ground truth {target.shape}; "
                "predictions must be at the image's original size"
            )
        matrix.update(predicted, target)
    return matrix

def recorded_dataset_versions(source: dict) -> set[str]:
    """Every dataset version a prediction folder's `source` names, nested ensemble members
    included: the recorded `dataset_version`, else that of the recorded `dataset` folder
    when it is still readable here."""
    versions: set[str] = set()
    for record in _source_records(source):
        version = record.get("dataset_version")
        if version is None and isinstance(record.get("dataset"), str):
            version = PreparedDataset(record["dataset"]).dataset_version()
        if isinstance(version, str):
            versions.add(version)
    return versions


def check_made_from(
    predictions: PredictionSet, dataset: PreparedDataset, split: str, *, where: str | None = None,
    error: type[DataError] = DataError,
) -> None:
    """Refuse `predictions` made from another split or dataset version than `dataset`'s `split`.

    File names alone cannot tell two datasets apart (every export has 0001.jpg), so the
    split and dataset version recorded in predictions.json (ensemble members included) are
    compared; a folder or dataset that records none has nothing to compare."""
    where = where or f"split {split!r} of {dataset.root}"
    splits = recorded_splits(predictions.source)
    if splits and splits != {split}:
        raise error(
            f"{predictions.root} holds predictions of split(s) {sorted(splits)}, not {split!r} "
            f"({where}); predict the {split} split"
        )
    expected_version = dataset.dataset_version()
    versions = recorded_dataset_versions(predictions.source)
    if expected_version and versions and versions != {expected_version}:
        raise error(
            f"{predictions.root} was predicted on dataset version(s) {', '.join(v[:12] for v in sorted(versions))}, "
            f"but {where} belongs to version {expected_version[:12]}; the file names may match, the "
            "images do not. Predict this dataset's split with `trashseg predict`"
        )


def recorded_splits(source: dict) -> set[str]:
    """The splits a prediction folder's `source` (and its ensemble members) were made from."""
    return {r["split"] for r in _source_records(source) if isinstance(r.get("split"), str)}


def _source_records(source: dict) -> list[dict]:
    records, stack = [], [source]
    while stack:
        record = stack.pop()
        if isinstance(record, dict):
            records.append(record)
            stack.extend(v for v in record.values() if isinstance(v, dict))
    return records
