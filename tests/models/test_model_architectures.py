"""Every architecture of the table: tiny variants train and predict on CPU; full configs match the
published model sizes."""

import logging
from types import SimpleNamespace

import pytest
import torch

from trashseg.data.classes import DEFAULT_TAXONOMY
from trashseg.errors import ConfigError, DataError
from trashseg.models import ARCHITECTURES, SegmentationModel, architecture_table, build_model
from trashseg.models.mask2former import semantic_log_probs, semantic_targets

TINY = sorted(name for name in ARCHITECTURES if name.endswith("-tiny"))
NUM_CLASSES = 4

# Parameters that get no gradient at initialisation for a known reason: transformers' Swin keeps
# a final LayerNorm that backbone outputs bypass, and deformable attention's offset/weight layers
# start at zero, so the pixel decoder's level embedding only gets gradients after a step.
# SeMask's semantic attention is scaled by gamma = 0 at init, so its key, value and output
# projections wait for gamma's first step (gamma and the class-score projection get gradients);
# FaPN's alignment offsets feed a zero-initialised offset conv (DCNv2's init), likewise.
# MaskDINO's box head zero-initialises its last layer (DINO's init), so its first layers wait too.
# OneFormer's contrastive logit scale is unused with its text branch off (trashseg.models.oneformer).
NO_GRADIENT_AT_INIT = (
    "swin.layernorm.",
    "decoder.level_embed",
    ".mlp_cls_k.",
    ".mlp_v.",
    ".mlp_res.",
    "decoder.alignments.",
    "criterion.logit_scale",
    "box_head.layers.0.",
    "box_head.layers.1.",
)

# Published parameter counts in millions (our class heads differ negligibly from the papers').
PUBLISHED_MILLIONS = {
    "mask2former-swin-t": 47,
    "mask2former-swin-b": 107,
    "mask2former-swin-l": 216,
    "upernet-swin-t": 60,
    "upernet-swin-b": 121,
    "upernet-swin-l": 234,
    "upernet-convnext-t": 60,
    "upernet-convnext-b": 122,
    "upernet-convnext-l": 235,
    "segformer-b0": 3.8,
    "segformer-b1": 13.7,
    "segformer-b2": 27.5,
    "segformer-b3": 47.3,
    "segformer-b4": 64.1,
    "segformer-b5": 84.7,
    # EoMT-L: 316M in its paper (arXiv 2503.19108); S and B as LightlyTrain's EoMT tables list
    # them with 200 queries (23.4M, 92.5M).
    "eomt-dinov2-s": 23.4,
    "eomt-dinov2-b": 92.5,
    "eomt-dinov2-l": 316,
    # EoMT on DINOv3, LightlyTrain's tables: S 23.4M, B 92.5M, L 315.1M.
    "eomt-dinov3-s": 23.4,
    "eomt-dinov3-b": 92.5,
    "eomt-dinov3-l": 315.1,
    # OneFormer paper (arXiv 2211.06220), ADE20K table: Swin-L 219M, DiNAT-L 223M.
    "oneformer-swin-l": 219,
    "oneformer-dinat-l": 223,
}
SEMASK = [f"mask2former-semask{decoder}-swin-{size}" for decoder in ("", "-fapn") for size in "tbl"]


def batch(size=2, height=64, width=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, height, width, generator=generator)
    masks = torch.randint(0, NUM_CLASSES, (size, height, width), generator=generator)
    masks[:, :4, :4] = 255
    return images, masks


@pytest.mark.parametrize("name", TINY)
def test_tiny_variant_trains_and_predicts_on_cpu(name):
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES)
    assert isinstance(model, SegmentationModel)
    assert (model.architecture, model.num_classes) == (name, NUM_CLASSES)
    assert model.parameter_count() == sum(p.numel() for p in model.parameters()) > 0

    model.train()
    images, masks = batch()
    loss = model.loss(images, masks)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    without_gradient = [
        key
        for key, parameter in model.named_parameters()
        if (parameter.grad is None or not bool(parameter.grad.abs().sum() > 0))
        and not any(marker in key for marker in NO_GRADIENT_AT_INIT)
    ]
    assert without_gradient == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        # An odd, non-square size: outputs must come back at exactly the input resolution.
        logits = model.predict_logits(torch.randn(2, 3, 72, 56))
    assert logits.shape == (2, NUM_CLASSES, 72, 56)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits.softmax(1).sum(1), torch.ones(2, 72, 56))


@pytest.mark.parametrize("name", ["segformer-b0-tiny", "upernet-convnext-t-tiny"])
def test_tiny_variant_fits_one_batch(name):
    """A few optimiser steps on one batch must cut the loss: gradients are real and useful.
    (Mask2Former's learning is shown by the training tests, which need more steps.)"""
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES).train()
    images, _ = batch(seed=1)
    masks = torch.zeros(2, 64, 64, dtype=torch.long)  # a layout to learn: one class per quadrant
    masks[:, :32, 32:], masks[:, 32:, :32], masks[:, 32:, 32:] = 1, 2, 3
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = model.loss(images, masks)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ConfigError) as error:
        build_model("segformer-b9", NUM_CLASSES)
    message = str(error.value)
    assert "'segformer-b9'" in message
    for name in ARCHITECTURES:
        assert name in message


@pytest.mark.parametrize("num_classes", [1, 0, 2.0, True])
def test_class_count_must_be_an_integer_of_at_least_two(num_classes):
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("segformer-b0-tiny", num_classes)


def test_every_architecture_has_a_tiny_twin_and_the_recipe_is_complete():
    full = {name for name in ARCHITECTURES if not name.endswith("-tiny")}
    assert {f"{name}-tiny" for name in full} == set(TINY)
    # MaskDINO's Swin-L size is checked (within 5%) in test_maskdino.py; T and B are unpublished.
    maskdino = {"maskdino-swin-t", "maskdino-swin-b", "maskdino-swin-l"}
    # EfficientNet-Lite encoders are checked against their published sizes in test_efficientnet_lite.py.
    effnet = {f"upernet-effnet-lite{i}" for i in range(3)}
    assert full == set(PUBLISHED_MILLIONS) | {"mask2former-dinat-l"} | set(SEMASK) | maskdino | effnet
    assert all(spec.name == name for name, spec in ARCHITECTURES.items())


def test_architecture_table_counts_published_sizes():
    counts = dict(architecture_table())
    assert list(counts) == list(ARCHITECTURES)
    for name, millions in PUBLISHED_MILLIONS.items():
        assert counts[name] == pytest.approx(millions * 1e6, rel=0.03), name
    # Mask2Former-DiNAT-L: DiNAT-L (~200M) plus the Mask2Former decoder, 220M in its paper.
    assert counts["mask2former-dinat-l"] == pytest.approx(220e6, rel=0.03)
    # SeMask-Swin-L under Mask2Former: 223M in the recipe's table (2% tolerance).
    assert counts["mask2former-semask-swin-l"] == pytest.approx(223e6, rel=0.02)
    for size in "tbl":
        # SeMask adds per stage a LayerNorm, two dim x K class projections and two dim x dim ones
        # (+ biases, gamma) to the Swin encoder under the unchanged Mask2Former head.
        widths = [{"t": 96, "b": 128, "l": 192}[size] * 2**i for i in range(4)]
        k = len(DEFAULT_TAXONOMY)
        semantic = sum(2 * d + 2 * (d * k + k) + 2 * (d * d + d) + 1 for d in widths)
        assert counts[f"mask2former-semask-swin-{size}"] - counts[f"mask2former-swin-{size}"] == semantic
    assert all(counts[name] < 3e6 for name in TINY)


def test_dinat_large_uses_the_published_dilations():
    backbone = ARCHITECTURES["mask2former-dinat-l"].make_config(NUM_CLASSES).backbone_config
    assert backbone.kernel_size == 11
    assert list(backbone.depths) == [3, 4, 18, 5]
    assert [len(stage) for stage in backbone.dilations] == list(backbone.depths)
    assert backbone.dilations[0] == [1, 20, 1]


def test_masks_with_class_ids_outside_the_table_are_rejected():
    model = build_model("segformer-b0-tiny", NUM_CLASSES)
    images, masks = batch()
    masks[0, 10, 10] = 7
    with pytest.raises(DataError, match=r"\[7\].*0\.\.3"):
        model.loss(images, masks)


def test_masks_must_match_the_images():
    model = build_model("segformer-b0-tiny", NUM_CLASSES)
    images, masks = batch()
    with pytest.raises(DataError, match="expected a long tensor of shape"):
        model.loss(images, masks[:, :32])
    with pytest.raises(DataError, match="expected a long tensor"):
        model.loss(images, masks.float())
    with pytest.raises(DataError, match=r"\(batch, 3, height, width\)"):
        model.predict_logits(images[:, :1])


@pytest.mark.parametrize("name", ["segformer-b0-tiny", "upernet-swin-t-tiny"])
def test_fully_ignored_batch_gives_zero_loss_with_gradients(name):
    model = build_model(name, NUM_CLASSES).train()
    images, masks = batch()
    masks[:] = 255
    loss = model.loss(images, masks)
    assert loss.item() == 0.0
    loss.backward()  # still a graph, so a training step on such a crop does not crash


def test_mask2former_targets_skip_ignored_pixels():
    masks = torch.tensor([[[0, 2], [255, 2]], [[255, 255], [255, 255]]])
    mask_labels, class_labels = semantic_targets(masks)
    assert class_labels[0].tolist() == [0, 2]
    assert mask_labels[0].tolist() == [[[1, 0], [0, 0]], [[0, 1], [0, 1]]]
    assert class_labels[1].numel() == 0 and mask_labels[1].shape == (0, 2, 2)


def test_mask2former_handles_an_image_without_labelled_pixels():
    model = build_model("mask2former-swin-t-tiny", NUM_CLASSES).train()
    images, masks = batch()
    masks[1] = 255
    loss = model.loss(images, masks)
    assert torch.isfinite(loss)
    loss.backward()


def test_upernet_trains_on_a_batch_of_one_without_touching_batchnorm_statistics():
    model = build_model("upernet-convnext-t-tiny", NUM_CLASSES).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    before = [norm.running_mean.clone() for norm in norms]
    images, masks = batch(size=1)
    model.loss(images, masks).backward()
    assert all(torch.equal(norm.running_mean, old) for norm, old in zip(norms, before, strict=True))
    assert all(norm.training for norm in norms)
    # A batch of two updates the statistics as usual.
    model.loss(*batch(size=2))
    assert not all(
        torch.equal(norm.running_mean, old) for norm, old in zip(norms, before, strict=True)
    )


def test_loading_logs_nothing_for_random_init(caplog):
    with caplog.at_level(logging.WARNING, logger="trashseg"):
        build_model("segformer-b0-tiny", NUM_CLASSES)
    assert caplog.records == []


def test_mask2former_queries_combine_into_a_per_pixel_distribution():
    # Two queries over 3 classes (+ "no object"): query 0 claims class 2 on the left half,
    # query 1 claims class 0 on the right half; a third query is confidently "no object".
    class_logits = torch.full((1, 3, 4), -20.0)
    class_logits[0, 0, 2] = class_logits[0, 1, 0] = class_logits[0, 2, 3] = 20.0
    mask_logits = torch.full((1, 3, 4, 4), -20.0)
    mask_logits[0, 0, :, :2] = mask_logits[0, 1, :, 2:] = 20.0
    mask_logits[0, 2] = 20.0  # covers everything, but as "no object" it must not vote
    output = SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
    log_probs = semantic_log_probs(output, torch.zeros(1, 3, 8, 8))
    assert log_probs.shape == (1, 3, 8, 8)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(1, 8, 8))
    expected = torch.zeros(8, 8, dtype=torch.long)
    expected[:, :4] = 2
    assert torch.equal(log_probs.argmax(1)[0], expected)
    assert log_probs.exp().max() > 0.99


@pytest.mark.parametrize("name", ["segformer-b0-tiny", "mask2former-dinat-l-tiny", "mask2former-semask-fapn-swin-l-tiny"])
def test_mixed_precision_training_and_float32_predictions(name):
    model = build_model(name, NUM_CLASSES).train()
    images, masks = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(images, masks)
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.eval().predict_logits(images)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.softmax(1).sum(1), torch.ones(2, 64, 64))
