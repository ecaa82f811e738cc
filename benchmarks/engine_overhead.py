"""trashseg's engine against the plain PyTorch loop a user would write, in one process run.

    python benchmarks/engine_overhead.py [--iterations N] [--architecture NAME] [--size S] [--batch-size B]

Both sides use the same architecture, sample data, batch size, augmentation (trashseg's
`TrainTransform`), AdamW and autocast (off on CPU, bf16 on CUDA, as trashseg's amp=auto);
the plain loop is written below with nothing but torch: a DataLoader over the same
samples, forward, backward, step. `train` adds what a real run needs (keyed resumable
data order, loss checks, logging, the final checkpoint); prediction adds the prediction
folder (the plain loop writes the same: uint8 probabilities and label PNGs). Each side runs
three times, interleaved; the fastest run counts. On CPU the rate is in
process CPU seconds (torch at one thread), so other users of a shared machine do not
skew the ratio; on CUDA it is wall time. Target: trashseg/plain >= 0.95.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from trashseg.augment import AugmentConfig, TrainTransform, eval_transform, normalise_batch  # noqa: E402
from trashseg.config import from_mapping  # noqa: E402
from trashseg.data.io import read_image, read_mask  # noqa: E402
from trashseg.data.layout import PreparedDataset  # noqa: E402
from trashseg.data.prepare import prepare_dataset  # noqa: E402
from trashseg.data.sample import generate_sample_dataset  # noqa: E402
from trashseg.device import resolve_amp_dtype  # noqa: E402
from trashseg.models import build_model  # noqa: E402
from trashseg.predict import predict  # noqa: E402
from trashseg.training import TrainConfig, train  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def clock() -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


class PlainSamples(torch.utils.data.Dataset):
    """What a user writes: read the pair, augment with a fresh seed per item."""

    def __init__(self, samples, num_classes: int, transform) -> None:
        self.samples, self.num_classes, self.transform = samples, num_classes, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image, mask = read_image(sample.image), read_mask(sample.mask, self.num_classes)
        out_image, out_mask = self.transform(image, mask, int(torch.randint(2**31, ())))
        return torch.from_numpy(out_image), torch.from_numpy(out_mask)


def plain_train(config: TrainConfig, dataset: PreparedDataset) -> int:
    classes = dataset.classes()
    model = build_model(config.architecture, classes.num_classes).to(DEVICE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    samples = PlainSamples(dataset.samples("train"), classes.num_classes, TrainTransform(config.augment, config.image_size))
    loader = torch.utils.data.DataLoader(
        samples, batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=config.num_workers,
        pin_memory=DEVICE.type == "cuda",
    )
    amp_dtype = resolve_amp_dtype(config.amp, DEVICE.type)
    mean, std = config.augment.mean, config.augment.std
    model.train()
    step = 0
    while step < config.iterations:
        for images, masks in loader:
            images = normalise_batch(images.to(DEVICE, non_blocking=True), mean, std)
            masks = masks.to(DEVICE, non_blocking=True).long()
            with torch.autocast(DEVICE.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = model.loss(images, masks)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == config.iterations:
                break
    return step


def plain_predict(checkpoint: Path, dataset: PreparedDataset, split: str, out: Path, batch_size: int) -> int:
    state = torch.load(checkpoint, map_location=DEVICE, weights_only=False)
    model = build_model(state["architecture"], state["num_classes"]).to(DEVICE)
    model.load_state_dict(state["model"])
    model.eval()
    size, norm = state["image_size"], state["normalisation"]
    amp_dtype = resolve_amp_dtype("auto", DEVICE.type)
    out.mkdir(parents=True, exist_ok=True)
    samples = dataset.samples(split)
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        images = [read_image(s.image) for s in chunk]
        batch = torch.from_numpy(np.stack([eval_transform(i, size, norm["mean"], norm["std"]) for i in images])).to(DEVICE)
        with torch.no_grad(), torch.autocast(DEVICE.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            probs = model.predict_logits(batch).float().softmax(dim=1)
        for sample, image, prob in zip(chunk, images, probs, strict=True):
            full = torch.nn.functional.interpolate(prob[None], size=image.shape[:2], mode="bilinear")[0]
            quantised = (full * 255).round().to(torch.uint8).cpu().numpy()  # as trashseg's uint8 default
            np.savez_compressed(out / f"{Path(sample.file_name).stem}.npz", probs=quantised)
            Image.fromarray(full.argmax(0).to(torch.uint8).cpu().numpy()).save(out / f"{Path(sample.file_name).stem}.png")
    return len(samples)


def fastest(runs: int, *works) -> list[float]:
    """Seconds of the fastest of `runs` calls of each `work(run_index)`, the works interleaved."""
    timings = [[] for _ in works]
    for run in range(runs):
        for work, seconds in zip(works, timings, strict=True):
            start = clock()
            work(run)
            seconds.append(clock() - start)
    return [min(seconds) for seconds in timings]


def main(iterations: int, architecture: str, size: int, batch_size: int, runs: int) -> None:
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate_sample_dataset(root / "raw", images=60, size=max(size + size // 4, 32), seed=0)
        prepare_dataset(root / "raw", root / "data")
        # No val split, so `train` does exactly the steps the plain loop does (no final validation).
        (root / "data" / "splits" / "val.json").unlink()
        dataset = PreparedDataset(root / "data")
        config = from_mapping(
            TrainConfig,
            dict(architecture=architecture, image_size=size, batch_size=batch_size, iterations=iterations,
                 warmup_iters=0, grad_clip=None, eval_interval=0, checkpoint_interval=iterations, log_interval=50,
                 num_workers=0, augment=AugmentConfig(), tracking={"enabled": False}),
        )
        train_s, plain_s = fastest(
            runs, lambda run: train(config, dataset.root, root / f"run{run}"), lambda run: plain_train(config, dataset)
        )
        images = iterations * batch_size
        where = f"{DEVICE.type}, {architecture}, {size}px, batch {batch_size}, {iterations} iterations"
        print(f"training ({where}):")
        print(f"  trashseg train  {images / train_s:8.1f} images/s")
        print(f"  plain loop      {images / plain_s:8.1f} images/s")
        print(f"  trashseg / plain: {plain_s / train_s:.3f}")

        checkpoint = root / "run0" / "last.pt"
        n = len(dataset.samples("train"))
        predict_s, plain_pred_s = fastest(
            runs,
            lambda run: predict(checkpoint, dataset.root, "train", root / f"pred{run}", batch_size=batch_size),
            lambda run: plain_predict(checkpoint, dataset, "train", root / f"plain{run}", batch_size),
        )
        print(f"prediction ({n} images, batch {batch_size}, writing uint8 probabilities and label PNGs):")
        print(f"  trashseg predict {n / predict_s:8.1f} images/s")
        print(f"  plain loop       {n / plain_pred_s:8.1f} images/s")
        print(f"  trashseg / plain: {plain_pred_s / predict_s:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--architecture", default="segformer-b0-tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    main(args.iterations, args.architecture, args.size, args.batch_size, args.runs)
