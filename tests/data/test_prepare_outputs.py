"""prepare's output is complete or clearly unfinished: atomic copies, cleanup, the unfinished marker, options."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from coco_builders import annotation, valid_coco

from trashseg.cli import main
from trashseg.data import prepare as prepare_module
from trashseg.data.layout import PreparedDataset
from trashseg.data.prepare import prepare_dataset
from trashseg.errors import DataError, UserError


@pytest.fixture
def source(write_dataset, tmp_path):
    data = valid_coco()
    data["images"] += [dict(im, id=im["id"] + 2, file_name=f"more/{im['file_name']}") for im in data["images"]]
    data["annotations"] += [annotation(13, 3, 1, 4, 4, 20), annotation(14, 4, 2, 4, 4, 20)]
    return write_dataset(data).parent


def _disk_full_after_half(src, dst, *args, **kwargs):
    data = open(src, "rb").read()
    with open(dst, "wb") as handle:
        handle.write(data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_copy_leaves_no_cut_image_and_no_half_dataset(source, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module.shutil, "copyfile", _disk_full_after_half)
    with pytest.raises(UserError, match="No space left on device"):
        prepare_dataset(source, tmp_path / "new", val_fraction=0.5)
    assert not (tmp_path / "new").exists()  # created by the run: removed
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="No space left on device"):
        prepare_dataset(source, tmp_path / "empty", val_fraction=0.5)
    assert list((tmp_path / "empty").iterdir()) == []  # given empty: left empty, not "not empty"
    monkeypatch.undo()
    result = prepare_dataset(source, tmp_path / "empty", val_fraction=0.5)  # the rerun just works
    assert sum(result.images.values()) == 4


def test_a_killed_prepare_is_refused_by_consumers_and_cleared_by_the_next_prepare(source, tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import os
        from trashseg.data import prepare
        prepare.write_stats = lambda *args, **kwargs: os._exit(9)  # killed halfway, after splits and masks
        prepare.prepare_dataset({str(source)!r}, {str(out)!r}, val_fraction=0.5)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 9, done.stderr[-2000:]
    assert (out / "splits" / "train.json").is_file() and (out / ".unfinished").is_file()
    dataset = PreparedDataset(out)
    for open_it in (dataset.classes, lambda: dataset.samples("train")):
        with pytest.raises(DataError, match="is an unfinished dataset: the `prepare` that wrote it failed or was killed"):
            open_it()
    assert main(["prepare", str(source), str(out), "--val-fraction", "0.5"]) == 0
    assert not (out / ".unfinished").exists() and len(dataset.samples("train")) + len(dataset.samples("val")) == 4


def test_a_folder_without_dataset_json_is_refused_by_every_consumer(source, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(source, out, val_fraction=0.5)
    (out / "dataset.json").unlink()  # as an old prepare that died before its last file left it
    dataset = PreparedDataset(out)
    with pytest.raises(DataError, match="has no dataset.json, so `prepare` never finished it"):
        dataset.classes()
    with pytest.raises(DataError, match="has no dataset.json"):
        dataset.samples("val")
    from trashseg.steps import holdout_id

    with pytest.raises(DataError, match="has no dataset.json"):
        holdout_id(out)


def test_a_folder_holding_other_files_is_never_cleared(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".unfinished").write_text("")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="also notes.txt, which prepare did not write"):
        prepare_dataset(source, out)
    assert (out / "notes.txt").read_text() == "mine"
    (out / ".unfinished").unlink()
    with pytest.raises(DataError, match="is not empty; choose a new or empty folder \\(this run wrote nothing\\)"):
        prepare_dataset(source, out)


@pytest.mark.parametrize("fraction", ["1.0", "-0.2", "0", "nan"])
def test_out_of_range_val_fractions_are_refused(source, tmp_path, fraction, caplog):
    assert main(["prepare", str(source), str(tmp_path / "out"), "--val-fraction", fraction]) == 2
    assert "out of range: expected a share strictly between 0 and 1" in caplog.text
    assert not (tmp_path / "out").exists()


def test_val_fraction_is_not_silently_ignored_with_a_val_json(source, tmp_path, write_dataset, caplog):
    val = valid_coco()
    val["images"] = [dict(im, id=im["id"] + 10, file_name=f"val/{im['file_name']}") for im in val["images"]]
    val["annotations"] = [dict(a, image_id=a["image_id"] + 10) for a in val["annotations"]]
    write_dataset(val, name="val.json")
    assert main(["prepare", str(source), str(tmp_path / "cli"), "--val-fraction", "0.3"]) == 2
    assert "--val-fraction 0.3 does not apply" in caplog.text and "has its own val.json" in caplog.text
    assert not (tmp_path / "cli").exists()
    with pytest.raises(DataError, match="val fraction 1.0 is out of range"):
        prepare_dataset(source, tmp_path / "lib", val_fraction=1.0)
    # The pipeline passes its default: prepared, and the report says the value was not used.
    result = prepare_dataset(source, tmp_path / "lib", val_fraction=0.3)
    assert result.images["val"] == 2 and "val fraction 0.3 not used" in result.notes[0]
    assert "note: val fraction 0.3 not used" in (tmp_path / "lib" / "report.md").read_text()
    assert json.loads((tmp_path / "lib" / "dataset.json").read_text())["val_fraction"] is None
    shutil.rmtree(tmp_path / "lib")
