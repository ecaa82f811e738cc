"""One TrainJob node: `torchrun --module trashseg.trainjob.node --spec '<NodeTrainSpec JSON>'`.

Every torchrun worker of every node runs `main`. Trainer's torch plugin hands torchrun the
topology (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT);
torchrun starts the workers and `train` joins the process group it set up, so nothing here
spawns processes. Nodes share nothing but the object store:

1. local rank 0 of each node empties the node's work folder and pulls the staged inputs
   (dataset, pseudo-label dataset, init bundle) and, when the checkpoint store holds one,
   the mirrored `<checkpoint_store>/<run_id>/<stage>-<architecture>/` folder; the node's
   other workers wait for it;
2. every worker trains through `steps.train_mirrored`, the KFP pod's code: it resumes from
   the pulled last.pt, rank 0 mirrors each checkpoint as it is written, and a job restarted
   by the JobSet (a node lost) goes on from the last mirrored checkpoint, bitwise;
3. every worker exits 0 once training is complete; a bad spec or input exits 2 with one line.

The work folder is `<tmp>/trashseg-node/<run_id>/<stage>-<architecture>/`, the same path on
every node, so the resolved config (an init bundle's path) is the same on every rank.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from trashseg.errors import UserError
from trashseg.trainjob.spec import NodeTrainSpec

log = logging.getLogger("trashseg.trainjob.node")

# The node's other workers wait this long for local rank 0's downloads (a large dataset).
STAGING_TIMEOUT = timedelta(hours=2)


def node_folder(spec: NodeTrainSpec, tmp: str | Path | None = None) -> Path:
    """This job's work folder on the node's disk (inputs and the training output folder)."""
    from trashseg.storage.base import check_key

    key = check_key(f"{spec.run_id}/{spec.mirror_prefix}")  # refuses '..', empty parts, a leading '/'
    return Path(tmp or tempfile.gettempdir()) / "trashseg-node" / key


def train_node(spec: NodeTrainSpec) -> Path:
    """Train this worker's share of `spec`; returns the node's training output folder."""
    from trashseg.device import init_distributed, local_device
    from trashseg.steps import train_config

    folder = node_folder(spec)
    train_config(spec.architecture, spec.iterations, spec.image_size, spec.settings, _run_context(spec),
                 pseudo_ratio=spec.pseudo_ratio if spec.pseudo_dataset_uri else None)  # bad settings fail before any download
    dist = init_distributed(local_device().type)  # `train` joins this same group
    try:
        if dist.local_rank == 0:
            stage_node(spec, folder)
        _wait_for_local_rank_0(dist)
        return _train(spec, folder)
    finally:
        _leave_group()


def stage_node(spec: NodeTrainSpec, folder: Path) -> None:
    """Local rank 0: a fresh work folder with the inputs and the mirrored checkpoint, if any.
    What a previous attempt left on this disk is dropped: the mirror is the truth every node shares."""
    from trashseg.steps import checkpoint_mirror_uri, pull_mirrored_checkpoint

    run_store = checkpoint_mirror_uri(spec.checkpoint_store, spec.run_id)
    shutil.rmtree(folder, ignore_errors=True)
    for uri, name in _inputs(spec):
        log.info("pulling %s to %s", uri, folder / name)
        _pull_folder(uri, folder / name, run_store)
    pull_mirrored_checkpoint(run_store, spec.mirror_prefix, folder / "model")


def _inputs(spec: NodeTrainSpec) -> list[tuple[str, str]]:
    named = (("dataset", spec.dataset_uri), ("pseudo-dataset", spec.pseudo_dataset_uri), ("init-bundle", spec.init_bundle_uri))
    return [(uri, name) for name, uri in named if uri]


def _pull_folder(uri: str, dest: Path, run_store: str) -> None:
    """The folder staged at `uri` (a local path or s3://bucket/prefix), downloaded and verified.

    The launcher stages under the run's store (`<checkpoint_store>/<run_id>/staged/...`), which
    is opened at its root: a local store keeps its checksums there. Elsewhere the folder's
    parent is the store."""
    from trashseg.errors import ConfigError
    from trashseg.storage import is_s3, open_store

    def normal(location: str) -> str:
        return location.rstrip("/") if is_s3(location) else str(Path(location).resolve())

    inside = normal(run_store) + "/"
    if normal(uri).startswith(inside):
        store, key = open_store(run_store), normal(uri)[len(inside):]
    else:
        parent, _, key = normal(uri).rpartition("/")
        if not parent or not key:
            raise ConfigError(f"staged input {uri!r}: expected a folder URI such as s3://bucket/runs/RUN/staged/dataset")
        store = open_store(parent)
    store.get_folder(key, dest)


def _wait_for_local_rank_0(dist) -> None:
    """All workers wait until every node's local rank 0 has staged (gloo: a long timeout of its own,
    apart from the training group's, and it works beside NCCL)."""
    if dist.world == 1:
        return
    import torch.distributed

    staging = torch.distributed.new_group(backend="gloo", timeout=STAGING_TIMEOUT)
    torch.distributed.barrier(group=staging)
    torch.distributed.destroy_process_group(staging)


def _train(spec: NodeTrainSpec, folder: Path) -> Path:
    from trashseg.checkpoints import LAST_CHECKPOINT
    from trashseg.launch import processes_per_task
    from trashseg.steps import plan_training, train_mirrored

    staged = {name: folder / name for _, name in _inputs(spec)}
    job = plan_training(
        staged["dataset"], folder / "model", architecture=spec.architecture, iterations=spec.iterations,
        image_size=spec.image_size, settings=spec.settings, checkpoint_store=spec.checkpoint_store,
        run_id=spec.run_id, run=_run_context(spec),
        pseudo_dataset_dir=staged.get("pseudo-dataset"), pseudo_ratio=spec.pseudo_ratio,
        init_bundle_dir=staged.get("init-bundle"), weights_store=spec.weights_store, tags=spec.extra,
    )
    train_mirrored(job, resume=(folder / "model" / LAST_CHECKPOINT).is_file(), processes=processes_per_task())
    return folder / "model"


def _run_context(spec: NodeTrainSpec):
    from trashseg.steps import RunContext
    from trashseg.tracking import TrackingConfig

    # An empty experiment in the spec means the default one.
    return RunContext(spec.tracking_uri, spec.experiment or TrackingConfig().experiment, spec.stage)


def _leave_group() -> None:
    """Training leaves the group itself; this covers a run found complete, and errors."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    from trashseg.launch import worker_logging
    from trashseg.tracking import KFP_RUN_ID_ENV

    parser = argparse.ArgumentParser(prog="python -m trashseg.trainjob.node", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the NodeTrainSpec as JSON (the launcher writes it)")
    args = parser.parse_args(argv)
    worker_logging(int(os.environ.get("RANK", "0")), logging.INFO)
    try:
        spec = NodeTrainSpec.from_json(args.spec)
        os.environ.setdefault(KFP_RUN_ID_ENV, spec.run_id)  # the MLflow run's kfp.run_id tag
        train_node(spec)
    except UserError as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())  # record: an unexpected error's traceback reaches torchrun's failure report
