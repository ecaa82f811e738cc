"""The fast image decode (OpenCV) gives training the same pixels as the PIL decode it replaced."""

import io

import numpy as np
import pytest
from PIL import Image

from trashseg.data.images import decode_gray, decode_rgb, read_rgb
from trashseg.data.sample import generate_sample_dataset
from trashseg.errors import DataError


def _pil_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _jpeg(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def test_sample_jpegs_decode_to_the_pixels_pil_gave(tmp_path):
    generate_sample_dataset(tmp_path, images=3, size=96, seed=0)
    for path in sorted(tmp_path.glob("*/*.jpg")):
        decoded = read_rgb(path)
        assert decoded.flags.writeable and decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, _pil_rgb(path.read_bytes()))


@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0 chroma
def test_photo_like_jpeg_matches_pil_exactly(subsampling, monkeypatch):
    import trashseg.data.images as images

    calls = []
    fast = images._cv2_decode
    monkeypatch.setattr(images, "_cv2_decode", lambda *args: calls.append(1) or fast(*args))
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 80)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (80, 1)), np.full((80, 80), 128.0)], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
    data = _jpeg(pixels, quality=85, subsampling=subsampling)
    np.testing.assert_array_equal(decode_rgb(data), _pil_rgb(data))
    assert calls, "the JPEG did not take the OpenCV path this test is about"


def test_truncated_jpeg_is_a_named_error_not_grey_pixels(tmp_path):
    data = _jpeg(np.full((64, 64, 3), 200, np.uint8))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        read_rgb(path)


def test_greyscale_and_png_images_still_come_back_as_rgb():
    grey = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    decoded = decode_rgb(buffer.getvalue())
    assert decoded.shape == (64, 64, 3)
    np.testing.assert_array_equal(decoded[..., 1], grey)


def test_mask_png_decodes_to_its_stored_ids():
    mask = np.random.default_rng(1).integers(0, 11, (40, 50), dtype=np.uint8)
    mask[:5] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_gray(buffer.getvalue()), mask)


def test_exif_orientation_is_ignored_as_pil_ignores_it():
    pixels = np.zeros((40, 64, 3), np.uint8)
    pixels[:, :32] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": training has always used the stored pixels
    data = _jpeg(pixels, quality=95, exif=exif.tobytes())
    decoded = decode_rgb(data)
    assert decoded.shape == (40, 64, 3)
    np.testing.assert_array_equal(decoded, _pil_rgb(data))
