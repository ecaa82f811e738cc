"""Open image files with one set of guards, so every reader treats bad files the same way.

PIL refuses images whose header claims more than twice `Image.MAX_IMAGE_PIXELS` pixels
(a "decompression bomb") with an exception that is neither an `OSError` nor an
`UnidentifiedImageError`, and only warns between one and two times the limit. Both become
`DataError` here, naming the file, so a loader can report it like any unreadable image.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trashseg.errors import DataError


@contextmanager
def open_image(path: str | Path) -> Iterator:
    """`PIL.Image.open(path)` that raises `DataError` for missing, unreadable or oversized files."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} is missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"image file {path} is too large to decode ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DataError(f"image file {path} is unreadable ({error})") from None
    with image:
        yield image


def read_rgb(path: str | Path):
    """(H, W, 3) uint8 array of an image file; `DataError` when it cannot be read."""
    import numpy as np

    with open_image(path) as image:
        try:
            return np.asarray(image.convert("RGB"))
        except OSError as error:  # a truncated file fails only when its pixels are decoded
            raise DataError(f"image file {path} is unreadable ({error})") from None
