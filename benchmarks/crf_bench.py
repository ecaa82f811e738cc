"""DenseCRF and ensemble speed on 512x512 images with 11 classes.

    python benchmarks/crf_bench.py [--images 24] [--size 512] [--classes 11] [--iterations 10] [--workers N]

Prints DenseCRF seconds per image in one process and with the worker pool (and the
speed-up; on 2 idle cores it should be >= 1.7x), then, for each prediction-file format
side by side (old default and new, see benchmarks/predictions_bench.py): write and read
images/s, bytes per image, the ensemble's images/s (soft + hard vote of three models,
files in and out) and its val mIoU. Everything runs on generated prediction folders:
blobs of each class with noisy probabilities, on matching pictures.
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
from trashseg.ensemble.config import EnsembleConfig
from trashseg.ensemble.recipe import run_recipe
from trashseg.predictions import PredictionSet

# Run as a script, benchmarks/ is on the path: the formats are predictions_bench's.
from predictions_bench import FORMATS, NEW_DEFAULT, mask_png_level  # noqa: E402  isort: skip


def build(root: Path, images: int, size: int, classes: int) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
    """A prepared dataset with `images` pictures; returns their names, true masks and class names."""
    from PIL import Image

    rng = np.random.default_rng(0)
    names = [f"test/{i:04d}.jpg" for i in range(images)]
    dataset = PreparedDataset(root / "data")
    (dataset.root / "images" / "test").mkdir(parents=True)
    table = ClassTable(tuple(f"class {k}" for k in range(classes)), (None, *range(1, classes)))
    table.save(dataset.classes_file)
    palette = rng.integers(0, 255, (classes, 3))
    yy, xx = np.mgrid[:size, :size]
    truths = {}
    for name in names:
        truth = np.zeros((size, size), np.uint8)
        for _ in range(8):
            cy, cx, r = (*rng.integers(0, size, 2), rng.integers(size // 30, size // 5))
            truth[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(1, classes)
        picture = palette[truth] + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(dataset.image_path(name), quality=90)
        mask_path = dataset.mask_path(name)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(truth).save(mask_path)
        truths[name] = truth
    # val and test list the same images: the ensemble scores one and writes both.
    split = {"images": [{"id": i, "file_name": n, "width": size, "height": size} for i, n in enumerate(names)]}
    (dataset.root / "splits").mkdir()
    for split_name in ("val", "test"):
        dataset.split_file(split_name).write_text(json.dumps(split))
    return names, truths, list(table.names)


def write_models(root: Path, truths: dict[str, np.ndarray], class_names: list[str], models: int, fmt) -> float:
    """`models` prediction folders of noisy probabilities around the truth, in format `fmt`
    (a predictions_bench.FORMATS entry); returns the seconds spent in PredictionSet.add."""
    _, dtype, codec, png_level = fmt
    rng = np.random.default_rng(1)  # the same probabilities in every format
    seconds = 0.0
    with mask_png_level(png_level):
        for m in range(models):
            prediction = PredictionSet.create(
                root / f"model{m}", class_names, dtype=dtype, codec=codec, source={"name": f"model{m}"}
            )
            for name, truth in truths.items():
                logits = rng.normal(0, 1.0, (len(class_names), *truth.shape)).astype(np.float32)
                np.put_along_axis(logits, truth[None].astype(np.intp), 2.0, axis=0)
                probs = np.exp(logits - logits.max(0))
                probs /= probs.sum(0)
                start = time.perf_counter()
                prediction.add(name, probs)
                seconds += time.perf_counter() - start
            prediction.save()
    return seconds


def crf_timings(root: Path, names: list[str], size: int, classes: int, iterations: int, workers: int) -> None:
    # Inference alone, one image in memory.
    image = read_image(PreparedDataset(root / "data").image_path(names[0]))
    probs = PredictionSet.open(root / "model0").probs(names[0])
    start = time.perf_counter()
    dense_crf(image, probs, CrfConfig(iterations=iterations))
    print(
        f"DenseCRF inference alone: {time.perf_counter() - start:.2f} s per {size}x{size} image "
        f"({classes} classes, {iterations} iterations)"
    )
    timings = {}
    for count in (1, workers):
        start = time.perf_counter()
        crf_prediction_set(
            root / "model0", root / "data", root / f"crf{count}", CrfConfig(iterations=iterations, workers=count)
        )
        timings[count] = (time.perf_counter() - start) / len(names)
        print(
            f"DenseCRF over a prediction folder, {count} process(es): {timings[count]:.2f} s per image "
            f"(read + CRF + write, {len(names)} images)"
        )
    # The speed-up needs idle cores: compare it with the load average printed beside it.
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"pool speed-up with {workers} workers: {timings[1] / timings[workers]:.2f}x "
        f"(load average {load} on {os.cpu_count()} cores)"
    )


def ensemble_per_format(root: Path, truths: dict[str, np.ndarray], class_names: list[str], workers: int) -> None:
    """Soft + hard vote of three models' folders in each prediction-file format, side by side."""
    images = len(truths)
    print(f"\nensemble of 3 models (soft + hard vote, val scored, files in and out, {workers} process(es)), per format:")
    print(f"{'format':28s} {'write img/s':>11s} {'read img/s':>10s} {'bytes/img':>10s} {'ensemble img/s':>14s} {'val mIoU':>9s}")
    config = EnsembleConfig(
        weights=(1, 1, 1), crf_enabled=False, consensus_enabled=False, gating_enabled=False, workers=workers
    )
    for fmt in FORMATS:
        folder = root / "formats" / fmt[0].split(" (")[0].replace(" ", "-")
        write = 3 * images / write_models(folder, truths, class_names, 3, fmt)
        opened = PredictionSet.open(folder / "model0")
        start = time.perf_counter()
        for name in opened.file_names:
            opened.probs(name)
        read = images / (time.perf_counter() - start)
        size = sum(p.stat().st_size for p in (folder / "model0").rglob("*") if p.is_file()) / images
        dirs = [folder / f"model{m}" for m in range(3)]
        start = time.perf_counter()
        result = run_recipe(dirs, dirs, root / "data", folder / "ensemble", config)
        rate = 2 * images / (time.perf_counter() - start)
        print(f"{fmt[0]:28s} {write:11.1f} {read:10.1f} {size:10.0f} {rate:14.2f} {result.scores['soft_vote'].miou:9.4f}")


def main(images: int, size: int, classes: int, iterations: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        names, truths, class_names = build(root, images, size, classes)
        write_models(root, truths, class_names, 3, next(f for f in FORMATS if f[0] == NEW_DEFAULT))
        crf_timings(root, names, size, classes, iterations, workers)
        ensemble_per_format(root, truths, class_names, workers)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)  # enough to amortise pool start-up
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    main(args.images, args.size, args.classes, args.iterations, args.workers)
