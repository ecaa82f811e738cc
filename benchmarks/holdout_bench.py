"""How optimistic in-sample val scores are: the recipe's stages scored in-sample and held out.

    python benchmarks/holdout_bench.py [--images 40] [--size 64] [--iterations 300] [--folds 2]

Generates the sample data, trains tiny models briefly on CPU, predicts val and test, and runs
the recipe (fitted weights, CRF, consensus, gating). Prints, per model and stage, the val mIoU
with the weights and gating fitted on the same images (in-sample) beside the cross-fitted one
(each fold scored with parameters fitted on the other folds), and their gap.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from trashseg.config import from_mapping  # noqa: E402
from trashseg.crf import CrfConfig  # noqa: E402
from trashseg.data.prepare import prepare_dataset  # noqa: E402
from trashseg.data.sample import generate_sample_dataset  # noqa: E402
from trashseg.ensemble.config import EnsembleConfig  # noqa: E402
from trashseg.ensemble.recipe import run_recipe  # noqa: E402
from trashseg.predict import predict  # noqa: E402
from trashseg.training import TrainConfig, train  # noqa: E402

ARCHITECTURES = ["segformer-b0-tiny", "upernet-convnext-t-tiny", "mask2former-swin-t-tiny"]


def main(images: int, size: int, iterations: int, folds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_sample_dataset(root / "raw", images=images, size=size, seed=0)
        data = prepare_dataset(root / "raw", root / "data").root
        val_dirs, test_dirs = [], []
        for architecture in ARCHITECTURES:
            config = from_mapping(TrainConfig, {
                "architecture": architecture, "image_size": size, "batch_size": 8, "iterations": iterations,
                "warmup_iters": 10, "lr": 3e-3, "weight_decay": 0.0, "eval_interval": 0, "checkpoint_interval": iterations,
                "num_workers": 0, "tracking": {"enabled": False},
            })
            checkpoint = train(config, data, root / "train" / architecture).last_checkpoint
            for split, dirs in (("val", val_dirs), ("test", test_dirs)):
                dirs.append(predict(checkpoint, data, split, root / "pred" / architecture / split).root)
        start = time.perf_counter()
        result = run_recipe(val_dirs, test_dirs, data, root / "recipe",
                            EnsembleConfig(holdout_folds=folds, crf=CrfConfig(iterations=5)))
        seconds = time.perf_counter() - start
        print(f"sample data: {images} images at {size} px, {iterations} iterations per model; {result.scoring}")
        print(f"{'stage':>26}  {'in-sample':>9}  {'held-out':>9}  {'gap':>7}")
        for stage in result.stages:
            inside, held = result.in_sample_scores[stage].miou, result.scores[stage].miou
            mark = "  <- selected" if stage == result.selected_stage else ""
            print(f"{stage:>26}  {inside:9.4f}  {held:9.4f}  {inside - held:+7.4f}{mark}")
        print(f"recipe with cross-fit: {seconds:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--folds", type=int, default=2)
    args = parser.parse_args()
    main(args.images, args.size, args.iterations, args.folds)
