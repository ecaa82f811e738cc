"""Training against full disks, file size limits, broken checkpoints and tracking services that
are not there (issue 20): one clear error each, naming the path or URI, and nothing left behind."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trashseg.checkpoints import save_checkpoint
from trashseg.cli import main
from trashseg.errors import ConfigError, DataError, OutputError, UserError
from trashseg.models import load_checkpoint
from trashseg.tracking import TrackedRun, TrackingConfig, ensure_sqlite_store

TINY = ["--set", "architecture=segformer-b0-tiny", "--set", "image_size=32", "--set", "batch_size=2",
        "--set", "iterations=2", "--set", "warmup_iters=0", "--set", "eval_interval=2", "--set", "num_workers=0",
        "--set", "checkpoint_interval=1"]


def _train(sample_dataset, out, caplog, *extra):
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = main(["train", "--data", str(sample_dataset), "--out", str(out), *TINY, *extra])
    return code, caplog.text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial" in p.name)


def test_a_checkpoint_on_a_full_disk_says_no_space_the_path_and_the_free_space(
    sample_dataset, small_filesystem, caplog
):
    disk = small_filesystem("300k")  # the config fits, the tiny model's last.pt (~1 MB) does not
    code, shown = _train(sample_dataset, disk / "run", caplog, "--set", "tracking.enabled=false")
    assert code == 2, shown
    assert f"cannot write {disk / 'run' / 'last.pt'}: No space left on device" in shown
    assert "KiB free in" in shown and "unexpected pos" not in shown
    assert _leftovers(disk) == []


def test_a_checkpoint_over_the_file_size_limit_is_named(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))  # Python ignores SIGXFSZ: writes get EFBIG
    try:
        with pytest.raises(OutputError, match=r"cannot write .*big\.pt: File too large .*ulimit -f"):
            save_checkpoint(tmp_path / "big.pt", {"weights": torch.zeros(100_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []


def test_the_mlflow_store_on_a_full_disk_says_no_space_the_path_and_the_free_space(small_filesystem):
    disk = small_filesystem("200k")  # too small for MLflow's schema
    with pytest.raises(OutputError, match="no space left on device: the MLflow store") as raised:
        TrackedRun(TrackingConfig(), disk)
    assert f"{disk / 'mlflow.db'}" in str(raised.value) and "free in" in str(raised.value)
    assert "database or disk is full" not in str(raised.value)
    assert sorted(p.name for p in disk.iterdir()) == []  # no half store, no journal


def test_leftovers_of_a_killed_store_creation_are_removed(tmp_path):
    path = tmp_path / "mlflow.db"
    dead = 99_999_999  # above any pid_max: no such process
    for suffix in (".partial", ".partial-journal"):  # what a SIGKILL mid-creation leaves
        (tmp_path / f".mlflow.db.{dead}-deadbeef{suffix}").write_bytes(b"half")
    ensure_sqlite_store(f"sqlite:///{path}")
    assert path.is_file() and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"hello", r"is not a trashseg checkpoint: a checkpoint is the PyTorch zip archive .*\(first bytes b'hell'\)"),
        (b'{"images": []}', r"is not a trashseg checkpoint: .*does not start like one"),
        ({"format": "trashseg-checkpoint/1"}, r"incomplete trashseg checkpoint: architecture, classes, model"),
        ({"format": "trashseg-checkpoint/1", "architecture": "segformer-b0-tiny", "classes": [{"id": 0}],
          "model": {}, "image_size": 32, "normalisation": {}, "iteration": 1, "config": {}},
         r"damaged trashseg checkpoint: its meta or weights do not fit together \(KeyError"),
    ],
)
def test_predict_names_a_file_that_is_not_a_checkpoint(tmp_path, content, fragment):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(DataError, match=fragment):
        load_checkpoint(path)


def test_an_unreachable_tracking_server_is_one_line_naming_the_redacted_uri(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UserError) as raised:
        TrackedRun(TrackingConfig(uri=f"http://bob:p@ss@127.0.0.1:{port}"), tmp_path)
    message = str(raised.value)
    assert f"the MLflow tracking server http://127.0.0.1:{port} cannot be reached" in message
    assert "tracking.enabled=false" in message and "p@ss" not in message and "ss@" not in message


def test_a_postgresql_uri_without_its_driver_says_which_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as in an environment without the driver
    with pytest.raises(ConfigError, match=r"needs the database driver psycopg.*pip install 'psycopg\[binary\]'") as raised:
        TrackedRun(TrackingConfig(uri="postgresql://bob:p@ss@127.0.0.1:1/mlflow"), tmp_path)
    assert "p@ss" not in str(raised.value) and "postgresql://bob:***@127.0.0.1:1/mlflow" in str(raised.value)


def test_the_images_install_the_postgresql_driver():
    root = Path(__file__).resolve().parents[2]
    pins = subprocess.run([sys.executable, str(root / "images" / "pins.py"), str(root / "pyproject.toml")],
                          capture_output=True, text=True, check=True).stdout.split()
    assert any(pin.startswith("psycopg[binary]==") for pin in pins)
