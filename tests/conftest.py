"""Shared test fixtures. Tests stay fast on 2 CPU cores: tiny models, small generated data."""

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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts); yields its URI."""
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    log_file = open(root / "server.log", "w")
    process = subprocess.Popen(
        [
            mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
        ],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=root,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {process.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after 120 s: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log_file.close()
