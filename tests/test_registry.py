"""Registry: champion/challenger aliases against a real MLflow store (SQLite, local artifacts)."""

import json
import math

import pytest
from mlflow import MlflowClient

from trashseg.registry import (
    CHALLENGER,
    CHAMPION,
    ModelBundle,
    RegistryError,
    decide_promotion,
    fetch_champion,
    register_and_promote,
    write_bundle,
)
from trashseg.tracking import TrackingConfig


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def make_bundle(tmp_path, name, weights):
    models = {}
    for architecture, value in weights.items():
        model_dir = tmp_path / name / "train" / architecture
        model_dir.mkdir(parents=True)
        (model_dir / "weights.json").write_text(json.dumps({"w": value}))
        models[architecture] = model_dir
    return write_bundle(models, tmp_path / name / "bundle", dataset_version=f"hash-{name}", class_names=["bg", "a"])


def test_decide_promotion_rules():
    assert decide_promotion(0.5, "h1", None, {}) == (True, None, "there is no champion yet")
    tags = {"holdout_miou": "0.6", "holdout_id": "h1"}
    assert decide_promotion(0.7, "h1", "1", tags)[:2] == (True, 0.6)
    assert decide_promotion(0.55, "h1", "1", tags)[:2] == (False, 0.6)
    # equal is not better; the margin is required on top
    assert decide_promotion(0.6, "h1", "1", tags)[0] is False
    assert decide_promotion(0.62, "h1", "1", tags, min_improvement=0.05)[0] is False
    # a different holdout is never compared with the recorded score ...
    promote, compared, reason = decide_promotion(0.99, "h2", "1", tags)
    assert (promote, compared) == (False, None) and "'h1'" in reason and "'h2'" in reason
    # ... but a champion score measured on the same holdout in this run is
    assert decide_promotion(0.7, "h2", "1", tags, champion_score=0.65)[:2] == (True, 0.65)
    assert decide_promotion(float("nan"), "h1", None, {})[0] is False


def test_bundle_rejects_unknown_architecture(tmp_path):
    bundle = make_bundle(tmp_path, "b", {"segformer-b0-tiny": 1})
    assert bundle.model_dir("segformer-b0-tiny").joinpath("weights.json").is_file()
    with pytest.raises(Exception, match="segformer-b0-tiny"):
        bundle.model_dir("upernet-swin-t-tiny")


def test_register_promote_only_if_better(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_RUN_ID", "run-7")  # set by the pipeline on every task
    client = MlflowClient(tracking_uri)
    tracking = TrackingConfig(uri=tracking_uri)
    with pytest.raises(RegistryError, match="no 'champion'"):
        fetch_champion("trash", tmp_path / "none", tracking_uri=tracking_uri)

    first = register_and_promote(
        make_bundle(tmp_path, "v1", {"segformer-b0-tiny": 1}).root,
        model_name="trash", score=0.40, holdout_id="h1", tracking=tracking,
    )
    assert first.promoted and first.version == "1" and first.champion_version is None

    worse = register_and_promote(
        make_bundle(tmp_path, "v2", {"segformer-b0-tiny": 2}).root,
        model_name="trash", score=0.35, holdout_id="h1", tracking=tracking,
    )
    assert not worse.promoted and worse.champion_version == "1" and worse.champion_score == pytest.approx(0.40)
    assert str(client.get_model_version_by_alias("trash", CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias("trash", CHALLENGER).version) == "2"
    assert client.get_model_version("trash", "2").tags["promoted"] == "false"

    better = register_and_promote(
        make_bundle(tmp_path, "v3", {"segformer-b0-tiny": 3, "upernet-swin-t-tiny": 4}).root,
        model_name="trash", score=0.45, holdout_id="h1", tracking=tracking,
    )
    assert better.promoted and better.version == "3"
    assert "| reason |" in better.to_markdown()
    version = client.get_model_version("trash", "3")
    assert version.tags["kfp.run_id"] == "run-7" and version.tags["dataset_version"] == "hash-v3"
    run = client.get_run(version.run_id)
    assert run.data.tags["kfp.run_id"] == "run-7" and math.isclose(run.data.metrics["holdout_miou"], 0.45)

    champion = fetch_champion("trash", tmp_path / "fetched", tracking_uri=tracking_uri)
    assert champion.version == "3"
    assert champion.bundle.architectures == ("segformer-b0-tiny", "upernet-swin-t-tiny")
    weights = champion.bundle.model_dir("upernet-swin-t-tiny") / "weights.json"
    assert json.loads(weights.read_text()) == {"w": 4}
    assert ModelBundle.open(tmp_path / "fetched").dataset_version == "hash-v3"
