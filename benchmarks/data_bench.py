"""Data-layer throughput: sample generation and mask rasterisation, images/s.

    python benchmarks/data_bench.py [--images N] [--size S]

Rasterisation is timed in memory (decode + descending-area paint) and with the PNG write
that `trashseg masks` / prepare do, on the generated sample data.
"""

import argparse
import tempfile
import time
from pathlib import Path

from trashseg.data.coco import load_coco
from trashseg.data.masks import dataset_mask, write_masks
from trashseg.data.sample import generate_sample_dataset


def main(images: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.perf_counter()
        generate_sample_dataset(root / "sample", images=images, size=size, seed=0)
        seconds = time.perf_counter() - start
        print(f"sample generation: {images / seconds:.1f} images/s ({images} images of {size}x{size}, {seconds:.2f} s)")

        dataset = load_coco(root / "sample" / "train.json")
        n, objects = len(dataset.images), len(dataset.annotations)
        start = time.perf_counter()
        for image in dataset.images:
            dataset_mask(dataset, image)
        seconds = time.perf_counter() - start
        print(f"mask rasterisation (in memory): {n / seconds:.1f} images/s ({n} images, {objects} annotations, {seconds:.2f} s)")

        start = time.perf_counter()
        write_masks(dataset, root / "prepared")
        seconds = time.perf_counter() - start
        print(f"mask rasterisation + PNG write: {n / seconds:.1f} images/s ({seconds:.2f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="sample images to generate")
    parser.add_argument("--size", type=int, default=512, help="image size (the reference data is 512)")
    args = parser.parse_args()
    main(args.images, args.size)
