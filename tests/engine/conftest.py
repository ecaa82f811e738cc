"""Engine fixtures: one briefly trained checkpoint shared by the prediction tests."""

import pytest

from trashseg.config import from_mapping
from trashseg.training import TrainConfig, train


@pytest.fixture(scope="session")
def trained_checkpoint(sample_dataset, tmp_path_factory):
    config = from_mapping(
        TrainConfig,
        dict(architecture="segformer-b0-tiny", image_size=64, batch_size=4, iterations=20, warmup_iters=2, lr=3e-3,
             eval_interval=0, checkpoint_interval=20, log_interval=10, num_workers=0, tracking={"enabled": False}),
    )
    return train(config, sample_dataset, tmp_path_factory.mktemp("trained")).best_checkpoint
