"""`python -m pipelines.local run --data FOLDER` (make run): a user's COCO folder through full.py.

The folder is written here (not by trashseg's sample generator): polygons drawn with PIL,
two categories, file names under photos/, a test split without annotations.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines.local import (
    DEMO_ARCHITECTURES,
    DEMO_IMAGE_SIZE,
    RUN_ARCHITECTURES,
    RUN_IMAGE_SIZE,
    RUN_ITERATIONS,
    _folder_options,
    main,
)
from trashseg.data.prepare import dataset_hash
from trashseg.storage import LocalStore, list_versions
from trashseg.submission import validate_submission

SIZE = 40
CATEGORIES = [{"id": 1, "name": "cup"}, {"id": 2, "name": "lid"}]
FILL = {1: (230, 40, 40), 2: (40, 40, 230)}


def _write_split(folder: Path, split: str, count: int, labelled: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for index in range(count):
        file_name = f"photos/{split}-{index}.png"
        category = 1 + index % 2
        x, y = (int(v) for v in rng.integers(2, SIZE // 2, size=2))
        polygon = [x, y, x + 16, y + 2, x + 8, y + 16]  # a triangle
        picture = Image.fromarray(rng.integers(90, 140, size=(SIZE, SIZE, 3), dtype=np.uint8))
        ImageDraw.Draw(picture).polygon(polygon, fill=FILL[category])
        (folder / file_name).parent.mkdir(parents=True, exist_ok=True)
        picture.save(folder / file_name)
        images.append({"id": index + 1, "file_name": file_name, "width": SIZE, "height": SIZE})
        annotations.append({
            "id": 100 + index, "image_id": index + 1, "category_id": category, "segmentation": [polygon],
            "bbox": [x, y, 16, 16], "area": 128.0, "iscrowd": 0,
        })
    coco = {"images": images, "categories": CATEGORIES}
    if labelled:
        coco["annotations"] = annotations
    (folder / f"{split}.json").write_text(json.dumps(coco))


@pytest.fixture
def coco_folder(tmp_path):
    folder = tmp_path / "my-photos"
    _write_split(folder, "train", 10, labelled=True, seed=1)
    _write_split(folder, "test", 3, labelled=False, seed=2)
    return folder


@pytest.mark.slow
def test_run_trains_on_the_folder_and_writes_its_submission(coco_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KFP_RUN_ID", "unset")  # the runner sets both for its tasks
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    code = main([
        "run", "--data", str(coco_folder), "--out", str(out), "--arch", "segformer-b0-tiny",
        "--iterations", "2", "--image-size", "32", "--no-pseudo-round",
        "--set", "batch_size=2", "--set", "warmup_iters=1", "--ensemble-set", "crf.iterations=2",
    ])
    assert code == 0
    (version,) = list_versions(LocalStore(out / "store"))
    assert version.version == dataset_hash(coco_folder)
    (classes,) = out.glob("kfp/**/prepare-data*/dataset/classes.json")
    assert [c["name"] for c in json.loads(classes.read_text())][1:] == ["cup", "lid"]
    (submission,) = out.glob("kfp/**/make-submission*/submission")
    rows = validate_submission(submission, coco_folder / "test.json").file_names
    assert rows == [f"photos/test-{i}.png" for i in range(3)]
    run_dir = out / "kfp" / submission.relative_to(out / "kfp").parts[0]
    shown = capsys.readouterr().out
    assert str(submission.relative_to(run_dir)) in shown  # the summary says where
    assert "] start  train-model (segformer-b0-tiny)" in shown and "KFP Executor" not in shown
    assert "results (val mIoU):" in shown and "selected stage" in shown and "time per task:" in shown
    (log,) = (out / "logs").glob("run-*.log")
    assert f"full logs: {log}" in shown and "KFP Executor" in log.read_text()


def test_run_refuses_a_folder_without_test_json_before_pushing(coco_folder, tmp_path, capsys):
    (coco_folder / "test.json").unlink()
    assert main(["run", "--data", str(coco_folder), "--out", str(tmp_path / "out")]) == 2
    assert "has no test.json" in capsys.readouterr().err
    assert not (tmp_path / "out" / "store").exists()


def test_run_names_an_unknown_architecture_before_pushing(coco_folder, tmp_path, capsys):
    assert main(["run", "--data", str(coco_folder), "--out", str(tmp_path / "out"), "--arch", "segformer-b9"]) == 2
    err = capsys.readouterr().err
    assert "segformer-b9" in err and "segformer-b0-tiny" in err
    assert not (tmp_path / "out").exists()


def test_run_names_a_bad_setting_before_pushing(coco_folder, tmp_path, capsys):
    assert main(["run", "--data", str(coco_folder), "--out", str(tmp_path / "out"), "--set", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_defaults_to_pretrained_members_that_need_no_mirror_and_the_demo_keeps_its_own(coco_folder, tmp_path):
    import argparse

    from trashseg.steps import check_weights_step
    from trashseg.weights import PACKAGED_WEIGHTS

    options = _folder_options(argparse.Namespace(
        data=coco_folder, architectures=None, settings=[], ensemble_settings=[],
        iterations=RUN_ITERATIONS, image_size=RUN_IMAGE_SIZE,
    ))
    assert options["architectures"] == RUN_ARCHITECTURES and options["image_size"] == RUN_IMAGE_SIZE
    # Every default member starts from weights shipped in an installed package: the pipeline's
    # check-weights step passes against an empty store (no hub, no mirror).
    starts = check_weights_step(RUN_ARCHITECTURES, options["train_settings"], str(tmp_path / "empty-store"))
    assert starts and set(starts) <= set(PACKAGED_WEIGHTS)
    # make demo is untouched: random-init tiny twins on the synthetic sample.
    assert all(name.endswith("-tiny") for name in DEMO_ARCHITECTURES) and DEMO_IMAGE_SIZE == 96
