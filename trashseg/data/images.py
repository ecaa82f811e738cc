"""Open image files with one set of guards, so every reader treats bad files the same way.

PIL refuses images whose header claims more than twice `Image.MAX_IMAGE_PIXELS` pixels
(a "decompression bomb") with an exception that is neither an `OSError` nor an
`UnidentifiedImageError`, and only warns between one and two times the limit. Both become
`DataError` here, naming the file, so a loader can report it like any unreadable image.
"""

from __future__ import annotations

import errno
import io
import stat
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
        check_file(path)
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
            if image.mode in _SIXTEEN_BIT_MODES:
                return _sixteen_bit_to_rgb(np.asarray(image))
            return np.array(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError, EOFError) as error:  # a cut file fails only when decoded
            raise DataError(f"image file {source} is unreadable ({error})") from None


# 16-bit grey modes: PIL's convert("RGB") clips them to 0..255 (near white), not scales them.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _sixteen_bit_to_rgb(grey):
    """(H, W) 16-bit grey (mode "I" taken as 16-bit, clipped) -> (H, W, 3) uint8, scaled by 255/65535."""
    import numpy as np

    scaled = (np.clip(grey.astype(np.int64), 0, 65535) * 255 + 32767) // 65535
    return np.repeat(scaled.astype(np.uint8)[:, :, None], 3, axis=2)


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
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise DataError(f"image file {source} is unreadable ({error})") from None


def check_file(path: Path) -> None:
    """`DataError` saying why `path` is not a readable regular file: missing, a folder, a
    symlink loop, a name too long, ... (only a missing file is reported as missing)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"image file {path} is missing") from None
    except NotADirectoryError:
        raise DataError(f"image file {path} is missing (a part of its folder path is a file)") from None
    except OSError as error:
        what = "is a symbolic link loop" if error.errno == errno.ELOOP else f"cannot be opened ({error.strerror})"
        raise DataError(f"image file {path} {what}") from None
    except ValueError as error:  # a NUL or a lone surrogate in the name
        raise DataError(f"image file {ascii(str(path))} cannot be a path ({error})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"image file {path} is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise DataError(f"image file {path} is not a regular file (a device, pipe or socket)")


def read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    check_file(path)
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"image file {path} cannot be read ({error.strerror or error})") from None


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
