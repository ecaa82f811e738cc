"""The training engine: one entry point for single-process and `torchrun` (DDP) training.

Data order and augmentation are functions of (seed, sample position) only — see
`_KeySampler` and `trashseg.augment` — so a run resumed from `last.pt` reaches bitwise
the same weights on CPU as an uninterrupted one: nothing in the data pipeline carries
state across iterations, and the checkpoint restores the global RNGs that model code
(dropout, Mask2Former's point sampling) draws from.

Output folder:
    OUT/config.json   the resolved TrainConfig
    OUT/classes.json  the class table
    OUT/last.pt       full training state (model, optimizer, scheduler, scaler, RNGs, iteration)
    OUT/best.pt       model weights + meta at the best validation mIoU
    OUT/mlflow.db     the MLflow store, when no tracking URI is configured
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trashseg.augment import AugmentConfig, TrainTransform, copy_paste, normalise_batch, sample_seed
from trashseg.checkpoints import (
    BEST_CHECKPOINT,
    CHECKPOINT_FORMAT,
    LAST_CHECKPOINT,
    check_resumable,
    load_checkpoint_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from trashseg.config import save_config, to_dict
from trashseg.data.classes import ClassTable
from trashseg.data.io import read_mask, read_pair
from trashseg.data.layout import PreparedDataset, Sample
from trashseg.device import (
    AmpMode,
    Distributed,
    autocast,
    init_distributed,
    local_device,
    memory_mib,
    resolve_amp_dtype,
)
from trashseg.errors import ConfigError, DataError
from trashseg.fileio import partial_name, remove_partials
from trashseg.metrics import ConfusionMatrix, SegmentationScores
from trashseg.predict import predict_probabilities
from trashseg.progress import Progress
from trashseg.tracking import TrackingConfig

log = logging.getLogger(__name__)

LABELLED_STREAM, PSEUDO_STREAM = 0, 1
MODEL_RANDOMNESS = 2  # seed stream of model-side randomness, per micro-batch
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


# ---------------------------------------------------------------------------- data


@dataclass
class _Stream:
    samples: list[Sample]
    per_batch: int
    weights: np.ndarray | None  # class-balanced sampling weights, else uniform permutations


class _KeySampler:
    """Yields, per micro-batch, the keys `(stream, sample index, position)` this rank loads.

    A sample's position counts every sample drawn from its stream over the whole run and
    all ranks; the stream's order for an epoch comes from (seed, stream, epoch).
    """

    def __init__(self, streams, seed, start, end, grad_accum, rank, world) -> None:
        self.streams, self.seed = streams, seed
        self.start, self.end, self.grad_accum = start, end, grad_accum
        self.rank, self.world = rank, world
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def order(self, stream: int, epoch: int) -> np.ndarray:
        key = (stream, epoch)
        if key not in self._orders:
            if len(self._orders) > 8:
                self._orders.clear()
            spec = self.streams[stream]
            rng = np.random.default_rng([self.seed, stream, epoch, 0x5EED])
            n = len(spec.samples)
            if spec.weights is None:
                self._orders[key] = rng.permutation(n)
            else:
                self._orders[key] = rng.choice(n, size=n, replace=True, p=spec.weights)
        return self._orders[key]

    def keys(self, iteration: int, micro: int) -> list[tuple[int, int, int]]:
        keys = []
        for stream, spec in enumerate(self.streams):
            first = ((iteration * self.grad_accum + micro) * self.world + self.rank) * spec.per_batch
            for position in range(first, first + spec.per_batch):
                epoch, offset = divmod(position, len(spec.samples))
                keys.append((stream, int(self.order(stream, epoch)[offset]), position))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for iteration in range(self.start, self.end):
            for micro in range(self.grad_accum):
                yield self.keys(iteration, micro)

    def __len__(self) -> int:
        return (self.end - self.start) * self.grad_accum


class _TrainSamples:
    """Map-style dataset indexed by sampler keys: loads, copy-pastes and augments one sample."""

    def __init__(self, streams, num_classes, transform, seed, copy_paste_ids, donors, copy_paste_p) -> None:
        self.streams, self.num_classes, self.transform, self.seed = streams, num_classes, transform, seed
        self.copy_paste_ids, self.donors, self.copy_paste_p = copy_paste_ids, donors, copy_paste_p

    def __getitem__(self, key: tuple[int, int, int]):
        stream, index, position = key
        image, mask = read_pair(self.streams[stream].samples[index], self.num_classes)
        seed = sample_seed(self.seed, stream, position)
        rng = np.random.default_rng(seed)
        if self.donors and rng.random() < self.copy_paste_p:
            donor = self.donors[int(rng.integers(len(self.donors)))]
            donor_image, donor_mask = read_pair(donor, self.num_classes)
            image, mask = copy_paste(image, mask, donor_image, donor_mask, self.copy_paste_ids, rng)
        image, mask = self.transform(image, mask, seed)
        return torch.from_numpy(image), torch.from_numpy(mask)


def _classes_present(samples: list[Sample], num_classes: int) -> list[np.ndarray]:
    present = []
    for sample in samples:
        counts = np.bincount(read_mask(sample.mask, num_classes).ravel(), minlength=256)[:num_classes]
        present.append(np.flatnonzero(counts))
    return present


def class_balanced_weights(present: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Image sampling probabilities from repeat factors: each image weighs 1/sqrt of the
    image frequency of its rarest foreground class, so images with rare classes come more often."""
    frequency = np.zeros(num_classes)
    for classes in present:
        frequency[classes] += 1
    frequency /= max(len(present), 1)
    weights = np.ones(len(present))
    for i, classes in enumerate(present):
        foreground = classes[classes != 0]
        if foreground.size:
            weights[i] = max(1.0, float(np.max(1.0 / np.sqrt(frequency[foreground]))))
    return weights / weights.sum()


def resolve_class_ids(values: tuple[str | int, ...], classes: ClassTable) -> tuple[int, ...]:
    ids = []
    for value in values:
        if isinstance(value, int) and 0 < value < classes.num_classes:
            ids.append(value)
        elif isinstance(value, str) and value in classes.names[1:]:
            ids.append(classes.names.index(value))
        else:
            valid = ", ".join(f"{i}={n}" for i, n in enumerate(classes.names) if i)
            raise ConfigError(f"copy_paste_classes: {value!r} is not a foreground class of this dataset; valid: {valid}")
    return tuple(sorted(set(ids)))


def _poly_schedule(config: TrainConfig):
    warmup, total, power = config.warmup_iters, config.iterations, config.poly_power

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / (total - warmup)) ** power

    return factor


def _param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------ training


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

    paths = _OutputPaths(output_dir)
    start_tags = _start_tags(config)
    if config.continue_from:
        _continue_source(config, output_dir)  # refused before anything else looks like a resume
    saved = _resume_checkpoint(paths, config, dist) if resume else None
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

    data = _build_data_streams(config, dataset_dir, pseudo_dataset)
    state = _build_model_and_optimizer(config, data.classes, device, dist, weights_store)
    if saved is not None:
        _restore_state(state, saved, paths.last, dist)
    elif config.continue_from:
        start_tags.update(_continue_schedule(state, config, data.classes, output_dir, end))
    loader = _build_loader(config, data, state.iteration, end, device, dist)
    if pseudo_dataset is not None:
        tags = {**_pseudo_lineage_tags(pseudo_dataset), **(tags or {})}
    tracked = _start_tracking(config, data, state, output_dir, {**start_tags, **(tags or {})}) if dist.is_main else None

    loop = _StepLoop(config, data, state, device, dist, paths, tracked, on_checkpoint)
    try:
        with _sigterm_as_exit():
            loop.run(loader, end)
        if tracked:
            _finish_tracking(tracked, "FINISHED" if end == config.iterations else "KILLED", state, paths, end)
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


# Called with (checkpoint path, iteration) after each checkpoint write, on rank 0.
CheckpointCallback = Callable[[Path, int], None]


@dataclass(frozen=True)
class _OutputPaths:
    root: Path

    @property
    def last(self) -> Path:
        return self.root / LAST_CHECKPOINT

    @property
    def best(self) -> Path:
        return self.root / BEST_CHECKPOINT


@dataclass
class _DataStreams:
    """What the run reads: the labelled (and optional pseudo-label) training streams and the val split."""

    dataset: PreparedDataset
    classes: ClassTable
    streams: list[_Stream]
    val_samples: list[Sample]
    copy_paste_ids: tuple[int, ...]
    donors: list[Sample]  # training images holding a copy-paste class


def _build_data_streams(config: TrainConfig, dataset_dir, pseudo_dataset) -> _DataStreams:
    dataset = PreparedDataset(dataset_dir)
    classes = dataset.classes()
    train_samples = dataset.samples("train")
    if not train_samples:
        raise DataError(f"{dataset.split_file('train')} lists no images; training needs a non-empty train split")
    val_samples = dataset.samples("val") if "val" in dataset.splits() else []
    if config.eval_interval and not val_samples:
        raise DataError(f"{dataset.root} has no (or an empty) val split; add one or set eval_interval=0")
    if (pseudo_dataset is None) != (config.pseudo_ratio == 0):
        raise ConfigError(
            f"pseudo_ratio={config.pseudo_ratio} with pseudo_dataset={pseudo_dataset}: give both "
            "(a pseudo-label dataset and a ratio > 0) or neither"
        )
    n_pseudo = round(config.batch_size * config.pseudo_ratio) if pseudo_dataset is not None else 0
    present = None
    if config.class_balanced_sampling or config.copy_paste_classes:
        present = _classes_present(train_samples, classes.num_classes)
    weights = class_balanced_weights(present, classes.num_classes) if config.class_balanced_sampling else None
    streams = [_Stream(train_samples, config.batch_size - n_pseudo, weights)]
    if pseudo_dataset is not None:
        streams.append(_Stream(_pseudo_samples(pseudo_dataset, classes), n_pseudo, None))
    copy_paste_ids = resolve_class_ids(config.copy_paste_classes, classes)
    donors = [s for s, p in zip(train_samples, present or [], strict=False) if np.isin(p, copy_paste_ids).any()]
    if copy_paste_ids and not donors:
        raise DataError(
            f"copy_paste_classes {list(config.copy_paste_classes)}: no training image contains them; nothing to paste"
        )
    return _DataStreams(dataset, classes, streams, val_samples, copy_paste_ids, donors)


def _pseudo_samples(pseudo_dataset, classes: ClassTable) -> list[Sample]:
    pseudo = PreparedDataset(pseudo_dataset)
    if pseudo.classes().names != classes.names:
        raise DataError(
            f"pseudo-label dataset {pseudo.root} has classes {list(pseudo.classes().names)}, "
            f"the training set {list(classes.names)}; build it from this dataset's models"
        )
    samples = pseudo.samples("train")
    if not samples:
        raise DataError(f"pseudo-label dataset {pseudo.root} has an empty train split")
    return samples


@dataclass
class _TrainState:
    """Everything a checkpoint holds and resume restores."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    iteration: int = 0
    best_miou: float | None = None
    best_iteration: int | None = None
    run_id: str | None = None
    pretrained_load: Any = None  # the start's PretrainedLoad, for tracking; not checkpointed


def _build_start(config: TrainConfig, classes: ClassTable, dist: Distributed, weights_store: str | None):
    """(model, PretrainedLoad or None): the architecture from its pretrained start or random init."""
    from trashseg.models import build_model, load_pretrained_model
    from trashseg.storage import open_store
    from trashseg.weights import resolve_pretrained

    if config.continue_from:  # its weights come from the finished run (_continue_schedule)
        return build_model(config.architecture, classes.num_classes), None
    store = open_store(weights_store) if weights_store else None
    cache = Path(tempfile.gettempdir()) / "trashseg-weights"
    source = resolve_pretrained(config.pretrained, store=store, cache_dir=cache)
    if source is None:
        if dist.is_main:
            log.info("%s trains from scratch (random init, pretrained=%s)", config.architecture, config.pretrained)
        return build_model(config.architecture, classes.num_classes), None
    # Named as configured (the hub id), not by the cache folder a mirrored copy was read from.
    return load_pretrained_model(config.architecture, classes.num_classes, source, label=config.pretrained)


def _build_model_and_optimizer(
    config: TrainConfig, classes: ClassTable, device, dist: Distributed, weights_store: str | None = None
) -> _TrainState:
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)  # same initial weights on every rank
    model, pretrained_load = _build_start(config, classes, dist, weights_store)
    model = model.to(device)
    # The fused kernel updates all parameters in one launch on CUDA (not on CPU: no gain there).
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _poly_schedule(config))
    amp_dtype = resolve_amp_dtype(config.amp, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # Per-rank stream for model-side randomness (dropout, point sampling).
    torch.manual_seed(config.seed + dist.rank)
    return _TrainState(model, optimizer, scheduler, scaler, amp_dtype, pretrained_load=pretrained_load)


def _pseudo_lineage_tags(pseudo_dataset: str | Path) -> dict[str, str]:
    """Which models, ensemble, tau and images made the pseudo-labels (`trashseg pseudo-label`
    records them); a pseudo-label folder made by other means trains, with a warning."""
    from trashseg.data.layout import PreparedDataset
    from trashseg.pseudo_labels import lineage_tags

    if not PreparedDataset(pseudo_dataset).lineage_file.is_file():
        log.warning("%s has no lineage.json (it was not made by `trashseg pseudo-label`): this run's MLflow "
                    "tags cannot say which models made its pseudo-labels", pseudo_dataset)
        return {"pseudo.dataset": str(Path(pseudo_dataset).resolve())}
    return lineage_tags(pseudo_dataset)


def _start_tags(config: TrainConfig) -> dict[str, str]:
    """How the run's weights started, as MLflow tags (a continuation adds its source in _continue_schedule)."""
    if config.continue_from:
        return {"train.mode": "continue", "train.continued_from": config.continue_from}
    from trashseg.models import is_trashseg_checkpoint

    if config.pretrained and is_trashseg_checkpoint(config.pretrained):
        return {"train.mode": "fine-tune", "train.init_checkpoint": config.pretrained}
    return {"train.mode": "new"}


def _continue_schedule(state: _TrainState, config: TrainConfig, classes: ClassTable, output_dir: Path, end: int) -> dict[str, str]:
    """Start a longer schedule from a finished run's last.pt: its weights and optimizer moments, the
    iteration count going on from where it ended, and the lr of the NEW schedule (`config.iterations`
    long) from there on. Returns the MLflow tags naming the source."""
    path = _continue_source(config, output_dir)
    saved = load_checkpoint_state(path, map_location=next(state.model.parameters()).device)
    if "optimizer" not in saved:
        raise ConfigError(f"continue_from: {path} has no optimizer state (a best.pt?); continue from the run's {LAST_CHECKPOINT}")
    done, planned = saved["iteration"], saved["config"]["iterations"]
    if done != planned:
        raise ConfigError(
            f"continue_from: {path} stopped at iteration {done} of its {planned}-iteration schedule; an unfinished "
            f"run is resumed, not continued: `trashseg train --resume --out {path.parent}`"
        )
    if saved["architecture"] != config.architecture or ClassTable.from_json(saved["classes"]).names != classes.names:
        raise ConfigError(
            f"continue_from: {path} trained {saved['architecture']!r} on classes {ClassTable.from_json(saved['classes']).names}; "
            f"this run is {config.architecture!r} on {classes.names}: continue with the same architecture and dataset classes"
        )
    if end <= done:
        raise ConfigError(f"iterations={config.iterations} (stop_after={end}): continuing {path} needs more than its {done}")
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    for group, decay in zip(state.optimizer.param_groups, (config.weight_decay, 0.0), strict=True):
        group["initial_lr"], group["weight_decay"] = config.lr, decay  # this run's settings, not the source's
    # As if stepped `done` times on the new schedule: the lr of iteration `done` of `config.iterations`.
    state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer, _poly_schedule(config), last_epoch=done - 1)
    state.scaler.load_state_dict(saved["scaler"])
    state.iteration = done
    log.info("continuing %s from iteration %d to a %d-iteration schedule (lr now %.3g)", path, done,
             config.iterations, state.scheduler.get_last_lr()[0])
    return {"train.continued_from.iteration": str(done), "train.continued_from.mlflow_run_id": saved.get("mlflow_run_id") or ""}


def _continue_source(config: TrainConfig, output_dir: Path) -> Path:
    """The last.pt a continued run starts from; never one in its own output folder."""
    source = Path(config.continue_from)
    path = source / LAST_CHECKPOINT if source.is_dir() else source
    if path.resolve().parent == output_dir.resolve():
        raise ConfigError(
            f"continue_from={config.continue_from!r} is this run's own output folder {output_dir}: a continued "
            "schedule is a new run, so write it to a new folder (--out); `--resume` alone continues an "
            "interrupted run in its folder"
        )
    return path


def _resume_checkpoint(paths: _OutputPaths, config: TrainConfig, dist: Distributed) -> dict[str, Any] | None:
    """`--resume`: last.pt's state (checked against `config`), or None to start fresh when
    there is none, so a retry loop that always passes --resume works from the first try."""
    if paths.last.is_file():
        saved = load_checkpoint_state(paths.last)
        planned = saved["config"].get("iterations")
        if saved["iteration"] == planned and config.iterations > planned:
            raise ConfigError(
                f"{paths.last} is a finished {planned}-iteration run and resuming never changes a schedule; to "
                f"train it on to {config.iterations} iterations start a continued run in a new folder: "
                f"`trashseg train --continue-from {paths.root} --continue-to {config.iterations} --out NEW_FOLDER`"
            )
        check_resumable(saved["config"], to_dict(config))
        return saved
    if dist.is_main:
        if any(paths.root.glob(partial_name(paths.last))) or (paths.root / "config.json").is_file():
            log.warning(
                "nothing to resume in %s: the earlier training there had not reached its first checkpoint "
                "(no %s was written); starting fresh from iteration 0", paths.root, LAST_CHECKPOINT,
            )
        else:
            log.info("nothing to resume in %s (no %s): starting a new training", paths.root, LAST_CHECKPOINT)
    return None


def _already_trained(paths: _OutputPaths, saved: dict[str, Any], config: TrainConfig, end: int, dist: Distributed) -> TrainResult:
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


def _restore_state(state: _TrainState, saved: dict[str, Any], last_path: Path, dist: Distributed) -> None:
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    per_rank = saved.get("rng_per_rank") or [saved["rng"]]
    if len(per_rank) != dist.world:
        log.warning(
            "%s was written by %d process(es), this run has %d: the global batch changes with the process "
            "count (batch_size x processes x grad_accum), so the result will not match an uninterrupted run",
            last_path, len(per_rank), dist.world,
        )
    set_rng_state(per_rank[dist.rank] if len(per_rank) == dist.world else per_rank[0])
    state.iteration, state.best_miou, state.best_iteration = saved["iteration"], saved["best_miou"], saved["best_iteration"]
    state.run_id = saved.get("mlflow_run_id")
    if dist.is_main:
        log.info("resuming from %s at iteration %d/%d", last_path, state.iteration, saved["config"]["iterations"])


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
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


def _build_loader(config: TrainConfig, data: _DataStreams, start: int, end: int, device, dist: Distributed):
    sampler = _KeySampler(data.streams, config.seed, start, end, config.grad_accum, dist.rank, dist.world)
    samples = _TrainSamples(
        data.streams, data.classes.num_classes, TrainTransform(config.augment, config.image_size), config.seed,
        data.copy_paste_ids, data.donors, config.augment.copy_paste,
    )
    # A private generator: the loader must not draw from the global RNG that resume restores.
    # Workers live for the whole (single-pass) loader and keep 4 batches each in flight.
    return torch.utils.data.DataLoader(
        samples, batch_sampler=sampler, num_workers=config.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator(), persistent_workers=config.num_workers > 0,
        prefetch_factor=4 if config.num_workers > 0 else None, worker_init_fn=_one_thread_worker,
    )


def _one_thread_worker(_worker_id: int) -> None:
    """Data-loader workers are one core each: OpenCV's own thread pool would oversubscribe them."""
    import cv2

    cv2.setNumThreads(1)


def _start_tracking(config: TrainConfig, data: _DataStreams, state: _TrainState, output_dir: Path, tags):
    """Rank 0: write config.json and classes.json, and open (or reopen) the MLflow run."""
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, output_dir / "config.json")
    data.classes.save(output_dir / "classes.json")
    if not config.tracking.enabled:
        return None
    from trashseg.tracking import TrackedRun, git_sha

    run_tags = {
        "architecture": config.architecture,
        "dataset": str(data.dataset.root),
        "dataset.version": data.dataset.dataset_version(),
        "git.sha": git_sha(),
        "trashseg.step": "train",
        **(tags or {}),
    }
    tracked = TrackedRun(
        config.tracking, output_dir, run_name=f"train-{config.architecture}", tags=run_tags, resume_run_id=state.run_id
    )
    if state.run_id is None:
        tracked.log_config(config)
        start = state.pretrained_load.params() if state.pretrained_load else {"pretrained.checkpoint": "none (random init)"}
        tracked.log_params(start)
    state.run_id = tracked.run_id
    return tracked


def _finish_tracking(tracked, status: str, state: _TrainState, paths: _OutputPaths, end: int) -> None:
    if status != "FAILED":
        if state.best_miou is not None:
            tracked.log_metrics({"val/best_miou": state.best_miou}, step=state.best_iteration or end)
        for name in ("config.json", "classes.json"):
            tracked.log_artifact(paths.root / name)
        tracked.log_artifact(paths.best if paths.best.exists() else paths.last, "checkpoint")
    tracked.end(status)


class _StepLoop:
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
    train_module = _LossModule(model)
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


class _LossModule(torch.nn.Module):
    """Routes `forward` to the model's loss so DDP's gradient hooks see the training step."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, masks):
        return self.model.loss(images, masks)
