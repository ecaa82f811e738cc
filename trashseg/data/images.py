"""Open image files with one set of guards, so every reader treats bad files the same way.

PIL refuses images whose header claims more than twice `Image.MAX_IMAGE_PIXELS` pixels
(a "decompression bomb") with an exception that is neither an `OSError` nor an
`UnidentifiedImageError`, and only warns between one and two times the limit. Both become
`DataError` here, naming the file, so a loader can report it like any unreadable image.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trashseg.errors import DataError


@contextmanager
def open_image(path: str | Path | io.BytesIO, name: str | Path | None = None) -> Iterator:
    """`PIL.Image.open(path)` that raises `DataError` for missing, unreadable or oversized files.

    `path` may be an in-memory file; `name` is then the file named in errors.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(path, io.BytesIO):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"image file {path} is missing")
    path_for_errors = name or path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"image file {path_for_errors} is too large to decode ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"image file {path_for_errors} is unreadable ({error})") from None
    with image:
        yield image


# JPEGs end with the EOI marker; cv2 fills a truncated file's missing rows with grey
# instead of failing, so only complete files take the fast path (PIL reports the rest).
_JPEG_END = b"\xff\xd9"


def decode_rgb(data: bytes, source: str | Path = "<bytes>"):
    """(H, W, 3) uint8 RGB array of an encoded image; `DataError` naming `source` when it cannot be decoded.

    Baseline RGB JPEGs are decoded by OpenCV (about twice PIL's rate on one core; the
    same libjpeg-turbo decode: identical pixels, tested in tests/data/test_image_decoding.py),
    after PIL has checked the header against the decompression-bomb limit. Other files go through PIL.
    """
    import numpy as np

    with open_image(io.BytesIO(data), name=source) as image:
        if image.format == "JPEG" and image.mode == "RGB" and data.rstrip(b"\0").endswith(_JPEG_END):
            decoded = _cv2_decode(data, _cv2_flags("rgb"))
            if decoded is not None and decoded.shape[1::-1] == image.size:
                return decoded
        try:
            return np.array(image.convert("RGB"))
        except OSError as error:  # a truncated file fails only when its pixels are decoded
            raise DataError(f"image file {source} is unreadable ({error})") from None


def decode_gray(data: bytes, source: str | Path = "<bytes>"):
    """(H, W) uint8 array of a single-channel 8-bit image (a label mask PNG), decoded as stored.

    Other modes come back as PIL decodes them (e.g. (H, W, 3) for RGB), for the caller to refuse.
    """
    import numpy as np

    with open_image(io.BytesIO(data), name=source) as image:
        if image.format == "PNG" and image.mode == "L":
            decoded = _cv2_decode(data, _cv2_flags("gray"))
            if decoded is not None and decoded.ndim == 2 and decoded.shape[::-1] == image.size:
                return decoded
        try:
            return np.array(image)
        except OSError as error:
            raise DataError(f"image file {source} is unreadable ({error})") from None


def read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} is missing")
    return path.read_bytes()


def read_rgb(path: str | Path):
    """(H, W, 3) uint8 RGB array (writable, owned) of an image file; `DataError` when it cannot be read."""
    return decode_rgb(read_bytes(path), path)


def read_gray(path: str | Path):
    """The stored pixels of a single-channel image file (a mask PNG); `DataError` when it cannot be read."""
    return decode_gray(read_bytes(path), path)


def _cv2_flags(kind: str) -> int:
    import cv2

    # EXIF orientation is ignored, as PIL's decode (and so training before) ignores it.
    colour = cv2.IMREAD_COLOR_RGB if kind == "rgb" else cv2.IMREAD_UNCHANGED
    return colour | cv2.IMREAD_IGNORE_ORIENTATION


def _cv2_decode(data: bytes, flags: int):
    import cv2
    import numpy as np

    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
