"""EoMT and OneFormer learn: their tiny twins trained briefly through trashseg's training loop
beat the majority-class predictor on the sample data's validation split. EoMT also ends its
training with masked attention fully annealed (the loop drives `set_training_progress`)."""

import pytest
import torch

from trashseg.checkpoints import load_checkpoint_state
from trashseg.config import from_mapping
from trashseg.predict import majority_class_scores
from trashseg.training import TrainConfig, train

# The majority floor is ~0.079 here (see tests/engine/test_learning.py); a model that learned
# nothing beyond the class prior scores exactly that. Measured on CPU with these settings:
# EoMT-tiny 0.225 (2.9x) at 200 iterations (0.29 after 400).
FACTOR_OVER_MAJORITY = 2.0

# OneFormer-tiny 0.261 (3.3x) at 600 iterations; seeds 1 and 2 give 0.215 and 0.166, so the 2x
# margin holds across random streams (seed 2 only just, at 2.1x). It needs about twice Mask2Former's steps: its object queries
# all start as the one task token (see trashseg/models/oneformer.py).


@pytest.mark.parametrize(
    "architecture, iterations",
    [
        ("eomt-dinov2-s-tiny", 200),
        ("oneformer-swin-l-tiny", 600),
    ],
)
def test_tiny_model_learns_beyond_majority_class(sample_dataset, tmp_path, architecture, iterations):
    config = from_mapping(
        TrainConfig,
        dict(
            architecture=architecture, image_size=96, batch_size=4, iterations=iterations,
            warmup_iters=10, lr=2e-3, weight_decay=0.0, eval_interval=iterations // 2,
            checkpoint_interval=iterations, log_interval=50, num_workers=0,
            augment={"scale_range": [0.75, 1.25]}, tracking={"enabled": False},
        ),
    )
    result = train(config, sample_dataset, tmp_path / "run")
    baseline = majority_class_scores(sample_dataset).miou
    assert result.best_miou >= FACTOR_OVER_MAJORITY * baseline, (
        f"{architecture}: val mIoU {result.best_miou:.3f} < {FACTOR_OVER_MAJORITY} x majority {baseline:.3f}"
    )
    if architecture.startswith("eomt"):
        weights = load_checkpoint_state(result.last_checkpoint)["model"]
        assert torch.equal(weights["network.attn_mask_probs"], torch.zeros(1))
