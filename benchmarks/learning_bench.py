"""Validation mIoU that tiny models reach on the sample data, against the majority-class floor.

    python benchmarks/learning_bench.py [--images 80] [--size 96] [--iterations 600] [--only NAME ...]

Generates and prepares the sample dataset, trains each architecture from random init with
the demo's settings on CPU, and prints its best val mIoU, the factor over the predictor
that paints everything Background, and the wall time.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from trashseg.config import from_mapping  # noqa: E402
from trashseg.data.prepare import prepare_dataset  # noqa: E402
from trashseg.data.sample import generate_sample_dataset  # noqa: E402
from trashseg.predict import majority_class_scores  # noqa: E402
from trashseg.training import TrainConfig, train  # noqa: E402

DEFAULT_ARCHITECTURES = [
    "segformer-b0-tiny",
    "upernet-convnext-t-tiny",
    "mask2former-swin-t-tiny",
    "mask2former-semask-swin-t-tiny",
    "mask2former-semask-fapn-swin-t-tiny",
    "maskdino-swin-t-tiny",
]


def main(images: int, size: int, iterations: int, architectures: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_sample_dataset(root / "raw", images=images, size=size, seed=0)
        dataset = prepare_dataset(root / "raw", root / "data").root
        floor = majority_class_scores(dataset).miou
        print(f"sample data: {images} images at {size} px; majority-class val mIoU {floor:.3f}")
        print(f"{'architecture':28s} {'val mIoU':>9s} {'x floor':>8s} {'seconds':>8s}")
        for name in architectures:
            config = from_mapping(
                TrainConfig,
                dict(
                    architecture=name, image_size=size, batch_size=8, iterations=iterations, warmup_iters=10,
                    lr=3e-3, weight_decay=0.0, eval_interval=iterations // 4, checkpoint_interval=iterations,
                    log_interval=iterations, num_workers=0, augment={"scale_range": [0.75, 1.25]},
                    tracking={"enabled": False},
                ),
            )
            start = time.perf_counter()
            result = train(config, dataset, root / "runs" / name)
            seconds = time.perf_counter() - start
            print(f"{name:28s} {result.best_miou:9.3f} {result.best_miou / floor:8.1f} {seconds:8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--only", nargs="*", default=DEFAULT_ARCHITECTURES, help="architecture names")
    args = parser.parse_args()
    main(args.images, args.size, args.iterations, args.only)
