"""DenseCRF over prediction folders: the pool matches one process; failures name the image."""

import numpy as np
import pytest
from recipe_builders import one_hot, write_dataset, write_predictions

from trashseg.cli import main
from trashseg.config import load_config
from trashseg.crf import CrfConfig, CrfError, crf_prediction_set
from trashseg.errors import ConfigError
from trashseg.predictions import PredictionSet


def _case(tmp_path, count=3):
    rng = np.random.default_rng(0)
    items, probs = [], {}
    for i in range(count):
        truth = np.zeros((32, 32), np.uint8)
        truth[4:20, 6:26] = 1 + i % 3
        image = np.where(truth[..., None] > 0, 200, 60).astype(np.uint8).repeat(3, axis=2)
        noisy = one_hot(truth, 4, 0.7)
        flip = rng.random(truth.shape) < 0.1
        noisy[:, flip] = one_hot(np.full(int(flip.sum()), 2, np.uint8)[None], 4, 0.6)[:, 0]
        name = f"img/{i}.png"
        items.append((name, image, truth))
        probs[name] = noisy
    dataset = write_dataset(tmp_path / "data", {"test": items})
    write_predictions(tmp_path / "pred", probs, {"architecture": "x"})
    return dataset, items


def test_pool_matches_single_process_and_removes_noise(tmp_path):
    dataset, items = _case(tmp_path)
    single = crf_prediction_set(tmp_path / "pred", dataset.root, tmp_path / "one", CrfConfig(workers=1))
    pooled = crf_prediction_set(tmp_path / "pred", dataset.root, tmp_path / "two", CrfConfig(workers=2, chunk_size=1))
    assert PredictionSet.open(tmp_path / "two").file_names == [name for name, _, _ in items]
    noisy = PredictionSet.open(tmp_path / "pred")
    for name, _, truth in items:
        np.testing.assert_allclose(pooled.probs(name), single.probs(name), atol=1 / 255)
        assert (pooled.mask(name) != truth).sum() < (noisy.mask(name) != truth).sum() / 4
    assert pooled.source["stage"] == "crf" and pooled.source["input"] == {"architecture": "x"}


def test_a_failure_in_a_worker_names_the_image(tmp_path):
    dataset, items = _case(tmp_path)
    dataset.image_path("img/1.png").write_bytes(b"not an image")
    with pytest.raises(CrfError, match="DenseCRF failed on image 'img/1.png': DataError: image file .*1.png is unreadable"):
        crf_prediction_set(tmp_path / "pred", dataset.root, tmp_path / "out", CrfConfig(workers=2, chunk_size=1))
    # A wrong-sized image fails with what was expected.
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(dataset.image_path("img/1.png"))
    with pytest.raises(CrfError, match=r"'img/1.png'.*\(16, 16, 3\) does not match .*expected \(32, 32, 3\)"):
        crf_prediction_set(tmp_path / "pred", dataset.root, tmp_path / "out2", CrfConfig(workers=1))


def test_config_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="crf.iterations must be >= 1, got 0"):
        CrfConfig(iterations=0)
    with pytest.raises(ConfigError, match="unknown key.*iters.*valid keys are: bilateral_compat"):
        load_config(CrfConfig, None, ["iters=3"])
    assert load_config(CrfConfig, None, ["workers=3"]).resolved_workers() == 3
    assert CrfConfig().resolved_workers() >= 1


def test_cli_crf(tmp_path, capsys):
    dataset, items = _case(tmp_path, count=2)
    args = ["crf", str(tmp_path / "pred"), "--data", str(dataset.root), "--out", str(tmp_path / "out")]
    assert main([*args, "--set", "workers=1", "--set", "iterations=2"]) == 0
    assert "refined 2 image(s)" in capsys.readouterr().out
    assert PredictionSet.open(tmp_path / "out").file_names == [name for name, _, _ in items]
    assert main([*args, "--set", "iterations=-1"]) == 2
