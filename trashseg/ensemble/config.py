"""The recipe's stage names and its settings (`EnsembleConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trashseg.config import check_range
from trashseg.crf import CrfConfig
from trashseg.errors import ConfigError

SOFT_VOTE = "soft_vote"
HARD_VOTE = "hard_vote"
CRF = "crf"
CONSENSUS = "consensus"
GATING = "gating"
ENSEMBLE_STAGES = (SOFT_VOTE, HARD_VOTE, CRF, CONSENSUS, GATING)


@dataclass(frozen=True)
class EnsembleConfig:
    # Names of the prediction folders, in the order given (val and test lists alike);
    # empty = taken from each folder's source (`name`, else `architecture`).
    model_names: tuple[str, ...] = ()
    # Soft-vote weights per model; empty = fitted on val by coordinate search over weight_grid.
    weights: tuple[float, ...] = ()
    weight_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    fit_rounds: int = 3
    fit_stride: int = 4  # fit on every fit_stride-th pixel in each direction
    crf_enabled: bool = True
    crf: CrfConfig = field(default_factory=CrfConfig)
    consensus_enabled: bool = True
    consensus_k: int = 2  # at least this many models must agree
    consensus_models: tuple[str, ...] = ()  # empty = all models
    consensus_max_area: int = 0  # > 0: restore only agreed components smaller than this (pixels)
    gating_enabled: bool = True
    # Val is split into this many folds; each is scored with weights and gating fitted on the
    # others, and these held-out scores select the stage. 1 = fit and score on all val (optimistic).
    holdout_folds: int = 2
    pinned_stage: str = ""  # empty = best stage by held-out val mIoU; else a stage or model name
    val_split: str = "val"
    test_split: str = "test"
    background_class: int = 0
    workers: int = 0  # processes for the per-image stages, CRF included; 0 = one per CPU core

    def __post_init__(self) -> None:
        # Upper bounds keep a typo from running for days: each fit round scores every grid
        # value for every model, and each fold repeats the fits.
        limits = {"fit_rounds": (1, 100), "fit_stride": (1, 1024), "holdout_folds": (1, 100), "consensus_k": (1, 1000),
                  "consensus_max_area": (0, 2**31 - 1), "workers": (0, 1024), "background_class": (0, 254)}
        for name, (low, high) in limits.items():
            check_range(name, getattr(self, name), low, high)
        if len(self.weight_grid) > 100 or any(not 0 <= w <= 1000 for w in (*self.weight_grid, *self.weights)):
            raise ConfigError(
                f"weight_grid={list(self.weight_grid)[:10]}, weights={list(self.weights)[:10]}: expected at most 100 "
                "grid values, each weight in [0, 1000]"
            )
        if any(w < 0 for w in self.weights) or (self.weights and sum(self.weights) == 0):
            raise ConfigError(f"weights must be >= 0 and not all 0, got {list(self.weights)}")
        if not self.weight_grid or any(w < 0 for w in self.weight_grid):
            raise ConfigError(
                f"weight_grid must be non-empty values >= 0, got {list(self.weight_grid)}"
            )
        if len(set(self.model_names)) != len(self.model_names):
            raise ConfigError(f"model_names must be unique, got {list(self.model_names)}")
        if self.val_split == self.test_split:
            raise ConfigError(f"val_split and test_split must differ, both are {self.val_split!r}")



def enabled_stages(config: EnsembleConfig) -> tuple[str, ...]:
    refined = config.crf_enabled or config.consensus_enabled
    enabled = {
        SOFT_VOTE: True,
        HARD_VOTE: True,
        CRF: config.crf_enabled,
        CONSENSUS: config.consensus_enabled,
        GATING: config.gating_enabled and refined,
    }
    return tuple(stage for stage in ENSEMBLE_STAGES if enabled[stage])

