"""DenseCRF and ensemble speed on 512x512 images with 11 classes.

    python benchmarks/crf_bench.py [--images 24] [--size 512] [--classes 11] [--iterations 10] [--workers N]

Prints DenseCRF seconds per image in one process and with the worker pool (and the
speed-up; on 2 idle cores it should be >= 1.7x), and the ensemble's images/s (soft +
hard vote of three models, files in and out). Everything runs on generated prediction
folders: blobs of each class with noisy probabilities, on matching pictures.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from trashseg.crf import CrfConfig, crf_prediction_set, dense_crf
from trashseg.data.classes import ClassTable
from trashseg.data.io import read_image
from trashseg.data.layout import PreparedDataset
from trashseg.ensemble import EnsembleConfig, run_recipe
from trashseg.predictions import PredictionSet


def build(root: Path, images: int, size: int, classes: int, models: int) -> list[str]:
    """A prepared dataset with `images` pictures and `models` prediction folders of them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    names = [f"test/{i:04d}.jpg" for i in range(images)]
    dataset = PreparedDataset(root / "data")
    (dataset.root / "images" / "test").mkdir(parents=True)
    table = ClassTable(tuple(f"class {k}" for k in range(classes)), (None, *range(1, classes)))
    table.save(dataset.classes_file)
    palette = rng.integers(0, 255, (classes, 3))
    yy, xx = np.mgrid[:size, :size]
    sets = [
        PredictionSet.create(root / f"model{m}", table.names, source={"name": f"model{m}"})
        for m in range(models)
    ]
    for name in names:
        truth = np.zeros((size, size), np.uint8)
        for _ in range(8):
            cy, cx, r = (*rng.integers(0, size, 2), rng.integers(size // 30, size // 5))
            truth[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(1, classes)
        picture = palette[truth] + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(
            dataset.image_path(name), quality=90
        )
        for prediction in sets:
            logits = rng.normal(0, 1.0, (classes, size, size)).astype(np.float32)
            np.put_along_axis(logits, truth[None].astype(np.intp), 2.0, axis=0)
            probs = np.exp(logits - logits.max(0))
            prediction.add(name, probs / probs.sum(0))
        mask_path = dataset.mask_path(name)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(truth).save(mask_path)
    for prediction in sets:
        prediction.save()
    # val and test list the same images: the ensemble scores one and writes both.
    split = {
        "images": [
            {"id": i, "file_name": n, "width": size, "height": size} for i, n in enumerate(names)
        ]
    }
    (dataset.root / "splits").mkdir()
    for split_name in ("val", "test"):
        dataset.split_file(split_name).write_text(json.dumps(split))
    return names


def main(images: int, size: int, classes: int, iterations: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        names = build(root, images, size, classes, models=3)
        config = CrfConfig(iterations=iterations)

        # Inference alone, one image in memory.
        image = read_image(PreparedDataset(root / "data").image_path(names[0]))
        probs = PredictionSet.open(root / "model0").probs(names[0])
        start = time.perf_counter()
        dense_crf(image, probs, config)
        print(
            f"DenseCRF inference alone: {time.perf_counter() - start:.2f} s per {size}x{size} image "
            f"({classes} classes, {iterations} iterations)"
        )

        timings = {}
        for count in (1, workers):
            start = time.perf_counter()
            crf_prediction_set(
                root / "model0",
                root / "data",
                root / f"crf{count}",
                CrfConfig(iterations=iterations, workers=count),
            )
            wall = time.perf_counter() - start
            timings[count] = wall / images
            print(
                f"DenseCRF over a prediction folder, {count} process(es): {timings[count]:.2f} s per image "
                f"(read + CRF + write, {images} images)"
            )
        # The speed-up needs idle cores: compare it with the load average printed beside it.
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(
            f"pool speed-up with {workers} workers: {timings[1] / timings[workers]:.2f}x "
            f"(load average {load} on {os.cpu_count()} cores)"
        )

        dirs = [root / f"model{m}" for m in range(3)]
        for count in (1, workers):
            config = EnsembleConfig(
                weights=(1, 1, 1),
                crf_enabled=False,
                consensus_enabled=False,
                gating_enabled=False,
                workers=count,
            )
            start = time.perf_counter()
            run_recipe(dirs, dirs, root / "data", root / f"ensemble{count}", config)
            seconds = time.perf_counter() - start
            print(
                f"ensemble (soft + hard vote of 3 models, val scored, files in and out), "
                f"{count} process(es): {2 * images / seconds:.2f} images/s"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)  # enough to amortise pool start-up
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    main(args.images, args.size, args.classes, args.iterations, args.workers)
