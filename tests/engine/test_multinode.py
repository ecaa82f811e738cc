"""Multi-node training for real: torchrun "nodes" on 127.0.0.1, each running the TrainJob node entry.

Each node is `python -m torch.distributed.run --module trashseg.trainjob.node --spec JSON` with
only the PET_* variables Kubeflow Trainer's torch plugin sets (gloo on CPU, one process per
node) and its own TMPDIR, as separate pods have separate disks. The nodes share nothing but
the object store: a local folder holding the staged dataset and the checkpoint mirror.
"""

import dataclasses
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from process_tree import kill_process_tree

from trashseg.storage import open_store
from trashseg.trainjob.node import node_folder
from trashseg.trainjob.spec import NodeTrainSpec

ARCHITECTURE = "segformer-b0-tiny"
# Checkpoints every 2 steps, validation (and so best.pt) every 4: see the kill test.
SETTINGS = ("batch_size=1", "warmup_iters=1", "eval_interval=4", "checkpoint_interval=2", "num_workers=0",
            "log_interval=1", "lr=1e-3", "tracking.enabled=false")
ITERATIONS = 8


@pytest.fixture(scope="module")
def store(sample_dataset, tmp_path_factory):
    """A store (local folder) and the dataset to stage in it."""
    return tmp_path_factory.mktemp("multinode") / "store", sample_dataset


@pytest.fixture(scope="module")
def two_nodes(store, tmp_path_factory):
    """An uninterrupted run on 2 nodes x 1 process: (its spec, its nodes)."""
    spec = _spec(store, "two-nodes")
    return spec, _run_nodes(spec, tmp_path_factory.mktemp("two-nodes"), nnodes=2, nproc=1)


def _spec(store, run_id: str) -> NodeTrainSpec:
    """The node spec of a run whose dataset is staged as the launcher stages it, under the run's store."""
    root, dataset = store
    run_store = open_store(root / "checkpoints" / run_id)
    run_store.put_folder(dataset, f"staged/{run_id}/dataset")
    return NodeTrainSpec(
        run_id=run_id, architecture=ARCHITECTURE, stage="base", iterations=ITERATIONS, image_size=32,
        dataset_version="v", checkpoint_store=str(root / "checkpoints"),
        dataset_uri=run_store.uri(f"staged/{run_id}/dataset"), settings=SETTINGS,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Node:
    """One node: torchrun configured by the PET_* variables only, in its own session (killed as a whole)."""

    def __init__(self, spec, tmp: Path, *, rank: int, nnodes: int, nproc: int, port: int) -> None:
        self.tmp, self.log = tmp, tmp / f"node-{rank}.log"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
        env.update(PET_NNODES=str(nnodes), PET_NPROC_PER_NODE=str(nproc), PET_NODE_RANK=str(rank),
                   PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port), TMPDIR=str(tmp), OMP_NUM_THREADS="1",
                   TRASHSEG_PROCESSES="2")  # as a GPU pod's env may say: a torchrun worker still spawns nothing
        command = [sys.executable, "-m", "torch.distributed.run", "--module", "trashseg.trainjob.node",
                   "--spec", spec.to_json()]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            pytest.fail(f"node did not finish in {timeout} s; its log ends:\n{self.output()[-4000:]}")

    def kill(self, signum) -> None:
        kill_process_tree(self.process.pid, signum)  # the workers too: torchrun gives each its own session
        self.process.wait(60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _run_nodes(spec, tmp: Path, *, nnodes: int, nproc: int) -> list[_Node]:
    port = _free_port()
    nodes = [_Node(spec, tmp / f"node{r}", rank=r, nnodes=nnodes, nproc=nproc, port=port) for r in range(nnodes)]
    for node in nodes:
        assert node.wait() == 0, node.output()[-4000:]
    return nodes


def _mirrored(spec) -> Path:
    return Path(spec.checkpoint_store) / spec.run_id / spec.mirror_prefix


def _weights(state) -> torch.Tensor:
    """Trained parameters (BatchNorm running statistics left out: under DDP they are rank 0's)."""
    return torch.cat([v.float().ravel() for k, v in state["model"].items() if v.is_floating_point() and "running" not in k])


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.mark.slow  # torchrun launches: over a minute on a busy 2-core machine
def test_two_nodes_train_what_one_node_with_two_processes_trains(store, two_nodes, tmp_path):
    two_nodes, nodes = two_nodes
    one_node = _spec(store, "one-node")
    _run_nodes(one_node, tmp_path / "one", nnodes=1, nproc=2)

    across, within = _load(_mirrored(two_nodes) / "last.pt"), _load(_mirrored(one_node) / "last.pt")
    assert across["world_size"] == within["world_size"] == 2 and across["iteration"] == ITERATIONS
    assert {p.name for p in _mirrored(two_nodes).iterdir()} >= {"last.pt", "best.pt", "config.json", "classes.json"}
    from trashseg.models import build_model

    torch.manual_seed(0)
    moved = (_weights(within) - _weights({"model": build_model(ARCHITECTURE, 11).state_dict()})).norm()
    distance = ((_weights(across) - _weights(within)).norm() / moved).item()
    assert distance < 0.05, distance  # the tolerance of 2 processes vs 1 process x grad_accum 2
    # Node 1 staged its own copy of the dataset (from the store) and wrote no checkpoint: rank 0 does.
    node1 = node_folder(two_nodes, nodes[1].tmp)
    assert (node1 / "dataset" / "dataset.json").is_file() and not (node1 / "model" / "last.pt").exists()
    assert "train segformer-b0-tiny" in nodes[0].output() and "train segformer-b0-tiny" not in nodes[1].output()


def test_a_node_restarted_after_training_completed_exits_at_once(two_nodes, tmp_path, monkeypatch):
    import tempfile

    from trashseg.trainjob.node import train_node

    spec, _ = two_nodes
    mirrored = {p.name: p.stat().st_mtime_ns for p in _mirrored(spec).iterdir()}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this node's own disk
    model_dir = train_node(spec)  # one process, no torchrun: a 1-node restart
    assert _load(model_dir / "last.pt")["iteration"] == ITERATIONS
    assert {p.name: p.stat().st_mtime_ns for p in _mirrored(spec).iterdir()} == mirrored, "nothing trained or re-mirrored"


@pytest.mark.slow
def test_a_killed_node_and_a_restarted_job_end_bitwise_as_an_uninterrupted_run(store, two_nodes, tmp_path):
    reference = two_nodes[0]
    spec = _spec(store, "preempted")
    # Hold the store's lock on best.pt: rank 0 blocks at the first validation (iteration 4) while
    # uploading it, so the job is frozen mid-run, after last.pt of iteration 2 was mirrored.
    lock = Path(spec.checkpoint_store) / spec.run_id / ".trashseg-meta" / spec.mirror_prefix / "best.pt.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        port = _free_port()
        nodes = [_Node(spec, tmp_path / f"try1-node{r}", rank=r, nnodes=2, nproc=1, port=port) for r in range(2)]
        deadline = time.monotonic() + 240
        while not (_mirrored(spec) / "last.pt").is_file():
            assert time.monotonic() < deadline and all(n.process.poll() is None for n in nodes), nodes[0].output()[-4000:]
            time.sleep(0.1)
        nodes[1].kill(signal.SIGKILL)  # node 1 is lost (preempted)
        nodes[0].kill(signal.SIGKILL)  # the JobSet restarts the whole job: node 0's pod goes too
        fcntl.flock(held, fcntl.LOCK_UN)
    assert _load(_mirrored(spec) / "last.pt")["iteration"] == 2 and not (_mirrored(spec) / "best.pt").exists()

    restarted = _run_nodes(spec, tmp_path / "try2", nnodes=2, nproc=1)
    assert "resuming from" in restarted[0].output()
    expected, resumed = _load(_mirrored(reference) / "last.pt"), _load(_mirrored(spec) / "last.pt")
    assert resumed["iteration"] == ITERATIONS and resumed["world_size"] == 2
    for key, tensor in expected["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key
    assert _load(_mirrored(spec) / "best.pt")["best_miou"] == _load(_mirrored(reference) / "best.pt")["best_miou"]


def test_a_bad_spec_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "trashseg.trainjob.node", "--spec"]
    done = subprocess.run([*command, '{"run_id": "r", "architecture": "x"'], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "not valid JSON" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([*command, '{"run_id": "r", "architecture": "x"}'], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "the node spec lacks ['stage', 'iterations'" in done.stderr and "Traceback" not in done.stderr, done.stderr
    spec = NodeTrainSpec(run_id="r", architecture=ARCHITECTURE, stage="base", iterations=2, image_size=32,
                         dataset_version="v", checkpoint_store=str(tmp_path), dataset_uri=str(tmp_path / "r/staged/dataset"),
                         settings=("warmup_iters=1",))
    done = subprocess.run([*command, spec.to_json()], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"no objects under {tmp_path}/r/staged/dataset" in done.stderr
    bad_setting = dataclasses.replace(spec, settings=("no_such_setting=1",))
    done = subprocess.run([*command, bad_setting.to_json()], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "no_such_setting" in done.stderr and "pulling" not in done.stderr, done.stderr
