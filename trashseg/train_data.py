"""What a training run reads: its sample streams, the per-micro-batch sampler and the loader.

Data order and augmentation are functions of (seed, stream, sample position) only, so a
resumed run and an uninterrupted one (and N processes and 1 with N x grad_accum) load the
same samples: nothing here carries state across iterations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from trashseg.augment import TrainTransform, copy_paste, sample_seed
from trashseg.data.classes import ClassTable
from trashseg.data.io import read_mask, read_pair
from trashseg.data.layout import PreparedDataset, Sample
from trashseg.device import Distributed
from trashseg.errors import ConfigError, DataError

if TYPE_CHECKING:
    from trashseg.training import TrainConfig

# Seed streams (`augment.sample_seed`): the labelled and pseudo-label samples, and model-side
# randomness per micro-batch (`train_loop`).
LABELLED_STREAM, PSEUDO_STREAM, MODEL_RANDOMNESS = 0, 1, 2


@dataclass
class Stream:
    samples: list[Sample]
    per_batch: int
    weights: np.ndarray | None  # class-balanced sampling weights, else uniform permutations


class KeySampler:
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


class TrainSamples:
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


@dataclass
class DataStreams:
    """What the run reads: the labelled (and optional pseudo-label) training streams and the val split."""

    dataset: PreparedDataset
    classes: ClassTable
    streams: list[Stream]
    val_samples: list[Sample]
    copy_paste_ids: tuple[int, ...]
    donors: list[Sample]  # training images holding a copy-paste class


def build_data_streams(config: TrainConfig, dataset_dir, pseudo_dataset) -> DataStreams:
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
    streams = [Stream(train_samples, config.batch_size - n_pseudo, weights)]
    if pseudo_dataset is not None:
        streams.append(Stream(_pseudo_samples(pseudo_dataset, classes), n_pseudo, None))
    copy_paste_ids = resolve_class_ids(config.copy_paste_classes, classes)
    donors = [s for s, p in zip(train_samples, present or [], strict=False) if np.isin(p, copy_paste_ids).any()]
    if copy_paste_ids and not donors:
        raise DataError(
            f"copy_paste_classes {list(config.copy_paste_classes)}: no training image contains them; nothing to paste"
        )
    return DataStreams(dataset, classes, streams, val_samples, copy_paste_ids, donors)


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


def build_loader(config: TrainConfig, data: DataStreams, start: int, end: int, device, dist: Distributed):
    sampler = KeySampler(data.streams, config.seed, start, end, config.grad_accum, dist.rank, dist.world)
    samples = TrainSamples(
        data.streams, data.classes.num_classes, TrainTransform(config.augment, config.image_size), config.seed,
        data.copy_paste_ids, data.donors, config.augment.copy_paste,
    )
    if config.num_workers > 0:
        _quiet_opencv_pool()
    # A private generator: the loader must not draw from the global RNG that resume restores.
    # Workers live for the whole (single-pass) loader and keep 4 batches each in flight.
    return torch.utils.data.DataLoader(
        samples, batch_sampler=sampler, num_workers=config.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator(), persistent_workers=config.num_workers > 0,
        prefetch_factor=4 if config.num_workers > 0 else None, worker_init_fn=_one_thread_worker,
    )


def _quiet_opencv_pool() -> None:
    """OpenCV in this process one-threaded before the loader forks its workers: a worker forked
    while OpenCV's thread pool runs inherits the pool without its threads, and its own
    `setNumThreads` then waits on them for ever (seen as a hung test). The augmentation runs in
    the workers, so this process loses nothing it uses."""
    import cv2

    cv2.setNumThreads(1)


def _one_thread_worker(_worker_id: int) -> None:
    """Data-loader workers are one core each: OpenCV's own thread pool would oversubscribe them."""
    import cv2

    cv2.setNumThreads(1)

