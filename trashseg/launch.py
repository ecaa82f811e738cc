"""One process per GPU from inside a pipeline step: a `torchrun --standalone` launch as a call.

A KFP task that requests N GPUs runs one container; `run_per_process` starts N workers
there with torch's elastic launcher (the engine behind torchrun: it sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address, so `device.init_distributed` joins the group, NCCL
on CUDA, gloo on CPU) and returns every worker's result. With one process the function
runs in the calling process, so the 1-GPU path stays exactly what it was.

How many processes a step runs: `TRASHSEG_PROCESSES` when set (the pipelines set it to
the GPUs a task requests), else every visible GPU, else 1. A step that already runs
under torchrun (a TrainJob node: `trashseg.trainjob.node`) is one of its workers: it runs
in its own process and joins torchrun's group, with no second spawn.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trashseg.config import check_range
from trashseg.errors import ConfigError

log = logging.getLogger(__name__)
MAX_PROCESSES = 64  # one per GPU: more than any one machine holds

PROCESSES_ENV = "TRASHSEG_PROCESSES"


def under_torchrun() -> bool:
    """Whether this process is a worker torchrun (or `run_per_process`) started."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def processes_per_task() -> int:
    """Processes a training or prediction step starts: 1 under torchrun (this worker is one),
    else $TRASHSEG_PROCESSES, else the visible GPUs, else 1."""
    import torch

    if under_torchrun():
        return 1

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    text = os.environ.get(PROCESSES_ENV, "")
    if not text:
        return max(gpus, 1)
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{PROCESSES_ENV}={text!r}: expected a whole number of processes >= 1 (one per GPU)")
    processes = int(text)
    if gpus and processes > gpus:
        raise ConfigError(
            f"{PROCESSES_ENV}={processes} but this machine shows {gpus} GPU(s); request {processes} GPUs for the "
            f"task or lower {PROCESSES_ENV}"
        )
    return processes


def run_per_process(function: Callable[..., Any], args: Sequence[Any], processes: int) -> list[Any]:
    """`function(*args)` in `processes` workers of one process group; their results in rank order.

    `function` must be importable by name (a module-level function), and `args` and the
    results picklable. Each worker is a fresh `python -m trashseg.launch JOB` (as torchrun
    starts them): it shares nothing with the caller but the environment, and works whatever
    the caller's main module is (a KFP executor, pytest, a script without a main guard).
    """
    check_range("processes", processes, 1, MAX_PROCESSES, unit="(one per GPU)")
    if processes > 1 and under_torchrun():
        raise ConfigError(
            f"processes={processes} inside a torchrun worker (RANK {os.environ.get('RANK')}): torchrun already started "
            "this node's processes; run the step with processes=1 (`processes_per_task()` says so under torchrun)"
        )
    if processes == 1:
        return [function(*args)]
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # torchrun --standalone: a free local port
        max_restarts=0,  # a failed worker fails the step; the task's retry resumes from the checkpoint
    )
    log.info("starting %d processes (one per GPU) for %s", processes, function.__qualname__)
    with tempfile.TemporaryDirectory(prefix="trashseg-launch-") as work:
        job = Path(work) / "job.pkl"
        job.write_bytes(pickle.dumps((function, list(args), logging.getLogger().getEffectiveLevel())))
        elastic_launch(config, sys.executable)("-m", "trashseg.launch", str(job))
        return [pickle.loads(_result_path(job, rank).read_bytes()) for rank in range(processes)]


def _result_path(job: Path, rank: int) -> Path:
    return job.with_name(f"result-{rank}.pkl")


def worker_logging(rank: int, level: int) -> None:
    """A torchrun worker's log: rank 0 at `level`, the others warnings only; no URI password."""
    from trashseg.secrets import install_log_redaction

    install_log_redaction()
    logging.basicConfig(
        level=level if rank == 0 else max(level, logging.WARNING),
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S",
    )


def _worker(job: Path) -> None:
    """One spawned process: rank 0 logs as the caller did, the others only warnings."""
    import torch

    function, args, log_level = pickle.loads(job.read_bytes())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    worker_logging(rank, log_level)
    if not torch.cuda.is_available():
        # CPU workers share the cores (torchrun sets OMP_NUM_THREADS=1 for the same reason).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    result = pickle.dumps(function(*args))
    path = _result_path(job, rank)
    path.with_suffix(".tmp").write_bytes(result)
    os.replace(path.with_suffix(".tmp"), path)


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(_worker)(Path(sys.argv[1]))  # record: the worker's traceback reaches the caller's error
