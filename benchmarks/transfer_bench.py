"""Random init vs pretrained, side by side on the same photos and the same compute budget.

    python benchmarks/transfer_bench.py --data FOLDER [--budget 600] [--threads 2]
        [--arm ARCH:START:SIZE ...] [--work DIR]

FOLDER is a COCO source folder as `make run DATA=FOLDER` takes it (train.json, optional
val.json, images at their file_name; test.json is not needed here). It is prepared once (val
split from train when there is no val.json) and every arm trains on it alone, one after the
other, on `--threads` cores, so all arms meet the same machine load.

An arm is ARCH:START:SIZE: an architecture, its start (`default` = the table's default start,
`none` = random init) and the training image size. Default arms: the demo's members, which
were `make run`'s before the pretrained family (segformer-b0-tiny and upernet-convnext-t-tiny
at 96 px, random init), upernet-effnet-lite0
from random init and from its packaged ImageNet weights at `--size`.

Same budget, counted in this process's CPU seconds so that other jobs on a shared machine
shift it little (on idle cores, wall time = CPU seconds / threads): two short probe runs (2
and 8 steps) measure each arm's CPU seconds per step; it then trains budget / step time
steps (its own full warmup + poly schedule; 10 to --max-steps) with the demo's settings
(pipelines/local.py DEMO_TRAIN_SETTINGS) and is validated once, at the end. Printed: steps,
wall and CPU seconds, val mIoU and its factor over the majority-class floor. Use real photos: the
synthetic sample's shapes are no measure of transfer from ImageNet.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pipelines.local import DEMO_TRAIN_SETTINGS  # noqa: E402
from trashseg.config import load_config  # noqa: E402
from trashseg.data.prepare import prepare_dataset  # noqa: E402
from trashseg.predict import majority_class_scores  # noqa: E402
from trashseg.training import TrainConfig, train  # noqa: E402

DEFAULT_SIZE = 128


def default_arms(size: int) -> list[str]:
    return ["segformer-b0-tiny:none:96", "upernet-convnext-t-tiny:none:96",
            f"upernet-effnet-lite0:none:{size}", f"upernet-effnet-lite0:default:{size}"]


def _config(arm: str, iterations: int) -> TrainConfig:
    architecture, start, size = arm.split(":")
    settings = [*DEMO_TRAIN_SETTINGS, f"architecture={architecture}", f"image_size={size}",
                f"iterations={iterations}", f"eval_interval={iterations}", f"checkpoint_interval={iterations}",
                f"log_interval={max(iterations // 5, 1)}", "warmup_iters=" + str(min(10, iterations // 5)),
                "tracking.enabled=false"]
    if start == "none":
        settings.append("pretrained=none")
    return load_config(TrainConfig, None, settings)


def seconds_per_step(arm: str, dataset: Path, work: Path) -> float:
    """CPU seconds per step from two short runs (2 and 8 steps): their difference leaves out
    what every run pays once (building the model, loading data, the final validation)."""
    times = {}
    for steps in (2, 8):
        start = time.process_time()
        train(_config(arm, steps), dataset, work / f"probe{steps}")
        times[steps] = time.process_time() - start
    difference = (times[8] - times[2]) / 6
    # On a loaded machine the difference can come out near zero; the whole short run is an upper bound.
    return difference if difference > times[8] / 8 / 4 else times[8] / 8


def run_arm(arm: str, dataset: Path, work: Path, budget: float, max_steps: int) -> tuple[int, float, float, float, str]:
    """(steps, wall seconds, CPU seconds, val mIoU, start) of one arm trained for about `budget`
    CPU seconds."""
    step = seconds_per_step(arm, dataset, work)
    iterations = min(max(10, int(budget / step)), max_steps)
    config = _config(arm, iterations)
    start, cpu = time.perf_counter(), time.process_time()
    result = train(config, dataset, work / "run")
    return iterations, time.perf_counter() - start, time.process_time() - cpu, result.best_miou, config.pretrained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="COCO folder: train.json, optional val.json, images")
    parser.add_argument("--budget", type=float, default=600.0, help="training CPU seconds per arm (600 = 5 min on 2 idle cores)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image size of the default effnet arms")
    parser.add_argument("--arm", action="append", dest="arms", metavar="ARCH:START:SIZE", help="repeat; default: see above")
    parser.add_argument("--max-steps", type=int, default=3000, help="cap on any arm's steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per arm")
    parser.add_argument("--work", type=Path, help="keep the prepared data and runs here (default: a temp folder)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    arms = args.arms or default_arms(args.size)
    with tempfile.TemporaryDirectory(prefix="transfer-bench-") as tmp:
        work = args.work or Path(tmp)
        dataset = work / "data"
        if not (dataset / "dataset.json").is_file():
            prepare_dataset(args.data, dataset)
        floor = majority_class_scores(dataset).miou
        print(f"{args.data}: majority-class val mIoU {floor:.3f}; {args.budget:.0f} CPU seconds of training per arm, "
              f"{args.threads} thread(s)", flush=True)
        rows = []
        for arm in arms:
            iterations, seconds, cpu, miou, start = run_arm(arm, dataset, work / arm.replace(":", "_"), args.budget, args.max_steps)
            rows.append((arm, start, iterations, seconds, cpu, miou))
            print(f"  done {arm}: {iterations} steps, {seconds:.0f} s wall, {cpu:.0f} CPU s, val mIoU {miou:.3f}", flush=True)
        print(f"\n{'architecture:start:size':34s} {'pretrained':38s} {'steps':>6s} {'wall s':>7s} {'CPU s':>7s} {'val mIoU':>9s} {'x floor':>8s}")
        for arm, start, iterations, seconds, cpu, miou in rows:
            print(f"{arm:34s} {start:38s} {iterations:6d} {seconds:7.0f} {cpu:7.0f} {miou:9.3f} {miou / floor:8.2f}")
        print(f"{'majority class (floor)':34s} {'':38s} {'':6s} {'':7s} {'':7s} {floor:9.3f} {1.0:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
