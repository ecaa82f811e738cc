"""Training augmentation: multi-scale resize, padded random crop, flip, colour jitter,
normalisation (OpenCV on uint8), and copy-paste of objects of chosen classes.

Every random choice is drawn from a seed given per sample, so a sample's augmentation is
a function of (run seed, sample position) only: resuming mid-run, changing the number of
data-loader workers or the DDP world size never changes what one sample looks like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trashseg.config import shown_number
from trashseg.errors import ConfigError
from trashseg.metrics import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_SCALE = 8.0  # a scaled image beyond 8x image_size only wastes memory before the crop
MAX_CROP_SIZE = 4096  # as TrainConfig.image_size


@dataclass(frozen=True)
class AugmentConfig:
    # The image's shorter side is first resized to `image_size`, then scaled by a factor
    # drawn from `scale_range`: the recipe's 256-1024 at image_size 512 is (0.5, 2.0).
    scale_range: tuple[float, ...] = (0.5, 2.0)
    crop_size: int | None = None  # square crop; None = the training image_size
    hflip: float = 0.5  # probability
    color_jitter: float = 0.8  # probability of applying brightness/contrast/saturation/hue jitter
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05
    copy_paste: float = 0.5  # probability of pasting objects into a sample (needs copy_paste_classes)
    mean: tuple[float, ...] = IMAGENET_MEAN  # of RGB in 0..1
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1] <= MAX_SCALE:
            raise ConfigError(
                f"augment.scale_range={list(self.scale_range)}: expected [low, high] with 0 < low <= high <= "
                f"{MAX_SCALE:g} (factors of image_size, e.g. [0.5, 2.0] for 256-1024 at 512)"
            )
        if self.crop_size is not None and not 8 <= self.crop_size <= MAX_CROP_SIZE:
            raise ConfigError(
                f"augment.crop_size={shown_number(self.crop_size)}: expected an integer in [8, {MAX_CROP_SIZE}] "
                "pixels, or null (= image_size)"
            )
        for name in ("hflip", "color_jitter", "copy_paste"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"augment.{name}={value}: expected a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"augment.{name}={value}: expected a jitter strength in [0, 1)")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(f"augment.hue={self.hue}: expected a hue shift in [0, 0.5]")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError(
                f"augment.mean={list(self.mean)}, std={list(self.std)}: expected 3 RGB values each, std > 0"
            )


def sample_seed(seed: int, stream: int, position: int) -> int:
    """A 32-bit seed for one sample, from the run seed, the data stream and its position."""
    return int(np.random.SeedSequence([seed, stream, position]).generate_state(1)[0])


class TrainTransform:
    """Callable `(image HxWx3 uint8, mask HxW uint8, seed) -> (image 3xSxS uint8, mask SxS uint8)`.

    Resize (shorter side to `image_size`, times a random scale), centred padding to the crop
    size and random crop are one resize of the source window that the crop shows, so only
    the SxS output is interpolated (bilinear for the image, nearest for the mask) instead of
    the whole image resized up to 2x, then cropped. Colour jitter is one affine colour map on
    uint8. Image and mask stay uint8 (4x / 8x fewer bytes to collate, pin and copy to the
    device); training normalises the batch there with `normalise_batch` and widens the mask
    to int64. All draws come from `seed`.
    """

    def __init__(self, config: AugmentConfig, image_size: int) -> None:
        self.config, self.image_size = config, image_size
        self.crop = config.crop_size or image_size

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        rng = np.random.default_rng(seed)
        (rows, out_rows), (cols, out_cols), flip = self._geometry(mask.shape, rng)
        size = (out_cols[1] - out_cols[0], out_rows[1] - out_rows[0])
        window = (slice(*rows), slice(*cols))
        shown_image = cv2.resize(image[window], size, interpolation=cv2.INTER_LINEAR)
        shown_mask = cv2.resize(mask[window], size, interpolation=cv2.INTER_NEAREST)
        if flip:
            shown_image, shown_mask = cv2.flip(shown_image, 1), cv2.flip(shown_mask, 1)
            out_cols = (self.crop - out_cols[1], self.crop - out_cols[0])
        crop = self.crop
        if size == (crop, crop):
            out_image, out_mask = shown_image, shown_mask
        else:  # padding: black pixels, ignored labels
            out_image = np.zeros((crop, crop, 3), np.uint8)
            out_mask = np.full((crop, crop), IGNORE_INDEX, np.uint8)
            out_image[slice(*out_rows), slice(*out_cols)] = shown_image
            out_mask[slice(*out_rows), slice(*out_cols)] = shown_mask
        config = self.config
        if config.color_jitter > 0 and rng.random() < config.color_jitter:
            out_image = self._jitter(out_image, rng)
        return np.ascontiguousarray(out_image.transpose(2, 0, 1)), out_mask

    def _geometry(self, shape: tuple[int, int], rng: np.random.Generator):
        """Per axis, the source window and the crop rows/cols it fills (the rest is padding); and the flip."""
        low, high = self.config.scale_range
        factor = self.image_size * rng.uniform(low, high) / min(shape)
        axes = [self._axis(length, max(1, round(length * factor)), rng) for length in shape]
        return axes[0], axes[1], rng.random() < self.config.hflip

    def _axis(self, length: int, scaled: int, rng: np.random.Generator):
        crop = self.crop
        start = int(rng.integers(0, max(scaled, crop) - crop + 1))
        if scaled <= crop:  # the whole axis fits: centred, padded on both sides
            pad = (crop - scaled) // 2
            return (0, length), (pad, pad + scaled)
        # The crop [start, start + crop) of the scaled axis, widened to whole source pixels:
        # the window is resized onto the crop, so only the crop is ever interpolated
        # (the scale then differs from the drawn one by under one source pixel over the window).
        first = math.floor(start * length / scaled)
        last = min(length, math.ceil((start + crop) * length / scaled))
        return (first, last), (0, crop)

    def _jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, contrast, saturation and hue jitter in a random order (as torchvision/albumentations).

        Each is an affine map of RGB (hue as a rotation of the YIQ chroma plane, as DALI does),
        so their composition is applied in one pass; values are clipped once, at the end,
        instead of after every step.
        """
        import cv2

        config = self.config
        brightness = rng.uniform(1 - config.brightness, 1 + config.brightness)
        contrast = rng.uniform(1 - config.contrast, 1 + config.contrast)
        saturation = rng.uniform(1 - config.saturation, 1 + config.saturation)
        hue = rng.uniform(-config.hue, config.hue)
        matrix, shift = np.eye(3), np.zeros(3)
        mean_colour = np.asarray(cv2.mean(image)[:3])
        for operation in rng.permutation(4):
            if operation == 0:
                step, offset = brightness * np.eye(3), np.zeros(3)
            elif operation == 1:  # towards the current mean grey
                grey = _GREY @ (matrix @ mean_colour + shift)
                step, offset = contrast * np.eye(3), np.full(3, (1 - contrast) * grey)
            elif operation == 2:  # towards each pixel's grey
                step, offset = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), _GREY), np.zeros(3)
            else:
                angle = 2 * np.pi * hue
                rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
                step, offset = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ, np.zeros(3)
            matrix, shift = step @ matrix, step @ shift + offset
        affine = np.hstack([matrix, shift[:, None]]).astype(np.float32)
        return cv2.transform(image, affine)  # uint8 out: rounded and clipped to 0..255


_GREY = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, the grey of PIL/OpenCV/torchvision
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def normalise_batch(images, mean, std):
    """(N, 3, H, W) uint8 tensor -> float32 `(x / 255 - mean) / std`, on the tensor's device."""
    import torch

    scale = torch.tensor([1 / (255.0 * s) for s in std], device=images.device).view(1, 3, 1, 1)
    offset = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=images.device).view(1, 3, 1, 1)
    return torch.addcmul(offset, images.float(), scale)


def eval_transform(image: np.ndarray, size: int, mean, std) -> np.ndarray:
    """Resize to size x size and normalise: (3, size, size) float32 for validation/inference."""
    import cv2

    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    normalised = (resized.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return normalised.transpose(2, 0, 1)


def copy_paste(
    image: np.ndarray,
    mask: np.ndarray,
    donor_image: np.ndarray,
    donor_mask: np.ndarray,
    class_ids: tuple[int, ...],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the donor's pixels of `class_ids` (objects with their masks) onto image/mask.

    The donor is resized to the target's size (nearest for its mask) and flipped at
    random, so the same donor lands differently in different samples.
    """
    import cv2

    height, width = mask.shape
    if donor_mask.shape != (height, width):
        donor_image = cv2.resize(donor_image, (width, height), interpolation=cv2.INTER_LINEAR)
        donor_mask = cv2.resize(donor_mask, (width, height), interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        donor_image, donor_mask = donor_image[:, ::-1], donor_mask[:, ::-1]
    paste = np.isin(donor_mask, class_ids)
    image = image.copy()
    mask = mask.copy()
    image[paste] = donor_image[paste]
    mask[paste] = donor_mask[paste]
    return image, mask
