"""Soft-vote weights: the configured ones, or fitted on val labels by a coordinate search over
a grid of weights per model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trashseg.data.io import read_mask
from trashseg.data.layout import Sample
from trashseg.ensemble.config import EnsembleConfig
from trashseg.ensemble.inputs import RecipeInputs
from trashseg.errors import ConfigError
from trashseg.metrics import ConfusionMatrix
from trashseg.predictions import PredictionSet

log = logging.getLogger(__name__)


def fit_weights(
    prediction_sets: Sequence[PredictionSet],
    samples: Sequence[Sample],
    num_classes: int,
    grid: Sequence[float],
    rounds: int,
    stride: int,
) -> tuple[tuple[float, ...], float]:
    """Soft-vote weights maximising val mIoU by coordinate search; returns (weights, mIoU).

    Starts from equal weights; each round tries every grid value for each model in turn
    and keeps strict improvements; stops after a round without one. Scored on every
    `stride`-th pixel to keep memory and time bounded on full-size splits.
    """
    if len(prediction_sets) == 1:
        return (1.0,), float("nan")
    pixels = _FittingPixels.read(prediction_sets, samples, num_classes, stride)
    weights = [1.0] * len(prediction_sets)
    best = pixels.miou(weights)
    for _ in range(rounds):
        improved = False
        for m in range(len(weights)):
            for value in grid:
                candidate = weights[:m] + [float(value)] + weights[m + 1 :]
                if value == weights[m] or sum(candidate) == 0:
                    continue
                candidate_score = pixels.miou(candidate)
                if candidate_score > best + 1e-12:
                    best, weights, improved = candidate_score, candidate, True
        if not improved:
            break
    total = sum(weights)
    return tuple(w / total for w in weights), best


@dataclass(frozen=True)
class _FittingPixels:
    """Every `stride`-th pixel of the fitting images: each model's probabilities as uint8
    (C, N) and the labels (N,), so a candidate's mIoU needs no further reads."""

    probs: list[np.ndarray]  # one per model
    target: np.ndarray
    num_classes: int

    @classmethod
    def read(cls, prediction_sets: Sequence[PredictionSet], samples: Sequence[Sample], num_classes: int,
             stride: int) -> _FittingPixels:
        cached = [[] for _ in prediction_sets]
        targets = []
        for sample in samples:
            target = read_mask(sample.mask, num_classes)[::stride, ::stride]
            targets.append(target.reshape(-1))
            for m, prediction in enumerate(prediction_sets):
                probs = prediction.probs(sample.file_name)[:, ::stride, ::stride]
                cached[m].append(np.rint(probs * 255).astype(np.uint8).reshape(num_classes, -1))
        return cls([np.concatenate(parts, axis=1) for parts in cached], np.concatenate(targets), num_classes)

    def miou(self, weights: Sequence[float]) -> float:
        """mIoU of the soft vote with `weights`, in chunks of 1M pixels to bound memory."""
        matrix = ConfusionMatrix(self.num_classes)
        for start in range(0, self.target.size, 1 << 20):
            chunk = slice(start, start + (1 << 20))
            total = sum(
                np.float32(w) * p[:, chunk].astype(np.float32)
                for w, p in zip(weights, self.probs, strict=True)
                if w
            )
            matrix.update(total.argmax(axis=0), self.target[chunk])
        return matrix.compute().miou


class SoftVoteWeights:
    """The weights that a set of val images fits: the configured ones, else fitted on those
    images' labels, once per set (the full pass's val and test groups share one fit)."""

    def __init__(self, inputs: RecipeInputs, config: EnsembleConfig) -> None:
        self.inputs, self.config = inputs, config
        self._val_samples = {s.file_name: s for s in inputs.samples[inputs.val_split]}
        self._fitted: dict[tuple[str, ...], tuple[float, ...]] = {}

    def fitted_on(self, fit_names: Sequence[str], what: str) -> tuple[float, ...]:
        config, names = self.config, self.inputs.names
        if config.weights:
            if len(config.weights) != len(names):
                raise ConfigError(
                    f"{len(config.weights)} weights given for {len(names)} models ({', '.join(names)})"
                )
            return tuple(w / sum(config.weights) for w in config.weights)
        key = tuple(fit_names)
        if key not in self._fitted:
            self._fitted[key] = self._fit(fit_names, what)
        return self._fitted[key]

    def _fit(self, fit_names: Sequence[str], what: str) -> tuple[float, ...]:
        inputs, config = self.inputs, self.config
        weights, fitted_miou = fit_weights(
            inputs.prediction_sets[inputs.val_split],
            [self._val_samples[n] for n in fit_names],
            inputs.num_classes,
            config.weight_grid,
            config.fit_rounds,
            config.fit_stride,
        )
        log.info(
            "%s: weights %s fitted on %d val image(s) (mIoU %.4f on the fitting pixels)",
            what,
            dict(zip(inputs.names, weights, strict=True)),
            len(fit_names),
            fitted_miou,
        )
        return weights
