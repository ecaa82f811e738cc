"""Training and inference throughput of every architecture.

Prints, per architecture, images/s and peak memory of forward+backward (AdamW step
included, fused on CUDA as in training), the model FLOPs utilisation (MFU: counted FLOPs per
image x 3 x images/s over the card's dense bf16 peak, `trashseg.models.complexity`; "n/a" on
a CPU or a card missing from that table), then inference images/s with and without AMP and
TTA (flip x 3 scales). On a GPU it runs the full-size models at 512x512 in bf16; on CPU the
`-tiny` variants (default 128x128 to keep it short; `--size 512` for the stated size).
Figures are medians of per-step times; on a shared CPU, OMP_NUM_THREADS=1 gives steadier
numbers. `benchmarks/gpu_check.py` runs these measurements for the GPU table.

    python benchmarks/train_throughput.py [--size N] [--batch-size B] [--steps S] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trashseg.models import ARCHITECTURES, build_model  # noqa: E402
from trashseg.models.complexity import model_gflops, peak_bf16_tflops, training_mfu  # noqa: E402
from trashseg.predict import predict_probabilities  # noqa: E402
from trashseg.train_loop import LossModule  # noqa: E402

NUM_CLASSES = 11
TTA_SCALES = (0.75, 1.0, 1.25)


class PeakMemory:
    """Peak memory above the start: CUDA max allocated, or sampled RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.peak = _rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.mib = (self.peak - self.base) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_train_step(model, device, size, batch_size, amp_dtype, *, channels_last=False, compile=False):
    """One optimizer step on a random batch as trashseg's training runs it on `device`: AdamW
    (fused on CUDA), autocast to `amp_dtype`; `channels_last` / `compile` as TrainConfig's
    options apply them (weights and images channels-last; the loss module compiled). Returns
    a function running the step and returning the loss (detached, on the device)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    images = torch.randn(batch_size, 3, size, size, device=device)
    masks = torch.randint(0, NUM_CLASSES, (batch_size, size, size), device=device)
    masks[:, : size // 8] = 255  # some ignored pixels, as after padded crops
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    loss_module = LossModule(model)
    # On CPU (gpu_check's dry run) only dynamo's graph capture: inductor's C++ build would dominate.
    backend = {} if device.type == "cuda" else {"backend": "eager"}
    forward = torch.compile(loss_module, **backend) if compile else loss_module

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = forward(images, masks)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    model.train()
    return step


def train_throughput(model, device, size, batch_size, steps, amp_dtype, *, warmup=1, **options) -> tuple[float, float, float]:
    """(images/s, peak MiB, last loss) of `steps` timed training steps after `warmup` untimed ones."""
    step = make_train_step(model, device, size, batch_size, amp_dtype, **options)
    losses = []
    for _ in range(warmup):  # allocator, kernels, lazy init (and compilation)
        step()
    with PeakMemory(device) as memory:
        seconds = _timed(lambda: losses.append(step()), steps, device)
    return batch_size / seconds, memory.mib, float(losses[-1])


def inference_throughput(model, device, size, batch_size, steps, amp_dtype, tta: bool) -> float:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch_size)]
    kwargs = dict(image_size=size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), device=device,
                  amp_dtype=amp_dtype, flip=tta, scales=TTA_SCALES if tta else (1.0,))
    model.eval()
    predict_probabilities(model, images, **kwargs)
    return batch_size / _timed(lambda: predict_probabilities(model, images, **kwargs), steps, device)


def _timed(fn, steps: int, device: torch.device) -> float:
    """Median seconds of one call: robust to the odd step slowed by other load on shared machines."""
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512 if gpu else 128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5 if gpu else 3)
    parser.add_argument("--only", nargs="*", help="architecture names (default: all; tiny variants on CPU)")
    args = parser.parse_args()

    device = torch.device("cuda" if gpu else "cpu")
    names = args.only or [name for name, spec in ARCHITECTURES.items() if spec.tiny != gpu]
    amp = torch.bfloat16 if gpu else None
    card = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    peak_tflops = peak_bf16_tflops(card) if gpu else None
    print(f"device: {card}; {args.size}x{args.size}, batch {args.batch_size}, {args.steps} timed steps, "
          f"train AMP {'bf16' if amp else 'off'}; TTA = flip x scales {TTA_SCALES}; "
          f"MFU against {f'{peak_tflops:.1f} TFLOP/s dense bf16' if peak_tflops else 'no known peak (n/a)'}")
    header = (f"{'architecture':<28} {'params':>8} {'train img/s':>11} {'peak MiB':>9} {'MFU':>6} "
              f"{'infer img/s':>11} {'+bf16':>8} {'+TTA':>8} {'bf16+TTA':>9}")
    print(header)
    print("-" * len(header))
    for name in names:
        torch.manual_seed(0)
        model = build_model(name, NUM_CLASSES).to(device)
        params = model.parameter_count() / 1e6
        train_rate, peak, _ = train_throughput(model, device, args.size, args.batch_size, args.steps, amp)
        # Counted only where a peak is known: on CPU the count could take longer than the run.
        mfu = training_mfu(model_gflops(model, args.size), train_rate, peak_tflops) if peak_tflops else "n/a"
        model.set_training_progress(1, 1)  # infer as a trained model does (EoMT: masks annealed away)
        rates = [
            inference_throughput(model, device, args.size, args.batch_size, args.steps, dtype, tta)
            for dtype, tta in ((None, False), (torch.bfloat16, False), (None, True), (torch.bfloat16, True))
        ]
        mfu_text = f"{mfu:.1%}" if isinstance(mfu, float) else mfu
        print(f"{name:<28} {params:>7.1f}M {train_rate:>11.2f} {peak:>9.0f} {mfu_text:>6} "
              + " ".join(f"{rate:>{w}.2f}" for rate, w in zip(rates, (11, 8, 8, 9), strict=True)), flush=True)
        del model
        if gpu:
            torch.cuda.empty_cache()

if __name__ == "__main__":
    main()
