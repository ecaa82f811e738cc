"""The optimizer steps of a training run: forward/backward under DDP, logging, validation, checkpoints."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from trashseg.augment import normalise_batch, sample_seed
from trashseg.checkpoints import CHECKPOINT_FORMAT, rng_state, save_checkpoint
from trashseg.config import to_dict
from trashseg.data.classes import ClassTable
from trashseg.data.io import read_pair
from trashseg.data.layout import Sample
from trashseg.device import Distributed, autocast, memory_mib
from trashseg.metrics import ConfusionMatrix, SegmentationScores
from trashseg.predict import predict_probabilities
from trashseg.progress import Progress
from trashseg.train_data import MODEL_RANDOMNESS

log = logging.getLogger(__name__)


def validate(model, samples: list[Sample], classes: ClassTable, *, image_size, mean, std, batch_size, device, amp_dtype) -> SegmentationScores:
    """mIoU of `model` on `samples` at the training resolution, scored at each mask's own size."""
    matrix = ConfusionMatrix(classes.num_classes, classes.names)
    for start in range(0, len(samples), batch_size):
        pairs = [read_pair(s, classes.num_classes) for s in samples[start : start + batch_size]]
        probabilities = predict_probabilities(
            model, [image for image, _ in pairs], image_size=image_size, mean=mean, std=std, device=device, amp_dtype=amp_dtype
        )
        for probs, (_, mask) in zip(probabilities, pairs, strict=True):
            matrix.update(probs.argmax(0).numpy(), mask)
    return matrix.compute()


# Called with (checkpoint path, iteration) after each checkpoint write, on rank 0.
CheckpointCallback = Callable[[Path, int], None]


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (pod deletion, preemption) ends training as SystemExit(143), so the MLflow run
    is marked KILLED and a checkpoint being written leaves no partial."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_on_sigterm(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StepLoop:
    """The optimizer steps from `state.iteration` to `end`, with logging, validation and checkpoints."""

    def __init__(self, config, data, state, device, dist, paths, tracked, on_checkpoint) -> None:
        self.config, self.data, self.state = config, data, state
        self.device, self.dist, self.paths = device, dist, paths
        self.tracked, self.on_checkpoint = tracked, on_checkpoint
        self.train_module = _wrap_for_training(state.model, device, dist)
        self.forward, self.channels_last = self.train_module, device.type == "cuda" and config.channels_last
        if self.channels_last:
            state.model.to(memory_format=torch.channels_last)
        if device.type == "cuda" and config.compile:
            self.forward = torch.compile(self.train_module)
        elif config.channels_last or config.compile:
            log.info("channels_last/compile apply on CUDA only; training on %s without them", device.type)
        self.mean, self.std = list(config.augment.mean), list(config.augment.std)
        self.global_batch = config.batch_size * config.grad_accum * dist.world

    def run(self, loader, end: int) -> None:
        config, start = self.config, self.state.iteration
        progress = Progress(end - start, f"train {config.architecture}", unit="it", interval_s=0.0)
        self.state.model.train()
        batches = iter(loader)
        window = _LossWindow(self.device)
        for iteration in range(start, end):
            window.add(self.step(batches, iteration))
            done = iteration + 1
            log_now = done % config.log_interval == 0 or done == end
            run_eval = self.data.val_samples and ((config.eval_interval and done % config.eval_interval == 0) or done == config.iterations)
            if log_now or run_eval or done % config.checkpoint_interval == 0:
                window.check_finite(done, config)  # before anything is validated or checkpointed
            if log_now:
                if self.dist.is_main:
                    self.log(window, done, progress)
                window = _LossWindow(self.device)
            if run_eval:
                if self.dist.is_main:
                    self.validate_and_keep_best(done)
                self.dist.barrier()
            if done % config.checkpoint_interval == 0 or done == end:
                self.write_last(done)

    def step(self, batches, iteration: int) -> torch.Tensor:
        """One optimizer step over `grad_accum` micro-batches; returns the mean loss, on the device
        (no host sync here: `_LossWindow` reads it at log, eval and checkpoint steps)."""
        config, state = self.config, self.state
        state.model.set_training_progress(iteration, config.iterations)  # e.g. EoMT's mask annealing
        step_loss = torch.zeros((), device=self.device)
        for micro in range(config.grad_accum):
            images, masks = next(batches)
            # Batches travel as uint8 (see TrainTransform): normalised and widened on the device.
            images = normalise_batch(images.to(self.device, non_blocking=True), self.mean, self.std)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            masks = masks.to(self.device, non_blocking=True).long()
            # Model-side randomness (dropout, drop path, point sampling) seeded by the micro-batch's
            # place in the run, as its samples are: N processes draw what 1 process with N x
            # grad_accum micro-batches draws, and a resumed run what an uninterrupted one does.
            micro_batch = (iteration * config.grad_accum + micro) * self.dist.world + self.dist.rank
            torch.manual_seed(sample_seed(config.seed, MODEL_RANDOMNESS, micro_batch))
            sync = micro == config.grad_accum - 1 or self.dist.world == 1
            with self.train_module.no_sync() if not sync else contextlib.nullcontext():
                with autocast(self.device, state.amp_dtype):
                    loss = self.forward(images, masks)
                state.scaler.scale(loss / config.grad_accum).backward()
            step_loss += loss.detach() / config.grad_accum
        if config.grad_clip is not None:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        return step_loss

    def log(self, window: _LossWindow, done: int, progress: Progress) -> None:
        images_per_s = window.steps * self.global_batch / window.elapsed()
        lr = self.state.scheduler.get_last_lr()[0]
        mem = memory_mib(self.device)
        progress.update(
            window.steps, iteration=f"{done}/{self.config.iterations}", loss=window.mean(),
            lr=lr, img_s=images_per_s, mem_mib=round(mem),
        )
        if self.tracked:
            metrics = {"train/loss": window.mean(), "train/lr": lr, "train/images_per_s": images_per_s, "train/memory_mib": mem}
            self.tracked.log_metrics(metrics, step=done)

    def validate_and_keep_best(self, done: int) -> None:
        """Rank 0: score the val split; a new best mIoU writes best.pt."""
        model, state = self.state.model, self.state
        model.eval()
        with torch.no_grad():
            scores = validate(
                model, self.data.val_samples, self.data.classes, image_size=self.config.image_size, mean=self.mean,
                std=self.std, batch_size=self.config.batch_size, device=self.device, amp_dtype=state.amp_dtype,
            )
        model.train()
        log.info("validation at iteration %d: mIoU %.4f, pixel accuracy %.4f", done, scores.miou, scores.pixel_accuracy)
        if self.tracked:
            metrics = {"val/miou": scores.miou, "val/pixel_accuracy": scores.pixel_accuracy}
            metrics.update({f"val/iou/{name}": v for name, v in scores.iou.items() if not math.isnan(v)})
            self.tracked.log_metrics(metrics, step=done)
        if not math.isnan(scores.miou) and (state.best_miou is None or scores.miou > state.best_miou):
            state.best_miou, state.best_iteration = scores.miou, done
            self.save(self.paths.best, self.checkpoint(done, rng_states=None), done)

    def write_last(self, done: int) -> None:
        """All ranks: gather RNG states; rank 0 writes last.pt."""
        rng_states = self.dist.all_gather(rng_state())
        if self.dist.is_main:
            self.save(self.paths.last, self.checkpoint(done, rng_states=rng_states), done)
        self.dist.barrier()

    def save(self, path: Path, checkpoint: dict[str, Any], done: int) -> None:
        save_checkpoint(path, checkpoint)
        if self.tracked:  # what a kill after this point loses is only what the checkpoint loses
            self.tracked.flush()
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, done)

    def checkpoint(self, iteration: int, rng_states: list | None) -> dict[str, Any]:
        """best.pt content (weights + meta); with `rng_states`, the full last.pt state."""
        config, state, classes = self.config, self.state, self.data.classes
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "architecture": config.architecture,
            "num_classes": classes.num_classes,
            "image_size": config.image_size,
            "normalisation": {"mean": self.mean, "std": self.std},
            "classes": classes.to_json(),
            "config": to_dict(config),
            "iteration": iteration,
            "world_size": self.dist.world,
            "best_miou": state.best_miou,
            "best_iteration": state.best_iteration,
            "mlflow_run_id": state.run_id,
            "model": state.model.state_dict(),
        }
        if rng_states is not None:
            checkpoint.update(
                optimizer=state.optimizer.state_dict(),
                scheduler=state.scheduler.state_dict(),
                scaler=state.scaler.state_dict(),
                rng=rng_states[0],
                rng_per_rank=rng_states,
            )
        return checkpoint


class _LossWindow:
    """Loss (summed on the device) and wall time since the last log line."""

    def __init__(self, device) -> None:
        self.start, self.total, self.steps = time.monotonic(), torch.zeros((), device=device), 0

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss
        self.steps += 1

    def check_finite(self, done: int, config) -> None:
        """Fail on a non-finite loss in the window (one such step poisons the sum): one host sync."""
        if not torch.isfinite(self.total):
            raise FloatingPointError(
                f"loss is {self.total.item()} in iterations {done - self.steps + 1}..{done}; "
                f"lower lr ({config.lr}) or set amp=off"
            )

    def mean(self) -> float:
        return self.total.item() / self.steps

    def elapsed(self) -> float:
        return max(time.monotonic() - self.start, 1e-9)


def _wrap_for_training(model, device, dist: Distributed) -> torch.nn.Module:
    """The module the step calls: the model's loss, under DDP when the job has several processes."""
    train_module = LossModule(model)
    if dist.world == 1:
        return train_module
    from torch.nn.parallel import DistributedDataParallel

    from trashseg.models import has_unused_parameters

    if device.type == "cuda":
        train_module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(train_module)
    return DistributedDataParallel(
        train_module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=has_unused_parameters(model.architecture),
    )


class LossModule(torch.nn.Module):
    """Routes `forward` to the model's loss so DDP's gradient hooks see the training step (and
    `torch.compile` compiles the step's forward; the throughput benchmarks time the same module)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, masks):
        return self.model.loss(images, masks)
