"""Prediction-file formats: write and read speed, size, and the ensemble mIoU each gives.

    python benchmarks/predictions_bench.py [--images 16] [--size 512] [--classes 11]
        [--sample-iterations 300] [--models MODEL_DIR ... --dataset DIR] [--skip-ensemble]

1. Speed (CPU time of the fastest of 3 passes, so that other jobs' load does not count) and size, on `--images` maps of `--size`^2 with `--classes` classes shaped like a
   segmentation head's output (softmax of low-resolution logits upsampled bilinearly):
   PredictionSet.add (probabilities + argmax mask) and .probs per format, in images/s,
   with bytes per image and the ratio to the old defaults. The old writers are reproduced
   exactly: zlib .npz probabilities and masks at PNG's default level 6. This process runs
   with trashseg.memory's allocator settings, as trashseg does; 1b repeats the table in a
   child process with glibc's defaults.
2. The codecs alone on the same uint8 maps at a few levels, the measurement behind the
   choice of LZ4's fast level.
3. Ensemble mIoU per format on the sample data: two tiny models trained on the generated
   sample dataset (or the training output folders given with --models, e.g. a demo run's),
   each predicting val and test once; those same float32 probabilities are stored in every
   format and run through the demo's recipe (vote, CRF, consensus, gating).
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lz4.frame  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import zstandard  # noqa: E402

from trashseg import predictions as prediction_files  # noqa: E402
from trashseg.memory import ALLOCATOR_ENV, reuse_freed_memory  # noqa: E402
from trashseg.predictions import PredictionSet  # noqa: E402

# (label, dtype, codec, mask PNG level); the first two are the writers before this change.
FORMATS = [
    ("float16 zlib (old, issue)", "float16", "zlib", 6),
    ("uint8 zlib (old default)", "uint8", "zlib", 6),
    ("uint8 zstd-1", "uint8", "zstd", 1),
    ("float16 lz4", "float16", "lz4", 1),
    ("uint8 lz4 (new default)", "uint8", "lz4", 1),
]
OLD_DEFAULT, NEW_DEFAULT = FORMATS[1][0], FORMATS[-1][0]
DEMO_ARCHITECTURES = ["segformer-b0-tiny", "upernet-convnext-t-tiny"]


@contextlib.contextmanager
def mask_png_level(level: int):
    """The old writer saved masks at PNG's default level; the new one at its fastest."""
    saved = prediction_files.MASK_PNG_LEVEL
    prediction_files.MASK_PNG_LEVEL = level
    try:
        yield
    finally:
        prediction_files.MASK_PNG_LEVEL = saved


def head_like_probs(count: int, size: int, classes: int, seed: int = 0) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    maps = []
    for _ in range(count):
        logits = torch.randn(1, classes, size // 4, size // 4, generator=generator) * 6
        logits = torch.nn.functional.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        maps.append(logits[0].softmax(0).numpy())
    return maps


def best_pass(work, passes: int = 3) -> float:
    """CPU seconds (user + system) of the fastest of `passes` runs: on a shared machine, wall
    time mostly measures the wait for a core; everything timed here runs in this process."""
    times = []
    for _ in range(passes):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return min(times)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for sub in ("probs", "masks") for p in (folder / sub).rglob("*") if p.is_file())


def speed_and_size(root: Path, images: int, size: int, classes: int) -> None:
    maps = head_like_probs(images, size, classes)
    names = [f"img/{i:04d}.jpg" for i in range(images)]
    class_names = [f"class {k}" for k in range(classes)]
    print(f"1. PredictionSet write (probabilities + mask) and read, {images} images of {size}x{size}, {classes} classes, 1 process")
    print("   (images per CPU-second of this process: the machine may be shared)")
    print(f"{'format':28s} {'write img/s':>11s} {'read img/s':>10s} {'bytes/img':>10s} {'write x':>8s} {'read x':>7s} {'x issue':>8s}")
    rates = {}
    for label, dtype, codec, png_level in FORMATS:
        folder = root / "speed" / label.split(" (")[0].replace(" ", "-")
        with mask_png_level(png_level):
            written = PredictionSet.create(folder, class_names, dtype=dtype, codec=codec)
            write = images / best_pass(lambda w=written: [w.add(n, p) for n, p in zip(names, maps, strict=True)])
        written.save()
        opened = PredictionSet.open(folder)
        read = images / best_pass(lambda o=opened: [o.probs(n) for n in names])
        rates[label] = (write, read)
        old_write, old_read = rates.get(OLD_DEFAULT, (write, read))
        issue_write, issue_read = rates[FORMATS[0][0]]
        print(
            f"{label:28s} {write:11.1f} {read:10.1f} {folder_bytes(folder) / images:10.0f} "
            f"{write / old_write:7.1f}x {read / old_read:6.1f}x {write / issue_write:4.1f}/{read / issue_read:.1f}x"
        )
    print("   (write x / read x: against the old default; x issue: write/read against float16 zlib)")


def codecs_alone(images: int, size: int, classes: int) -> None:
    stored = [prediction_files.quantise(p, "uint8") for p in head_like_probs(images, size, classes, seed=1)]
    raw = sum(a.nbytes for a in stored)
    codecs = {
        "zlib-6 (np.savez_compressed)": (
            lambda a: prediction_files.encode_probs(a, "zlib"), lambda b: prediction_files.decode_probs(b, "zlib"),
        ),
        **{
            f"zstd {level}": (
                lambda a, level=level: zstandard.ZstdCompressor(level=level).compress(a),
                zstandard.ZstdDecompressor().decompress,
            )
            for level in (-1, 1, 3)
        },
        **{
            f"lz4 {level}{' (default)' if level == prediction_files.LZ4_LEVEL else ''}": (
                lambda a, level=level: lz4.frame.compress(a, compression_level=level), lz4.frame.decompress,
            )
            for level in (0, 3)
        },
    }
    print(f"\n2. codecs alone on uint8 maps ({images} x {classes}x{size}x{size}, {raw / images / 1e6:.2f} MB raw each)")
    print(f"{'codec':30s} {'encode MB/s':>11s} {'decode MB/s':>11s} {'size':>7s}   (per CPU-second)")
    for name, (encode, decode) in codecs.items():
        blobs = [encode(a) for a in stored]
        encoded = best_pass(lambda: [encode(a) for a in stored])  # noqa: B023 (called at once)
        decoded = best_pass(lambda: [decode(b) for b in blobs])  # noqa: B023
        print(f"{name:30s} {raw / encoded / 1e6:11.0f} {raw / decoded / 1e6:11.0f} {sum(map(len, blobs)) / raw:6.1%}")


def sample_models(root: Path, iterations: int) -> tuple[Path, list[Path]]:
    """The demo's sample dataset and its two architectures, trained with the demo's settings."""
    from trashseg.config import from_mapping
    from trashseg.data.prepare import prepare_dataset
    from trashseg.data.sample import generate_sample_dataset
    from trashseg.training import TrainConfig, train

    generate_sample_dataset(root / "raw", images=80, size=96, seed=0)
    dataset = prepare_dataset(root / "raw", root / "data").root
    model_dirs = []
    for name in DEMO_ARCHITECTURES:
        config = from_mapping(
            TrainConfig,
            dict(
                architecture=name, image_size=96, batch_size=8, iterations=iterations, warmup_iters=10, lr=3e-3,
                weight_decay=0.0, eval_interval=0, checkpoint_interval=iterations, log_interval=iterations,
                num_workers=0, augment={"scale_range": [0.75, 1.25]}, tracking={"enabled": False},
            ),
        )
        start = time.perf_counter()
        train(config, dataset, root / "models" / name)
        print(f"   trained {name} for {iterations} iterations in {time.perf_counter() - start:.0f} s")
        model_dirs.append(root / "models" / name)
    return dataset, model_dirs


def model_probabilities(model_dir: Path, dataset: Path, split: str) -> dict[str, np.ndarray]:
    from trashseg.data.io import read_image
    from trashseg.data.layout import PreparedDataset
    from trashseg.models import load_checkpoint
    from trashseg.predict import predict_probabilities

    model, meta = load_checkpoint(model_dir)
    maps = {}
    for sample in PreparedDataset(dataset).samples(split):
        (probs,) = predict_probabilities(
            model, [read_image(sample.image)], image_size=meta.image_size, mean=meta.mean, std=meta.std,
            device=torch.device("cpu"),
        )
        maps[sample.file_name] = probs.numpy()
    return maps


def ensemble_per_format(root: Path, dataset: Path, model_dirs: list[Path]) -> None:
    from trashseg.config import load_config
    from trashseg.data.layout import PreparedDataset
    from trashseg.ensemble.config import EnsembleConfig
    from trashseg.ensemble.recipe import run_recipe

    classes = list(PreparedDataset(dataset).classes().names)
    predicted = {(m, split): model_probabilities(m, dataset, split) for m in model_dirs for split in ("val", "test")}
    config = load_config(EnsembleConfig, None, ["fit_rounds=1", "crf.iterations=5"])  # the demo's
    print(f"\n3. ensemble on the sample data ({len(model_dirs)} models; same float32 predictions stored per format)")
    print(f"{'format':28s} {'soft vote':>9s} {'selected':>9s} {'stage':>16s} {'final pixels != old':>20s}")
    finals = {}
    for label, dtype, codec, _ in FORMATS:
        tag = label.split(" (")[0].replace(" ", "-")
        dirs = {}
        for (model_dir, split), maps in predicted.items():
            folder = PredictionSet.create(root / "ens" / tag / model_dir.name / split, classes, dtype=dtype, codec=codec)
            for name, probs in maps.items():
                folder.add(name, probs)
            folder.save()
            dirs.setdefault(split, []).append(folder.root)
        result = run_recipe(dirs["val"], dirs["test"], dataset, root / "ens" / tag / "recipe", config)
        final = PredictionSet.open(result.final_dirs["val"])
        finals[label] = np.stack([final.mask(n) for n in final.file_names])
        changed = np.mean(finals[label] != finals[OLD_DEFAULT]) if OLD_DEFAULT in finals else 0.0
        print(
            f"{label:28s} {result.scores['soft_vote'].miou:9.4f} {result.scores[result.selected_stage].miou:9.4f} "
            f"{result.selected_stage:>16s} {changed:20.4%}"
        )


def speed_with_glibc_defaults(args: argparse.Namespace) -> None:
    """Section 1 again in a child process without trashseg.memory's allocator settings."""
    print("\n1b. the same with glibc's default allocator (every array over 128 KB mapped afresh, a child process)")
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    command = [sys.executable, __file__, "--only-speed", "--default-allocator"]
    command += [f"--{name}={getattr(args, name)}" for name in ("images", "size", "classes")]
    child = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    print("\n".join(child.stdout.splitlines()[3:]))


def main(args: argparse.Namespace) -> None:
    if not args.default_allocator:
        reuse_freed_memory()  # as trashseg's CLI, local runs and images do
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        speed_and_size(root, args.images, args.size, args.classes)
        if args.only_speed:
            return
        speed_with_glibc_defaults(args)
        codecs_alone(args.images, args.size, args.classes)
        if args.skip_ensemble:
            return
        if args.models:
            ensemble_per_format(root, args.dataset, [Path(m) for m in args.models])
        else:
            dataset, model_dirs = sample_models(root, args.sample_iterations)
            ensemble_per_format(root, dataset, model_dirs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--sample-iterations", type=int, default=300, help="training steps per sample model")
    parser.add_argument("--models", nargs="*", help="training output folders to use instead of training sample models")
    parser.add_argument("--dataset", type=Path, help="the prepared dataset the --models were trained on")
    parser.add_argument("--skip-ensemble", action="store_true", help="only sections 1 and 2")
    parser.add_argument("--only-speed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--default-allocator", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.models and arguments.dataset is None:
        parser.error("--models needs --dataset (the prepared dataset folder they were trained on)")
    main(arguments)
