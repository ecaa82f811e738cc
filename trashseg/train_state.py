"""A training run's state: model and optimizer from their start, and resume / continue from last.pt.

`TrainState` is everything a checkpoint holds; `resume_checkpoint` + `restore_state` bring a
run back to where its last.pt left it, `continue_schedule` starts a longer schedule from a
finished run.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trashseg.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    check_resumable,
    is_trashseg_checkpoint,
    load_checkpoint_state,
    set_rng_state,
)
from trashseg.config import to_dict
from trashseg.data.classes import ClassTable
from trashseg.device import Distributed, resolve_amp_dtype
from trashseg.errors import ConfigError
from trashseg.fileio import partial_name

if TYPE_CHECKING:
    from trashseg.training import TrainConfig

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class OutputPaths:
    root: Path

    @property
    def last(self) -> Path:
        return self.root / LAST_CHECKPOINT

    @property
    def best(self) -> Path:
        return self.root / BEST_CHECKPOINT


@dataclass
class TrainState:
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

    if config.continue_from:  # its weights come from the finished run (continue_schedule)
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


def build_model_and_optimizer(
    config: TrainConfig, classes: ClassTable, device, dist: Distributed, weights_store: str | None = None
) -> TrainState:
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
    return TrainState(model, optimizer, scheduler, scaler, amp_dtype, pretrained_load=pretrained_load)


def start_tags(config: TrainConfig) -> dict[str, str]:
    """How the run's weights started, as MLflow tags (a continuation adds its source in continue_schedule)."""
    if config.continue_from:
        return {"train.mode": "continue", "train.continued_from": config.continue_from}
    if config.pretrained and is_trashseg_checkpoint(config.pretrained):
        return {"train.mode": "fine-tune", "train.init_checkpoint": config.pretrained}
    return {"train.mode": "new"}


def continue_schedule(state: TrainState, config: TrainConfig, classes: ClassTable, output_dir: Path, end: int) -> dict[str, str]:
    """Start a longer schedule from a finished run's last.pt: its weights and optimizer moments, the
    iteration count going on from where it ended, and the lr of the NEW schedule (`config.iterations`
    long) from there on. Returns the MLflow tags naming the source."""
    path = continue_source(config, output_dir)
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


def continue_source(config: TrainConfig, output_dir: Path) -> Path:
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


def resume_checkpoint(paths: OutputPaths, config: TrainConfig, dist: Distributed) -> dict[str, Any] | None:
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


def restore_state(state: TrainState, saved: dict[str, Any], last_path: Path, dist: Distributed) -> None:
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


