"""The CLI under hostile use (issue 20): OS refusals, out-of-range values and credentials with
odd characters each end in one clear line and exit 2, never a traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from trashseg.cli import main
from trashseg.config import from_mapping
from trashseg.errors import ConfigError
from trashseg.secrets import has_credentials, redact


def _run(args, caplog, capsys):
    """(exit status, everything shown) of `trashseg ARGS`, in-process."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        try:
            code = main([str(a) for a in args])
        except SystemExit as stop:  # argparse's usage errors
            code = stop.code
    captured = capsys.readouterr()
    return code, caplog.text + captured.out + captured.err


# --- operating-system refusals: path, what failed, what to do ---------------------------


def test_output_path_under_a_file_names_the_path_and_the_fix(tmp_path, caplog, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, shown = _run(["sample-data", blocker / "out", "--images", "3", "--size", "32"], caplog, capsys)
    assert code == 2 and "Traceback" not in shown
    assert f"cannot create the folder {blocker / 'out'}" in shown
    assert "a part of the path is a file, not a folder" in shown


def test_a_destination_under_a_file_is_not_called_existing(tmp_path, caplog, capsys):
    assert main(["sample-data", str(tmp_path / "s"), "--images", "3", "--size", "32"]) == 0
    assert main(["data", "push", str(tmp_path / "s"), "--store", str(tmp_path / "store")]) == 0
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, shown = _run(["data", "pull", "latest", blocker / "x", "--store", tmp_path / "store"], caplog, capsys)
    assert code == 2 and "Traceback" not in shown
    assert f"{blocker}: it is a file where a folder is needed" in shown


def test_a_name_too_long_for_the_filesystem_is_one_line(tmp_path, caplog, capsys):
    code, shown = _run(["sample-data", tmp_path / ("n" * 300), "--images", "3", "--size", "32"], caplog, capsys)
    assert code == 2 and "Traceback" not in shown
    assert "too long" in shown and "use a shorter name" in shown and "n" * 300 in shown


def test_an_unreadable_annotation_file_names_what_was_given(caplog, capsys):
    # /proc/self/mem fails every read with EIO, even for root (chmod cannot simulate this as root).
    code, shown = _run(["validate-data", "/proc/self/mem"], caplog, capsys)
    assert code == 2 and "Traceback" not in shown
    assert "/proc/self/mem cannot be read: input/output error" in shown and "give a regular file" in shown


def _unreadable_file(tmp_path):
    """A file this process may not read: chmod 000 (not enough for root), else a /proc file
    root may not read either where this kernel says so; None when neither is refused."""
    candidate = tmp_path / "train.json"
    candidate.write_text("{}")
    candidate.chmod(0)
    for path in (candidate, Path("/proc/1/environ")):
        try:
            path.open("rb").close()
        except PermissionError:
            return path
        except OSError:
            continue
    return None


def test_a_permission_denied_annotation_file_is_one_line(tmp_path, caplog, capsys):
    path = _unreadable_file(tmp_path)
    if path is None:
        pytest.skip("every file is readable here (root without a protected /proc)")
    code, shown = _run(["validate-data", path], caplog, capsys)
    assert code == 2 and "Traceback" not in shown
    assert f"{path} cannot be read: permission denied" in shown and "fix its permissions" in shown


def test_an_unreadable_config_file_is_a_config_error(tmp_path, caplog, capsys):
    code, shown = _run(["train", "--data", tmp_path, "--out", tmp_path / "o", "--config", "/proc/self/mem"],
                       caplog, capsys)
    assert code == 2 and "Traceback" not in shown
    assert "config file /proc/self/mem cannot be read" in shown
    code, shown = _run(["train", "--data", tmp_path, "--out", tmp_path / "o", "--config", tmp_path], caplog, capsys)
    assert code == 2 and f"config file {tmp_path} is not a regular file" in shown


def test_a_read_only_output_location_is_one_line(small_filesystem, caplog, capsys):
    read_only = small_filesystem("1m", readonly=True)
    code, shown = _run(["sample-data", read_only / "sample", "--images", "3", "--size", "32"], caplog, capsys)
    assert code == 2 and "Traceback" not in shown
    assert f"{read_only / 'sample'}" in shown and "read-only" in shown and "choose a writable location" in shown


def test_data_push_to_a_store_that_is_a_file(tmp_path, caplog, capsys):
    store = tmp_path / "store"
    store.write_text("not a folder")
    (tmp_path / "ds").mkdir()
    code, shown = _run(["data", "push", tmp_path / "ds", "--store", store], caplog, capsys)
    assert code == 2 and "Traceback" not in shown
    assert f"store location {store} is a file, not a folder" in shown


# --- values with no bound: refused at construction, naming the valid range ---------------


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"iterations": 10**22}, r"iterations=10000000000000000000000: expected an integer in \[1, 10000000\]"),
        ({"batch_size": 10**8}, r"batch_size=100000000: expected an integer in \[1, 1024\]"),
        ({"image_size": 10**6}, r"image_size=1000000: expected an integer in \[32, 4096\]"),
        ({"image_size": -1}, r"image_size=-1: expected an integer in \[32, 4096\]"),
        ({"seed": 2**70}, r"seed=\d+: expected an integer in \[0, 4294967295\]"),
        ({"iterations": 10**5000}, r"iterations=<an integer of about 5000 digits>"),
        ({"augment": {"crop_size": 10**6}}, r"augment.crop_size=1000000: expected an integer in \[8, 4096\]"),
        ({"augment": {"scale_range": [0.5, 1e9]}}, r"0 < low <= high <= 8"),
    ],
)
def test_train_config_values_have_upper_bounds(values, fragment):
    from trashseg.training import TrainConfig

    with pytest.raises(ConfigError, match=fragment):
        from_mapping(TrainConfig, {"architecture": "segformer-b0-tiny", **values})


def test_stage_configs_have_upper_bounds():
    from trashseg.crf import CrfConfig
    from trashseg.ensemble.config import EnsembleConfig

    with pytest.raises(ConfigError, match=r"fit_rounds=1000000000: expected an integer in \[1, 100\]"):
        EnsembleConfig(fit_rounds=10**9)
    with pytest.raises(ConfigError, match=r"holdout_folds=1000000: expected an integer in \[1, 100\]"):
        EnsembleConfig(holdout_folds=10**6)
    with pytest.raises(ConfigError, match=r"at most 100 grid values"):
        EnsembleConfig(weight_grid=tuple(range(1000)))
    with pytest.raises(ConfigError, match=r"crf.iterations=100000000: expected an integer in \[1, 1000\]"):
        CrfConfig(iterations=10**8)


def test_predict_refuses_unbounded_options_before_loading_anything(tmp_path):
    from trashseg.predict import predict

    with pytest.raises(ConfigError, match=r"batch_size=100000000: expected an integer in \[1, 1024\]"):
        predict(tmp_path / "missing.pt", tmp_path, "test", tmp_path / "out", batch_size=10**8)
    with pytest.raises(ConfigError, match=r"processes=99999: expected an integer in \[1, 64\]"):
        predict(tmp_path / "missing.pt", tmp_path, "test", tmp_path / "out", processes=99999)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["architectures", "--gflops", "--image-size", "-1"], "argument --image-size: -1 is out of range: expected [32, 4096]"),
        (["view", ".", "--port", "99999"], "argument --port: 99999 is out of range: expected [1, 65535]"),
        (["sample-data", "x", "--size", "100000"], "argument --size: 100000 is out of range: expected [32, 4096]"),
        (["sample-data", "x", "--images", str(10**11)], "argument --images: 100000000000 is out of range"),
        (["predict", "--checkpoint", "c", "--data", "d", "--out", "o", "--batch-size", str(10**8)],
         "argument --batch-size: 100000000 is out of range: expected [1, 1024]"),
        (["train", "--data", "d", "--out", "o", "--stop-after", "9" * 5000], "a number of 5000 digits is out of range"),
        (["split", "a.json", "o", "--folds", "1000000000"], "argument --folds: 1000000000 is out of range: expected [2, 100]"),
        (["split", "a.json", "o", "--seed", "-1"], "argument --seed: -1 is out of range: expected [0, 4294967295]"),
    ],
)
def test_numeric_options_are_bounded_usage_errors(args, fragment, caplog, capsys):
    code, shown = _run(args, caplog, capsys)
    assert code == 2 and fragment in shown and "Traceback" not in shown


def test_split_refuses_more_folds_than_images(tmp_path, caplog, capsys):
    assert main(["sample-data", str(tmp_path / "s"), "--images", "10", "--size", "32"]) == 0
    code, shown = _run(["split", tmp_path / "s" / "train.json", tmp_path / "folds", "--folds", "50"], caplog, capsys)
    assert code == 2 and "folds=50: expected 2 to 6 (the number of images" in shown


def test_sample_data_help_states_its_limits(capsys):
    with pytest.raises(SystemExit):
        main(["sample-data", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "3 to 100000" in shown and "32 to 4096" in shown and "1e+10 pixels" in shown


def test_sample_data_refuses_a_size_that_would_fill_the_disk(tmp_path, caplog, capsys):
    code, shown = _run(["sample-data", tmp_path / "s", "--images", "100000", "--size", "4096"], caplog, capsys)
    assert code == 2 and "it would fill the disk" in shown
    assert not (tmp_path / "s").exists()


def test_view_refuses_a_missing_folder_before_starting_the_server(tmp_path, caplog, capsys, monkeypatch):
    import subprocess

    def no_server(*args, **kwargs):
        raise AssertionError("the server was started")

    monkeypatch.setattr(subprocess, "call", no_server)
    code, shown = _run(["view", tmp_path / "missing"], caplog, capsys)
    assert code == 2 and f"trashseg view DATA {tmp_path / 'missing'}: does not exist" in shown
    (tmp_path / "data").mkdir()
    code, shown = _run(["view", tmp_path / "data", "--submission", tmp_path / "none.csv"], caplog, capsys)
    assert code == 2 and "--submission" in shown and "does not exist" in shown


# --- credentials: redacted with the parser that splits the URI ---------------------------


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://bob:p@ss@mlflow:5000/x", "http://bob:***@mlflow:5000/x"),
        ("postgresql://u:a@b@c:d@db:5432/m?x=1 and more", "postgresql://u:***@db:5432/m?x=1 and more"),
        ("https://tok@en@host/x", "https://***@host/x"),
        ("s3://k:s@b", "s3://k:***@b"),
        ("sqlite:////tmp/a@b/mlflow.db user@host", "sqlite:////tmp/a@b/mlflow.db user@host"),
    ],
)
def test_a_password_holding_at_signs_is_redacted_whole(text, shown):
    assert redact(text) == shown
    assert has_credentials(text) == (text != shown)


def test_a_database_uri_keeps_its_password_for_the_driver_and_out_of_logs(caplog, monkeypatch):
    from trashseg.tracking import client_uri

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    uri = "postgresql://bob:p@ss@db:5432/mlflow"
    with caplog.at_level(logging.WARNING):
        assert client_uri(uri) == uri  # SQLAlchemy reads the password from the URI only
    assert "p@ss" not in caplog.text and "postgresql://bob:***@db:5432/mlflow" in caplog.text


def test_a_network_error_is_not_reported_as_a_path_problem():
    import argparse

    from trashseg.cli import os_error_line

    line = os_error_line(ConnectionRefusedError(111, "Connection refused"),
                         argparse.Namespace(command="data", data_command="push", uri="http://u:p@ss@h"))
    assert line.startswith("trashseg data push: network error") and "check the path" not in line


def test_control_characters_in_names_reach_the_terminal_escaped(tmp_path):
    """An ANSI escape in a class name and a newline in a file_name, shown by the real command's
    logging and summary: escaped, so they can neither restyle the terminal nor forge a line."""
    import json
    import subprocess
    import sys

    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 32, "height": 32},
                   {"id": 2, "file_name": "b\nINFO forged line.jpg", "width": 32, "height": 32}],
        "categories": [{"id": 7, "name": "\x1b[31mred\x1b[0m"}],  # not id 1: the mapping is printed
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "area": 64.0, "iscrowd": 0, "bbox": [0, 0, 8, 8],
                         "segmentation": [[0, 0, 8, 0, 8, 8, 0, 8]]}],
    }
    (tmp_path / "train.json").write_text(json.dumps(coco))
    shown = subprocess.run([sys.executable, "-c", "import sys; from trashseg.cli import main; sys.exit(main())",
                            "validate-data", str(tmp_path / "train.json")], capture_output=True, text=True, timeout=120)
    text = shown.stdout + shown.stderr
    assert shown.returncode == 0, text
    assert "\x1b" not in text and "\\x1b[31mred" in text
    assert not any(line.startswith("INFO forged line") for line in text.splitlines()), text
