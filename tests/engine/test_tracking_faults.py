"""Tracking under faults: credentials never shown or saved, a kill never breaks the local
store, killed runs are not left RUNNING, and the first error of a failed training wins."""

import errno
import json
import logging
import os
import signal
import sqlite3

import pytest
import torch
from mlflow.tracking import MlflowClient

from trashseg.cli import main
from trashseg.config import from_mapping
from trashseg.errors import DataError, OutputError
from trashseg.tracking import TrackedRun, TrackingConfig, client_uri
from trashseg.training import TrainConfig, train

PASSWORD = "s3cret-Pw0rd"


def _tiny(**changes):
    values = dict(architecture="segformer-b0-tiny", image_size=48, batch_size=2, iterations=2, warmup_iters=0,
                  eval_interval=2, checkpoint_interval=1, log_interval=1, num_workers=0)
    values.update(changes)
    return from_mapping(TrainConfig, values)


def _partials(folder):
    return sorted(p.name for p in folder.rglob("*.partial"))


def test_credentials_in_the_tracking_uri_never_reach_output_files_or_mlflow(
    mlflow_server, sample_dataset, tmp_path, capfd, caplog, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")
    uri = mlflow_server.replace("http://", f"http://alice:{PASSWORD}@")
    out = tmp_path / "run"
    args = ["train", "--data", str(sample_dataset), "--out", str(out), "--set", f"tracking.uri={uri}",
            "--set", "architecture=segformer-b0-tiny", "--set", "image_size=48", "--set", "batch_size=2",
            "--set", "iterations=2", "--set", "warmup_iters=0", "--set", "eval_interval=2", "--set", "num_workers=0"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
        # MLflow's own loggers go through the same redaction
        logging.getLogger("mlflow.test").warning("connecting to %s", uri)
    captured = capfd.readouterr()
    shown = caplog.text + captured.out + captured.err
    assert PASSWORD not in shown
    assert "View run train-segformer-b0-tiny at: http://127.0.0.1:" in captured.out  # MLflow's own line
    assert "carries credentials" in caplog.text and "MLFLOW_TRACKING_PASSWORD" in caplog.text
    assert "alice:***@" in caplog.text
    # the credentials were moved to the variables MLflow reads
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD

    for name in ("config.json", "classes.json"):
        assert PASSWORD not in (out / name).read_text()
    assert json.loads((out / "config.json").read_text())["tracking"]["uri"].startswith("http://alice:***@")
    for name in ("last.pt", "best.pt"):
        state = torch.load(out / name, weights_only=True)
        assert PASSWORD not in json.dumps(state["config"])
    result = json.loads(captured.out[captured.out.rindex("{\n"):])
    run = MlflowClient(mlflow_server).get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"].startswith("http://alice:***@")
    assert PASSWORD not in json.dumps({**run.data.params, **run.data.tags})


def test_a_token_in_the_tracking_uri_moves_to_mlflows_token_variable(caplog, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    with caplog.at_level(logging.WARNING):
        assert client_uri("https://ghp_secret42@mlflow.example:8443/x") == "https://mlflow.example:8443/x"
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "ghp_secret42"
    assert "ghp_secret42" not in caplog.text and "https://***@mlflow.example" in caplog.text
    assert "set MLFLOW_TRACKING_TOKEN instead" in caplog.text


def test_half_made_sqlite_store_is_set_aside_and_recreated(tmp_path, caplog):
    # What a kill during MLflow's schema set-up left: some tables, an intermediate revision.
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY)")
        connection.execute("CREATE TABLE alembic_version (version_num TEXT)")
        connection.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")
    with caplog.at_level(logging.WARNING), TrackedRun(TrackingConfig(experiment="e"), tmp_path) as tracked:
        tracked.log_metrics({"a": 1.0}, step=0)
    assert "half-initialised" in caplog.text
    assert len(list(tmp_path.glob("mlflow.db.half-made-*"))) == 1
    assert MlflowClient(f"sqlite:///{db}").get_run(tracked.run_id).info.status == "FINISHED"

    # an empty file (killed before the first table) too
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mlflow.db").write_bytes(b"")
    with TrackedRun(TrackingConfig(experiment="e"), tmp_path / "b"):
        pass

    # a store with runs in an old schema is not touched: it needs an upgrade, not a new store
    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "mlflow.db") as connection:
        connection.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY)")
        connection.execute("INSERT INTO runs VALUES ('abc')")
        connection.execute("CREATE TABLE alembic_version (version_num TEXT)")
        connection.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")
    with pytest.raises(DataError, match="1 MLflow run.*mlflow db upgrade"):
        TrackedRun(TrackingConfig(), old)


def test_a_kill_during_store_creation_leaves_no_store_behind(tmp_path, monkeypatch):
    import mlflow.store.db.utils as db_utils

    real_upgrade = db_utils._upgrade_db

    def killed_mid_migration(engine):
        raise SystemExit(137)  # as if the process died here: tables exist, migrations half done

    monkeypatch.setattr(db_utils, "_upgrade_db", killed_mid_migration)
    with pytest.raises(SystemExit):
        TrackedRun(TrackingConfig(), tmp_path)
    assert not (tmp_path / "mlflow.db").exists() and _partials(tmp_path) == []
    monkeypatch.setattr(db_utils, "_upgrade_db", real_upgrade)
    with TrackedRun(TrackingConfig(experiment="after-kill"), tmp_path) as tracked:
        pass
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(tracked.run_id).info.status == "FINISHED"


_CREATE_STORE = """
import sys
from trashseg.tracking import TrackedRun, TrackingConfig
import mlflow.store.tracking.sqlalchemy_store  # imported before the clock starts
print("ready", flush=True)
TrackedRun(TrackingConfig(), sys.argv[1]).end()
"""


def test_sigkill_at_any_moment_of_store_creation_leaves_a_usable_folder(tmp_path):
    import subprocess
    import sys
    import time

    # Real kills at several moments of the schema set-up (which takes seconds), in parallel.
    delays = (0.3, 2.0)
    children = []
    for i, delay in enumerate(delays):
        folder = tmp_path / f"kill-{i}"
        child = subprocess.Popen([sys.executable, "-c", _CREATE_STORE, str(folder)], stdout=subprocess.PIPE, text=True)
        children.append((folder, delay, child))
    for _, _, child in children:
        assert child.stdout.readline().strip() == "ready"
    start = time.monotonic()
    for _, delay, child in sorted(children, key=lambda c: c[1]):
        time.sleep(max(0.0, start + delay - time.monotonic()))
        child.kill()
        child.wait()
    for folder, _, _ in children:
        # a kill mid-creation leaves only a temporary file, which the next start removes
        assert not (folder / "mlflow.db").exists() or not _partials(folder)
        with TrackedRun(TrackingConfig(experiment="after-kill"), folder) as tracked:
            tracked.log_metrics({"a": 1.0}, step=0)
        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        assert client.get_run(tracked.run_id).data.metrics == {"a": 1.0}
        assert _partials(folder) == []


def test_sigterm_marks_the_run_killed_with_metrics_up_to_the_checkpoint(sample_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def terminate_after_first_checkpoint(path, iteration):
        if path.name == "last.pt" and iteration == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. the pod is deleted

    with pytest.raises(SystemExit) as stopped:
        train(_tiny(iterations=3, eval_interval=0), sample_dataset, tmp_path, on_checkpoint=terminate_after_first_checkpoint)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("trashseg").experiment_id])
    assert run.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1]


def test_a_run_left_running_by_a_killed_process_is_marked_killed(sample_dataset, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    abandoned = TrackedRun(TrackingConfig(), tmp_path)  # a SIGKILL leaves it RUNNING: never ended
    with caplog.at_level(logging.WARNING):
        result = train(_tiny(iterations=1, eval_interval=0), sample_dataset, tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(abandoned.run_id).info.status == "KILLED"
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert f"{abandoned.run_id} was left RUNNING" in caplog.text


def test_full_disk_at_a_checkpoint_reports_that_write_not_mlflow(sample_dataset, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    import trashseg.checkpoints as checkpoints

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def save_until_the_disk_fills(state, handle):
        handle.write(b"PK\x03\x04" + bytes(1000))
        raise OSError(errno.ENOSPC, "No space left on device")

    def mlflow_disk_full(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database or disk is full")

    monkeypatch.setattr(checkpoints.torch, "save", save_until_the_disk_fills)
    monkeypatch.setattr(MlflowClient, "set_terminated", mlflow_disk_full)
    with pytest.raises(OutputError) as raised:
        train(_tiny(eval_interval=0), sample_dataset, tmp_path)
    message = str(raised.value)
    assert f"cannot write {tmp_path / 'last.pt'}: No space left on device" in message
    assert "free in" in message and raised.value.errno == errno.ENOSPC
    assert not (tmp_path / "last.pt").exists() and _partials(tmp_path) == []


def test_resume_of_a_finished_run_is_a_successful_no_op(sample_dataset, tmp_path, caplog):
    common = ["train", "--data", str(sample_dataset), "--out", str(tmp_path), "--set", "architecture=segformer-b0-tiny",
              "--set", "image_size=48", "--set", "iterations=1", "--set", "warmup_iters=0", "--set", "eval_interval=0",
              "--set", "num_workers=0", "--set", "tracking.enabled=false"]
    assert main(common) == 0
    before = (tmp_path / "last.pt").read_bytes()
    with caplog.at_level(logging.INFO):
        assert main([*common, "--resume"]) == 0
    assert "already trained to iteration 1 (of 1" in caplog.text and "nothing to do" in caplog.text
    assert (tmp_path / "last.pt").read_bytes() == before


def test_resume_before_the_first_checkpoint_starts_fresh_and_says_why(sample_dataset, tmp_path, caplog):
    config = _tiny(iterations=1, eval_interval=0, tracking={"enabled": False})
    # What a kill during the first checkpoint write leaves: config.json and a partial last.pt.
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text("{}")
    partial = tmp_path / ".last.pt.4242-deadbeef.partial"
    partial.write_bytes(b"PK\x03")
    with caplog.at_level(logging.INFO):
        result = train(config, sample_dataset, tmp_path, resume=True)
    assert "had not reached its first checkpoint" in caplog.text and "starting fresh" in caplog.text
    assert result.iterations == 1 and torch.load(result.last_checkpoint, weights_only=True)["iteration"] == 1
    assert not partial.exists()
