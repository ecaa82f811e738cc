"""Where the viewer looks: `trashseg view` arguments and the newest `make demo` run's outputs."""

from __future__ import annotations

import json
import os
import time

import pytest

from trashseg.cli import build_parser
from trashseg.cli.view import server_command, sources_from_args
from trashseg.errors import UserError
from trashseg.viewer.sources import ViewerSources, latest_demo_sources


def _demo_run(out, name: str) -> None:
    """The task folders pipelines/local.py's kfp.local runs write (OUT/kfp/<run>/<task>/<output>)."""
    run = out / "kfp" / name
    (run / "prepare-data" / "dataset").mkdir(parents=True)
    (run / "prepare-data" / "dataset" / "classes.json").write_text("[]")
    for split in ("val", "test"):
        folder = run / "for-loop-2-iteration-0" / "predict" / f"{split}_predictions"
        folder.mkdir(parents=True)
        (folder / "predictions.json").write_text(json.dumps({"split": split}))
    (run / "ensemble-crf" / "ensemble" / "stages").mkdir(parents=True)
    (run / "make-submission").mkdir()
    (run / "make-submission" / "submission").write_text("image_id,PredictionString\n")


def test_latest_demo_run_is_found(tmp_path):
    with pytest.raises(UserError, match="run `make demo` first"):
        latest_demo_sources(tmp_path)
    _demo_run(tmp_path, "old")
    _demo_run(tmp_path, "new")
    past = time.time() - 100
    os.utime(tmp_path / "kfp" / "old", (past, past))
    (tmp_path / "mlflow.db").write_text("")
    found = latest_demo_sources(tmp_path)
    run = tmp_path / "kfp" / "new"
    assert found.data == str(run / "prepare-data" / "dataset")
    assert len(found.predictions) == 2 and all(p.startswith(str(run)) for p in found.predictions)
    assert found.ensemble == str(run / "ensemble-crf" / "ensemble")
    assert found.submission == str(run / "make-submission" / "submission")
    assert found.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    args = build_parser().parse_args(["view", "--demo", str(tmp_path), "--submission", "other.csv"])
    chosen = sources_from_args(args)
    assert chosen.submission == "other.csv" and chosen.data == found.data  # explicit options win
    assert ViewerSources.from_json(chosen.to_json()) == chosen


def test_view_needs_data_and_serves_headless_on_the_address():
    with pytest.raises(UserError, match="DATA"):
        sources_from_args(build_parser().parse_args(["view"]))
    command = server_command(8600, "0.0.0.0")
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("trashseg/viewer/app.py")
    assert command[command.index("--server.port") + 1] == "8600"
    assert command[command.index("--server.address") + 1] == "0.0.0.0"
    assert command[command.index("--server.headless") + 1] == "true"


def test_runs_page_link_shows_no_tracking_credentials():
    from trashseg.viewer.views.runs import ui_link

    assert ui_link("https://alice:pw@mlflow.example:5000/") == "[Open the MLflow UI](https://mlflow.example:5000/)"
    assert ui_link("http://ghp_tok@mlflow.example/") == "[Open the MLflow UI](http://mlflow.example/)"
    assert "pw" not in ui_link("postgresql://alice:pw@db/mlflow")
