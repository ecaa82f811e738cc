"""Training augmentation: multi-scale resize, padded random crop, flip, colour jitter,
normalisation (albumentations), and copy-paste of objects of chosen classes.

Every random choice is drawn from a seed given per sample, so a sample's augmentation is
a function of (run seed, sample position) only: resuming mid-run, changing the number of
data-loader workers or the DDP world size never changes what one sample looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trashseg.errors import ConfigError
from trashseg.metrics import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ConfigError(
                f"augment.scale_range={list(self.scale_range)}: expected [low, high] with 0 < low <= high "
                "(factors of image_size, e.g. [0.5, 2.0] for 256-1024 at 512)"
            )
        if self.crop_size is not None and self.crop_size < 8:
            raise ConfigError(f"augment.crop_size={self.crop_size}: expected >= 8 pixels or null (= image_size)")
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
    """Callable `(image HxWx3 uint8, mask HxW uint8, seed) -> (image 3xSxS float32, mask SxS int64)`."""

    def __init__(self, config: AugmentConfig, image_size: int) -> None:
        import albumentations as A
        import cv2

        crop = config.crop_size or image_size
        low, high = config.scale_range
        transforms = [
            A.SmallestMaxSize(max_size=image_size),
            # RandomScale multiplies by 1 + U(limit); p=1 so every sample gets a scale.
            A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0),
            A.PadIfNeeded(
                min_height=crop, min_width=crop, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX
            ),
            A.RandomCrop(height=crop, width=crop),
            A.HorizontalFlip(p=config.hflip),
        ]
        if config.color_jitter > 0:
            transforms.append(
                A.ColorJitter(
                    brightness=config.brightness,
                    contrast=config.contrast,
                    saturation=config.saturation,
                    hue=config.hue,
                    p=config.color_jitter,
                )
            )
        transforms.append(A.Normalize(mean=config.mean, std=config.std, max_pixel_value=255.0))
        self.compose = A.Compose(transforms, seed=0)

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        self.compose.set_random_seed(seed)
        out = self.compose(image=image, mask=mask)
        return out["image"].transpose(2, 0, 1).astype(np.float32), out["mask"].astype(np.int64)


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
