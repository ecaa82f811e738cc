"""Pretrained starts on a cluster without internet: a tiny checkpoint written with
save_pretrained stands in for the hub; it is mirrored into moto S3, resolved from there with
the hub offline, and trained from; a missing mirror fails before training with the command."""

from __future__ import annotations

import logging

import pytest
from cluster_helpers import FAKE_KEY, FAKE_SECRET, new_bucket
from mlflow import MlflowClient

from trashseg.cli import main
from trashseg.config import from_mapping
from trashseg.errors import ConfigError
from trashseg.models import build_model
from trashseg.steps import check_weights_step
from trashseg.storage import IntegrityError, open_store
from trashseg.training import TrainConfig, train
from trashseg.weights import WEIGHTS_PREFIX, find_mirror, resolve_pretrained

HUB_ID = "acme/segformer-tiny-ade"  # the name the stand-in checkpoint is mirrored under


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch):
    monkeypatch.setenv("TRASHSEG_S3_ENDPOINT", f"http://{moto_endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    return f"s3://{new_bucket(moto_endpoint)}/store"


@pytest.fixture
def hub_checkpoint(tmp_path):
    """A transformers folder for 5 classes: its class head cannot fit the sample data's 11."""
    folder = tmp_path / "hub-checkpoint"
    build_model("segformer-b0-tiny", 5).save_pretrained(folder)
    return folder


def _config(**changes):
    values = dict(architecture="segformer-b0-tiny", image_size=48, batch_size=2, iterations=3, warmup_iters=1,
                  eval_interval=0, checkpoint_interval=3, log_interval=1, num_workers=0)
    return from_mapping(TrainConfig, {**values, **changes})


def test_mirrored_checkpoint_resolves_offline_and_trains(s3_env, hub_checkpoint, sample_dataset, tmp_path,
                                                         monkeypatch, caplog, capsys):
    assert main(["weights", "mirror", str(hub_checkpoint), "--store", s3_env, "--name", HUB_ID]) == 0
    version = capsys.readouterr().out.split(" -> ")[1].split()[0]
    manifest = find_mirror(open_store(s3_env), HUB_ID)
    assert manifest.version == version and {f.key for f in manifest.files} >= {"config.json", "model.safetensors"}
    assert all(len(f.sha256) == 64 for f in manifest.files)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a task on an air-gapped node
    caplog.set_level(logging.INFO, logger="trashseg")
    out = tmp_path / "run"
    result = train(_config(pretrained=HUB_ID), sample_dataset, out, weights_store=s3_env)

    assert result.iterations == 3
    assert f"segformer-b0-tiny starts from {HUB_ID}" in caplog.text
    params = MlflowClient(f"sqlite:///{out}/mlflow.db").get_run(result.mlflow_run_id).data.params
    assert params["pretrained.checkpoint"] == HUB_ID
    loaded, total = map(int, params["pretrained.tensors_loaded"].split("/"))
    assert 0 < loaded < total
    # Only the class heads (5 classes in the checkpoint, 11 here) start fresh.
    assert params["pretrained.reinitialised"] == "decode_head.classifier.weight, decode_head.classifier.bias"
    assert loaded == total - 2


def test_the_cache_is_verified_and_a_mirror_modified_after_the_push_is_refused(s3_env, hub_checkpoint, tmp_path):
    store = open_store(s3_env)
    main(["weights", "mirror", str(hub_checkpoint), "--store", s3_env, "--name", HUB_ID])
    version = find_mirror(store, HUB_ID).version
    cached = resolve_pretrained(HUB_ID, store=store, cache_dir=tmp_path / "cache")
    original = (hub_checkpoint / "config.json").read_bytes()
    (tmp_path / "cache" / version / "config.json").write_text("{}")  # a damaged cache is pulled again
    assert resolve_pretrained(HUB_ID, store=store, cache_dir=tmp_path / "cache") == cached
    assert (tmp_path / "cache" / version / "config.json").read_bytes() == original
    config_key = f"{WEIGHTS_PREFIX}/{version}/files/config.json"
    store.put_bytes(store.get_bytes(config_key) + b" ", config_key)
    with pytest.raises(IntegrityError, match="does not match"):
        resolve_pretrained(HUB_ID, store=store, cache_dir=tmp_path / "fresh-cache")


def test_missing_mirror_fails_before_training_naming_the_mirror_command(s3_env, tmp_path):
    with pytest.raises(ConfigError, match=r"not mirrored .*trashseg weights mirror facebook/mask2former-swin-large-ade-"
                                          rf"semantic --store {s3_env}"):
        check_weights_step(["mask2former-swin-l", "segformer-b0-tiny"], [], s3_env)
    # Tiny twins and pretrained=none need no mirror; the demo runs without one.
    assert check_weights_step(["segformer-b0-tiny", "upernet-convnext-t-tiny"], [], s3_env) == []
    assert check_weights_step(["mask2former-swin-l"], ["pretrained=none"], s3_env) == []


def test_train_refuses_a_hub_id_missing_from_the_weights_store(s3_env, sample_dataset, tmp_path):
    with pytest.raises(ConfigError, match=f"{HUB_ID} are not mirrored.*trashseg weights mirror {HUB_ID}"):
        train(_config(pretrained=HUB_ID), sample_dataset, tmp_path / "run", weights_store=s3_env)


def test_mirroring_without_hub_access_is_a_clear_error(s3_env, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["weights", "mirror", "acme/not-downloadable", "--store", s3_env]) == 2
    assert "cannot download 'acme/not-downloadable' from the Hugging Face hub" in caplog.text
    assert main(["weights", "mirror", str(s3_env.replace("s3://", "/nonexistent/")), "--store", s3_env]) == 2
