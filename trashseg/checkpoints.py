"""The checkpoint format: what `train` writes, how a checkpoint is found, loaded and resumed.

    last.pt  full training state: model, optimizer, scheduler, scaler, every rank's RNGs, iteration
    best.pt  model weights + meta at the best validation mIoU

Both carry the meta prediction needs (architecture, classes, image size, normalisation),
so a checkpoint file alone rebuilds its model (`models.load_checkpoint`). This module knows
the file format only; it imports no model code.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trashseg.errors import ConfigError, DataError
from trashseg.fileio import atomic_write

CHECKPOINT_FORMAT = "trashseg-checkpoint/1"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
# Fields that may change between a run and its resumption without changing the result.
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format is a zip archive
WHAT_A_CHECKPOINT_IS = (
    "a checkpoint is the PyTorch zip archive `trashseg train` writes (best.pt, last.pt) holding the weights "
    "and the meta that rebuilds the model"
)
# The fields prediction reads, with their types.
REQUIRED_FIELDS = {"architecture": str, "classes": list, "model": dict, "image_size": int, "normalisation": dict,
                   "iteration": int, "config": dict}
RESUMABLE_CHANGES = frozenset({"checkpoint_interval", "eval_interval", "log_interval", "num_workers", "tracking"})


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact, a failed
    write (a full disk) leaves no partial and raises OutputError."""
    with atomic_write(path, durable=True) as handle:
        torch.save(state, handle)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a training output folder's best.pt (else its last.pt)."""
    path = Path(path)
    if path.is_dir():
        names = (BEST_CHECKPOINT, LAST_CHECKPOINT)
        path = next((path / name for name in names if (path / name).is_file()), path / BEST_CHECKPOINT)
    if not path.is_file():
        raise DataError(
            f"checkpoint {path} not found; train first (`trashseg train`), or pass a .pt file "
            "or a training output folder"
        )
    return path


def is_trashseg_checkpoint(pretrained: str) -> bool:
    """Whether a start names a trashseg checkpoint (a .pt file or a training output folder), not a transformers one."""
    path = Path(pretrained)
    if path.is_dir():
        # A training output folder (its config.json is trashseg's TrainConfig, not a model config).
        return any((path / n).is_file() for n in (BEST_CHECKPOINT, LAST_CHECKPOINT))
    return path.suffix == ".pt"


def load_checkpoint_state(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """The raw state dict of a checkpoint file or training output folder, format-checked."""
    path = resolve_checkpoint(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not ZIP_MAGIC.startswith(magic):  # torch.save writes a zip archive (a cut one is reported below)
        raise DataError(
            f"{path} is not a trashseg checkpoint: {WHAT_A_CHECKPOINT_IS}, and this file does not start like "
            f"one (first bytes {magic!r}). Pass a best.pt or last.pt, or a training output folder"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, which would run the file's code.
        raise DataError(
            f"{path} is not a trashseg checkpoint: it holds Python objects other than tensors and plain "
            "data, and trashseg will not load it (loading such a file can run code in it). Pass a best.pt "
            "or last.pt written by `trashseg train`"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError, IndexError, TypeError) as error:
        detail = (str(error).splitlines() or [type(error).__name__])[0]
        raise DataError(
            f"{path} cannot be read as a checkpoint ({path.stat().st_size} bytes; {detail}): "
            "it is truncated or corrupt, e.g. from an interrupted copy. Copy it again, or use the training "
            "output folder's other checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a trashseg checkpoint (format {CHECKPOINT_FORMAT}); it was not written by `trashseg train`")
    missing = [name for name, kind in REQUIRED_FIELDS.items() if not isinstance(state.get(name), kind)]
    if missing:
        raise DataError(
            f"{path} is an incomplete trashseg checkpoint: {', '.join(missing)} missing or of the wrong type "
            f"({WHAT_A_CHECKPOINT_IS}); pass the training output folder's best.pt or last.pt"
        )
    return state


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Raise unless `current` (a TrainConfig as a dict) differs from `saved` only in RESUMABLE_CHANGES."""
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        details = "; ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ConfigError(
            f"cannot resume: the config differs from the checkpoint's in {details}; "
            "resume with the saved config.json or start a new output folder"
        )


def rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch, CUDA) model code draws from, as plain data."""
    algorithm, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"algorithm": algorithm, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["algorithm"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
