"""The training engine: one entry point for single-process and `torchrun` (DDP) training.

`train` runs the phases, each in its own module: the sample streams and loader
(`train_data`), the model, optimizer and their restore or continuation (`train_state`),
the MLflow run (`train_tracking`) and the optimizer steps (`train_loop`).

Data order and augmentation are functions of (seed, sample position) only — see
`train_data.KeySampler` and `trashseg.augment` — so a run resumed from `last.pt` reaches
bitwise the same weights on CPU as an uninterrupted one: nothing in the data pipeline
carries state across iterations, and the checkpoint restores the global RNGs that model
code (dropout, Mask2Former's point sampling) draws from.

Output folder:
    OUT/config.json   the resolved TrainConfig
    OUT/classes.json  the class table
    OUT/last.pt       full training state (model, optimizer, scheduler, scaler, RNGs, iteration)
    OUT/best.pt       model weights + meta at the best validation mIoU
    OUT/mlflow.db     the MLflow store, when no tracking URI is configured
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trashseg.augment import AugmentConfig
from trashseg.device import AmpMode, Distributed, init_distributed, local_device
from trashseg.errors import ConfigError
from trashseg.fileio import remove_partials
from trashseg.tracking import TrackingConfig
from trashseg.train_data import build_data_streams, build_loader
from trashseg.train_loop import CheckpointCallback, StepLoop, sigterm_as_exit
from trashseg.train_state import (
    OutputPaths,
    build_model_and_optimizer,
    continue_schedule,
    continue_source,
    restore_state,
    resume_checkpoint,
    start_tags,
)
from trashseg.train_tracking import finish_tracking, pseudo_lineage_tags, start_tracking

log = logging.getLogger(__name__)

# AdamW's step is about lr per weight: beyond 1 every weight is replaced by noise.
MAX_LR = 1.0


@dataclass(frozen=True)
class TrainConfig:
    architecture: str = "segformer-b0"
    # Start: None = the architecture's default (`trashseg architectures`; full sizes start from a
    # hub checkpoint, tiny twins from random init); "none" = random init; else a hub id, a
    # transformers folder, or a trashseg best.pt / training folder of the same architecture.
    pretrained: str | None = None
    # A finished run's output folder (or last.pt) continued to a longer schedule: its weights
    # and optimizer state at its last iteration, trained on to `iterations` in a NEW output
    # folder and MLflow run. Not a resume: see `trashseg train --continue-from`.
    continue_from: str | None = None
    image_size: int = 512
    batch_size: int = 8  # per process and micro-batch; global batch = batch_size * grad_accum * world size
    iterations: int = 80_000  # optimizer steps
    lr: float | None = None  # None = the architecture's default (`trashseg architectures`)
    weight_decay: float | None = None  # None = the architecture's default; not applied to biases and norm weights
    warmup_iters: int = 1500
    poly_power: float = 1.0
    grad_accum: int = 1
    amp: AmpMode = "auto"  # auto: bf16 on CUDA, off on CPU
    grad_clip: float | None = 1.0  # max global grad norm; null = no clipping
    seed: int = 0
    checkpoint_interval: int = 1000
    eval_interval: int = 1000  # 0 = no periodic validation (final validation still runs if a val split exists)
    log_interval: int = 50
    num_workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    copy_paste_classes: tuple[str | int, ...] = ()  # class names or ids, e.g. [Battery, Clothing]
    class_balanced_sampling: bool = False
    pseudo_ratio: float = 0.0  # fraction of each batch drawn from the pseudo-label dataset
    deterministic: bool = False
    # Opt-in GPU speed-ups, applied on CUDA only (on CPU they are skipped: no gain measured
    # there, and compiling would dominate short runs). Numerics may differ in the last bits.
    channels_last: bool = False
    compile: bool = False  # torch.compile the training step's forward
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        from trashseg.config import check_range

        # Every count has a ceiling: 10^7 iterations is 50x the recipe's longest schedule;
        # image_size 4096 and batch_size 1024 are far beyond what one GPU holds at once.
        max_steps = 10**7
        limits = {
            "image_size": (32, 4096), "batch_size": (1, 1024), "iterations": (1, max_steps), "grad_accum": (1, 1024),
            "checkpoint_interval": (1, max_steps), "log_interval": (1, max_steps), "warmup_iters": (0, max_steps),
            "eval_interval": (0, max_steps), "num_workers": (0, 256), "seed": (0, 2**32 - 1),
        }
        for name, (low, high) in limits.items():
            check_range(name, getattr(self, name), low, high)
        from trashseg.models import ARCHITECTURES

        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"architecture={self.architecture!r} is unknown; valid names: {', '.join(ARCHITECTURES)} "
                "(`trashseg architectures` lists them with parameter counts)"
            )
        self._fill_architecture_defaults(ARCHITECTURES[self.architecture])
        # Written as `not (in range)` so NaN, which fails every comparison, is refused too.
        if not 0 < self.lr <= MAX_LR:
            raise ConfigError(f"lr={self.lr}: expected a learning rate in (0, {MAX_LR:g}], e.g. 1e-4")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight_decay={self.weight_decay}: expected a finite value >= 0, e.g. 0.01")
        if not 0 < self.poly_power < math.inf:
            raise ConfigError(f"poly_power={self.poly_power}: expected a finite value > 0 (1.0 = linear decay)")
        if self.warmup_iters >= self.iterations:
            raise ConfigError(
                f"warmup_iters={self.warmup_iters} must be below iterations={self.iterations}; lower warmup_iters"
            )
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ConfigError(f"grad_clip={self.grad_clip}: expected a positive max norm, or null for no clipping")
        if not 0.0 <= self.pseudo_ratio < 1.0:
            raise ConfigError(f"pseudo_ratio={self.pseudo_ratio}: expected a fraction in [0, 1)")
        if self.pseudo_ratio > 0 and round(self.batch_size * self.pseudo_ratio) < 1:
            raise ConfigError(
                f"pseudo_ratio={self.pseudo_ratio} with batch_size={self.batch_size} puts no pseudo-labelled "
                "image in a batch; raise pseudo_ratio or batch_size"
            )

    def _fill_architecture_defaults(self, spec) -> None:
        """Unset start and optimiser settings take the architecture's defaults; the saved config
        holds the values used, so a resumed or reloaded config means the same run."""
        from trashseg.weights import NO_PRETRAINED

        if self.pretrained is None:
            object.__setattr__(self, "pretrained", spec.default_pretrained or NO_PRETRAINED)
        if self.lr is None:
            object.__setattr__(self, "lr", spec.training.lr)
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", spec.training.weight_decay)


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None  # None when no validation ran
    best_miou: float | None
    best_iteration: int | None
    iterations: int  # completed optimizer steps
    mlflow_run_id: str | None


def train(
    config: TrainConfig,
    dataset_dir: str | Path,
    output_dir: str | Path,
    *,
    pseudo_dataset: str | Path | None = None,
    resume: bool = False,
    tags: Mapping[str, str] | None = None,
    stop_after: int | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    weights_store: str | None = None,
) -> TrainResult:
    """Train `config.architecture` on the dataset's train split; validate on its val split.

    `stop_after` ends the run after that many optimizer steps (a time-boxed or preempted
    run) while keeping the schedule of `config.iterations`; `resume=True` continues it.
    `pseudo_dataset` is a prepared dataset of pseudo-labelled images (its `train` split,
    255 = ignore); `config.pseudo_ratio` of every batch is drawn from it, and the MLflow run
    is tagged with its lineage (`pseudo_labels.lineage_tags`).
    `on_checkpoint(path, iteration)` runs on rank 0 after each checkpoint (last.pt or
    best.pt) is written, e.g. to mirror the output folder to an object store.
    `weights_store`: a store holding mirrored pretrained checkpoints (`trashseg weights
    mirror`); a hub id in `config.pretrained` is then read from there, with no network.
    """
    output_dir = Path(output_dir)
    device = local_device()
    dist = init_distributed(device.type)
    if stop_after is not None and not 0 < stop_after <= config.iterations:
        raise ConfigError(f"stop_after={stop_after}: expected 1..iterations ({config.iterations})")
    end = stop_after or config.iterations

    paths = OutputPaths(output_dir)
    mode_tags = start_tags(config)
    if config.continue_from:
        continue_source(config, output_dir)  # refused before anything else looks like a resume
    saved = resume_checkpoint(paths, config, dist) if resume else None
    if saved is not None and saved["iteration"] >= end:
        dist.shutdown()
        return _already_trained(paths, saved, config, end, dist)
    if not resume and paths.last.exists():
        raise ConfigError(
            f"{output_dir} already holds a checkpoint ({paths.last}); pass --resume to continue it "
            "or choose a new output folder (nothing is overwritten)"
        )
    if dist.is_main:
        for stale in (*remove_partials(paths.last), *remove_partials(paths.best)):
            log.info("removed %s, a checkpoint write a killed process left unfinished", stale)

    data = build_data_streams(config, dataset_dir, pseudo_dataset)
    state = build_model_and_optimizer(config, data.classes, device, dist, weights_store)
    if saved is not None:
        restore_state(state, saved, paths.last, dist)
    elif config.continue_from:
        mode_tags.update(continue_schedule(state, config, data.classes, output_dir, end))
    loader = build_loader(config, data, state.iteration, end, device, dist)
    if pseudo_dataset is not None:
        tags = {**pseudo_lineage_tags(pseudo_dataset), **(tags or {})}
    tracked = start_tracking(config, data, state, output_dir, {**mode_tags, **(tags or {})}) if dist.is_main else None

    loop = StepLoop(config, data, state, device, dist, paths, tracked, on_checkpoint)
    try:
        with sigterm_as_exit():
            loop.run(loader, end)
        if tracked:
            finish_tracking(tracked, "FINISHED" if end == config.iterations else "KILLED", state, paths, end)
    except BaseException as error:
        if tracked:  # the run is marked FAILED or KILLED; `error`, the first one, is what is reported
            tracked.end_after_error(error)
        raise
    finally:
        dist.shutdown()

    return TrainResult(
        output_dir=output_dir,
        last_checkpoint=paths.last,
        best_checkpoint=paths.best if paths.best.exists() else None,
        best_miou=state.best_miou,
        best_iteration=state.best_iteration,
        iterations=end,
        mlflow_run_id=state.run_id,
    )


def _already_trained(paths: OutputPaths, saved: dict[str, Any], config: TrainConfig, end: int, dist: Distributed) -> TrainResult:
    """`--resume` of a run already at (or past) `end`: nothing to do, which is a success."""
    if dist.is_main:
        log.info(
            "%s is already trained to iteration %d (of %d; asked for %d): nothing to do",
            paths.last, saved["iteration"], config.iterations, end,
        )
    return TrainResult(
        output_dir=paths.root,
        last_checkpoint=paths.last,
        best_checkpoint=paths.best if paths.best.exists() else None,
        best_miou=saved["best_miou"],
        best_iteration=saved["best_iteration"],
        iterations=saved["iteration"],
        mlflow_run_id=saved.get("mlflow_run_id"),
    )
