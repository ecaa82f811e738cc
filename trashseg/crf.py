"""DenseCRF (pydensecrf2) over a prediction folder, images in parallel worker processes.

The unary term is -log(p) of the given class probabilities; the pairwise terms are a
Gaussian smoothness kernel (position only) and a bilateral appearance kernel (position
and colour). DenseCRF removes speckle noise but also erases small objects, which the
consensus overwrite in `trashseg.ensemble.voting` gives back.

Workers get only file names and read the image and probabilities themselves, and write
their result straight into the output folder: nothing large crosses a process boundary.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TypeVar

import numpy as np

from trashseg.config import check_range
from trashseg.data.io import read_image
from trashseg.data.layout import PreparedDataset
from trashseg.errors import ConfigError, DataError
from trashseg.predictions import PredictionSet
from trashseg.progress import Progress

log = logging.getLogger(__name__)
R = TypeVar("R")


@dataclass(frozen=True)
class CrfConfig:
    iterations: int = 10
    gaussian_sxy: float = 3.0  # smoothness kernel width in pixels
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0  # appearance kernel width in pixels
    bilateral_srgb: float = 13.0  # appearance kernel width in colour units
    bilateral_compat: float = 10.0
    min_probability: float = 1e-5  # probabilities are clipped here so -log(p) stays finite
    workers: int = (
        0  # processes when run on its own; 0 = one per CPU core (the recipe uses its pool)
    )
    chunk_size: int = 4  # images handed to a worker at a time

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"crf.iterations must be >= 1, got {self.iterations}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"crf.{name} must be > 0, got {getattr(self, name)}")
        for name in ("gaussian_compat", "bilateral_compat"):
            if getattr(self, name) < 0:
                raise ConfigError(f"crf.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.min_probability < 1:
            raise ConfigError(f"crf.min_probability must be in (0, 1), got {self.min_probability}")
        if self.workers < 0:
            raise ConfigError(
                f"crf.workers must be >= 0 (0 = one per CPU core), got {self.workers}"
            )
        if self.chunk_size < 1:
            raise ConfigError(f"crf.chunk_size must be >= 1, got {self.chunk_size}")
        # Ceilings: mean-field inference converges in ~10 iterations; kernel widths beyond
        # 10^4 pixels or colour units are the whole image anyway.
        limits = {"iterations": (1, 1000), "workers": (0, 1024), "chunk_size": (1, 1024), "gaussian_sxy": (0, 1e4),
                  "bilateral_sxy": (0, 1e4), "bilateral_srgb": (0, 1e4), "gaussian_compat": (0, 1e4),
                  "bilateral_compat": (0, 1e4)}
        for name, (low, high) in limits.items():
            check_range(f"crf.{name}", getattr(self, name), low, high)

    def resolved_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


class CrfError(DataError):
    """DenseCRF failed on one image; the message names it."""


def dense_crf(image: np.ndarray, probs: np.ndarray, config: CrfConfig) -> np.ndarray:
    """Refined (C, H, W) float32 probabilities for an (H, W, 3) uint8 image."""
    import pydensecrf.densecrf as dcrf

    num_classes, height, width = probs.shape
    if image.shape != (height, width, 3):
        raise DataError(
            f"image of shape {image.shape} does not match probabilities of shape {probs.shape}; "
            f"expected ({height}, {width}, 3): predict at the image's own resolution"
        )
    clipped = np.clip(probs.reshape(num_classes, -1), config.min_probability, 1.0)
    unary = np.ascontiguousarray(-np.log(clipped), dtype=np.float32)
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=config.gaussian_sxy, compat=config.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=config.bilateral_sxy,
        srgb=config.bilateral_srgb,
        rgbim=np.array(image, dtype=np.uint8, order="C"),  # a writable copy: pydensecrf needs one
        compat=config.bilateral_compat,
    )
    refined = np.array(crf.inference(config.iterations), dtype=np.float32)
    return refined.reshape(num_classes, height, width)


def crf_prediction_set(
    prediction_dir: str | Path,
    dataset_dir: str | Path,
    out_dir: str | Path,
    config: CrfConfig,
    file_names: Sequence[str] | None = None,
    pool: WorkerPool | None = None,
) -> PredictionSet:
    """DenseCRF on every image of a prediction folder; the result is a new prediction folder.

    Images are read from the prepared dataset at `dataset_dir`. Runs in `pool` when given
    (the recipe's), else in a pool of `config.workers`. A failure stops the run with a
    `CrfError` naming the image.
    """
    source = PredictionSet.open(prediction_dir)
    names = list(source.file_names if file_names is None else file_names)
    result = PredictionSet.create(
        out_dir,
        source.class_names,
        dtype=source.dtype,
        source={"stage": "crf", "input": source.source, "input_dir": str(prediction_dir)},
    )
    job = _CrfJob(str(prediction_dir), str(dataset_dir), str(out_dir), result.dtype, result.codec, config)
    if pool is None:
        with WorkerPool(min(config.resolved_workers(), len(names))) as own_pool:
            own_pool.map_chunks(job, names, config.chunk_size, "crf")
        workers = own_pool.workers
    else:
        pool.map_chunks(job, names, config.chunk_size, "crf")
        workers = pool.workers
    result.complete(names)
    log.info("crf: %d image(s) with %d worker(s) -> %s", len(names), workers, out_dir)
    return result


class WorkerPool:
    """Worker processes for per-image work; `with WorkerPool(n) as pool: pool.map_chunks(...)`.

    Jobs get only file names and do their own reading and writing, so nothing large is
    pickled. With one worker everything runs in this process. One pool serves every
    stage of a recipe run, so workers start once.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> WorkerPool:
        if self.workers > 1:
            # forkserver, not fork: the parent may hold torch/OpenMP threads that a fork would
            # copy in a bad state. The server imports the recipe modules once; workers fork
            # from it in milliseconds.
            context = get_context("forkserver")
            context.set_forkserver_preload([__name__, "trashseg.ensemble.jobs"])
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map_chunks(
        self,
        job: Callable[[list[str]], R],
        file_names: Sequence[str],
        chunk_size: int,
        what: str,
        on_result: Callable[[R], None] | None = None,
    ) -> None:
        """Run `job` on chunks of `file_names`; `on_result` gets each chunk's result in order.

        The first failing chunk's exception is raised; chunks not yet started are cancelled.
        """
        names = list(file_names)
        # Never larger chunks than an even share, so a small set still keeps every worker busy.
        chunk_size = max(1, min(chunk_size, math.ceil(len(names) / self.workers)))
        chunks = [names[i : i + chunk_size] for i in range(0, len(names), chunk_size)]
        progress = Progress(len(names), what, unit="img")
        results = map(job, chunks) if self._executor is None else self._executor.map(job, chunks)
        for chunk, result in zip(chunks, results, strict=True):
            if on_result is not None:
                on_result(result)
            progress.update(len(chunk))


@dataclass(frozen=True)
class _CrfJob:
    """Picklable work item: refines a chunk of images, reading and writing files itself."""

    prediction_dir: str
    dataset_dir: str
    out_dir: str
    dtype: str
    codec: str
    config: CrfConfig

    def __call__(self, file_names: Sequence[str]) -> None:
        source = PredictionSet.open(self.prediction_dir)
        target = PredictionSet.entry_writer(self.out_dir, source.class_names, self.dtype, self.codec)
        dataset = PreparedDataset(self.dataset_dir)
        for file_name in file_names:
            try:
                image = read_image(dataset.image_path(file_name))
                refined = dense_crf(image, source.probs(file_name), self.config)
            except Exception as error:  # re-raised with the image's name; the run stops
                raise CrfError(
                    f"DenseCRF failed on image {file_name!r}: {type(error).__name__}: {error}"
                ) from error
            target.add(file_name, refined)
