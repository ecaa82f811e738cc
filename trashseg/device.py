"""Where a process runs: its torch device, mixed-precision dtype and place in a `torchrun` job.

Training and prediction pick devices and AMP dtypes only through here, so the `amp`
choices mean the same everywhere. torch is imported inside the functions: the CLI reads
AMP_CHOICES while building its parser, and `--help` must stay fast.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from trashseg.errors import ConfigError

if TYPE_CHECKING:
    import torch

AmpMode = Literal["auto", "bf16", "fp16", "off"]
AMP_CHOICES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")


def resolve_amp_dtype(amp: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype for `amp` on `device_type`; None = full precision (auto: bf16 on CUDA only)."""
    import torch

    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp={amp!r}: expected one of {', '.join(AMP_CHOICES)}")
    if amp == "auto":
        return torch.bfloat16 if device_type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """The autocast context for `amp_dtype` (a no-op when it is None)."""
    import torch

    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def default_device(name: str | None = None) -> torch.device:
    """`name` if given, else CUDA when available, else CPU."""
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def local_device() -> torch.device:
    """This process's device: its `LOCAL_RANK` GPU under torchrun (made current), else CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def memory_mib(device: torch.device) -> float:
    """Peak memory: CUDA max allocated on GPU, process peak RSS on CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; world 1 when not launched by torchrun."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, value) -> list:
        """Every rank's `value`, in rank order."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def shutdown(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def init_distributed(device_type: str) -> Distributed:
    """Join the torchrun process group named by `WORLD_SIZE` (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), local_rank=int(os.environ.get("LOCAL_RANK", "0")), world=dist.get_world_size())
