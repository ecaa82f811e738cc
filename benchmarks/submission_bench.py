"""Submission CSV speed: seconds to write (and to read + validate) 819 test images.

    python benchmarks/submission_bench.py [--images 819] [--size 512] [--classes 11]

The class maps are built in memory first (blobs of every class, like real predictions),
so the figure is the CSV work alone: 256x256 nearest-neighbour resize, string building
and writing. Target: well under 2 s on one core.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from trashseg.submission import validate_submission, write_submission


def class_maps(images: int, size: int, classes: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    maps = []
    for i in range(images):
        class_map = np.zeros((size, size), np.uint8)
        for _ in range(6):
            cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(size // 20, size // 4))]
            class_map[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(1, classes)
        maps.append((f"batch_{i // 100:02d}/{i:04d}.jpg", class_map))
    return maps


def main(images: int, size: int, classes: int) -> None:
    rows = class_maps(images, size, classes)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "submission.csv"
        start, cpu_start = time.perf_counter(), time.process_time()
        write_submission(path, rows)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        # CPU seconds are the figure to compare on a shared machine; wall time includes waiting.
        print(f"write submission: {seconds:.2f} s wall, {cpu:.2f} s CPU for {images} images of "
              f"{size}x{size} ({images / seconds:.0f} images/s, {path.stat().st_size / 1e6:.1f} MB)")

        annotations = Path(folder) / "test.json"
        annotations.write_text(json.dumps({
            "images": [{"id": i, "file_name": name, "width": size, "height": size} for i, (name, _) in enumerate(rows)],
            "categories": [{"id": k, "name": f"class {k}"} for k in range(1, classes)],
        }))
        start = time.perf_counter()
        validate_submission(path, annotations)
        seconds = time.perf_counter() - start
        print(f"read + validate submission: {seconds:.2f} s for {images} rows")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=819)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=11)
    args = parser.parse_args()
    main(args.images, args.size, args.classes)
