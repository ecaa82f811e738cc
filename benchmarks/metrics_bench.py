"""Confusion-matrix update throughput: pixels/s for 11 classes on 512x512 batches."""

import time

import numpy as np

from trashseg.metrics import ConfusionMatrix


def main(batches: int = 20, batch_size: int = 8, size: int = 512, classes: int = 11) -> None:
    rng = np.random.default_rng(0)
    prediction = rng.integers(0, classes, size=(batch_size, size, size), dtype=np.uint8)
    target = rng.integers(0, classes, size=(batch_size, size, size), dtype=np.uint8)
    target[:, :8] = 255
    cm = ConfusionMatrix(classes)
    cm.update(prediction, target)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        cm.update(prediction, target)
    seconds = time.perf_counter() - start
    pixels = batches * prediction.size
    print(f"confusion-matrix update: {pixels / seconds / 1e6:.1f} Mpixels/s "
          f"({batches} batches of {batch_size}x{size}x{size}, {classes} classes, {seconds:.2f} s)")


if __name__ == "__main__":
    main()
