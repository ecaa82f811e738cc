"""EoMT and OneFormer: mask annealing on the iteration schedule, any input size, checkpoints,
the task token without a tokenizer. (Forward/backward of every tiny twin and the published
parameter counts are in test_model_architectures.py; learning in test_model_eomt_oneformer_learning.py.)"""

import logging

import pytest
import torch

from trashseg.errors import ConfigError
from trashseg.models import ARCHITECTURES, build_model
from trashseg.models.eomt import mask_probability
from trashseg.models.oneformer import TASK_VOCABULARY, task_token_ids

NUM_CLASSES = 4
NEW_TINY = [
    "eomt-dinov2-s-tiny",
    "eomt-dinov3-s-tiny",
    "oneformer-swin-l-tiny",
    "oneformer-dinat-l-tiny",
]


def test_mask_annealing_runs_from_one_to_zero_block_after_block():
    total, blocks = 1200, 4
    for block in range(blocks):
        assert mask_probability(block, blocks, 0, total) == 1.0
        assert mask_probability(block, blocks, total - 1, total) == 0.0
    # The first query block is unmasked first; the whole schedule ends at 5/6 of training.
    midway = [mask_probability(block, blocks, 300, total) for block in range(blocks)]
    assert 0.0 < midway[0] < 1.0 and midway[1:] == [1.0, 1.0, 1.0]
    assert [mask_probability(b, blocks, 1000, total) for b in range(blocks)] == [0.0] * blocks
    series = [mask_probability(2, blocks, step, total) for step in range(total)]
    assert all(later <= earlier for earlier, later in zip(series, series[1:], strict=False))


def test_training_progress_sets_the_networks_mask_probabilities():
    model = build_model("eomt-dinov2-s-tiny", 3)
    probs = model.network.attn_mask_probs
    model.set_training_progress(0, 100)
    assert probs.tolist() == [1.0]
    model.set_training_progress(50, 100)
    assert 0.0 < probs.item() < 1.0
    model.set_training_progress(99, 100)
    assert probs.tolist() == [0.0]


def test_other_families_ignore_training_progress():
    model = build_model("segformer-b0-tiny", 3)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    model.set_training_progress(10, 20)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_masked_attention_changes_eomt_predictions_until_annealed():
    torch.manual_seed(0)
    model = build_model("eomt-dinov2-s-tiny", NUM_CLASSES).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.set_training_progress(0, 10)
        masked = model.predict_logits(images)
        model.set_training_progress(10, 10)
        unmasked = model.predict_logits(images)
    assert not torch.allclose(masked, unmasked)


@pytest.mark.parametrize("height, width", [(64, 64), (77, 50), (96, 120)])
def test_eomt_takes_any_image_size(height, width):
    """Sizes off the patch grid (8 px) and off the native 64 px: padding plus resized position
    embeddings; the loss ignores the padded border."""
    torch.manual_seed(0)
    model = build_model("eomt-dinov2-s-tiny", NUM_CLASSES)
    images = torch.randn(2, 3, height, width)
    masks = torch.randint(0, NUM_CLASSES, (2, height, width))
    loss = model.loss(images, masks)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.network.embeddings.position_embeddings.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        logits = model.predict_logits(images)
    assert logits.shape == (2, NUM_CLASSES, height, width)


def test_eomt_dinov3_takes_any_image_size():
    """DINOv3's rotary embeddings follow the input; the padded grid must match them."""
    model = build_model("eomt-dinov3-s-tiny", NUM_CLASSES)
    images, masks = torch.randn(1, 3, 77, 50), torch.randint(0, NUM_CLASSES, (1, 77, 50))
    loss = model.loss(images, masks)
    loss.backward()
    assert torch.isfinite(loss)
    model.set_training_progress(0, 10)
    assert model.network.attn_mask_probs.tolist() == [1.0]
    model.eval()
    with torch.no_grad():
        assert model.predict_logits(images).shape == (1, NUM_CLASSES, 77, 50)


def test_eomt_position_embeddings_are_unchanged_at_the_native_size():
    model = build_model("eomt-dinov2-s-tiny", NUM_CLASSES)
    network = model.network
    network.grid_size = (8, 8)  # native: image_size 64 / patch 8
    table = network.embeddings.position_embeddings
    torch.testing.assert_close(table(network.embeddings.position_ids)[0], table.weight)
    network.grid_size = (4, 6)
    assert table(network.embeddings.position_ids).shape == (1, 24, table.weight.shape[1])


@pytest.mark.parametrize("name", NEW_TINY)
def test_saved_model_loads_back_with_identical_predictions(name, tmp_path):
    torch.manual_seed(0)
    original = build_model(name, NUM_CLASSES).eval()
    original.set_training_progress(1, 1)  # annealed: EoMT predicts without random query masks
    original.save_pretrained(tmp_path)
    torch.manual_seed(1)
    loaded = build_model(name, NUM_CLASSES, pretrained=str(tmp_path))
    assert loaded.training
    loaded.eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_logits(images), original.predict_logits(images))


@pytest.mark.parametrize(
    "name, head",
    [
        ("eomt-dinov2-s-tiny", "class_predictor.weight"),
        ("oneformer-swin-l-tiny", "class_embed.weight"),
    ],
)
def test_other_class_count_keeps_the_body_and_reports_the_new_head(name, head, tmp_path, caplog):
    torch.manual_seed(0)
    build_model(name, NUM_CLASSES).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trashseg"):
        loaded = build_model(name, 7, pretrained=str(tmp_path))
    messages = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("trashseg"))
    assert head in messages and "tensors not loaded" in messages
    heads = [p for key, p in loaded.network.named_parameters() if key.endswith(head)]
    assert heads and all(p.shape[0] == 8 for p in heads)  # 7 classes + "no object"


def test_default_checkpoints_of_eomt_and_oneformer_are_their_published_hub_models():
    for name, spec in ARCHITECTURES.items():
        if name.startswith(("eomt-", "oneformer-")) and spec.default_pretrained is not None:
            assert not spec.tiny and spec.default_pretrained.count("/") == 1
            owner = "tue-mps/" if name.startswith("eomt-") else "shi-labs/oneformer_ade20k_"
            assert spec.default_pretrained.startswith(owner)


def test_task_token_is_the_semantic_sentence_padded_to_the_task_length():
    ids = task_token_ids("semantic", 77)
    assert ids.shape == (77,)
    words = [TASK_VOCABULARY[w] for w in ("<start>", "the", "task", "is", "semantic", "<end>")]
    assert ids[:6].tolist() == words and set(ids[6:].tolist()) == {TASK_VOCABULARY["<pad>"]}
    assert not torch.equal(task_token_ids("panoptic", 77), ids)
    with pytest.raises(ConfigError, match="'semantics'.*semantic, instance or panoptic"):
        task_token_ids("semantics", 77)


def test_oneformer_runs_without_its_text_branch():
    model = build_model("oneformer-dinat-l-tiny", NUM_CLASSES)
    assert model.network.model.text_mapper is None
    assert not any("text_mapper" in key for key in model.state_dict())
    assert "_task_ids" not in str(list(model.state_dict()))
