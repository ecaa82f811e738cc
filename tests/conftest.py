"""Shared test fixtures. Tests stay fast on 2 CPU cores: tiny models, small generated data."""

import contextlib
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# The test machines are shared, oversubscribed 2-core boxes: torch's intra-op threads
# spin-wait for each other when one is descheduled, which made a tiny training step 10x
# slower with 2 threads than with 1. Set before anything imports torch; override by env.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """The generated sample data (60 images, 96 px: 42 train / 9 val / 9 test), prepared once."""
    from trashseg.data.prepare import prepare_dataset
    from trashseg.data.sample import generate_sample_dataset

    root = tmp_path_factory.mktemp("sample")
    generate_sample_dataset(root / "raw", images=60, size=96, seed=0)
    prepare_dataset(root / "raw", root / "prepared")
    return root / "prepared"


@contextlib.contextmanager
def _running_mlflow_server(root, artifacts_destination: str, env: dict | None = None, timeout_s: float = 120):
    """Run a real `mlflow server` on 127.0.0.1 (SQLite backend in `root`, proxied artifacts
    at `artifacts_destination`) until the block ends; yields its URI."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    log_path = root / "mlflow-server.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                "--serve-artifacts", "--artifacts-destination", artifacts_destination,
            ],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=root,
            start_new_session=True,  # its own process group: the server and its workers stop together
        )
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if process.poll() is not None:
                    pytest.fail(f"mlflow server exited with {process.returncode}:\n{log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"mlflow server not healthy after {timeout_s} s:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.5)
            yield uri
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="session")
def start_mlflow_server():
    """`with start_mlflow_server(root, artifacts_destination, env) as uri:` a real server."""
    return _running_mlflow_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied local artifacts); yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with _running_mlflow_server(root, str(root / "artifacts")) as uri:
        yield uri


@pytest.fixture
def small_filesystem(tmp_path):
    """Factory: small_filesystem(size="1m", readonly=False) -> a folder on a fresh tmpfs of
    that size (a real full or read-only disk); skips where mounting is not permitted."""
    import shutil
    import subprocess

    mounts = []

    def mount(size: str = "1m", *, readonly: bool = False):
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        folder = tmp_path / f"fs{len(mounts)}"
        folder.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)
