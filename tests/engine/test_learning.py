"""Learning is real: tiny models trained briefly on the sample data beat a majority-class
predictor by a wide margin on the validation split."""

import pytest

from trashseg.config import from_mapping
from trashseg.predict import majority_class_scores
from trashseg.training import TrainConfig, train

# The majority predictor paints everything Background: its mIoU is the background IoU
# (~0.89 here) divided by the number of classes present (all 11 in the val split), ~0.08.
# A model that has learned nothing beyond the prior scores exactly that (we saw it in
# under-trained runs); only segmenting several object classes lifts mIoU past 2.5x. With
# these settings (deterministic on CPU) the tiny SegFormer reaches 0.34 (~4.2x) and the tiny
# Mask2Former 0.19-0.31 (2.4-3.8x, depending on how the run's random streams fall; it learns
# slower and peaks before the end, hence best-of-4 evals). 2x is past anything the prior reaches.
FACTOR_OVER_MAJORITY = 2.0


@pytest.mark.parametrize(
    "architecture, iterations, batch_size, lr",
    [
        ("segformer-b0-tiny", 300, 8, None),  # the architecture's defaults (lr 3e-3, no weight decay)
        ("mask2former-swin-t-tiny", 400, 4, 2e-3),
    ],
)
def test_tiny_model_learns_far_beyond_majority_class(sample_dataset, tmp_path, architecture, iterations, batch_size, lr):
    optimiser = {} if lr is None else dict(lr=lr, weight_decay=0.0)
    config = from_mapping(
        TrainConfig,
        dict(
            architecture=architecture, image_size=96, batch_size=batch_size, iterations=iterations,
            warmup_iters=10, eval_interval=100, checkpoint_interval=iterations,
            log_interval=50, num_workers=0, augment={"scale_range": [0.75, 1.25]}, tracking={"enabled": False},
            **optimiser,
        ),
    )
    result = train(config, sample_dataset, tmp_path / "run")
    baseline = majority_class_scores(sample_dataset).miou
    assert 0.05 < baseline < 0.15
    assert result.best_miou >= FACTOR_OVER_MAJORITY * baseline, (
        f"{architecture}: val mIoU {result.best_miou:.3f} < {FACTOR_OVER_MAJORITY} x majority {baseline:.3f}"
    )


# SeMask and SeMask-FaPN (tiny Mask2Former heads on a tiny SeMask-Swin) in half the steps of
# the Mask2Former case above, to stay near 40 s on 2 idle cores: measured val mIoU after 200
# steps 0.13-0.16 (SeMask, 1.65-2.0x the floor, by random stream) and 0.215 (SeMask-FaPN, 2.7x);
# an untrained model sits at the floor (1.0x), so 1.5x is past anything the class prior reaches.
SEMASK_FACTOR_OVER_MAJORITY = 1.5


@pytest.mark.parametrize("architecture", ["mask2former-semask-swin-t-tiny", "mask2former-semask-fapn-swin-t-tiny"])
def test_tiny_semask_models_learn_beyond_majority_class(sample_dataset, tmp_path, architecture):
    config = from_mapping(
        TrainConfig,
        dict(
            architecture=architecture, image_size=96, batch_size=4, iterations=200, warmup_iters=10, lr=2e-3,
            weight_decay=0.0, eval_interval=50, checkpoint_interval=200, log_interval=50, num_workers=0,
            augment={"scale_range": [0.75, 1.25]}, tracking={"enabled": False},
        ),
    )
    result = train(config, sample_dataset, tmp_path / "run")
    baseline = majority_class_scores(sample_dataset).miou
    assert result.best_miou >= SEMASK_FACTOR_OVER_MAJORITY * baseline, (
        f"{architecture}: val mIoU {result.best_miou:.3f} < {SEMASK_FACTOR_OVER_MAJORITY} x majority {baseline:.3f}"
    )
