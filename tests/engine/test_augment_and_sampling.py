"""Augmentation, copy-paste, class-balanced weights and the keyed data order."""

import numpy as np
import pytest
import torch

from trashseg.augment import AugmentConfig, TrainTransform, copy_paste, normalise_batch
from trashseg.errors import ConfigError
from trashseg.train_data import KeySampler, Stream, class_balanced_weights


def _picture(size=40, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
    mask = np.zeros((size, size + 8), np.uint8)
    mask[5:20, 10:30] = 2
    return image, mask


def test_transform_is_a_function_of_the_seed():
    transform = TrainTransform(AugmentConfig(scale_range=(0.5, 2.0)), image_size=32)
    image, mask = _picture()
    first = transform(image, mask, seed=7)
    again = transform(image, mask, seed=7)
    other = transform(image, mask, seed=8)
    assert first[0].shape == (3, 32, 32) and first[0].dtype == np.uint8
    assert first[1].shape == (32, 32) and first[1].dtype == np.uint8
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_crop_larger_than_scaled_image_pads_mask_with_ignore():
    config = AugmentConfig(scale_range=(0.5, 0.5), crop_size=48, hflip=0.0, color_jitter=0.0)
    image, mask = _picture(size=40)
    out_image, out_mask = TrainTransform(config, image_size=40)(image, mask, seed=1)
    assert out_image.shape == (3, 48, 48)
    # Scaled to 20 px high, so more than half of the 48x48 crop is padding, labelled ignore.
    assert (out_mask == 255).mean() > 0.5
    assert set(np.unique(out_mask)) <= {0, 2, 255}


def test_normalisation_uses_configured_mean_and_std():
    config = AugmentConfig(scale_range=(1.0, 1.0), hflip=0.0, color_jitter=0.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    image = np.full((32, 32, 3), 255, np.uint8)
    out, _ = TrainTransform(config, image_size=32)(image, np.zeros((32, 32), np.uint8), seed=0)
    batch = normalise_batch(torch.from_numpy(out)[None], config.mean, config.std)
    assert batch.dtype == torch.float32
    np.testing.assert_allclose(batch.numpy(), 2.0, atol=1e-5)  # (1 - 0.5) / 0.25


def test_copy_paste_moves_only_chosen_classes_with_their_pixels():
    image = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    donor_image = np.full((10, 10, 3), 200, np.uint8)
    donor_mask = np.zeros((10, 10), np.uint8)
    donor_mask[0:5, :] = 9  # rare class to paste (top half, so flips keep it there)
    donor_mask[5:10, :] = 3  # a class not chosen
    out_image, out_mask = copy_paste(image, mask, donor_image, donor_mask, (9,), np.random.default_rng(0))
    assert set(np.unique(out_mask)) == {0, 9}
    assert (out_mask[:10] == 9).all() and (out_mask[10:] == 0).all()
    assert (out_image[out_mask == 9] == 200).all() and (out_image[out_mask == 0] == 0).all()
    assert mask.max() == 0, "the input must not be modified in place"


def test_class_balanced_weights_favour_images_with_rare_classes():
    present = [np.array([0, 1])] * 9 + [np.array([0, 1, 5])]
    weights = class_balanced_weights(present, num_classes=6)
    assert weights.sum() == pytest.approx(1.0)
    # class 5 is in 1 of 10 images: repeat factor 1/sqrt(0.1) ~ 3.16 vs 1 for the others
    assert weights[-1] / weights[0] == pytest.approx(10**0.5)


def test_ranks_draw_disjoint_samples_that_cover_each_epoch():
    streams = [Stream(samples=list(range(12)), per_batch=2, weights=None)]
    per_rank = [
        [key for batch in KeySampler(streams, seed=3, start=0, end=3, grad_accum=1, rank=r, world=2) for key in batch]
        for r in range(2)
    ]
    positions = sorted(p for keys in per_rank for _, _, p in keys)
    assert positions == list(range(12))
    indices = sorted(i for keys in per_rank for _, i, _ in keys)
    assert indices == list(range(12)), "one epoch over both ranks sees every image exactly once"
    # resuming at iteration 2 yields exactly the keys the full run drew there
    full = list(KeySampler(streams, seed=3, start=0, end=3, grad_accum=1, rank=0, world=2))
    resumed = list(KeySampler(streams, seed=3, start=2, end=3, grad_accum=1, rank=0, world=2))
    assert resumed == full[2:]


@pytest.mark.parametrize(
    "values, fragment",
    [
        (dict(scale_range=(2.0, 1.0)), "scale_range"),
        (dict(hflip=1.5), "hflip"),
        (dict(std=(0.2, 0.0, 0.2)), "std"),
        (dict(crop_size=4), "crop_size"),
    ],
)
def test_bad_augment_values_are_rejected(values, fragment):
    with pytest.raises(ConfigError, match=fragment):
        AugmentConfig(**values)


def test_identity_geometry_keeps_the_pixels_and_flip_mirrors_them():
    image, mask = _picture(size=32)
    plain = AugmentConfig(scale_range=(1.0, 1.0), hflip=0.0, color_jitter=0.0)
    out_image, out_mask = TrainTransform(plain, image_size=32)(image[:, :32], mask[:, :32], seed=3)
    np.testing.assert_array_equal(out_image, image[:, :32].transpose(2, 0, 1))
    np.testing.assert_array_equal(out_mask, mask[:, :32])
    flipped = AugmentConfig(scale_range=(1.0, 1.0), hflip=1.0, color_jitter=0.0)
    flip_image, flip_mask = TrainTransform(flipped, image_size=32)(image[:, :32], mask[:, :32], seed=3)
    np.testing.assert_array_equal(flip_image, out_image[:, :, ::-1])
    np.testing.assert_array_equal(flip_mask, out_mask[:, ::-1])


def test_upscaled_crop_shows_the_labels_at_the_drawn_scale():
    # A 2x-scaled 40x48 picture cropped at 40: the object (15x20 px) appears about 30x40 px large.
    config = AugmentConfig(scale_range=(2.0, 2.0), hflip=0.0, color_jitter=0.0)
    image, mask = _picture(size=40)
    areas = [(TrainTransform(config, image_size=40)(image, mask, seed=s)[1] == 2).sum() for s in range(40)]
    assert set(np.unique(TrainTransform(config, image_size=40)(image, mask, seed=0)[1])) <= {0, 2}
    assert 0.9 * 30 * 40 <= max(areas) <= 1.1 * 30 * 40


def test_brightness_jitter_scales_pixels_within_its_range():
    config = AugmentConfig(scale_range=(1.0, 1.0), hflip=0.0, color_jitter=1.0, brightness=0.2, contrast=0.0, saturation=0.0, hue=0.0)
    image = np.full((32, 32, 3), 100, np.uint8)
    factors = {float(TrainTransform(config, 32)(image, np.zeros((32, 32), np.uint8), seed=s)[0].mean()) / 100 for s in range(20)}
    assert min(factors) >= 0.795 and max(factors) <= 1.205 and len(factors) > 10


def test_hue_jitter_keeps_grey_grey_and_rotates_colour():
    config = AugmentConfig(scale_range=(1.0, 1.0), hflip=0.0, color_jitter=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5)
    transform = TrainTransform(config, 32)
    grey = np.full((32, 32, 3), 128, np.uint8)
    assert np.abs(transform(grey, np.zeros((32, 32), np.uint8), seed=0)[0].astype(int) - 128).max() <= 1
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 200
    shifted = [transform(red, np.zeros((32, 32), np.uint8), seed=s)[0][:, 0, 0] for s in range(10)]
    assert any(int(pixel[0]) < 150 for pixel in shifted), "a hue shift of up to half a turn moves red away from red"


def test_training_samples_are_a_function_of_seed_and_key(sample_dataset):
    from trashseg.data.layout import PreparedDataset
    from trashseg.train_data import Stream, TrainSamples

    samples = PreparedDataset(sample_dataset).samples("train")
    streams = [Stream(samples, 2, None)]

    def load(key):
        dataset = TrainSamples(streams, 11, TrainTransform(AugmentConfig(), 64), 5, (), [], 0.0)
        return dataset[key]

    first, again, other = load((0, 3, 17)), load((0, 3, 17)), load((0, 3, 18))
    assert first[0].dtype == torch.uint8 and first[1].dtype == torch.uint8
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
