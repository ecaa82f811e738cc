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
import resource
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from trashseg.augment import AugmentConfig, TrainTransform, copy_paste, normalise_batch, sample_seed
from trashseg.config import save_config, to_dict
from trashseg.data.classes import ClassTable
from trashseg.data.layout import PreparedDataset, Sample
from trashseg.errors import ConfigError, DataError
from trashseg.metrics import IGNORE_INDEX, SegmentationScores
from trashseg.progress import Progress
from trashseg.tracking import TrackingConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "trashseg-checkpoint/1"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
# Fields that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = frozenset({"checkpoint_interval", "eval_interval", "log_interval", "num_workers", "tracking"})
LABELLED_STREAM, PSEUDO_STREAM = 0, 1
# AdamW's step is about lr per weight: beyond 1 every weight is replaced by noise.
MAX_LR = 1.0


@dataclass(frozen=True)
class TrainConfig:
    architecture: str = "segformer-b0"
    pretrained: str | None = None  # local folder or hub id; None = random init
    image_size: int = 512
    batch_size: int = 8  # per process and micro-batch; global batch = batch_size * grad_accum * world size
    iterations: int = 80_000  # optimizer steps
    lr: float = 1e-4
    weight_decay: float = 0.01  # not applied to biases and norm weights
    warmup_iters: int = 1500
    poly_power: float = 1.0
    grad_accum: int = 1
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU
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
        positive = ("image_size", "batch_size", "iterations", "grad_accum", "checkpoint_interval", "log_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: expected an integer >= 1")
        for name in ("warmup_iters", "eval_interval", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected an integer >= 0")
        from trashseg.models import ARCHITECTURES

        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"architecture={self.architecture!r} is unknown; valid names: {', '.join(ARCHITECTURES)} "
                "(`trashseg architectures` lists them with parameter counts)"
            )
        if self.image_size < 32:
            raise ConfigError(f"image_size={self.image_size}: expected >= 32 pixels")
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


def read_image(path: Path) -> np.ndarray:
    from trashseg.data.images import read_rgb

    if not path.is_file():
        raise DataError(f"image {path} is missing; re-run prepare for this dataset")
    return read_rgb(path)  # already a writable array of its own


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    from trashseg.data.images import read_gray

    if not path.is_file():
        raise DataError(f"mask {path} is missing; re-run prepare for this dataset")
    mask = read_gray(path)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise DataError(f"mask {path}: expected a single-channel uint8 PNG, got shape {mask.shape} {mask.dtype}")
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise DataError(
            f"mask {path} holds class ids {np.unique(mask[bad])[:10].tolist()} outside 0..{num_classes - 1} "
            f"(and {IGNORE_INDEX} = ignore); its classes.json does not match the masks"
        )
    return mask


def read_pair(sample: Sample, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(sample.image)
    mask = read_mask(sample.mask, num_classes)
    if image.shape[:2] != mask.shape:
        raise DataError(f"{sample.file_name}: image is {image.shape[:2]} but its mask is {mask.shape}")
    return image, mask


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


# --------------------------------------------------------------------- environment


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_type: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return _Dist(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")), world=dist.get_world_size())


def _barrier(dist_info: _Dist) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def resolve_amp_dtype(amp: str, device_type: str):
    if amp == "auto":
        return torch.bfloat16 if device_type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def memory_mib(device) -> float:
    """Peak memory: CUDA max allocated on GPU, process peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _rng_state() -> dict[str, Any]:
    algorithm, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"algorithm": algorithm, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["algorithm"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_rng_states(dist_info: _Dist) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (so each rank resumes its own stream)."""
    state = _rng_state()
    if dist_info.world == 1:
        return [state]
    import torch.distributed as dist

    states: list = [None] * dist_info.world
    dist.all_gather_object(states, state)
    return states


def _dataset_hash(dataset: PreparedDataset) -> str | None:
    import json

    path = dataset.root / "dataset.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    for key in ("hash", "content_hash", "sha256"):
        if isinstance(meta, dict) and meta.get(key):
            return str(meta[key])
    return None


# ---------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a training output folder's best.pt (else its last.pt)."""
    path = Path(path)
    if path.is_dir():
        path = next((path / name for name in ("best.pt", "last.pt") if (path / name).is_file()), path / "best.pt")
    if not path.is_file():
        raise DataError(
            f"checkpoint {path} not found; train first (`trashseg train`), or pass a .pt file "
            "or a training output folder"
        )
    return path


def load_checkpoint_state(path: str | Path, map_location="cpu") -> dict[str, Any]:
    path = resolve_checkpoint(path)
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a trashseg checkpoint (format {CHECKPOINT_FORMAT}); it was not written by `trashseg train`")
    return state


def _check_resumable(saved: dict, current: dict) -> None:
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ConfigError(
            f"cannot resume: the config differs from the checkpoint's in {details}; "
            "resume with the saved config.json or start a new output folder"
        )


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
    from trashseg.metrics import ConfusionMatrix
    from trashseg.predict import predict_probabilities

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
) -> TrainResult:
    """Train `config.architecture` on the dataset's train split; validate on its val split.

    `stop_after` ends the run after that many optimizer steps (a time-boxed or preempted
    run) while keeping the schedule of `config.iterations`; `resume=True` continues it.
    `pseudo_dataset` is a prepared dataset of pseudo-labelled images (its `train` split,
    255 = ignore); `config.pseudo_ratio` of every batch is drawn from it.
    """
    from trashseg.models import build_model

    output_dir = Path(output_dir)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist_info = _init_distributed(device.type)
    if stop_after is not None and not 0 < stop_after <= config.iterations:
        raise ConfigError(f"stop_after={stop_after}: expected 1..iterations ({config.iterations})")
    end = stop_after or config.iterations

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
    streams = [
        _Stream(
            train_samples,
            config.batch_size - n_pseudo,
            class_balanced_weights(present, classes.num_classes) if config.class_balanced_sampling else None,
        )
    ]
    if pseudo_dataset is not None:
        pseudo = PreparedDataset(pseudo_dataset)
        if pseudo.classes().names != classes.names:
            raise DataError(
                f"pseudo-label dataset {pseudo.root} has classes {list(pseudo.classes().names)}, "
                f"the training set {list(classes.names)}; build it from this dataset's models"
            )
        pseudo_samples = pseudo.samples("train")
        if not pseudo_samples:
            raise DataError(f"pseudo-label dataset {pseudo.root} has an empty train split")
        streams.append(_Stream(pseudo_samples, n_pseudo, None))
    copy_paste_ids = resolve_class_ids(config.copy_paste_classes, classes)
    donors = [s for s, p in zip(train_samples, present or [], strict=False) if np.isin(p, copy_paste_ids).any()]
    if copy_paste_ids and not donors:
        raise DataError(
            f"copy_paste_classes {list(config.copy_paste_classes)}: no training image contains them; nothing to paste"
        )

    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)  # same initial weights on every rank
    model = build_model(config.architecture, classes.num_classes, pretrained=config.pretrained).to(device)
    mean, std = list(config.augment.mean), list(config.augment.std)

    # The fused kernel updates all parameters in one launch on CUDA (not on CPU: no gain there).
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _poly_schedule(config))
    amp_dtype = resolve_amp_dtype(config.amp, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # Per-rank stream for model-side randomness (dropout, point sampling).
    torch.manual_seed(config.seed + dist_info.rank)

    start, best_miou, best_iteration, run_id = 0, None, None, None
    last_path, best_path = output_dir / LAST_CHECKPOINT, output_dir / BEST_CHECKPOINT
    if resume:
        state = load_checkpoint_state(last_path, map_location=device)
        _check_resumable(state["config"], to_dict(config))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) != dist_info.world:
            log.warning(
                "%s was written by %d process(es), this run has %d: model-side randomness (dropout, point "
                "sampling) restarts from rank 0's state, so the result will not match an uninterrupted run",
                last_path, len(per_rank), dist_info.world,
            )
        _set_rng_state(per_rank[dist_info.rank] if len(per_rank) == dist_info.world else per_rank[0])
        start, best_miou, best_iteration = state["iteration"], state["best_miou"], state["best_iteration"]
        run_id = state.get("mlflow_run_id")
        if start >= end:
            raise ConfigError(f"{last_path} is already at iteration {start}; nothing left to train up to {end}")
        if dist_info.is_main:
            log.info("resuming from %s at iteration %d/%d", last_path, start, config.iterations)
    elif last_path.exists():
        raise ConfigError(
            f"{output_dir} already holds a checkpoint ({last_path}); pass --resume to continue it "
            "or choose a new output folder (nothing is overwritten)"
        )

    train_module = _LossModule(model)
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            train_module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(train_module)
        # Some families leave parameters unused in a step (e.g. auxiliary heads).
        train_module = DistributedDataParallel(
            train_module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )

    sampler = _KeySampler(streams, config.seed, start, end, config.grad_accum, dist_info.rank, dist_info.world)
    samples = _TrainSamples(
        streams, classes.num_classes, TrainTransform(config.augment, config.image_size), config.seed,
        copy_paste_ids, donors, config.augment.copy_paste,
    )
    # A private generator: the loader must not draw from the global RNG that resume restores.
    # Workers live for the whole (single-pass) loader and keep 4 batches each in flight.
    loader = torch.utils.data.DataLoader(
        samples, batch_sampler=sampler, num_workers=config.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator(), persistent_workers=config.num_workers > 0,
        prefetch_factor=4 if config.num_workers > 0 else None, worker_init_fn=_one_thread_worker,
    )
    forward, channels_last = train_module, device.type == "cuda" and config.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda" and config.compile:
        forward = torch.compile(train_module)
    elif config.channels_last or config.compile:
        log.info("channels_last/compile apply on CUDA only; training on %s without them", device.type)

    tracked = None
    if dist_info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.json")
        classes.save(output_dir / "classes.json")
        if config.tracking.enabled:
            from trashseg.tracking import TrackedRun, git_sha

            run_tags = {
                "architecture": config.architecture,
                "dataset": str(dataset.root),
                "dataset.hash": _dataset_hash(dataset),
                "git.sha": git_sha(),
                "trashseg.step": "train",
                **(tags or {}),
            }
            tracked = TrackedRun(
                config.tracking, output_dir, run_name=f"train-{config.architecture}", tags=run_tags, resume_run_id=run_id
            )
            if run_id is None:
                tracked.log_config(config)
            run_id = tracked.run_id

    def checkpoint_state(iteration: int, full: bool, rng_states: list | None = None) -> dict[str, Any]:
        state = {
            "format": CHECKPOINT_FORMAT,
            "architecture": config.architecture,
            "num_classes": classes.num_classes,
            "image_size": config.image_size,
            "normalisation": {"mean": mean, "std": std},
            "classes": classes.to_json(),
            "config": to_dict(config),
            "iteration": iteration,
            "world_size": dist_info.world,
            "best_miou": best_miou,
            "best_iteration": best_iteration,
            "mlflow_run_id": run_id,
            "model": model.state_dict(),
        }
        if full:
            state.update(
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict(),
                rng=rng_states[0],
                rng_per_rank=rng_states,
            )
        return state

    global_batch = config.batch_size * config.grad_accum * dist_info.world
    progress = Progress(end - start, f"train {config.architecture}", unit="it", interval_s=0.0)
    status = "FAILED"
    try:
        model.train()
        batches = iter(loader)
        # The loss is summed on the device and read (a host sync) only at log, eval and checkpoint steps.
        window_start, window_loss, window_steps = time.monotonic(), torch.zeros((), device=device), 0
        for iteration in range(start, end):
            model.set_training_progress(iteration, config.iterations)  # e.g. EoMT's mask annealing
            for micro in range(config.grad_accum):
                images, masks = next(batches)
                # Batches travel as uint8 (see TrainTransform): normalised and widened on the device.
                images = normalise_batch(images.to(device, non_blocking=True), mean, std)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                masks = masks.to(device, non_blocking=True).long()
                sync = micro == config.grad_accum - 1 or dist_info.world == 1
                context = train_module.no_sync() if not sync else contextlib.nullcontext()
                with context:
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        loss = forward(images, masks)
                    scaler.scale(loss / config.grad_accum).backward()
                window_loss += loss.detach() / config.grad_accum
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = iteration + 1
            window_steps += 1

            run_eval = val_samples and ((config.eval_interval and done % config.eval_interval == 0) or done == config.iterations)
            log_now = done % config.log_interval == 0 or done == end
            if log_now or run_eval or done % config.checkpoint_interval == 0:
                _check_finite(window_loss, done - window_steps, done, config)
            if log_now and dist_info.is_main:
                window_loss = window_loss.item()
                elapsed = max(time.monotonic() - window_start, 1e-9)
                images_per_s = window_steps * global_batch / elapsed
                lr = scheduler.get_last_lr()[0]
                mem = memory_mib(device)
                progress.update(
                    window_steps, iteration=f"{done}/{config.iterations}", loss=window_loss / window_steps,
                    lr=lr, img_s=images_per_s, mem_mib=round(mem),
                )
                if tracked:
                    tracked.log_metrics(
                        {"train/loss": window_loss / window_steps, "train/lr": lr, "train/images_per_s": images_per_s, "train/memory_mib": mem},
                        step=done,
                    )
            if log_now:
                window_start, window_loss, window_steps = time.monotonic(), torch.zeros((), device=device), 0
            if run_eval:
                if dist_info.is_main:
                    model.eval()
                    with torch.no_grad():
                        scores = validate(
                            model, val_samples, classes, image_size=config.image_size, mean=mean, std=std,
                            batch_size=config.batch_size, device=device, amp_dtype=amp_dtype,
                        )
                    model.train()
                    log.info("validation at iteration %d: mIoU %.4f, pixel accuracy %.4f", done, scores.miou, scores.pixel_accuracy)
                    if tracked:
                        metrics = {"val/miou": scores.miou, "val/pixel_accuracy": scores.pixel_accuracy}
                        metrics.update({f"val/iou/{name}": v for name, v in scores.iou.items() if not math.isnan(v)})
                        tracked.log_metrics(metrics, step=done)
                    if not math.isnan(scores.miou) and (best_miou is None or scores.miou > best_miou):
                        best_miou, best_iteration = scores.miou, done
                        save_checkpoint(best_path, checkpoint_state(done, full=False))
                _barrier(dist_info)
            if done % config.checkpoint_interval == 0 or done == end:
                rng_states = _gather_rng_states(dist_info)
                if dist_info.is_main:
                    save_checkpoint(last_path, checkpoint_state(done, full=True, rng_states=rng_states))
                _barrier(dist_info)
        status = "FINISHED" if end == config.iterations else "KILLED"
    finally:
        if tracked:
            if status != "FAILED":
                if best_miou is not None:
                    tracked.log_metrics({"val/best_miou": best_miou}, step=best_iteration or end)
                for name in ("config.json", "classes.json"):
                    tracked.log_artifact(output_dir / name)
                tracked.log_artifact(best_path if best_path.exists() else last_path, "checkpoint")
            tracked.end(status)
        if dist_info.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()

    return TrainResult(
        output_dir=output_dir,
        last_checkpoint=last_path,
        best_checkpoint=best_path if best_path.exists() else None,
        best_miou=best_miou,
        best_iteration=best_iteration,
        iterations=end,
        mlflow_run_id=run_id,
    )


def _check_finite(window_loss: torch.Tensor, first: int, done: int, config: TrainConfig) -> None:
    """Fail on a non-finite loss sum, read at log and checkpoint steps (a non-finite step poisons the sum),
    so no NaN weights are ever checkpointed and the step loop has no per-step host sync."""
    if not torch.isfinite(window_loss):
        raise FloatingPointError(
            f"loss is {window_loss.item()} in iterations {first + 1}..{done}; lower lr ({config.lr}) or set amp=off"
        )


def _one_thread_worker(_worker_id: int) -> None:
    """Data-loader workers are one core each: OpenCV's own thread pool would oversubscribe them."""
    import cv2

    cv2.setNumThreads(1)


class _LossModule(torch.nn.Module):
    """Routes `forward` to the model's loss so DDP's gradient hooks see the training step."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, masks):
        return self.model.loss(images, masks)
