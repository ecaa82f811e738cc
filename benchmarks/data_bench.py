"""Data-layer throughput, images/s per core.

    python benchmarks/data_bench.py [--images N] [--size S] [--dataset PREPARED_DIR]

1. The training input path (read, decode, augment, collate) at 512 crops from 640-px JPEGs
   of the generated sample data (or of the prepared dataset passed with --dataset), BEFORE
   (the original PIL decode + albumentations transform, kept below as the reference) and
   AFTER (trashseg's reader and `TrainTransform`), one core each (torch and OpenCV at one
   thread), with the share of each part and the AFTER/BEFORE ratio. Parts are timed in CPU
   seconds of this thread (`time.thread_time`), so other processes sharing the cores do
   not inflate them; images/s per core = 1 / CPU seconds per image.
2. Sample generation and mask rasterisation (decode + descending-area paint, and the PNG
   write that `trashseg masks` / prepare do).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from trashseg.augment import AugmentConfig, TrainTransform, normalise_batch, sample_seed  # noqa: E402
from trashseg.data.coco import load_coco  # noqa: E402
from trashseg.data.images import decode_gray, decode_rgb  # noqa: E402
from trashseg.data.layout import PreparedDataset  # noqa: E402
from trashseg.data.masks import dataset_mask, write_masks  # noqa: E402
from trashseg.data.prepare import prepare_dataset  # noqa: E402
from trashseg.data.sample import generate_sample_dataset  # noqa: E402
from trashseg.metrics import IGNORE_INDEX  # noqa: E402

TRAIN_SIZE, BATCH = 512, 8


class ReferenceTransform:
    """The original training transform (albumentations), the BEFORE of the comparison."""

    def __init__(self, config: AugmentConfig, image_size: int) -> None:
        import albumentations as A

        crop = config.crop_size or image_size
        low, high = config.scale_range
        self.compose = A.Compose(
            [
                A.SmallestMaxSize(max_size=image_size),
                A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0),
                A.PadIfNeeded(
                    min_height=crop, min_width=crop, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX
                ),
                A.RandomCrop(height=crop, width=crop),
                A.HorizontalFlip(p=config.hflip),
                A.ColorJitter(
                    brightness=config.brightness, contrast=config.contrast, saturation=config.saturation,
                    hue=config.hue, p=config.color_jitter,
                ),
                A.Normalize(mean=config.mean, std=config.std, max_pixel_value=255.0),
            ],
            seed=0,
        )

    def __call__(self, image, mask, seed):
        self.compose.set_random_seed(seed)
        out = self.compose(image=image, mask=mask)
        return out["image"].transpose(2, 0, 1).astype(np.float32), out["mask"].astype(np.int64)


def reference_decode(image_bytes: bytes, mask_bytes: bytes):
    """The original decode: PIL for both files, then the copies training made."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as picture:
        image = np.array(np.asarray(picture.convert("RGB")))
    with Image.open(io.BytesIO(mask_bytes)) as picture:
        mask = np.array(picture)
    return image, mask


def trashseg_decode(image_bytes: bytes, mask_bytes: bytes):
    return decode_rgb(image_bytes), decode_gray(mask_bytes)


def time_path(samples, decode, transform, rounds: int, finish=lambda batch: batch) -> dict[str, float]:
    """CPU seconds per image of each part of the input path, over `rounds` passes of the samples.

    `finish` runs on each collated batch (AFTER+: the normalisation that training does on the
    device, counted here as CPU work, as it is when training on a CPU)."""
    parts = dict.fromkeys(("read", "decode", "augment", "collate"), 0.0)
    count, batch = 0, []
    for round_index in range(rounds):
        for index, sample in enumerate(samples):
            start = time.thread_time()
            image_bytes, mask_bytes = sample.image.read_bytes(), sample.mask.read_bytes()
            read = time.thread_time()
            image, mask = decode(image_bytes, mask_bytes)
            decoded = time.thread_time()
            pair = transform(image, mask, sample_seed(0, 0, round_index * len(samples) + index))
            batch.append((torch.from_numpy(pair[0]), torch.from_numpy(pair[1])))
            augmented = time.thread_time()
            if len(batch) == BATCH:
                finish(torch.utils.data.default_collate(batch))
                batch = []
            done = time.thread_time()
            parts["read"] += read - start
            parts["decode"] += decoded - read
            parts["augment"] += augmented - decoded
            parts["collate"] += done - augmented
            count += 1
    return {name: seconds / count for name, seconds in parts.items()}


def report(name: str, parts: dict[str, float]) -> float:
    total = sum(parts.values())
    shares = ", ".join(f"{part} {seconds / total:.0%}" for part, seconds in parts.items())
    print(f"  {name:<7} {1 / total:7.1f} images/s per core  ({shares})")
    return 1 / total


def input_path(dataset_dir: Path, rounds: int) -> None:
    samples = PreparedDataset(dataset_dir).samples("train")
    sizes = {cv2.imread(str(s.image)).shape[:2] for s in samples[:5]}
    print(f"training input path at {TRAIN_SIZE} from {dataset_dir} ({len(samples)} train images, e.g. {sorted(sizes)}):")
    config = AugmentConfig()
    reference, current = ReferenceTransform(config, TRAIN_SIZE), TrainTransform(config, TRAIN_SIZE)
    time_path(samples[:4], trashseg_decode, current, 1)  # warm caches and lazy imports
    time_path(samples[:4], reference_decode, reference, 1)
    before = report("BEFORE", time_path(samples, reference_decode, reference, rounds))
    after = report("AFTER", time_path(samples, trashseg_decode, current, rounds))
    print(f"  AFTER / BEFORE: {after / before:.2f}x per core (what feeds a GPU: it normalises on the device)")
    finish = lambda batch: (normalise_batch(batch[0], config.mean, config.std), batch[1].long())  # noqa: E731
    on_cpu = report("AFTER+", time_path(samples, trashseg_decode, current, rounds, finish))
    print(f"  AFTER+ / BEFORE: {on_cpu / before:.2f}x per core (AFTER+ = AFTER with that normalisation on this CPU)")


def rasterisation(images: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.thread_time()
        generate_sample_dataset(root / "sample", images=images, size=size, seed=0)
        seconds = time.thread_time() - start
        print(f"sample generation: {images / seconds:.1f} images/s ({images} images of {size}x{size}, {seconds:.2f} s)")

        dataset = load_coco(root / "sample" / "train.json")
        n, objects = len(dataset.images), len(dataset.annotations)
        start = time.thread_time()
        for image in dataset.images:
            dataset_mask(dataset, image)
        seconds = time.thread_time() - start
        print(f"mask rasterisation (in memory): {n / seconds:.1f} images/s ({n} images, {objects} annotations, {seconds:.2f} s)")

        start = time.thread_time()
        write_masks(dataset, root / "prepared")
        seconds = time.thread_time() - start
        print(f"mask rasterisation + PNG write: {n / seconds:.1f} images/s ({seconds:.2f} s)")


def main(images: int, size: int, dataset: Path | None, rounds: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if dataset is not None:
        input_path(dataset, rounds)
    else:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            generate_sample_dataset(root / "raw", images=images, size=640, seed=0)
            prepare_dataset(root / "raw", root / "prepared")
            input_path(root / "prepared", rounds)
    rasterisation(images, size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=60, help="sample images to generate")
    parser.add_argument("--size", type=int, default=512, help="image size for the rasterisation timings")
    parser.add_argument("--dataset", type=Path, default=None, help="a prepared dataset to time instead of sample data")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the train images per path")
    args = parser.parse_args()
    main(args.images, args.size, args.dataset, args.rounds)
