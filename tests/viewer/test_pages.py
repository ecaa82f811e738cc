"""Every page under Streamlit's AppTest on the viewer world: what each one shows."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trashseg.viewer
from trashseg.predictions import PredictionSet
from trashseg.submission import resize_nearest
from trashseg.viewer.sources import SOURCES_ENV

APP = str(Path(trashseg.viewer.__file__).parent / "app.py")


@pytest.fixture
def shown_media(monkeypatch) -> dict[str, bytes]:
    """Bytes of every media file the app shows, by file id (a spy on Streamlit's media store)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    shown: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        if isinstance(path_or_data, bytes):
            shown[file_id] = path_or_data
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    return shown


def image_captions(at) -> list[str]:
    return [im.caption for element in at.get("image") for im in element.proto.imgs]


@pytest.fixture
def app(viewer_world, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(SOURCES_ENV, viewer_world.sources.to_json())

    def open_page(page: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120)
        at.run()
        at.sidebar.radio[0].set_value(page).run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.title[0].value == page
        return at

    return open_page


def texts(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_data_page_counts_and_searches(app, viewer_world):
    at = app("Data")
    train = len(viewer_world.dataset.samples("train"))
    assert f"**{train}** of {train} images match" in texts(at)
    assert len([c for c in image_captions(at) if c.endswith("objects)")]) == min(train, 12)  # one page
    first = viewer_world.dataset.samples("train")[0].file_name
    at.text_input(key="data_name").set_value(first).run()
    assert f"**1** of {train} images match" in texts(at)
    tiles = [c for c in image_captions(at) if c.endswith("objects)")]
    assert len(tiles) == 1 and tiles[0].startswith(first)
    assert "skipped record(s)" in texts(at)
    assert "annotations" in texts(at)  # the statistics tab


def test_augmentation_page_runs_the_training_transform(app):
    at = app("Augmentation")
    assert "4 training samples of" in texts(at)
    at.number_input(key="aug_crop").set_value(48).run()
    assert not at.exception
    assert "at 48x48" in texts(at)
    at.multiselect(key="aug_cp_classes").set_value(["Battery"]).run()
    assert not at.exception and not at.error


def test_predictions_page_compares_every_source(app):
    at = app("Predictions")
    shown = texts(at)
    assert "prediction sources on val: alpha, beta, soft_vote, hard_vote, crf, consensus, gating" in shown
    at.radio(key="pred_order").set_value("worst IoU").run()
    assert not at.exception
    ranking = at.dataframe[0].value
    assert list(ranking["mIoU"]) == sorted(ranking["mIoU"])
    at.checkbox(key="pred_restored").check().run()
    assert "consensus restored" in texts(at)


def test_confusions_page_opens_a_cell_and_flags_the_planted_label(app, viewer_world):
    at = app("Confusions & labels")
    planted, true_class, wrong = viewer_world.planted
    names = viewer_world.dataset.classes().names
    at.selectbox(key="conf_source").set_value("alpha").run()
    key_true = next(s.key for s in at.selectbox if s.key.startswith("conf_true_"))
    at.selectbox(key=key_true).set_value(names[wrong]).run()
    key_pred = next(s.key for s in at.selectbox if s.key.startswith("conf_pred_"))
    at.selectbox(key=key_pred).set_value(names[true_class]).run()
    assert f"pixels of {names[wrong]} predicted as {names[true_class]}, in **" in texts(at)
    assert "**1** likely mislabeled image(s)" in texts(at)
    suspects = at.dataframe[-1].value
    assert list(suspects["image"]) == [planted]
    assert list(suspects["label"]) == [names[wrong]] and list(suspects["models say"]) == [names[true_class]]


def test_submission_page_decodes_a_row_and_validates(app, viewer_world, shown_media):
    at = app("Submission")
    test = [s.file_name for s in viewer_world.dataset.samples("test")]
    assert f"**{len(test)}** rows in" in texts(at)
    assert at.success and "Valid" in at.success[0].value
    at.selectbox(key="sub_row").set_value(len(test) - 1).run()
    final = PredictionSet.open(viewer_world.sources.ensemble + "/final/test")
    source = resize_nearest(final.mask(test[-1]))
    names = viewer_world.dataset.classes().names
    present = ", ".join(names[i] for i in np.unique(source))
    assert f"{test[-1]}: 256x256 mask, classes {present}" in texts(at)
    decoded = next(im for element in at.get("image") for im in element.proto.imgs if im.caption == "decoded mask")
    picture = np.array(Image.open(io.BytesIO(shown_media[decoded.url.rsplit("/", 1)[1].split(".")[0]])).convert("RGB"))
    palette = viewer_world.dataset.classes().palette()
    shown_ids = (picture[:, :, None, :] == palette[None, None]).all(axis=-1).argmax(axis=-1)
    assert np.array_equal(shown_ids, source)


def test_runs_page_lists_runs_and_registry_versions(app):
    at = app("Runs")
    shown = texts(at)
    assert "mlflow ui --backend-store-uri sqlite:///" in shown
    assert [h.value for h in at.subheader] == ["1 run(s)", "1 registered model version(s)"]
    runs, versions = at.dataframe[0].value, at.dataframe[1].value
    assert runs["kfp.run_id"][0] == "local-abc123" and runs["metric val_miou"][0] == 0.61
    assert versions["aliases"][0] == "champion"
